/**
 * What a replication run reports: per VM and per disk, JSON-able, plus the
 * readable summary the CLI prints (`formatReport`).
 */
import { untrustedText } from './untrusted-text.ts'
import { formatBytes, formatDuration, type ChainLayer, type DigestAlgorithm, type RetentionSpec } from '@grainline/protocol'

/** The result of one disk. */
export interface DiskReport {
  /** base disk name (the mirror's disk name) */
  readonly name: string
  readonly node: string
  ok: boolean
  mode: 'seed' | 'incremental' | 'resync' | 'none'
  /** why the disk was resynced (or seeded) instead of shipped incrementally */
  fallbackReason?: string
  /** resync (SPEC §5.9): blocks compared, blocks that differed, block size, BlockMap digest bytes received */
  resync?: { blockSize: number; blocks: number; differing: number; mapBytes: number }
  capacity: number
  extents: number
  /** bytes covered by data extents / zero extents (the whole plan, including resumed parts) */
  dataBytes: number
  zeroBytes: number
  /** payload bytes actually sent by this run (after compression) */
  wireBytes: number
  /**
   * a seed without a certify: bytes of its planned data extents this run did
   * not read, because the chain said they were holes (issue #17; sent as
   * zeros). Absent when every byte was read.
   */
  holesSkippedBytes?: number
  /** first seq sent after each (re)open: [0] for a clean run */
  resumedFrom: number[]
  /** frozen layers shipped, bottom first */
  layers: ChainLayer[]
  /**
   * false when the chain opened but some link had `parentCID=fffffffe` (ESXi
   * wrote "nothing to check", e.g. after a Storage vMotion): nothing proves each
   * parent is the one its child was made from. Absent = verified.
   */
  cidVerified?: boolean
  trivial?: { ok: boolean; prefixBytes: number; algorithm: DigestAlgorithm }
  certify?: { ok: boolean; algorithm: DigestAlgorithm; digest: string }
  /** `--verify changed` (SPEC §5.6): blocks the cycle wrote, compared after the commit, and how many differed */
  blockCheck?: { ok: boolean; blockSize: number; blocks: number; mismatched: number }
  /** `--scrub N`: the blocks [from, to) of `blocks` compared this cycle; `provenAt`: when the whole mirror was last proven (a clean rotation, a seed or a resync) */
  scrub?: { ok: boolean; blockSize: number; from: number; to: number; blocks: number; mismatched: number; rotationComplete: boolean; provenAt?: string }
  error?: { code: string; message: string }
}

/**
 * Something the operator must look at although the cycle committed. A VM
 * can have warnings and still fail (its checks); a run whose VMs are all
 * `ok` and one has a warning has the outcome `warning` ({@link runOutcome}).
 */
export interface ReportWarning {
  /** stable code: `W_POINTS_DROPPED` (the receiver dropped every restore point of the VM at this commit) */
  readonly code: 'W_POINTS_DROPPED'
  /** in words, with what to do */
  readonly message: string
}

/** The restore points the receiver dropped at this cycle's commit (SPEC §5.5 PointsDropped, protocol version 6). */
export interface PointsDroppedReport {
  readonly count: number
  /** cycles of the oldest and the newest point dropped */
  readonly oldest: number
  readonly newest: number
  /** true: they could not be kept (the mirror changed behind the receiver, a capacity change); false: the receiver keeps no points of this VM any more */
  readonly broken: boolean
  /** the receiver's words */
  readonly reason: string
}

/** The result of one VM cycle. */
export interface VmReport {
  readonly ref: string
  vm: string
  ok: boolean
  cycle: number
  /** snapshot shipped (name) */
  snapshot?: string
  reusedSnapshot: boolean
  reconnects: number
  disks: DiskReport[]
  removedSnapshots: string[]
  /** disks ESXi does not snapshot (independent disks, physical RDMs), skipped with a warning; not replicated */
  skippedDisks?: Array<{ node: string; fileName: string; kind: string; reason: string }>
  /** the restore-point retention the receiver applied at this commit (null: it keeps no points of this VM), and the job's request when it made one */
  retention?: { requested: RetentionSpec | null; applied: RetentionSpec | null }
  /** the receiver dropped every restore point of the VM at this commit (a protocol version 6 receiver says so) */
  pointsDropped?: PointsDroppedReport
  /** what needs a look although the cycle committed */
  warnings?: ReportWarning[]
  durationMs: number
  /** where the time went, ms: connect, snapshot, plan, ship (to DiskEnded), commit, check, remove */
  timings: Record<string, number>
  error?: { code: string; message: string; remoteCode?: string }
}

/** The outcome of a run: one entry per VM. `ok` only when every disk of every VM committed and passed its checks. */
export interface ReplicationReport {
  ok: boolean
  startedAt: string
  finishedAt: string
  vms: VmReport[]
  /** the run was stopped (a signal: `SIGINT`, `SIGTERM`), and why */
  interrupted?: string
  /** notifications sent after the run (e-mail, webhooks) and how they went */
  notifications?: NotificationResult[]
}

/** How a run went, for notifications: `warning` when every VM is ok but one has a warning. */
export type RunOutcome = 'success' | 'warning' | 'failure'

/** The outcome of a run: `failure` unless `ok`, else `warning` when any VM reports a warning, else `success`. */
export function runOutcome(report: Pick<ReplicationReport, 'ok' | 'vms'>): RunOutcome {
  if (!report.ok) return 'failure'
  return report.vms.some((v) => (v.warnings?.length ?? 0) > 0) ? 'warning' : 'success'
}

/** Every warning of a run, each with its VM. */
export function runWarnings(report: Pick<ReplicationReport, 'vms'>): Array<{ vm: string; warning: ReportWarning }> {
  return report.vms.flatMap((v) => (v.warnings ?? []).map((warning) => ({ vm: v.vm, warning })))
}

/**
 * A peer's words (the receiver's reason for dropped points, up to the
 * codec's 1024 bytes) on one line, fit for a terminal: escape sequences
 * removed, control characters, line separators and bidi overrides as spaces
 * (a newline would fake a line of the report, the e-mail or the log; an
 * escape would rewrite the operator's terminal) — untrusted-text.ts.
 */
export function oneLine(s: string): string {
  return untrustedText(s, 1024)
}

/** The warning of restore points dropped at the commit of `cycle`. */
export function pointsDroppedWarning(cycle: number, dropped: PointsDroppedReport): ReportWarning {
  const p = { ...dropped, reason: oneLine(dropped.reason) }
  const which = p.count === 1 ? `restore point ${p.oldest}` : `${p.count} restore points (cycles ${p.oldest} to ${p.newest})`
  const why = p.broken ? `they could not be kept (${p.reason})` : `it keeps no restore points of this VM any more (${p.reason})`
  const then = p.broken ? 'the archive grows again from this cycle' : "turn the receiver's retention back on if the VM should have restore points"
  return { code: 'W_POINTS_DROPPED', message: `the receiver dropped ${which} at the commit of cycle ${cycle}: ${why}. The mirror can be restored to cycle ${cycle} and later only; ${then}.` }
}

/** One notification of a run. */
export interface NotificationResult {
  readonly kind: 'email' | 'webhook'
  /** recipients or URL */
  readonly target: string
  readonly ok: boolean
  /** attempts made (webhooks) */
  readonly attempts?: number
  /** the whole delivery's time, ms: its attempts and the back-off between them (webhooks) */
  readonly durationMs?: number
  readonly error?: string
}

/**
 * How a notification went out, as the summary says it: ` after 5 attempts in 31.2 s` for a webhook that failed or
 * needed more than one attempt (` after 1 attempt` for one that failed at once), nothing else.
 */
function deliveryText(n: NotificationResult): string {
  if (n.attempts === undefined || (n.ok && n.attempts <= 1)) return ''
  const took = n.durationMs === undefined ? '' : ` in ${formatDuration(n.durationMs)}`
  return ` after ${n.attempts} attempt${n.attempts === 1 ? '' : 's'}${took}`
}

/** A fresh VM report (nothing done yet). */
export function emptyVmReport(ref: string): VmReport {
  return { ref, vm: ref, ok: false, cycle: 0, reusedSnapshot: false, reconnects: 0, disks: [], removedSnapshots: [], durationMs: 0, timings: {} }
}

/** A fresh disk report. */
export function emptyDiskReport(name: string, node: string, capacity: number): DiskReport {
  return { name, node, ok: false, mode: 'none', capacity, extents: 0, dataBytes: 0, zeroBytes: 0, wireBytes: 0, resumedFrom: [], layers: [] }
}

/** `{ code, message, remoteCode? }` of any thrown value (codes of typed errors pass through). */
export function errorInfo(err: unknown): { code: string; message: string; remoteCode?: string } {
  const e = err as { code?: unknown; message?: unknown; remoteCode?: unknown }
  const out: { code: string; message: string; remoteCode?: string } = {
    code: typeof e.code === 'string' ? e.code : 'E_INTERNAL',
    message: typeof e.message === 'string' ? e.message : String(err),
  }
  if (typeof e.remoteCode === 'string') out.remoteCode = e.remoteCode
  return out
}

/** The checks of a disk in words: `trivial ok, certify sha256 ok`. */
function checksText(d: DiskReport): string {
  return [d.trivial !== undefined ? `trivial ${d.trivial.ok ? 'ok' : 'MISMATCH'}` : '', d.certify !== undefined ? `certify ${d.certify.algorithm} ${d.certify.ok ? 'ok' : 'MISMATCH'}` : '']
    .filter((x) => x !== '')
    .join(', ')
}

/**
 * Where a disk's shipping resumed, when it did: the data and zero figures are
 * the whole plan's (earlier runs' part included), on the wire is this run's —
 * without this, a resumed run's "64 MiB data" reads as a disk sent again.
 */
function resumedText(d: DiskReport): string {
  const at = d.resumedFrom.filter((s) => s > 0)
  if (at.length === 0) return ''
  return ` (resumed at extent ${at.join(', ')} of ${d.extents}: the extents before were durable from an earlier run or connection; data and zero count them, on the wire does not)`
}

/**
 * A readable summary of a report for the terminal (and the e-mail's text part):
 * one line per VM, one per disk, sizes and times in human units.
 */
export function formatReport(report: ReplicationReport): string {
  const lines: string[] = []
  for (const vm of report.vms) {
    const head = [
      `${vm.ok ? ((vm.warnings?.length ?? 0) > 0 ? 'WARN' : 'OK  ') : 'FAIL'} ${vm.vm}`,
      vm.cycle > 0 ? ` cycle ${vm.cycle}` : '',
      vm.snapshot !== undefined ? ` (${vm.snapshot}${vm.reusedSnapshot ? ', resumed' : ''})` : '',
      vm.reconnects > 0 ? `, ${vm.reconnects} reconnect${vm.reconnects === 1 ? '' : 's'}` : '',
      `, ${formatDuration(vm.durationMs)}`,
      vm.error !== undefined ? `: ${vm.error.code} ${vm.error.message}` : '',
    ].join('')
    lines.push(head)
    for (const d of vm.disks) {
      const checks = checksText(d)
      lines.push(
        `  ${d.ok ? 'ok  ' : 'FAIL'} ${d.node} ${d.name}: ${d.mode}${d.fallbackReason !== undefined ? ` (${d.mode === 'seed' ? 'seed' : 'resync'}: ${d.fallbackReason})` : ''}, ` +
          `${formatBytes(d.dataBytes)} data, ${formatBytes(d.zeroBytes)} zero, ${formatBytes(d.wireBytes)} on the wire${resumedText(d)}${checks !== '' ? `, ${checks}` : ''}` +
          `${d.cidVerified === false ? ', chain UNVERIFIED (parentCID fffffffe)' : ''}` +
          `${d.error !== undefined && d.error.message !== vm.error?.message ? ` — ${d.error.code}: ${d.error.message}` : ''}`,
      )
    }
    for (const s of vm.skippedDisks ?? []) lines.push(`  SKIP ${s.node} ${s.fileName}: ${s.reason}`)
    for (const w of vm.warnings ?? []) lines.push(`  WARN ${w.code}: ${w.message}`)
  }
  if (report.interrupted !== undefined) lines.push(`stopped: ${report.interrupted}`)
  for (const n of report.notifications ?? []) lines.push(`${n.ok ? 'sent' : 'NOT SENT'} ${n.kind} to ${n.target}${deliveryText(n)}${n.error !== undefined ? `: ${n.error}` : ''}`)
  return lines.join('\n') + '\n'
}
