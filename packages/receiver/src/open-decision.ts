/**
 * The "open disk" decision (SPEC §5.1, §5.7) as a pure function of the
 * committed state, what is on disk (an inspection record) and the request.
 * `VmMirror.openDisk` gathers the inputs, calls {@link decideOpen} and carries
 * out the answer; the table-driven test covers every row.
 */
import type { DigestAlgorithm, DiskOpenMessage } from '@grainline/protocol'
import type { DiskRecord, InflightAnnounced, InflightDisk } from './state-file.ts'
import { diskStem } from './vm-paths.ts'
import { resyncRefusal, resyncStartChanged } from './resync-open.ts'

/** The parameters of a DiskOpen the store needs. */
export interface DiskOpenRequest extends Pick<DiskOpenMessage, 'name' | 'capacity' | 'cycle' | 'mode' | 'baseCycle' | 'baseGeneration' | 'source' | 'cycleId' | 'ddb'> {
  /** what the cycle will ship (DiskOpen totals): an incremental is held to them (SPEC §5.1) and charged by them ({@link mayAdd}); absent: not announced, charged by the capacity */
  readonly totalBytes?: number
  readonly totalExtents?: number
  /** resync: the block size of its maps (SPEC §5.9); absent or 0 otherwise */
  readonly blockSize?: number
  /** the negotiated digest algorithm (part of a resumable cycle's identity) */
  readonly algorithm: DigestAlgorithm
}

/** What one disk mirror looks like on disk right now (gathered by `inspectMirror`). */
export interface MirrorFacts {
  /** CID of the mirror descriptor, "" when missing or unreadable */
  readonly cid: string
  /** how the descriptor is not the receiver's layout (names another extent, a parent, …: mirror-check.ts); absent when it is */
  readonly foreign?: string
  /** size of the flat file, -1 when it is missing */
  readonly flatSize: number
  /** bytes the flat file allocates (st_blocks × 512), 0 when it is missing: a thin mirror's holes are below its size */
  readonly flatAllocated: number
  /** whether an interrupted rollback left the journal renamed `.journal.undo` */
  readonly undoing: boolean
}

/** Everything the decision depends on. */
export interface OpenInputs {
  readonly vm: string
  /** the VM's committed cycle (0: none) */
  readonly committedCycle: number
  /** the VM's cycle in flight (0: none) */
  readonly inflightCycle: number
  /** this disk's committed record */
  readonly record: DiskRecord | undefined
  /** this disk's in-flight record */
  readonly inflight: InflightDisk | undefined
  readonly facts: MirrorFacts
  readonly request: DiskOpenRequest
  /** whether the VmOpen's compat record matches the mirror's (SPEC §4.2) */
  readonly compatible: boolean
  /** room for the cycle: the store's free space and the token's quota */
  readonly space: SpaceFacts
}

/** What a fresh apply may use. */
export interface SpaceFacts {
  /** free bytes of the store: its file system's (statfs, for unprivileged users), a Ceph pool's MAX AVAIL within its quota */
  readonly freeBytes: number
  /** the token's quota in bytes (undefined: none) */
  readonly quotaBytes: number | undefined
  /** bytes allocated by the token's mirrors now (counted only when it has a quota): files' blocks, or `rbd du` of images and snapshots */
  readonly usedBytes: number
  /**
   * bytes the token's other accepted, not yet committed applies may still add
   * (quota-room.ts): each up to its capacity, less what its target file
   * allocates already; 0 without a quota (and on Ceph, which counts one disk)
   */
  readonly reservedBytes: number
  /**
   * bytes of the configuration files the cycle staged, which its commit
   * installs into the mirror folder (vm-mirror.ts stageFiles): they need the
   * free space too (absent: none)
   */
  readonly configBytes?: number
}

/** Codes of a refused DiskOpen (SPEC §7, non-fatal). */
export type RefusalCode = 'E_CYCLE_MISMATCH' | 'E_MIRROR_MODIFIED' | 'E_CHAIN_MISMATCH' | 'E_INCOMPATIBLE' | 'E_GENERATION' | 'E_DIVERGED'

/** Codes that end the session (fatal, SPEC §7): the store cannot take the disk. */
export type FailureCode = 'E_NO_SPACE' | 'E_QUOTA'

/** The answer: start a fresh apply, resume the one in flight, refuse the disk, or fail the session. */
export type OpenDecision =
  | { readonly kind: 'fresh'; readonly info: InflightDisk }
  | { readonly kind: 'resume'; readonly info: InflightDisk }
  | { readonly kind: 'refuse'; readonly code: RefusalCode; readonly message: string }
  | { readonly kind: 'fail'; readonly code: FailureCode; readonly message: string }

/**
 * What one extent may allocate beyond its own bytes: a write allocates whole
 * file-system blocks (clusters), so at most one partial block at each end;
 * 64 KiB covers the block and cluster sizes of the usual file systems.
 */
export const EXTENT_ALLOCATION_SLACK = 2 * 64 * 1024

/**
 * What an incremental that ships `bytes` in `extents` extents may allocate
 * at most: the receiver holds it to those totals as it applies (disk-apply.ts
 * `accept`), so its writes fill no more holes than that.
 */
export function announcedBound(announced: { readonly bytes: number; readonly extents: number }): number {
  return Math.max(0, announced.bytes) + Math.max(0, announced.extents) * EXTENT_ALLOCATION_SLACK
}

/** The totals an incremental is held to, or undefined (a seed, a resync, or none announced). */
export function announcedOf(req: Pick<DiskOpenRequest, 'mode' | 'totalBytes' | 'totalExtents'>): { bytes: number; extents: number } | undefined {
  if (req.mode !== 'incremental' || req.totalBytes === undefined || req.totalExtents === undefined) return undefined
  return { bytes: req.totalBytes, extents: req.totalExtents }
}

/**
 * What a fresh apply of `req` may add to the store at most: a seed's file
 * can be filled up to the capacity (beside the current flat until the
 * commit); a resync can fill the flat up to the capacity — its growth and
 * the holes of a thin mirror (a seed of zero extents leaves the whole flat a
 * hole, which a later cycle may fill with data); an incremental as much,
 * but no more than the totals it announced allow ({@link announcedBound}):
 * a thin mirror's incremental is charged its change, not its holes.
 */
export function mayAdd(req: Pick<DiskOpenRequest, 'mode' | 'capacity' | 'totalBytes' | 'totalExtents'>, facts: Pick<MirrorFacts, 'flatAllocated'>): number {
  if (req.mode === 'seed') return req.capacity
  const fill = Math.max(0, req.capacity - Math.max(0, facts.flatAllocated))
  const announced = announcedOf(req)
  return announced === undefined ? fill : Math.min(fill, announcedBound(announced))
}

/** Where the free space of a {@link roomFailure} refusal was measured, and what the operator does about it. */
export interface RoomPlace {
  /** e.g. "the store", "Ceph pool rbd" */
  readonly store: string
  /** e.g. "free space on the receiver" */
  readonly remedy: string
}

const FOLDER_PLACE: RoomPlace = { store: 'the store', remedy: 'free space on the receiver' }

/**
 * The room rule of a fresh apply (SPEC §7), the same for every store: a
 * capacity increase must fit in the free space (`E_NO_SPACE`), and the
 * token's mirrors plus what its other open applies may still add plus what
 * this apply `adds` at most must stay within its quota (`E_QUOTA`). Pure;
 * undefined when the disk may open.
 */
export function roomFailure(
  vm: string,
  req: Pick<DiskOpenRequest, 'name' | 'capacity'>,
  committedCapacity: number,
  adds: number,
  space: SpaceFacts,
  place: RoomPlace = FOLDER_PLACE,
): Extract<OpenDecision, { kind: 'fail' }> | undefined {
  const growth = Math.max(0, req.capacity - committedCapacity)
  const config = Math.max(0, space.configBytes ?? 0)
  if (growth + config > 0 && growth + config > space.freeBytes) {
    const what = config === 0 ? `would grow by ${growth} bytes` : `would grow by ${growth} bytes and its commit install ${config} bytes of configuration files in the mirror folder`
    return {
      kind: 'fail',
      code: 'E_NO_SPACE',
      message: `disk ${req.name} of VM ${vm} ${what}, ${place.store} has ${space.freeBytes} free: ${place.remedy}, then retry`,
    }
  }
  // the configuration files count as in the free space: staged, they are in the usage already (.grainline/incoming),
  // and the commit installs a copy of them in the mirror folder
  if (space.quotaBytes !== undefined && space.usedBytes + space.reservedBytes + adds + config > space.quotaBytes) {
    const others = space.reservedBytes > 0 ? ` and the ${space.reservedBytes} its disks open and not yet committed may still add` : ''
    const installs = config > 0 ? ` (and its commit install ${config} bytes of configuration files in the mirror folder)` : ''
    return {
      kind: 'fail',
      code: 'E_QUOTA',
      message: `disk ${req.name} of VM ${vm} may add ${adds} bytes${installs} to the ${space.usedBytes} this token's mirrors use${others}, above its quota of ${space.quotaBytes}: raise the quota in the tokens file, remove mirrors, or commit the cycles in flight first, then retry`,
    }
  }
  return undefined
}

/**
 * Whether the committed mirror changed since its commit: another descriptor
 * CID, a descriptor not of the receiver's layout, or another flat size. An in-place apply in flight may have grown the
 * flat: a larger size is then its own doing, not a modification.
 */
export function mirrorModified(record: DiskRecord | undefined, inflight: InflightDisk | undefined, facts: MirrorFacts): boolean {
  if (record === undefined) return false
  const sizeOk = inflight?.target === 'flat' ? facts.flatSize >= record.size : facts.flatSize === record.size
  return facts.cid !== record.mirrorCid || facts.foreign !== undefined || !sizeOk
}

function incompatibleText(x: OpenInputs): string {
  return `VM ${x.vm}: hardware version or datastore type differ from the mirror's (SPEC §4.2): no incremental; seed a new mirror after checking the VM`
}

/**
 * SPEC §5.1: a DiskOpen applies the cycle after the VM's committed one (1 for
 * a VM with no mirror), fresh or resumed: the reference agent never ships
 * another, so one in flight is always the next. Any other skips cycle
 * numbers — and one at 2^53 − 1, the largest the schema allows, would leave
 * the VM no next cycle, ever. A VmOpen of another cycle stays legal (an
 * agent learns the mirror's cycle by it, §4.2); applying it is not. Returns
 * why `cycle` is refused, undefined when it is the next. Pure; both stores.
 */
export function notNextCycle(vm: string, cycle: number, committedCycle: number): string | undefined {
  if (cycle === committedCycle + 1) return undefined
  return `cycle ${cycle} of VM ${vm} is not the one after its committed cycle ${committedCycle}: only cycle ${committedCycle + 1} may be applied (VmState's committedCycle + 1); roll back what is in flight, then ship that cycle`
}

function refuse(code: RefusalCode, message: string): OpenDecision {
  return { kind: 'refuse', code, message }
}

/**
 * Decide a DiskOpen. Pure: no I/O, no clock. The rules for an incremental
 * run in the order of SPEC §5.1 (compatibility, chain, generation,
 * modification, divergence); a resume needs the recorded cycle identity,
 * which covers `baseGeneration` (§5.2).
 */
export function decideOpen(x: OpenInputs): OpenDecision {
  const { request: req, record: rec, inflight: inf } = x
  const modified = mirrorModified(rec, inf, x.facts)
  const modifiedText = (): string =>
    `mirror of ${req.name} changed since the last commit (CID ${x.facts.cid || 'missing'}, recorded ${rec?.mirrorCid ?? ''}${x.facts.foreign === undefined ? '' : `; ${x.facts.foreign}`})`
  if (x.inflightCycle !== 0 && x.inflightCycle !== req.cycle) {
    return refuse('E_CYCLE_MISMATCH', `cycle ${x.inflightCycle} of VM ${x.vm} is in flight; roll it back first`)
  }
  const notNext = notNextCycle(x.vm, req.cycle, x.committedCycle)
  if (notNext !== undefined) return refuse('E_CYCLE_MISMATCH', notNext)
  if (inf !== undefined) {
    if (x.facts.undoing) return refuse('E_CYCLE_MISMATCH', `an interrupted rollback of disk ${req.name} must be finished first: send Rollback`)
    if (inf.cycleId !== req.cycleId || inf.mode !== req.mode || inf.capacity !== req.capacity || inf.algorithm !== req.algorithm) {
      return refuse('E_CYCLE_MISMATCH', `disk ${req.name} has an interrupted apply of a different cycle identity; roll it back first`)
    }
    if (inf.target === 'flat') {
      if (!x.compatible) return refuse('E_INCOMPATIBLE', incompatibleText(x))
      // the committed mirror under an in-place apply changed (CID or size)
      // while the cycle was interrupted: its journal no longer describes it
      // (a resync started from a modified mirror: it compares with that start)
      if (inf.mode === 'resync' ? resyncStartChanged(inf, x.facts) : modified) return refuse('E_MIRROR_MODIFIED', `${modifiedText()}; roll back, then seed`)
    }
    return { kind: 'resume', info: inf }
  }
  if (req.mode === 'incremental') {
    if (rec === undefined) return refuse('E_CHAIN_MISMATCH', `disk ${req.name} has no committed mirror to apply an incremental on`)
    if (!x.compatible) return refuse('E_INCOMPATIBLE', incompatibleText(x))
    if (req.baseCycle !== rec.cycle) return refuse('E_CHAIN_MISMATCH', `incremental on cycle ${req.baseCycle} but the mirror is at cycle ${rec.cycle}`)
    if (req.source.layers[0]?.file !== rec.source.successor) {
      return refuse('E_CHAIN_MISMATCH', `first delta ${req.source.layers[0]?.file ?? '(none)'} is not the successor ${rec.source.successor} recorded at the last commit`)
    }
    if (req.capacity < rec.capacity) return refuse('E_CHAIN_MISMATCH', `capacity shrank from ${rec.capacity} to ${req.capacity}`)
    // SPEC §5.8: only onto the exact point it was planned against; a point committed before generations has none
    const generation = rec.generation ?? ''
    if (generation === '' || req.baseGeneration !== generation) {
      return refuse(
        'E_GENERATION',
        `incremental planned against generation ${req.baseGeneration || '(none)'}, but the mirror of ${req.name} is at generation ${generation || '(none: committed before generations)'}; resync`,
      )
    }
    if (modified) return refuse('E_MIRROR_MODIFIED', modifiedText())
    if (rec.diverged !== undefined) return refuse('E_DIVERGED', `mirror of ${req.name} was found to differ from its source at ${rec.diverged.at} (${rec.diverged.reason}): resync it`)
  }
  if (req.mode === 'resync') {
    const why = resyncRefusal(x)
    if (why !== undefined) return why
  }
  const room = roomFailure(x.vm, req, rec?.capacity ?? 0, mayAdd(req, x.facts), x.space)
  if (room !== undefined) return room
  const incremental = req.mode !== 'seed'
  return {
    kind: 'fresh',
    info: {
      name: req.name,
      stem: diskStem(req.name),
      cycleId: req.cycleId,
      mode: req.mode,
      capacity: req.capacity,
      baseSize: incremental ? x.facts.flatSize : 0,
      target: incremental ? 'flat' : 'seed',
      source: req.source,
      ddb: req.ddb,
      algorithm: req.algorithm,
      ...(req.mode === 'resync' ? { blockSize: req.blockSize ?? 0, resyncFrom: { cid: x.facts.cid, flatSize: x.facts.flatSize } } : {}),
      ...withAnnounced(req, x.facts),
    },
  }
}

/** An incremental's in-flight record keeps the totals it is held to, from its first DiskOpen (a resume does not announce new ones), and what the flat allocated then. */
function withAnnounced(req: DiskOpenRequest, facts: Pick<MirrorFacts, 'flatAllocated'>): { announced?: InflightAnnounced } {
  const a = announcedOf(req)
  return a === undefined ? {} : { announced: { ...a, allocatedAtOpen: Math.max(0, facts.flatAllocated) } }
}
