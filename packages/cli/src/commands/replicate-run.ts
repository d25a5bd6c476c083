/**
 * `grainline replicate`: one cycle of each VM named (or of every VM of a job
 * file), `parallel` at a time. Every value is validated before the first
 * snapshot or connection (exit 2 naming the flag or key); on a terminal a
 * progress display, otherwise JSON logs with progress lines; SIGINT/SIGTERM
 * finish the durable step in flight, keep its snapshot for the next run,
 * write the report with the interruption and exit 130/143.
 */
import { formatReport, loadJob, runJob, tuneAgentProcess, TtyProgressView, type Job, type ReplicationReport } from '@grainline/agent/run'
import type { LevelWithSilent } from 'pino'
import { ExitCode, UsageError } from '../exit-codes.ts'
import { createCliLogger, humanLogs } from '../logger.ts'
import { stopOnSignals } from '../signals.ts'
import type { CliContext, GlobalArgs } from '../command.ts'
import { NotifyOutcomes } from '@grainline/agent/choices'
import { flagValues } from './replicate-options.ts'

/** The exit code of a finished run. */
export function replicateExitCode(report: ReplicationReport, signalCode: number | undefined): number {
  if (signalCode !== undefined) return signalCode
  return report.ok ? ExitCode.Ok : ExitCode.Failed
}

/**
 * A VM positional that is really a value of a repeatable flag written the old
 * array way (`--mail-on success failure`, `--mail-to a@x.net b@x.net`): each
 * occurrence of those flags takes one value, so the second word became a VM.
 * Refused (exit 2) naming the flag to repeat, rather than changing meaning.
 * @throws UsageError
 */
function checkNotAFlagValue(vm: string, args: Readonly<Record<string, unknown>>): void {
  const given = (flag: string): boolean => args[flag] !== undefined
  let flag: string | undefined
  // only beside the flag whose value it could be: a VM may be named `failure` or `a@b`
  if ((NotifyOutcomes as readonly string[]).includes(vm) && (given('mail-on') || given('webhook-on'))) flag = given('webhook-on') && !given('mail-on') ? 'webhook-on' : 'mail-on'
  else if (given('mail-to') && vm.includes('@') && !vm.includes('/') && !/\.vmx$/i.test(vm)) flag = 'mail-to'
  if (flag === undefined) return
  const first = ((args[flag] as string[] | undefined) ?? [])[0] ?? (flag === 'mail-to' ? 'ops@example.net' : 'success')
  throw new UsageError(`\`${vm}\` looks like a value of --${flag}, not a VM: repeat the flag (--${flag} ${first} --${flag} ${vm}) or give a comma list (--${flag} ${first},${vm})`)
}

/** Validate the flags (and job file) into a job: a ConfigError names every problem. */
export async function jobFromArgs(args: Readonly<Record<string, unknown>>, cwd = process.cwd()): Promise<Job> {
  const flags = flagValues(args, cwd)
  const vms = (args['vm'] as string[] | undefined) ?? []
  for (const vm of vms) checkNotAFlagValue(vm, args)
  return await loadJob({ ...flags, vms, cwd })
}

/** `replicate`'s run (loaded by commands/replicate.ts only when the command runs). */
export async function runReplicate(args: GlobalArgs & Record<string, unknown>, ctx: CliContext): Promise<number> {
  // a process that runs one job and exits: TurboFan later (packages/agent/src/process-tuning.ts)
  tuneAgentProcess()
  // 1. everything validated before anything happens
  const job = await jobFromArgs(args)
  // 2. where progress and logs go
  const stderr = ctx.stderr
  const human = humanLogs({ ...(args['log-file'] === undefined ? {} : { file: args['log-file'] }), stderr })
  const view = human ? new TtyProgressView(stderr) : undefined
  const logger = createCliLogger({
    ...(args['log-level'] === undefined ? {} : { level: args['log-level'] as LevelWithSilent }),
    ...(args['log-file'] === undefined ? {} : { file: args['log-file'] }),
    ttyDefault: 'silent',
    stderr,
    ...(view === undefined
      ? {}
      : {
          print: (s: string) => {
            view.print(s.replace(/\n$/, ''))
          },
        }),
  })
  // 3. stop cleanly on SIGINT/SIGTERM
  const stop = stopOnSignals((s) => {
    const msg = `${s}: stopping after the step in flight (snapshots are kept for the next run); ${s === 'SIGINT' ? 'Ctrl-C again' : 'a second signal'} exits at once`
    if (view !== undefined) view.print(msg)
    else logger.warn({ signal: s }, msg)
  })
  let report: ReplicationReport
  try {
    report = await runJob({ logger }, job, { signal: stop.signal, view: view ?? 'log', stream: stderr })
  } finally {
    stop.dispose()
  }
  ctx.write(formatReport(report))
  if (report.interrupted !== undefined) ctx.error(`grainline: ${report.interrupted}; the report says what was kept for the next run${job.report === undefined ? '' : ` (${job.report})`}`)
  else if (!report.ok) {
    const failed = report.vms.filter((v) => !v.ok)
    ctx.error(
      `grainline: ${failed.length} of ${report.vms.length} VM${report.vms.length === 1 ? '' : 's'} failed: ${failed.map((v) => `${v.vm} [${v.error?.code ?? v.disks.find((d) => d.error !== undefined)?.error?.code ?? 'E_CHECK'}]`).join(', ')}`,
    )
  }
  return replicateExitCode(report, stop.exitCode())
}
