/**
 * The report notifications of a job: an e-mail (HTML + text) and signed
 * webhooks, sent after every run (or only after some outcomes: `on`).
 */
import { z } from 'zod'
import { certificateFileField, doc, durationField, secretFileField, type SchemaContext } from './fields.ts'
import { EmailLayouts, NotifyOutcomes, SmtpTlsModes } from './choices.ts'
import { isLoopbackHost } from '../receiver-url.ts'

export { EmailLayouts, NotifyOutcomes, SmtpTlsModes } from './choices.ts'

// a deliberately plain check: an address with one @ and a dot in the domain (the SMTP server has the last word)
const address = z.string().regex(/^[^\s@<>]+@[^\s@<>]+\.[^\s@<>]+$/, 'is not an e-mail address (user@example.net)')

const onField = () =>
  doc(z.union([z.enum(NotifyOutcomes), z.array(z.enum(NotifyOutcomes)).min(1)]).optional(), {
    description:
      'Send after clean runs (`success`), runs that committed with a warning such as restore points the receiver dropped (`warning`), failed runs (`failure`). A run with a warning committed and needs a look, so `success` and `failure` both cover it: `["failure"]` sends whenever something needs a look, `["success"]` after every committed run; `["warning"]` alone sends only those.',
    default: '["success", "warning", "failure"]',
    type: '"success", "warning", "failure" or an array of them',
  })

/** SMTP settings. */
export function smtpSchema(ctx: SchemaContext) {
  return z
    .strictObject({
      host: doc(z.string().min(1), { description: 'SMTP server.' }),
      port: doc(z.int().min(1).max(65535).optional(), { description: 'SMTP port.', default: '587 (465 with `tls: "implicit"`)' }),
      tls: doc(z.enum(SmtpTlsModes).optional(), {
        description:
          '`starttls`: plain connect, then STARTTLS, required (refused if the server does not offer it); `implicit`: TLS from the first byte (port 465); `none`: no encryption — the report travels in clear, and with `user`/`passwordFile` the password too, so that is refused to a non-loopback host unless `insecurePlaintext` is set (without credentials `none` is allowed to any relay: what leaks is the report, not a secret).',
        default: '"starttls"',
      }),
      insecurePlaintext: doc(z.boolean().optional(), {
        description: 'Allow `tls: "none"` with `user`/`passwordFile` to a non-loopback host: the SMTP password travels in clear (as the receiver URL\'s `insecurePlaintext`).',
        default: 'false',
      }),
      user: doc(z.string().min(1).optional(), { description: 'SMTP AUTH user (with `passwordFile`).' }),
      passwordFile: doc(secretFileField(ctx).optional(), { description: 'File holding the SMTP password (first non-empty line).', type: 'path' }),
      caFile: doc(certificateFileField(ctx).optional(), { description: "PEM CA trusted for the server's certificate.", type: 'path', default: 'the system CAs' }),
      timeout: doc(durationField({ min: 1000, max: 600_000 }).optional(), { description: 'Connection, greeting and per-command timeout.', default: '30s', type: 'duration' }),
    })
    .superRefine((v, c) => {
      if ((v.user === undefined) !== (v.passwordFile === undefined))
        c.addIssue({ code: 'custom', message: 'user and passwordFile go together', path: [v.user === undefined ? 'user' : 'passwordFile'] })
      // as the receiver URL's ws:// rule (receiver-url.ts): no secret in clear to another host without an explicit opt-in
      if (v.tls === 'none' && v.user !== undefined && !isLoopbackHost(v.host) && v.insecurePlaintext !== true)
        c.addIssue({
          code: 'custom',
          message: `"none" would send the SMTP password of ${JSON.stringify(v.user)} in clear to ${v.host}, which is not a loopback relay: use tls "starttls" or "implicit" (--smtp-tls), a relay on this host, or set smtp.insecurePlaintext (--smtp-insecure-plaintext) on a network you trust`,
          path: ['tls'],
        })
    })
}

/** The e-mail report. */
export function emailSchema(ctx: SchemaContext) {
  return z.strictObject({
    to: doc(z.union([address, z.array(address).min(1)]), { description: 'Recipient(s).', type: 'address or array of addresses' }),
    from: doc(address, { description: 'Sender address.' }),
    subjectPrefix: doc(z.string().max(100).optional(), { description: 'Start of the subject line.', default: '"[grainline]"' }),
    on: onField(),
    layout: doc(z.enum(EmailLayouts).optional(), {
      description: '`trivial` (the quick check per disk) or `certified` (algorithm and digest per disk); `auto` picks `certified` when any VM was certified.',
      default: '"auto"',
    }),
    smtp: doc(smtpSchema(ctx), { description: 'How to send.' }),
  })
}

/** One webhook. */
export function webhookSchema(ctx: SchemaContext) {
  return z
    .strictObject({
      url: doc(z.url({ protocol: /^https?$/ }), { description: 'Endpoint receiving the JSON POST (`http://` or `https://`).' }),
      secretFile: doc(secretFileField(ctx), {
        description: 'File holding the HMAC-SHA256 key (first non-empty line); every POST is signed (`X-Grainline-Signature`: see Webhooks below).',
        type: 'path',
      }),
      on: onField(),
      caFile: doc(certificateFileField(ctx).optional(), { description: 'PEM CA trusted for an `https://` endpoint.', type: 'path', default: 'the system CAs' }),
      timeout: doc(durationField({ min: 100, max: 300_000 }).optional(), {
        description: 'How long one attempt may take in all (connect, send, answer: an endpoint that trickles its answer is cut there). A stopped run (SIGTERM) makes no further attempt.',
        default: '10s',
        type: 'duration',
      }),
      attempts: doc(z.int().min(1).max(10).optional(), {
        description: 'Attempts in all: network errors, 5xx and 429 are retried with back-off (1 s, 2 s, 4 s … up to 30 s); other answers are final.',
        default: '5',
      }),
      insecurePlaintext: doc(z.boolean().optional(), {
        description: 'Allow an `http://` URL carrying credentials (`http://user:password@host/`, sent as HTTP Basic auth) to a non-loopback host: they travel in clear.',
        default: 'false',
      }),
    })
    .superRefine((v, c) => {
      // the HMAC key never travels (only the signature of each POST), but credentials in the URL do, as Basic auth
      const u = URL.canParse(v.url) ? new URL(v.url) : undefined
      if (u !== undefined && u.protocol === 'http:' && (u.username !== '' || u.password !== '') && !isLoopbackHost(u.hostname) && v.insecurePlaintext !== true)
        c.addIssue({
          code: 'custom',
          message: `the URL's credentials would go in clear (HTTP Basic auth over http://) to ${u.host}: use https://, or set insecurePlaintext (--webhook-insecure-plaintext) on a network you trust`,
          path: ['url'],
        })
    })
}

/** Validated e-mail settings. */
export type EmailSettings = z.output<ReturnType<typeof emailSchema>>
/** Validated webhook settings. */
export type WebhookSettings = z.output<ReturnType<typeof webhookSchema>>

/**
 * The outcomes a notification is sent on: `on` as a set, where `success`
 * and `failure` both cover `warning` (a run with a warning committed, as a
 * clean one, and needs a look, as a failed one).
 */
export function outcomesOf(on: EmailSettings['on']): ReadonlySet<(typeof NotifyOutcomes)[number]> {
  if (on === undefined) return new Set(NotifyOutcomes)
  const set = new Set(typeof on === 'string' ? [on] : on)
  if (set.has('failure') || set.has('success')) set.add('warning')
  return set
}
