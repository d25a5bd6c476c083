import type { CompatRecord, DigestAlgorithm, DiskMode, SourceIdentity } from '@grainline/protocol'
import { ReceiverError, ioError } from './errors.ts'
import { writeFileAtomic } from './fs-util.ts'
import { ensureStoreDir, readStoreJson } from './store-fs.ts'
import { checkStateNames } from './state-names.ts'
import { DEFAULT_DISPLAY_SUFFIX, type DroppedReference } from './mirror-vmx.ts'
import type { VmPaths } from './vm-paths.ts'
import type { PointLink, PointMerge, PointRecord } from './points.ts'
import type { HoldRecord } from './hold-record.ts'
import type { CommittedIdentityRecord } from './committed-identity.ts'

/** Result of the last trivial check or certify of a disk. */
export interface VerifyRecord {
  readonly ok: boolean
  /** ISO time of the check */
  readonly at: string
  readonly algorithm: DigestAlgorithm
  /** hex digest of the mirror */
  readonly digest: string
  /** bytes of the mirror digested */
  readonly bytes: number
}

/** Per-disk committed state. */
export interface DiskRecord {
  /** source disk name, e.g. "web01_1.vmdk" */
  readonly name: string
  /** mirror file stem: `<stem>.vmdk`, `<stem>-flat.vmdk` */
  readonly stem: string
  readonly capacity: number
  /** flat file size at commit */
  readonly size: number
  readonly cycle: number
  /**
   * the first committed cycle whose mirror held this disk: points older than
   * it leave the disk out (it was added to the VM later). Absent in state
   * files older than it: the disk counts as held at every point.
   */
  readonly since?: number
  /**
   * the first committed cycle whose .vmx no longer named this disk (removed
   * from the VM, mirror-vmx.ts attachedDisks): that point and newer ones
   * leave it out; its mirror stays as of `cycle` for the older points.
   * Cleared when a cycle carries or names the disk again: it then becomes a
   * gap in `absent`.
   */
  readonly removed?: number
  /** cycles [from, to) the VM did not have the disk (removed, then named again): those points leave it out */
  readonly absent?: ReadonlyArray<{ readonly from: number; readonly to: number }>
  readonly committedAt: string
  readonly source: SourceIdentity
  readonly cycleId: string
  /** generation of the commit that last wrote this disk (SPEC §5.8); absent in state files older than generations ("": no incremental matches) */
  readonly generation?: string
  readonly mirrorCid: string
  readonly ddb: Readonly<Record<string, string>>
  readonly cycleDigest: { readonly algorithm: DigestAlgorithm; readonly digest: string }
  readonly trivial?: VerifyRecord
  readonly certify?: VerifyRecord
  /** the last block check (`--verify changed`, SPEC §5.6); `digest` is empty, `bytes` the bytes read back */
  readonly blocks?: VerifyRecord
  /**
   * Set when a trivial check or certify found the mirror different from the
   * source: no incremental is applied on it again (`E_DIVERGED`); the next
   * seed's commit writes a record without it.
   */
  readonly diverged?: DivergedRecord
  /** when the whole mirror was last proven equal to its source, and how (carried over by every commit; proof.ts) */
  readonly proven?: ProvenRecord
  /** the scrub rotation in progress: every block below `next` was checked clean since `since` (proof.ts) */
  readonly scrubRun?: ScrubRun
}

/** How and when a disk's whole mirror was last proven equal to its source. */
export interface ProvenRecord {
  /** `certify`: a full digest matched; `scrub`: a clean rotation of block checks covered the disk; `resync`: a resync compared every block read from the mirror */
  readonly kind: 'certify' | 'scrub' | 'resync'
  /** ISO time of the proof */
  readonly at: string
  /** the committed cycle the mirror was at */
  readonly cycle: number
}

/** A clean scrub rotation in progress (contiguous BlockChecks from block 0). */
export interface ScrubRun {
  readonly blockSize: number
  /** the first block not yet checked */
  readonly next: number
  /** ISO time of its first check */
  readonly since: string
}

/** Why and when a mirror was found to differ from its source. */
export interface DivergedRecord {
  readonly reason: string
  /** ISO time of the failed check */
  readonly at: string
}

/** Per-disk in-flight (uncommitted) cycle. */
/**
 * The totals an incremental announced at its first DiskOpen: its apply is
 * held to them (disk-apply.ts `accept`) and the token's quota reserves what
 * they may allocate beyond what the flat allocated then (quota-room.ts).
 */
export interface InflightAnnounced {
  readonly bytes: number
  readonly extents: number
  readonly allocatedAtOpen: number
}

export interface InflightDisk {
  readonly name: string
  readonly stem: string
  readonly cycleId: string
  readonly mode: DiskMode
  readonly capacity: number
  /** flat size before the cycle (0 for a seed) */
  readonly baseSize: number
  /** `flat`: in place with undo journal; `seed`: a new `-flat.vmdk.seed` file renamed at commit */
  readonly target: 'flat' | 'seed'
  readonly source: SourceIdentity
  readonly ddb: Readonly<Record<string, string>>
  readonly algorithm: DigestAlgorithm
  /** resync (SPEC §5.9): the block size of its map */
  readonly blockSize?: number
  /**
   * resync: the mirror's descriptor CID and flat size when the cycle started
   * (a resync starts from a modified mirror; a resume needs it unchanged since)
   */
  readonly resyncFrom?: { readonly cid: string; readonly flatSize: number }
  /** incremental: the totals it announced (absent in records of older receivers: charged and applied as before) */
  readonly announced?: InflightAnnounced
  /**
   * The reverse increment (descriptor name in `.grainline/points`) receiving
   * the old grains of an in-place apply when the VM keeps restore points; it
   * becomes point `baseCycle` at commit.
   */
  readonly increment?: string
  /**
   * An in-place apply that changes the disk's capacity (no increment can sit
   * on it) in a VM that keeps points: the base point (descriptor name in
   * `.grainline/points`) holding a copy of the committed mirror, made before
   * the first write; it becomes point `baseCycle` at commit (base-point.ts).
   */
  readonly baseCopy?: string
  /**
   * An in-place disk's rollback began: its journal as the rollback read it before it wrote anything (journal.ts
   * JournalScan: valid end, extent records, fingerprint), recorded before the journal is renamed to its undoing name.
   * A rollback that finishes an interrupted one holds the journal to it: once part of the flat was written back, a
   * journal that differs (changed, cut short by a damaged record) would finish the undo wrong (journal-head.ts
   * `undoMarkDiffers`). Absent in records of older receivers, and for a rollback that never began.
   */
  readonly undoFrom?: UndoMark
}

/** What a rollback recorded of a disk's journal before it wrote anything ({@link InflightDisk.undoFrom}). */
export interface UndoMark {
  readonly validEnd: number
  readonly extentRecords: number
  readonly print: number
}

/** Roll-forward work after the commit point (state.json says committed). */
export interface PendingCommit {
  readonly cycle: number
  /**
   * re-seeded disks whose old mirror flat becomes a base point (moved to
   * `.grainline/points/<file minus .vmdk>-flat.vmdk`; its descriptor `file`
   * is written before the commit point), before the seed renames
   */
  readonly retire?: ReadonlyArray<{ readonly stem: string; readonly file: string }>
  /** seed files renamed over their flats (names relative to the VM folder) */
  readonly renames: ReadonlyArray<{ readonly from: string; readonly to: string }>
  /** disk names whose descriptors are rewritten */
  readonly descriptors: readonly string[]
  /** journal file names (in `.grainline`) retired as spares */
  readonly journals: readonly string[]
  /** whether the staged configuration files are installed */
  readonly files: boolean
  /** point descriptors whose parent is rewritten (the new point onto the mirror, the previous newest onto it) */
  readonly links?: readonly PointLink[]
  /** merges of dropped points, in order (each `consolidate`s an older increment into the dropped one) */
  readonly merges?: readonly PointMerge[]
  /** point files (descriptors in `.grainline/points`) deleted with their extents */
  readonly removePoints?: readonly string[]
  /**
   * configuration files (names in the VM folder) an earlier commit installed
   * that this one does not carry: removed before the staged ones are
   * installed (commit.ts configChange); absent in records older than it
   */
  readonly removeFiles?: readonly string[]
  /** stems of disks removed from the VM whose files are deleted: no point needs them any more (points.ts reclaimableDisks) */
  readonly removeDisks?: readonly string[]
}

/** The cycle in flight. */
export interface InflightCycle {
  readonly cycle: number
  readonly startedAt: string
  readonly disks: Readonly<Record<string, InflightDisk>>
}

/**
 * `.grainline/state.json`, the one file whose atomic replace is the commit
 * point of a VM cycle. Written with {@link writeVmState} (temp file, fsync,
 * rename, fsync dir).
 */
export interface VmStateFile {
  readonly format: 1
  readonly vm: string
  /** the compatibility record of the last commit (SPEC §4.2); written at commit only */
  readonly compat: CompatRecord | null
  readonly committedCycle: number
  readonly committedAt: string | null
  /** generation of the last commit (SPEC §5.8); absent before the first commit or in state files older than generations */
  readonly generation?: string
  /** the identity of the last committed cycle (SPEC §5.10, committed-identity.ts); absent in state files older than it */
  readonly committedIdentity?: CommittedIdentityRecord
  readonly displaySuffix: string
  readonly disks: Readonly<Record<string, DiskRecord>>
  readonly inflight: InflightCycle | null
  readonly pending: PendingCommit | null
  /**
   * the configuration files (names in the VM folder) the last commit that
   * carried them installed (commit.ts stagedConfigNames): the next commit
   * removes those its cycle no longer carries, and never any other file.
   * Absent in state files older than it: nothing is removed.
   */
  readonly configFiles?: readonly string[]
  /** the references of the installed .vmx that pointed out of the mirror and were dropped or neutralised */
  readonly vmxDropped?: readonly DroppedReference[]
  /** restore points, oldest first (docs/POINTS.md) */
  readonly points?: readonly PointRecord[]
  /** opened points and failovers holding the mirror (no change until released) */
  readonly holds?: readonly HoldRecord[]
  /** the last commit that dropped every restore point outside the retention (absent: none ever did) */
  readonly pointsDropped?: PointsDroppedRecord
}

/**
 * A commit that dropped every restore point of a VM outside its retention:
 * kept in the VM's state so that `grainline status`, the dashboard and
 * `/metrics` say so after the receiver's log has rotated (store-health.ts).
 */
export interface PointsDroppedRecord {
  /** the cycle whose commit dropped them */
  readonly cycle: number
  /** ISO time of that commit */
  readonly at: string
  /** the points dropped (cycles, oldest first) */
  readonly cycles: readonly number[]
  /** why, as the receiver logged it */
  readonly why: string
  /**
   * true when the points no longer read right and had to go (a capacity
   * change without room for a base point, a re-seed or resync of a mirror
   * modified behind the receiver's back); false when the VM stopped keeping points (retention turned off)
   */
  readonly broken: boolean
}

/** The {@link PointsDroppedRecord} of a state file as read from a store (undefined when absent or malformed: a store can be hostile). */
export function pointsDroppedOf(s: { readonly pointsDropped?: unknown }): PointsDroppedRecord | undefined {
  const r = s.pointsDropped as Partial<PointsDroppedRecord> | null | undefined
  if (r === null || typeof r !== 'object') return undefined
  if (!Number.isSafeInteger(r.cycle) || typeof r.at !== 'string' || !Number.isFinite(Date.parse(r.at)) || typeof r.why !== 'string' || typeof r.broken !== 'boolean') return undefined
  if (!Array.isArray(r.cycles) || r.cycles.length > 100_000 || !r.cycles.every((c) => Number.isSafeInteger(c))) return undefined
  return { cycle: r.cycle as number, at: r.at, cycles: r.cycles, why: r.why.slice(0, 1000), broken: r.broken }
}

/** `{ pointsDropped }` of a state file for a status record, or nothing ({@link pointsDroppedOf}). */
export function withPointsDropped(s: { readonly pointsDropped?: unknown }): { pointsDropped?: PointsDroppedRecord } {
  const r = pointsDroppedOf(s)
  return r === undefined ? {} : { pointsDropped: r }
}

/** The state of a VM that has never been written. */
export function emptyState(vm: string): VmStateFile {
  return { format: 1, vm, compat: null, committedCycle: 0, committedAt: null, displaySuffix: DEFAULT_DISPLAY_SUFFIX, disks: {}, inflight: null, pending: null }
}

/**
 * The most a state file may hold. A big legitimate one — 256 disks (SPEC §6
 * maxDisks), 100 points each holding every disk with its trivial check and
 * certify — is about 30 MiB; anything above this is not one grainline wrote,
 * and reading it whole would hold that much memory in every reader.
 */
export const STATE_MAX_BYTES = 128 * 1024 * 1024

/**
 * Read a VM's state file (undefined when the VM has none), every name in it
 * that becomes a path checked (state-names.ts).
 * @throws ReceiverError E_STATE (not JSON, not a state file, a name grainline does not write), E_IO
 */
export async function readVmState(paths: VmPaths): Promise<VmStateFile | undefined> {
  let json: unknown
  try {
    json = await readStoreJson(paths.state, STATE_MAX_BYTES, 'E_STATE')
  } catch (err) {
    if (err instanceof SyntaxError) throw new ReceiverError('E_STATE', `${paths.state} is not valid JSON: ${err.message}`)
    if ((err as { code?: unknown }).code === 'E_STORE_FILE') throw err
    throw ioError(err, `reading ${paths.state}`)
  }
  if (json === undefined) return undefined
  const s = json as Partial<VmStateFile>
  if (s.format !== 1 || typeof s.vm !== 'string' || typeof s.disks !== 'object' || s.disks === null) {
    throw new ReceiverError('E_STATE', `${paths.state} is not a grainline state file`)
  }
  checkStateNames(paths, s as Record<string, unknown>)
  return { ...emptyState(s.vm), ...s } as VmStateFile
}

/** Replace a VM's state file atomically (creating `.grainline` if needed). */
export async function writeVmState(paths: VmPaths, next: VmStateFile): Promise<void> {
  await ensureStoreDir(paths.gdir)
  await writeFileAtomic(paths.state, JSON.stringify(next, null, 1) + '\n')
}
