/**
 * What the Ceph store keeps of a VM besides its images: one JSON state object
 * per VM in the pool (committed disks with their image and snapshot, the
 * cycle in flight, restore points, the VM's configuration files), and the
 * names of every object and image, derived from hashes of the VM and disk
 * names (length-bounded, free of `/`, `@` and NUL whatever the names are;
 * the names themselves live in the state).
 *
 * Atomicity: the state is written with `rados put` of a few KiB, which is
 * one `write_full` RADOS operation — atomic: a reader sees the old or the
 * new record, never a mix. Only the VM's lock holder writes it (ceph-lock.ts).
 */
import { createHash } from 'node:crypto'
import type { CompatRecord, DigestAlgorithm, DiskMode, SourceIdentity } from '@grainline/protocol'
import { ReceiverError } from '../../errors.ts'
import type { HoldRecord } from '../../hold-record.ts'
import type { PointsDroppedRecord } from '../../state-file.ts'
import { committedIdentityProblem, type CommittedIdentityRecord } from '../../committed-identity.ts'
import { runCeph, CephCommandError, CephOutputTooLarge, type CephTarget } from './rbd-cli.ts'
import type { CephKeptRecord } from './ceph-kept-map.ts'

/** Format tag of the state object. */
export const CEPH_STATE_FORMAT = 'grainline-ceph-vm-1'

/** Largest state object read back (a bound on what a hostile pool can make us parse). */
export const MAX_STATE_BYTES = 16 * 1024 * 1024

/** A trivial check's or certify's verdict (algorithm, digest and bytes recorded since the overview reads them; older records lack them). */
export interface CephCheckRecord {
  readonly ok: boolean
  readonly at: string
  readonly algorithm?: DigestAlgorithm
  /** hex digest of the snapshot read */
  readonly digest?: string
  /** bytes of the snapshot digested */
  readonly bytes?: number
}

/** One committed disk: the image holding it and the snapshot that is its committed point. */
export interface CephDiskRecord {
  readonly name: string
  readonly image: string
  readonly cycle: number
  /** the snapshot of `image` holding the committed cycle */
  readonly snap: string
  readonly generation: string
  readonly capacity: number
  readonly source: SourceIdentity
  readonly ddb: Readonly<Record<string, string>>
  /** the cycle digest (hex) of the cycle that wrote the snapshot */
  readonly digest: string
  readonly committedAt: string
  /** set when a trivial check, certify or block check failed: no incremental until a resync or seed */
  readonly diverged?: { readonly reason: string; readonly at: string }
  readonly trivial?: CephCheckRecord
  readonly certify?: CephCheckRecord
  /** the last block check (`--verify changed`, `--scrub`) */
  readonly blocks?: { readonly ok: boolean; readonly at: string }
  /** a kept block map of this snapshot exists (ceph-kept-map.ts) @default none */
  readonly kept?: CephKeptRecord
  /** the first committed cycle whose .vmx no longer named this disk (removed from the VM): points from it on leave the disk out (as the folder store's DiskRecord.removed) @default none */
  readonly removed?: number
  /** cycles [from, to) the VM did not have the disk (removed, then named again; informational: the Ceph points name their disks) @default none */
  readonly absent?: ReadonlyArray<{ readonly from: number; readonly to: number }>
}

/**
 * The disks removed from the VM that no point of `points` names any more:
 * nothing reads their image, which a commit or prune removes (as the folder
 * store's points.ts reclaimableDisks). None while the VM is held. Pure.
 */
export function reclaimableCephDisks(s: Pick<CephVmState, 'disks' | 'holds'>, points: readonly CephPoint[]): CephDiskRecord[] {
  if ((s.holds ?? []).length > 0) return []
  return Object.values(s.disks).filter((d) => d.removed !== undefined && !points.some((p) => p.disks[d.name] !== undefined || Object.values(p.disks).some((x) => x.image === d.image)))
}

/** The images the VM's disks are written in (the heads, removed disks included: their image stays while points need it). */
export function headImages(s: Pick<CephVmState, 'disks'>): Set<string> {
  return new Set(Object.values(s.disks).map((d) => d.image))
}

/**
 * The images `old` named — its disks' heads and its points' snapshots — that
 * the next state (`disks`, `points`) names no more: removed with the
 * clean-up after the state write. An image a re-seed replaced stays while a
 * kept point reads one of its snapshots, and goes with the last of them.
 */
export function unreferencedImages(old: Pick<CephVmState, 'disks' | 'points'>, disks: Readonly<Record<string, Pick<CephDiskRecord, 'image'>>>, points: readonly CephPoint[]): string[] {
  const used = new Set<string>(Object.values(disks).map((d) => d.image))
  for (const p of points) for (const d of Object.values(p.disks)) used.add(d.image)
  const before = new Set<string>(Object.values(old.disks).map((d) => d.image))
  for (const p of old.points) for (const d of Object.values(p.disks)) before.add(d.image)
  return [...before].filter((i) => !used.has(i)).sort()
}

/** The committed disks the mirror's own cycle holds: every disk but those removed from the VM (sorted by name). */
export function heldDisks(s: Pick<CephVmState, 'disks'>): CephDiskRecord[] {
  return Object.values(s.disks)
    .filter((d) => d.removed === undefined)
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
}

/** One disk of the cycle in flight. */
export interface CephInflightDisk {
  readonly name: string
  readonly cycleId: string
  readonly mode: DiskMode
  readonly capacity: number
  readonly algorithm: DigestAlgorithm
  readonly source: SourceIdentity
  readonly ddb: Readonly<Record<string, string>>
  /** the image written: a new one for a seed, the committed one for an incremental */
  readonly image: string
  /** the snapshot the head started from (incremental), null for a seed's new image */
  readonly baseSnap: string | null
  /** the RADOS object logging the extents applied (the resume point) */
  readonly log: string
}

/** A restore point: the snapshot of every disk at a committed cycle. */
export interface CephPoint {
  readonly cycle: number
  readonly committedAt: string
  readonly generation: string
  readonly disks: Readonly<Record<string, { readonly image: string; readonly snap: string; readonly capacity: number }>>
  /** the key in the state's `configs` of the .vmx the VM had at this point (ceph-point-config.ts); absent in points recorded before configurations were kept */
  readonly vmx?: string
}

/** Clean-up still due after a commit point (finished by the next holder of the lock). */
export interface CephPending {
  readonly snaps: ReadonlyArray<{ readonly image: string; readonly snap: string }>
  readonly images: readonly string[]
  readonly logs: readonly string[]
}

/** The state object of one VM. */
export interface CephVmState {
  readonly format: typeof CEPH_STATE_FORMAT
  readonly vm: string
  readonly committedCycle: number
  readonly committedAt: string | null
  readonly generation: string | null
  /** the identity of the last committed cycle (SPEC §5.10, committed-identity.ts) @default none (state objects older than it) */
  readonly committedIdentity?: CommittedIdentityRecord
  readonly compat: CompatRecord | null
  readonly disks: Readonly<Record<string, CephDiskRecord>>
  readonly inflight: { readonly cycle: number; readonly startedAt: string; readonly disks: Readonly<Record<string, CephInflightDisk>> } | null
  readonly points: readonly CephPoint[]
  /** the VM's configuration files (.vmx …) of the last commit, base64 */
  readonly files: Readonly<Record<string, string>>
  /** the .vmx of the points (base64) by key, each named by a point's `vmx` (ceph-point-config.ts) @default none */
  readonly configs?: Readonly<Record<string, string>>
  readonly pending: CephPending | null
  /** failovers and opened points holding the mirror (ceph-holds.ts, ceph-open.ts): every DiskOpen is refused `E_HELD` until `points close` @default none */
  readonly holds?: readonly CephHoldRecord[]
  /** the last commit that dropped every restore point outside the retention (state-file.ts) @default none */
  readonly pointsDropped?: PointsDroppedRecord
}

/** A clone of a point's snapshot made by `points open` (ceph-open.ts). */
export interface CephClone {
  readonly disk: string
  /** the clone image, in the store's pool */
  readonly image: string
  /** the protected snapshot it was cloned from */
  readonly parent: { readonly image: string; readonly snap: string }
}

/** A hold of the Ceph store: a failover's (its folder in `dir`) or an opened point's (its name in `dir`, its RBD clones in `clones`). */
export interface CephHoldRecord extends HoldRecord {
  /** `points open`: the clones of the point's snapshots, removed by `points close` @default none */
  readonly clones?: readonly CephClone[]
}

/** A state with nothing committed. */
export function emptyCephState(vm: string): CephVmState {
  return { format: CEPH_STATE_FORMAT, vm, committedCycle: 0, committedAt: null, generation: null, compat: null, disks: {}, inflight: null, points: [], files: {}, pending: null }
}

const key = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex').slice(0, 24)

/** Object and image names of one VM (pure). */
export class CephNames {
  readonly vm: string
  readonly vmKey: string
  constructor(vm: string) {
    this.vm = vm
    this.vmKey = key(vm)
  }
  /** the state object */
  get state(): string {
    return `grainline.vm.${this.vmKey}`
  }
  /** the lock object */
  get lock(): string {
    return `grainline.lock.${this.vmKey}`
  }
  /** the bounded history of committed cycles (dashboard charts; ceph-history.ts) */
  get history(): string {
    return `grainline.hist.${this.vmKey}`
  }
  /** the kept block map of a disk (digests of its committed snapshot; ceph-kept-map.ts) */
  keptMap(disk: string): string {
    return `grainline.kmap.${this.vmKey}.${key(disk)}`
  }
  /** the extent log of a disk's cycle in flight */
  log(disk: string): string {
    return `grainline.log.${this.vmKey}.${key(disk)}`
  }
  /** the clone of a disk's snapshot made by `points open` `openId` (prefix `glo.`: never a mirror image's `gl.`) */
  clone(disk: string, openId: string): string {
    return `glo.${this.vmKey}.${key(disk)}.${openId}`
  }
  /** a new image for a disk (a seed writes a fresh one: its zero ranges must read as zeros) */
  image(disk: string, unique: string): string {
    return `gl.${this.vmKey}.${key(disk)}.${unique}`
  }
}

/** The 8-hex "CID" a Ceph disk reports (SPEC's mirrorCid): derived from its committed snapshot. */
export function snapCid(image: string, snap: string): string {
  return createHash('sha256').update(`${image}@${snap}`).digest('hex').slice(0, 8)
}

/** Every disk of a state, sorted by name, with its committed record and its cycle in flight (either may be absent). Pure. */
export function stateDisks(s: CephVmState): Array<{ name: string; d: CephDiskRecord | undefined; inf: CephInflightDisk | undefined }> {
  const names = new Set([...Object.keys(s.disks), ...Object.keys(s.inflight?.disks ?? {})])
  return [...names].sort().map((name) => ({ name, d: s.disks[name], inf: s.inflight?.disks[name] }))
}

/** Prefix of every state object (listing the VMs of a pool). */
export const STATE_PREFIX = 'grainline.vm.'

/**
 * Read a VM's state object; undefined when it does not exist.
 * @throws ReceiverError E_STATE (unreadable, another VM's, too large), E_IO
 */
export async function readCephState(t: CephTarget, object: string, vm?: string): Promise<CephVmState | undefined> {
  let raw: Buffer
  try {
    // bounded while read: an object planted in the pool costs at most the bound, not its size, in every reader
    raw = await runCeph(t, 'rados', ['-p', t.pool, 'get', object, '-'], undefined, { maxBytes: MAX_STATE_BYTES })
  } catch (err) {
    if (err instanceof CephCommandError && err.notFound) return undefined
    if (err instanceof CephOutputTooLarge)
      throw new ReceiverError('E_STATE', `state object ${object} in pool ${t.pool} is above ${MAX_STATE_BYTES} bytes (not read further): not a state the receiver writes`)
    throw err
  }
  let s: CephVmState
  try {
    s = JSON.parse(raw.toString('utf8')) as CephVmState
  } catch (err) {
    throw new ReceiverError('E_STATE', `state object ${object} in pool ${t.pool} is not JSON: ${(err as Error).message}`)
  }
  if (
    s?.format !== CEPH_STATE_FORMAT ||
    typeof s.vm !== 'string' ||
    typeof s.committedCycle !== 'number' ||
    typeof s.disks !== 'object' ||
    !Array.isArray(s.points) ||
    (s.holds !== undefined && (!Array.isArray(s.holds) || !s.holds.every((h) => typeof h?.dir === 'string' && typeof h.cycle === 'number'))) ||
    (s.configs !== undefined && (typeof s.configs !== 'object' || s.configs === null || Array.isArray(s.configs) || !Object.values(s.configs).every((v) => typeof v === 'string')))
  ) {
    throw new ReceiverError('E_STATE', `state object ${object} in pool ${t.pool} is not a ${CEPH_STATE_FORMAT} record`)
  }
  if (vm !== undefined && s.vm !== vm) throw new ReceiverError('E_STATE', `state object ${object} in pool ${t.pool} belongs to VM ${JSON.stringify(s.vm)}, not ${JSON.stringify(vm)}`)
  // reported to agents as VmState.committedCycleId (SPEC §5.10): an agent takes a commit for its own by it
  const identity = committedIdentityProblem(s.committedIdentity)
  if (identity !== undefined)
    throw new ReceiverError(
      'E_STATE',
      `VM ${s.vm}: state object ${object} in pool ${t.pool} has committedIdentity = ${String(JSON.stringify(s.committedIdentity)).slice(0, 300)}, ${identity}: the state object was edited or is corrupt; put it back from a backup of the pool, or remove the mirror and seed the VM again`,
    )
  return s
}

/**
 * Write a VM's state object (one atomic write_full) — through `put` when
 * given: the VM's session client (ceph-lock.ts), whose writes are fenced
 * with its lease.
 */
export async function writeCephState(t: CephTarget, object: string, s: CephVmState, put?: (object: string, data: Uint8Array) => Promise<void>): Promise<void> {
  const data = Buffer.from(JSON.stringify(s))
  if (put !== undefined) await put(object, data)
  else await runCeph(t, 'rados', ['-p', t.pool, 'put', object, '-'], data)
}

/** The names of the store pool's RADOS objects (`rados ls`) or RBD images (`rbd ls`), in the order listed. @throws CephCommandError */
export async function listPool(t: CephTarget, what: 'objects' | 'images'): Promise<string[]> {
  const out = what === 'objects' ? await runCeph(t, 'rados', ['-p', t.pool, 'ls']) : await runCeph(t, 'rbd', ['ls', t.pool])
  return out
    .toString('utf8')
    .split('\n')
    .filter((n) => n !== '')
}
