/**
 * A whole job run, as `grainline replicate` and a systemd timer run it: the
 * VMs of a validated {@link Job} (job/load-job.ts) replicated `parallel` at a
 * time with one bandwidth budget, the JSON report written, then the e-mail
 * and webhooks sent. A failed notification is logged and recorded in the
 * report; it does not change the run's outcome.
 */
import { mkdir, rename, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import type { Logger } from 'pino'
import type { HostLocks } from './host-lock.ts'
import type { ProgressView } from './job-progress.ts'
import type { Job } from './job/load-job.ts'
import { outcomesOf } from './job/notify-schema.ts'
import { sendReportEmail } from './notify/email.ts'
import { sendWebhook, shownWebhookUrl } from './notify/webhook.ts'
import { replicateMany } from './replicate.ts'
import { runOutcome, type NotificationResult, type ReplicationReport } from './report.ts'

/** Options of {@link runJob}. */
export interface RunJobOptions {
  /** stops the run (SIGINT/SIGTERM in the CLI); the report records why */
  readonly signal?: AbortSignal
  /** where progress goes. @default 'auto' */
  readonly view?: ProgressView | 'auto' | 'tty' | 'log' | 'none'
  /** the stream of a TTY view. @default process.stderr */
  readonly stream?: NodeJS.WriteStream
  readonly hostLocks?: HostLocks
  /** the host named in notifications. @default os.hostname() */
  readonly hostname?: string
}

/** Write the report atomically (a reader never sees half a file). */
export async function writeReportFile(path: string, report: ReplicationReport): Promise<void> {
  await mkdir(dirname(path), { recursive: true })
  const tmp = `${path}.${process.pid}.tmp`
  await writeFile(tmp, JSON.stringify(report, null, 2) + '\n')
  await rename(tmp, path)
}

/** Run a job: replicate, write the report, notify. Never throws for a failed VM; the report says. */
export async function runJob(components: { logger: Logger }, job: Job, opts: RunJobOptions = {}): Promise<ReplicationReport> {
  const log = components.logger
  const report = await replicateMany(components, job.vms, {
    parallel: job.parallel,
    bwlimit: job.bwlimit === Infinity ? 0 : job.bwlimit,
    ...(opts.signal === undefined ? {} : { signal: opts.signal }),
    ...(opts.view === undefined ? {} : { view: opts.view }),
    ...(opts.stream === undefined ? {} : { stream: opts.stream }),
    ...(opts.hostLocks === undefined ? {} : { hostLocks: opts.hostLocks }),
  })
  // the report exists before anything else can go wrong (a notification hanging, a second signal)
  if (job.report !== undefined) await writeReportFile(job.report, report)
  const outcome = runOutcome(report)
  const results: NotificationResult[] = []
  if (job.email !== undefined && outcomesOf(job.email.on).has(outcome)) {
    const to = typeof job.email.to === 'string' ? job.email.to : job.email.to.join(', ')
    try {
      await sendReportEmail(job.email, report, { ...(opts.hostname === undefined ? {} : { hostname: opts.hostname }) })
      results.push({ kind: 'email', target: to, ok: true })
      log.info({ to }, 'report e-mailed')
    } catch (err) {
      results.push({ kind: 'email', target: to, ok: false, error: (err as Error).message })
      log.error({ err, to }, 'the report e-mail was not sent')
    }
  }
  for (const hook of job.webhooks) {
    if (!outcomesOf(hook.on).has(outcome)) continue
    const started = performance.now()
    const r = await sendWebhook(hook, report, { logger: log, ...(opts.hostname === undefined ? {} : { hostname: opts.hostname }), ...(opts.signal === undefined ? {} : { signal: opts.signal }) })
    // the delivery's whole time (attempts, back-off): with the count, what an operator weighs a failure by
    const durationMs = Math.round(performance.now() - started)
    const url = shownWebhookUrl(hook.url)
    results.push({ kind: 'webhook', target: url, ok: r.ok, attempts: r.attempts, durationMs, ...(r.error === undefined ? {} : { error: r.error }) })
    if (r.ok) log.info({ url, attempts: r.attempts, durationMs, status: r.status }, 'webhook delivered')
    else log.error({ url, attempts: r.attempts, durationMs, error: r.error }, 'webhook not delivered')
  }
  if (results.length > 0) {
    report.notifications = results
    if (job.report !== undefined) await writeReportFile(job.report, report)
  }
  return report
}
