/**
 * The kept block map on the Ceph store (the twin of kept-map.ts, issue #18):
 * the digests of a disk's committed snapshot, kept between cycles in one
 * RADOS object `grainline.kmap.<vmkey>.<diskkey>` in the folder store's
 * layout (kept-map.ts: header, stale bitmap, digests), so that a resync
 * reads from the snapshot only the blocks written since their digest was
 * taken and takes every other digest from the map.
 *
 * - Born at a resync's commit: the digests the resync's block map sent (the
 *   committed snapshot, every block asked for in this session), the blocks
 *   the resync wrote stale.
 * - Carried over at every incremental commit: the blocks the cycle wrote
 *   are set stale in place (written before the header), then the header
 *   names the new commit.
 * - Trusted only when the header names exactly the disk's committed record —
 *   its generation, image, snapshot name **and snapshot id** (a snapshot
 *   removed and taken again under its name behind the receiver's back has
 *   another id), capacity, block size and algorithm — and the object has the
 *   exact length; and only when the state object's record says a map is kept
 *   (`kept`). A seed, a capacity change, a failed check (the disk diverged)
 *   drop it; anything else unusable is read past (the resync reads the whole
 *   snapshot and writes a new map).
 * - Crash safety as on the folder store: the map is written before the
 *   commit point (the state object) naming the commit about to be written;
 *   a crash before the state write leaves a map naming a commit that never
 *   happened (unused), stale bits set early are always safe.
 *
 * Bounded: a map holds at most {@link CEPH_MAX_KEPT_DIGEST_BYTES} of digests
 * (the resync gathers them in memory before the object is written); a disk
 * with more blocks keeps none. Reads and writes go through the librbd
 * helper's side-object requests (rbd-image.ts), at most 4 MiB each.
 */
import { blockCount, DigestLengths, type DigestAlgorithm } from '@grainline/protocol'
import { decodeKeptHeader, encodeKeptHeader, HEAD_BYTES, keptMapLength, keptMismatch, type TouchedBlocks, type KeptHeader } from '../../kept-map.ts'
import { RbdImage } from './rbd-image.ts'
import { isFenced, type CephLock } from './ceph-lock.ts'
import { snapCid, type CephDiskRecord, type CephInflightDisk } from './ceph-state.ts'
import { CephCommandError, runCeph, type CephTarget } from './rbd-cli.ts'
import type { Logger } from 'pino'

/** Most digest bytes of one kept map on Ceph: 32 MiB (1 TiB at 1 MiB blocks with sha256, 4 TiB with xxh64). */
export const CEPH_MAX_KEPT_DIGEST_BYTES = 32 * 1024 * 1024

/** What the state object records of a disk's kept map (CephDiskRecord `kept`). */
export interface CephKeptRecord {
  readonly blockSize: number
  readonly algorithm: DigestAlgorithm
  /** the id of the committed snapshot the digests are of */
  readonly snapId: number
}

/** Whether a map of `capacity` bytes in blocks of `blockSize` fits the bound. Pure. */
export function keepable(capacity: number, blockSize: number, algorithm: DigestAlgorithm): boolean {
  return blockSize > 0 && blockCount(capacity, blockSize) * DigestLengths[algorithm] <= CEPH_MAX_KEPT_DIGEST_BYTES
}

/** The snapshot a header names: its image, name and id (the header's `mirrorCid`). Pure. */
export function keptSnapshotId(image: string, snap: string, snapId: number): string {
  return `${snapCid(image, snap)}/${snapId}`
}

/** The header of the map of committed record `rec` whose snapshot has id `snapId`. Pure. */
export function keptHeaderOf(rec: Pick<CephDiskRecord, 'image' | 'snap' | 'generation' | 'capacity'>, kept: CephKeptRecord): KeptHeader {
  return { blockSize: kept.blockSize, algorithm: kept.algorithm, capacity: rec.capacity, generation: rec.generation, mirrorCid: keptSnapshotId(rec.image, rec.snap, kept.snapId), size: rec.capacity }
}

/**
 * Why the map behind `img`'s side object is not the one of `want`, or
 * undefined when it is (header and exact length checked).
 */
export async function keptProblem(img: RbdImage, want: KeptHeader): Promise<string | undefined> {
  let head: Buffer
  try {
    head = await img.readSide(0, HEAD_BYTES)
  } catch (err) {
    if ((err as { code?: unknown }).code === 'E_NOT_FOUND') return 'none'
    throw err
  }
  const h = decodeKeptHeader(head)
  if (typeof h === 'string') return h
  const why = keptMismatch(h, { ...want })
  if (why !== undefined) return why
  const len = keptMapLength(h)
  const tail = await img.readSide(len - 1, 2)
  return tail.length === 1 ? undefined : 'truncated or overlong'
}

/**
 * Write a new kept map (a resync's commit) through a helper opened on the
 * new snapshot with the map as its writable side object: header naming
 * `header`, the blocks of `touched` stale, `digests`.
 */
export async function writeCephKeptMap(img: RbdImage, header: KeptHeader, digests: Buffer, touched: TouchedBlocks | undefined): Promise<void> {
  const blocks = blockCount(header.capacity, header.blockSize)
  const n = Math.ceil(blocks / 8)
  const bits = touched !== undefined && touched.blockSize === header.blockSize && touched.blocks === blocks ? Buffer.from(touched.bytes(0, n)) : Buffer.alloc(n, 0xff)
  await img.writeSide(0, Buffer.concat([encodeKeptHeader(header), bits, digests]), true)
}

/**
 * Carry a kept map over to the next commit of an incremental: the bits of
 * `touched` set stale in place, then the header names `next`.
 */
export async function advanceCephKeptMap(img: RbdImage, touched: TouchedBlocks, next: KeptHeader): Promise<void> {
  const n = Math.ceil(touched.blocks / 8)
  const step = 1024 * 1024
  for (let at = 0; at < n; at += step) {
    const k = Math.min(step, n - at)
    const add = touched.bytes(at, k)
    if (add.every((b) => b === 0)) continue
    const bits = await img.readSide(HEAD_BYTES + at, k)
    for (let i = 0; i < k; i++) bits[i] = (bits[i] as number) | (add[i] as number)
    await img.writeSide(HEAD_BYTES + at, bits)
  }
  await img.writeSide(0, encodeKeptHeader(next))
}

/** Open a helper on `image@snap` whose side object is the kept map `object` (writable: a commit's update, registered for the lease `lock` and confirmed). */
export async function openKeptMap(t: CephTarget, image: string, snap: string, object: string, writable: boolean, lock?: CephLock): Promise<RbdImage> {
  const img = await RbdImage.open(t, image, snap, undefined, { object, writable, ...(lock === undefined ? {} : { fence: lock.fence }) })
  if (lock !== undefined)
    await lock.confirm().catch(async (err: unknown) => {
      await img.close()
      throw err
    })
  return img
}

/** Remove a kept map object (gone already: nothing to do); through the session client `lock` when given. */
export async function dropCephKeptMap(t: CephTarget, object: string, lock?: CephLock): Promise<void> {
  if (lock !== undefined) return await lock.remove(object)
  await runCeph(t, 'rados', ['-p', t.pool, 'rm', object]).catch((err: unknown) => {
    if (!(err instanceof CephCommandError && err.notFound)) throw err
  })
}

/** One disk of a commit, as its kept map needs it. */
export interface KeptCommitDisk {
  /** the map's object */
  readonly object: string
  readonly info: Pick<CephInflightDisk, 'name' | 'mode' | 'image' | 'capacity'>
  /** the blocks the cycle wrote, when tracked */
  readonly touched: TouchedBlocks | undefined
  /** a resync's block map of this session */
  readonly map: { readonly blockSize: number; readonly algorithm: DigestAlgorithm; complete(): Buffer | undefined } | undefined
}

/**
 * The kept block map of a disk after its commit to `snap`, written before
 * the commit point: a resync whose block map served every block writes a new
 * one, an incremental on a disk with one carries it over (its blocks stale),
 * any other commit drops it. A failure drops it and never fails the commit.
 * @returns what the disk's next record says of its map (undefined: none)
 */
export async function keptMapAtCommit(
  t: CephTarget,
  d: KeptCommitDisk,
  prev: CephDiskRecord | undefined,
  snap: string,
  generation: string,
  log: Logger,
  lock?: CephLock,
): Promise<CephKeptRecord | undefined> {
  const next = { image: d.info.image, snap, generation, capacity: d.info.capacity }
  const full = d.info.mode === 'resync' ? d.map?.complete() : undefined
  const was = d.info.mode === 'incremental' && prev?.image === d.info.image && prev.capacity === d.info.capacity ? prev.kept : undefined
  const touched = d.touched
  try {
    if (touched === undefined || (full === undefined && was === undefined)) {
      if (prev?.kept !== undefined) await dropCephKeptMap(t, d.object, lock)
      return undefined
    }
    const img = await openKeptMap(t, d.info.image, snap, d.object, true, lock)
    try {
      if (d.map !== undefined && full !== undefined) {
        const kept = { blockSize: d.map.blockSize, algorithm: d.map.algorithm, snapId: img.snapId }
        await writeCephKeptMap(img, keptHeaderOf(next, kept), full, touched)
        return kept
      }
      const w = was as CephKeptRecord
      const problem = await keptProblem(img, keptHeaderOf(prev as CephDiskRecord, w))
      if (problem !== undefined) {
        log.info({ disk: d.info.name, why: problem }, 'kept block map unusable: dropped, the next resync reads the whole snapshot')
        await dropCephKeptMap(t, d.object, lock)
        return undefined
      }
      const kept = { ...w, snapId: img.snapId }
      await advanceCephKeptMap(img, touched, keptHeaderOf(next, kept))
      return kept
    } finally {
      await img.close()
    }
  } catch (err) {
    // fenced: nothing more is written by this session, the commit fails
    if (isFenced(err) || lock?.lost !== undefined) throw err
    log.warn({ disk: d.info.name, err: { message: (err as Error).message } }, 'kept block map not carried over: dropped, the next resync reads the whole snapshot')
    await dropCephKeptMap(t, d.object, lock).catch(() => {})
    return undefined
  }
}
