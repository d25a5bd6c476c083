/**
 * Sending the report e-mail over SMTP (nodemailer: a maintained SMTP client
 * with STARTTLS, AUTH and timeouts, where a hand-written one would get the
 * protocol's corners wrong). `tls: "starttls"` refuses a server that does
 * not offer STARTTLS; the password is never logged.
 */
import { hostname as osHostname } from 'node:os'
import type { EmailSettings } from '../job/notify-schema.ts'
import { runOutcome, type ReplicationReport } from '../report.ts'
import { AGENT_SOFTWARE } from '../version.ts'
import { renderReportEmail, type RenderedEmail } from './email-render.ts'

/** The `X-Grainline-Result` header of each run outcome (for mail filters). */
const RESULT_HEADER = { success: 'ok', warning: 'warning', failure: 'failed' } as const

/** Send the report of a run; resolves with what was sent. @throws Error when the server refuses or cannot be reached */
export async function sendReportEmail(settings: EmailSettings, report: ReplicationReport, opts: { hostname?: string } = {}): Promise<RenderedEmail & { messageId: string }> {
  const host = opts.hostname ?? osHostname()
  const mail = renderReportEmail(report, {
    hostname: host,
    ...(settings.layout === undefined ? {} : { layout: settings.layout }),
    ...(settings.subjectPrefix === undefined ? {} : { subjectPrefix: settings.subjectPrefix }),
  })
  const smtp = settings.smtp
  const tls = smtp.tls ?? 'starttls'
  const timeout = smtp.timeout ?? 30_000
  // loaded when a mail is sent: the module is large, and most runs send none
  const { createTransport } = await import('nodemailer')
  const transport = createTransport({
    host: smtp.host,
    port: smtp.port ?? (tls === 'implicit' ? 465 : 587),
    secure: tls === 'implicit',
    requireTLS: tls === 'starttls',
    ignoreTLS: tls === 'none',
    name: host,
    connectionTimeout: timeout,
    greetingTimeout: timeout,
    socketTimeout: timeout,
    ...(smtp.user !== undefined && smtp.passwordFile !== undefined ? { auth: { user: smtp.user, pass: smtp.passwordFile.secret } } : {}),
    tls: { ...(smtp.caFile === undefined ? {} : { ca: smtp.caFile.pem }), servername: smtp.host },
  })
  try {
    const info = (await transport.sendMail({
      from: settings.from,
      to: settings.to,
      subject: mail.subject,
      text: mail.text,
      html: mail.html,
      headers: { 'X-Grainline-Result': RESULT_HEADER[runOutcome(report)], 'X-Mailer': AGENT_SOFTWARE },
    })) as { messageId: string }
    return { ...mail, messageId: info.messageId }
  } finally {
    transport.close()
  }
}
