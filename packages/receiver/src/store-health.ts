/**
 * The health of a store, as a monitoring plugin reports it (Nagios
 * conventions: OK 0, WARNING 1, CRITICAL 2, UNKNOWN 3; one summary line
 * first, performance data after `|`). One function builds it from
 * `storeStatus`, so `grainline status` (text and `--output json`) and the
 * receiver's HTTP API show the same thing.
 *
 * Per mirror:
 * - CRITICAL: a failed trivial check or certify, a diverged disk (the next
 *   cycle must resync it), a modified mirror (someone booted or edited it),
 *   a restore point whose files are missing, not regular files or truncated
 *   (a restore of it would fail) — on the Ceph store, whose snapshots are
 *   missing or smaller than its capacity —, on the Ceph store a committed
 *   disk whose image or snapshot is missing or smaller than its capacity
 *   (the mirror's latest cycle cannot be restored nor built on),
 *   a state that cannot be read, a last commit older than `maxAgeMs`, on
 *   the folder store a disk in flight whose journal a resume refuses or
 *   cannot read (missing, a FIFO or folder in its place, unreadable, no
 *   valid head: every run fails on it until the operator acts);
 * - WARNING: a cycle in flight or a commit to roll forward (a run is going
 *   on, or one was interrupted: the next run resumes it, or `grainline mirror
 *   rollback`), on the Ceph store a disk in flight whose extent log status
 *   did not count (larger than a cycle of the disk can log, or unreadable),
 *   on the folder store an interrupted rollback (finished at start-up or by
 *   the next run),
 *   a mirror never committed yet, a mirror held by an opened point or a
 *   failover, restore points that broke and were dropped within the last
 *   week ({@link POINTS_DROPPED_WARNING_MS});
 * - OK otherwise.
 * The store's state is the worst of its mirrors; a store without mirrors is
 * UNKNOWN.
 */
import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import { ReceiverError } from './errors.ts'
import { storeStatus, type DiskStatus, type VmStatus } from './store-admin.ts'
import { grainlineCommand, storeArg } from './operator-command.ts'

/** Monitoring states, best first, with their exit codes. */
export const HealthStates = { OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3 } as const
export type HealthState = keyof typeof HealthStates

/** One mirror's health. */
export interface MirrorHealth {
  readonly state: HealthState
  /** seconds since the last commit; null if never committed */
  readonly ageSeconds: number | null
  /** why it is not OK (empty when OK) */
  readonly problems: readonly string[]
}

/** A store's status with the health of each mirror and of the whole. */
export interface StoreHealth {
  readonly store: string
  readonly checkedAt: string
  readonly state: HealthState
  /** the exit code of the state (0–3) */
  readonly exitCode: number
  /** one line: `GRAINLINE CRITICAL - …` */
  readonly summary: string
  /** Nagios performance data: `'web 01_age'=754s;;1800` per mirror */
  readonly perfdata: string
  readonly maxAgeSeconds: number | null
  readonly vms: ReadonlyArray<VmStatus & { readonly health: MirrorHealth }>
}

/** Options of {@link assessStore}. */
export interface StoreHealthOptions {
  /** a mirror whose last commit is older is CRITICAL (stale: the RPO is missed) */
  readonly maxAgeMs?: number
  /** @default Date.now() */
  readonly now?: number
}

/**
 * How long a mirror stays WARNING after a commit dropped every restore point
 * it had outside the retention (state-file.ts `pointsDropped`): a week, so
 * that a weekly look at the status still sees it.
 */
export const POINTS_DROPPED_WARNING_MS = 7 * 24 * 3600 * 1000

const worse = (a: HealthState, b: HealthState): HealthState => (HealthStates[b] > HealthStates[a] ? b : a)

function ageText(s: number): string {
  if (s < 120) return `${s} s`
  if (s < 7200) return `${Math.floor(s / 60)} min`
  if (s < 172_800) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`
  return `${Math.floor(s / 86_400)} d ${String(Math.floor((s % 86_400) / 3600)).padStart(2, '0')} h`
}

function diskProblems(d: DiskStatus): Array<[HealthState, string]> {
  const out: Array<[HealthState, string]> = []
  if (d.trivial !== null && !d.trivial.ok) out.push(['CRITICAL', `trivial check MISMATCH on ${d.name}`])
  if (d.certify !== null && !d.certify.ok) out.push(['CRITICAL', `certify (${d.certify.algorithm}) MISMATCH on ${d.name}`])
  if (d.diverged !== null) out.push(['CRITICAL', `${d.name} DIVERGED from its source: ${d.diverged.reason} (the next cycle resyncs it)`])
  if (d.modified) out.push(['CRITICAL', `${d.name} modified since its last commit (${modifiedHow(d)})`])
  // the folder store: a journal a resume refuses or cannot read (missing, no regular file, unreadable, no valid
  // head) — every run fails on it until the operator acts (its text says how), as on a diverged or modified mirror
  if (d.inflight?.problem !== undefined && d.inflight.refused === true) out.push(['CRITICAL', d.inflight.problem])
  // the Ceph store: an extent log status did not count (its cycle in flight is WARNING already; a resume refuses a log above the bound, the agent rolls back);
  // the folder store: an interrupted rollback, which the receiver finishes at start-up or at the next run's Rollback
  else if (d.inflight?.problem !== undefined) out.push(['WARNING', d.inflight.problem])
  return out
}

/**
 * What a modified mirror's problem adds: on a folder store a flat that is
 * missing (status reads its size as 0) or of another size than the disk was
 * deleted, truncated or grown behind the store — said with its size, so
 * that "booted" is not the only reading an operator is offered.
 */
function modifiedHow(d: DiskStatus): string {
  if (d.committedCycle === 0 || d.capacity === 0 || d.size === d.capacity) return 'booted or edited'
  if (d.size === 0) return 'its mirror flat is missing or empty: deleted or truncated behind the store'
  return `booted or edited: its mirror flat is ${d.size} bytes, the disk ${d.capacity}`
}

/** The health of one mirror. */
export function assessMirror(vm: VmStatus, opts: StoreHealthOptions & { readonly store?: string } = {}): MirrorHealth {
  const now = opts.now ?? Date.now()
  const problems: Array<[HealthState, string]> = []
  if (vm.error !== undefined) problems.push(['CRITICAL', `state unreadable: ${vm.error}`])
  for (const d of vm.disks) problems.push(...diskProblems(d))
  const damaged = damagedPointsProblem(vm, opts.store)
  if (damaged !== undefined) problems.push(['CRITICAL', damaged])
  const mirror = damagedMirrorProblem(vm, opts.store)
  if (mirror !== undefined) problems.push(['CRITICAL', mirror])
  const at = vm.committedAt === null ? NaN : Date.parse(vm.committedAt)
  const ageSeconds = Number.isFinite(at) ? Math.max(0, Math.floor((now - at) / 1000)) : null
  if (vm.committedCycle === 0 && vm.error === undefined) problems.push(['WARNING', 'never committed (seed not finished)'])
  if (ageSeconds !== null && opts.maxAgeMs !== undefined && ageSeconds * 1000 > opts.maxAgeMs) {
    problems.push(['CRITICAL', `stale: last commit ${ageText(ageSeconds)} ago (max ${ageText(Math.floor(opts.maxAgeMs / 1000))})`])
  }
  const aside = vm.setAsideJournals ?? []
  if (aside.length > 0) {
    const bytes = aside.reduce((n, j) => n + j.bytes, 0)
    const where = opts.store === undefined ? vm.vm : join(opts.store, vm.vm)
    const named = aside.map((j) => (j.kind === undefined ? j.file : `${j.file} (${j.kind})`))
    const names = named.length <= 3 ? named.join(', ') : `${named.slice(0, 3).join(', ')} and ${named.length - 3} more`
    problems.push([
      'WARNING',
      `${aside.length} journal${aside.length === 1 ? '' : 's'} set aside by rollbacks in ${where} (${names}; ${bytes} bytes, counted in the token's quota): each stood in a seed's journal's place and could not be opened or read, the rollback discarded that seed (the next run seeds the disk anew) and nothing reads ${aside.length === 1 ? 'it' : 'them'} any more; look at ${aside.length === 1 ? 'it' : 'them'} (a damaged or planted file), then delete ${aside.length === 1 ? 'it' : 'them'} (rm -- ${JSON.stringify(where)}/*.journal.set-aside-cycle-*)`,
    ])
  }
  for (const h of vm.holds ?? []) {
    problems.push(['WARNING', `held by ${h.kind === 'failover' ? 'a failover' : 'an opened point'} (point ${h.cycle} in ${h.dir}): no cycle is applied until "grainline points close" releases it`])
  }
  const drop = vm.pointsDropped
  const dropAt = drop === undefined ? NaN : Date.parse(drop.at)
  if (drop?.broken === true && Number.isFinite(dropAt) && dropAt <= now + 60_000 && now - dropAt < POINTS_DROPPED_WARNING_MS) {
    const list = drop.cycles.length <= 3 ? drop.cycles.join(', ') : `${drop.cycles[0]}–${drop.cycles.at(-1)} (${drop.cycles.length})`
    problems.push([
      'WARNING',
      `restore point${drop.cycles.length === 1 ? '' : 's'} ${list} dropped by the commit of cycle ${drop.cycle} ${ageText(Math.max(0, Math.floor((now - dropAt) / 1000)))} ago: ${drop.why}; the VM can be restored to cycle ${drop.cycle} and later only`,
    ])
  }
  if (vm.needsRecovery && vm.error === undefined) {
    problems.push([
      'WARNING',
      vm.inflightCycle > 0
        ? `cycle ${vm.inflightCycle} in flight (a run is going on, or was interrupted: the next run resumes it, or grainline mirror rollback)`
        : 'a commit to roll forward (the receiver finishes it at start-up)',
    ])
  }
  return {
    state: problems.reduce<HealthState>((s, [p]) => worse(s, p), 'OK'),
    ageSeconds,
    problems: problems.map(([, m]) => m),
  }
}

/**
 * The problem of a VM whose restore point files are damaged (store-admin.ts
 * `damagedPoints`; on a `ceph:` store its snapshots, ceph-overview.ts): which point, disk and file, and what to do. A point's
 * chain reads through the newer points only, so the points after the newest
 * damaged one still restore; a prune keeping just those drops the damaged
 * ones (the oldest go by removal, with no merge).
 */
function damagedPointsProblem(vm: VmStatus, store: string | undefined): string | undefined {
  const list = vm.damagedPoints ?? []
  if (list.length === 0) return undefined
  const newest = Math.max(...list.map((d) => d.cycle))
  const keep = (vm.points ?? []).filter((c) => c > newest).length
  const shown = list.slice(0, 3).map((d) => `point ${d.cycle} disk ${d.disk}: ${d.file} ${d.problem}`)
  if (list.length > 3) shown.push(`${list.length - 3} more`)
  const prune = grainlineCommand(['points', 'prune', '--store', storeArg(store ?? 'STORE'), '--vm', vm.vm, '--keep', String(keep)])
  const stays = keep === 0 ? ': the next cycles make new points' : keep === 1 ? ': the newer point stays' : `: the ${keep} newer points stay`
  // a Ceph point is RBD snapshots (ceph-overview.ts cephStoreDamage): no folder to put back, a removed snapshot cannot come back
  if (store?.startsWith('ceph:') === true) {
    return `restore point snapshot${list.length === 1 ? '' : 's'} DAMAGED (${shown.join('; ')}): restoring point ${newest} or an older one fails; drop point ${newest} and the older ones (${prune}${stays})`
  }
  return `restore point file${list.length === 1 ? '' : 's'} DAMAGED (${shown.join('; ')}): restoring point ${newest} or an older one fails; put back the VM's .grainline/points folder from a backup, or drop point ${newest} and the older ones (${prune}${stays})`
}

/**
 * The problem of a VM whose mirror is damaged (`damagedMirror`, the Ceph
 * store: a committed disk's image or snapshot missing or smaller than its
 * capacity, ceph-overview.ts cephStoreDamage): which disk and snapshot, and
 * what to do. The latest cycle cannot be restored or failed over, and no
 * cycle can build on it (an incremental writes the image from that
 * snapshot, a resync and the checks read it, a rollback returns to it), nor
 * can a snapshot removed be put back: the restore points still whole are
 * the VM's copies at the DR site until the mirror is removed and seeded
 * anew. A disk removed from the VM is not part of the latest cycle.
 */
function damagedMirrorProblem(vm: VmStatus, store: string | undefined): string | undefined {
  const list = vm.damagedMirror ?? []
  if (list.length === 0) return undefined
  const shown = list.slice(0, 3).map((d) => `disk ${d.disk}${d.removed === undefined ? '' : ` (removed from the VM at cycle ${d.removed})`}: ${d.file} ${d.problem}`)
  if (list.length > 3) shown.push(`${list.length - 3} more`)
  const s = storeArg(store ?? 'STORE')
  const remove = `remove the mirror (${grainlineCommand(['mirror', 'remove', '--store', s, '--vm', vm.vm, '--yes'])}): the next run seeds the VM anew`
  const head = `mirror snapshot${list.length === 1 ? '' : 's'} DAMAGED (${shown.join('; ')})`
  if (list.every((d) => d.removed !== undefined)) {
    return `${head}: the latest cycle does not read ${list.length === 1 ? 'it' : 'them'} (no longer in the VM); were ${list.length === 1 ? 'the disk' : 'the disks'} attached again, the next cycle could not build on ${list.length === 1 ? 'it' : 'them'}: then ${remove}`
  }
  // the points a damaged one does not break (store-health's rule for damagedPoints: the points newer than the newest damaged)
  const broken = (vm.damagedPoints ?? []).map((d) => d.cycle)
  const newestBroken = broken.length === 0 ? 0 : Math.max(...broken)
  const point = (vm.points ?? []).filter((c) => c > newestBroken).at(-1)
  const instead =
    point === undefined
      ? `no whole restore point is kept to restore instead; ${remove}`
      : `restore or fail over point ${point} instead (${grainlineCommand(['restore', '--store', s, '--vm', vm.vm, '--point', String(point), '--to', 'DIR'])}, or ${grainlineCommand(['mirror', 'failover', '--store', s, '--vm', vm.vm, '--point', String(point)])}); archive the points to keep (${grainlineCommand(['points', 'archive', '--store', s, '--vm', vm.vm, '--archive', 's3://BUCKET/PREFIX'])}), then ${remove}`
  return `${head}: the mirror's latest cycle ${vm.committedCycle} cannot be restored or failed over, and the next cycle cannot build on it (an incremental, a resync, the checks and a rollback read that snapshot); ${instead}`
}

const perfLabel = (vm: string): string => `'${vm.replace(/'/g, "''").replace(/[=]/g, '_')}_age'`

/** The health of a store from its status (pure). */
export function assessStore(status: { store: string; vms: readonly VmStatus[] }, opts: StoreHealthOptions = {}): StoreHealth {
  const now = opts.now ?? Date.now()
  const vms = status.vms.map((v) => ({ ...v, health: assessMirror(v, { ...opts, now, store: status.store }) }))
  const state: HealthState = vms.length === 0 ? 'UNKNOWN' : vms.reduce<HealthState>((s, v) => worse(s, v.health.state), 'OK')
  const bad = vms.filter((v) => v.health.state !== 'OK')
  const maxAge = opts.maxAgeMs === undefined ? null : Math.floor(opts.maxAgeMs / 1000)
  let text: string
  if (vms.length === 0) text = `no mirrors in ${status.store}`
  else if (bad.length === 0) {
    const oldest = Math.max(...vms.map((v) => v.health.ageSeconds ?? 0))
    text = `${vms.length} mirror${vms.length === 1 ? '' : 's'} OK, oldest commit ${ageText(oldest)} ago`
  } else {
    text = `${bad.length} of ${vms.length} mirror${vms.length === 1 ? '' : 's'} not OK: ${bad.map((v) => `${v.vm} ${v.health.state} (${v.health.problems.join('; ')})`).join(', ')}`
  }
  const perfdata = vms
    .filter((v) => v.health.ageSeconds !== null)
    .map((v) => `${perfLabel(v.vm)}=${v.health.ageSeconds}s;;${maxAge ?? ''}`)
    .join(' ')
  return {
    store: status.store,
    checkedAt: new Date(now).toISOString(),
    state,
    exitCode: HealthStates[state],
    summary: `GRAINLINE ${state} - ${text}`,
    perfdata,
    maxAgeSeconds: maxAge,
    vms,
  }
}

/**
 * Status and health of the store at `storeDir`.
 * @throws ReceiverError E_NOT_FOUND when the store folder does not exist (a typo must not read as "no mirrors")
 */
export async function storeHealth(storeDir: string, opts: StoreHealthOptions = {}): Promise<StoreHealth> {
  const st = await stat(storeDir).catch((err: NodeJS.ErrnoException) => err)
  if (st instanceof Error) throw new ReceiverError('E_NOT_FOUND', `store ${storeDir} does not exist (${st.code ?? st.message})`)
  if (!st.isDirectory()) throw new ReceiverError('E_NOT_FOUND', `store ${storeDir} is not a folder`)
  return assessStore(await storeStatus(storeDir), opts)
}
