/**
 * Planning decisions of a cycle as pure functions of the facts — the agent's
 * record (agent-state.ts), what the receiver reports (VmState, a refused
 * DiskState), the VM's snapshots and each disk's chain — returning a decision
 * value. No I/O here; `disk-work.ts` turns a disk decision into an extent
 * plan and `cycle.ts` acts on the rest.
 *
 * The lineage rule (SPEC §5.8): an incremental is planned only when the
 * agent's record of the last commit names the receiver's committed cycle and
 * generation, and that commit's snapshot — by hypervisor id, named
 * `grainline-<committed cycle>` — is still on the VM. Anything else is a
 * resync of the disk (SPEC §5.9: only the blocks whose digests differ travel)
 * with the reason; never an incremental.
 */
import type { DiskMode } from '@grainline/protocol'
import type { CommittedRecord, DivergedRecord, InflightRecord } from './agent-state.ts'
import { grainlineSnapshotName, type SnapshotRef } from './driver.ts'

/** How one disk is shipped. */
export type DiskPlanDecision =
  /** the whole frozen view; `reason` says why when the mirror already had a committed point */
  | { readonly kind: 'seed'; readonly reason?: string }
  /** the blocks whose digests differ from the mirror's (SPEC §5.9); `reason` says why the incremental was not safe */
  | { readonly kind: 'resync'; readonly reason: string }
  /**
   * the changed ranges of the frozen layers from `fromDepth` (oldest) up to
   * depth 1, onto committed cycle `baseCycle` of generation `baseGeneration`
   */
  | { readonly kind: 'incremental'; readonly fromDepth: number; readonly baseCycle: number; readonly baseGeneration: string }

/** What the receiver said about the mirror (VmState). */
export interface MirrorFacts {
  readonly exists: boolean
  readonly committedCycle: number
  readonly inflightCycle: number
  /** "" when there is no committed point (or it predates generations) */
  readonly generation: string
}

/** Whether the VM's mirror can be continued, and from which snapshot. */
export type Lineage =
  /**
   * the mirror has no committed point: a first seed; `reason` when the agent
   * recorded a commit of it all the same (the mirror removed at the DR site,
   * a new store)
   */
  | { readonly kind: 'first-seed'; readonly reason?: string }
  /** the mirror has a committed point this agent cannot prove it continues: every disk is resynced */
  | { readonly kind: 'resync'; readonly reason: string }
  /** the record, the receiver and the VM agree: incrementals onto `base` */
  | { readonly kind: 'incremental'; readonly base: SnapshotRef; readonly baseCycle: number; readonly generation: string }

const short = (g: string): string => (g === '' ? '(none)' : `${g.slice(0, 8)}…`)

/**
 * The lineage of the VM's mirror. `recordProblem` is why the agent's record
 * could not be read (it then counts as lost); `snapshots` are the VM's
 * grainline snapshots before this cycle's snapshot is taken.
 */
export function decideLineage(f: { readonly mirror: MirrorFacts; readonly record: CommittedRecord | null; readonly recordProblem?: string; readonly snapshots: readonly SnapshotRef[] }): Lineage {
  const { mirror, record } = f
  if (!mirror.exists || mirror.committedCycle === 0) {
    if (record === null) return { kind: 'first-seed' }
    return {
      kind: 'first-seed',
      reason: `the receiver holds no committed mirror of this VM, but the agent recorded cycle ${record.cycle}, generation ${short(record.generation)} (the mirror removed at the DR site, or a new store): seeding it whole`,
    }
  }
  if (f.recordProblem !== undefined) return { kind: 'resync', reason: `the agent's record is unusable: ${f.recordProblem}` }
  if (record === null) return { kind: 'resync', reason: "the agent has no record of the mirror's committed point (agent state lost, or another state folder or agent made it)" }
  if (mirror.generation === '') return { kind: 'resync', reason: `the mirror's committed cycle ${mirror.committedCycle} has no generation (committed before lineage existed)` }
  if (record.cycle !== mirror.committedCycle || record.generation !== mirror.generation) {
    return {
      kind: 'resync',
      reason: `the receiver is at committed cycle ${mirror.committedCycle}, generation ${short(mirror.generation)}, but the agent recorded cycle ${record.cycle}, generation ${short(record.generation)} (store restored from a backup, another receiver, or the mirror replaced)`,
    }
  }
  const base = f.snapshots.find((s) => s.id === record.snapshot.id)
  const want = grainlineSnapshotName(record.cycle)
  if (base === undefined) return { kind: 'resync', reason: `the snapshot of committed cycle ${record.cycle} (${record.snapshot.name}, id ${record.snapshot.id}) is no longer on the VM` }
  if (base.name !== want) return { kind: 'resync', reason: `the snapshot recorded for committed cycle ${record.cycle} (id ${base.id}) is named ${JSON.stringify(base.name)}, not ${want}` }
  return { kind: 'incremental', base, baseCycle: record.cycle, generation: record.generation }
}

/** One disk's chain, as far as planning cares. */
export interface DiskChainFacts {
  /** the mirror's disk name */
  readonly name: string
  /** device node (`scsi0:0`) */
  readonly node: string
  /** resolved local paths of the chain's layers, [0] = running delta, [L-1] = base */
  readonly layerPaths: readonly string[]
  /**
   * resolved local path of the layer that represents the lineage's base
   * snapshot for this disk (its .vmsd record), or undefined when the driver
   * does not know it (the chain's base layer is assumed)
   */
  readonly baseSnapshotLayer?: string | undefined
}

/** The first plan of a disk under the VM's lineage (and the diverged record, if checks failed last time). */
export function planDisk(lineage: Lineage, disk: DiskChainFacts, diverged?: DivergedRecord, forceResync = false): DiskPlanDecision {
  if (lineage.kind === 'first-seed') return lineage.reason === undefined ? { kind: 'seed' } : { kind: 'seed', reason: lineage.reason }
  if (lineage.kind === 'resync') return { kind: 'resync', reason: lineage.reason }
  if (forceResync) return { kind: 'resync', reason: 'asked for (--resync)' }
  if (diverged?.disks.includes(disk.name) === true) return { kind: 'resync', reason: `the mirror disk failed its check after cycle ${diverged.cycle} (${diverged.reason}); resyncing` }
  const L = disk.layerPaths.length
  const k = disk.baseSnapshotLayer === undefined ? L - 1 : disk.layerPaths.indexOf(disk.baseSnapshotLayer)
  if (k < 0) return { kind: 'resync', reason: `the disk of ${lineage.base.name} for ${disk.node} (${disk.baseSnapshotLayer ?? ''}) is not in the chain` }
  // the layer at depth k holds the committed point; the deltas above it (down to depth 1, the one just frozen) hold the change
  if (k < 2) return { kind: 'resync', reason: `no frozen delta above the disk of ${lineage.base.name} (the mirror's successor is gone)` }
  return { kind: 'incremental', fromDepth: k - 1, baseCycle: lineage.baseCycle, baseGeneration: lineage.generation }
}

/** Which snapshot this cycle ships. */
export type SnapshotDecision =
  /** our own un-committed snapshot of this very cycle (by recorded id): the cycle resumes */
  | { readonly kind: 'reuse'; readonly snapshot: SnapshotRef }
  /**
   * a new `grainline-<cycle>` snapshot; `remove` are grainline snapshots that
   * already carry that name but are not ours to resume (another target's,
   * or of a lost record): removed first, so no two share a name. `keep` is
   * the one exception: the snapshot of the agent's recorded commit carries
   * the name too (the receiver reports an older committed cycle than the
   * agent recorded: a store restored from a backup, or a hostile receiver).
   * It stays until this cycle commits (the old snapshots are removed after
   * a commit, by id), so a receiver's word never removes the base of the
   * agent's lineage before a new one exists.
   */
  | { readonly kind: 'take'; readonly remove: readonly SnapshotRef[]; readonly keep?: SnapshotRef }

/**
 * Reuse the in-flight snapshot the agent recorded for cycle `cycleNo` when it
 * is still on the VM (by id, with that cycle's name); else take a new one.
 * Never by the largest cycle number in a name; never removing the snapshot
 * of `committed` (the agent's record of its last commit).
 */
export function decideSnapshot(f: {
  readonly cycleNo: number
  readonly inflight: InflightRecord | null
  readonly committed?: Pick<CommittedRecord, 'snapshot'> | null
  readonly snapshots: readonly SnapshotRef[]
}): SnapshotDecision {
  const name = grainlineSnapshotName(f.cycleNo)
  const rec = f.inflight
  if (rec !== null && rec.cycle === f.cycleNo) {
    const s = f.snapshots.find((x) => x.id === rec.snapshot.id)
    if (s !== undefined && s.name === name) return { kind: 'reuse', snapshot: s }
  }
  const ours = f.committed?.snapshot.id
  const same = f.snapshots.filter((s) => s.name === name)
  const keep = same.find((s) => s.id === ours)
  const remove = same.filter((s) => s !== keep)
  return keep === undefined ? { kind: 'take', remove } : { kind: 'take', remove, keep }
}

/**
 * Whether the receiver's in-flight cycle must be rolled back before this
 * cycle opens a disk: it belongs to another cycle, or this cycle ships a new
 * snapshot (a cycle identity the in-flight one cannot have).
 */
export function needsRollback(mirror: MirrorFacts, cycleNo: number, snapshot: SnapshotDecision): boolean {
  if (mirror.inflightCycle === 0) return false
  return mirror.inflightCycle !== cycleNo || snapshot.kind === 'take'
}

/** The refusal codes after which an incremental is replaced by a resync of that disk (SPEC §5.1). */
export const RESYNC_CODES: ReadonlySet<string> = new Set(['E_GENERATION', 'E_DIVERGED', 'E_CHAIN_MISMATCH', 'E_MIRROR_MODIFIED'])

/** Refusals that need the operator: the VM ships nothing (SPEC §5.1: `E_HELD`; §4.2 `E_INCOMPATIBLE`). */
export const OPERATOR_CODES: ReadonlySet<string> = new Set(['E_HELD', 'E_INCOMPATIBLE'])

/** What to do after a refused DiskOpen. */
export type RefusalDecision =
  /** open the disk again in the same connection (a new handle) as a resync */
  | { readonly kind: 'resync'; readonly reason: string }
  /** open the disk again in the same connection as a seed: a resync found nothing to compare with */
  | { readonly kind: 'seed'; readonly reason: string }
  /** another cycle is in flight: a new connection, Rollback before any DiskOpen, then open again */
  | { readonly kind: 'rollback' }
  /** nothing left to try */
  | { readonly kind: 'fail'; readonly reason: string }

/**
 * The decision after the receiver refused a disk opened in `mode`.
 * `rolledBack` says whether this cycle already rolled the receiver back once
 * (a second `E_CYCLE_MISMATCH` after that is a failure, not a loop).
 */
export function planAfterRefusal(mode: DiskMode, refusal: { readonly code: string; readonly modified: boolean }, rolledBack: boolean): RefusalDecision {
  const code = refusal.code
  if (code === 'E_CYCLE_MISMATCH') return rolledBack ? { kind: 'fail', reason: 'E_CYCLE_MISMATCH after a rollback' } : { kind: 'rollback' }
  if (OPERATOR_CODES.has(code)) return { kind: 'fail', reason: code }
  if (mode === 'seed') return { kind: 'fail', reason: code }
  // SPEC §5.1: a resync is refused only when the receiver has nothing to compare with
  if (mode === 'resync') return code === 'E_CHAIN_MISMATCH' ? { kind: 'seed', reason: `${code}: no mirror to compare with` } : { kind: 'fail', reason: code }
  if (RESYNC_CODES.has(code)) return { kind: 'resync', reason: `${code}${refusal.modified ? ' (mirror modified)' : ''}` }
  return { kind: 'fail', reason: code }
}
