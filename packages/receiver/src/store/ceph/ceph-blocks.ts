/**
 * Block digests of an RBD snapshot through the librbd reader
 * (rbd-image.ts): the mirror's block map of a resync (SPEC §5.9) and the
 * receiver's side of a BlockCheck (SPEC §5.6, `--verify changed`, `--scrub`).
 *
 * A resync on the Ceph store compares with the committed snapshot, which
 * nothing in a cycle writes (the apply goes to the head): the digests of a
 * block are the same whenever they are asked for, so a resumed cycle (same
 * or another receiver) is answered with exactly the map the first connection
 * saw without keeping the map of the cycle anywhere — the folder store must
 * persist its map (resync-map.ts) because its apply rewrites the blocks it
 * digests. Between cycles a kept map (ceph-kept-map.ts) spares the reads of
 * blocks not written since their digest was taken.
 */
import { timingSafeEqual } from 'node:crypto'
import { blockCount, blockDigest, DigestLengths, type DigestAlgorithm } from '@grainline/protocol'
import { ReceiverError } from '../../errors.ts'
import { RbdImage } from './rbd-image.ts'
import { HEAD_BYTES, TouchedBlocks } from '../../kept-map.ts'
import { keepable, keptHeaderOf, keptProblem } from './ceph-kept-map.ts'
import type { CephDiskRecord } from './ceph-state.ts'
import type { CephTarget } from './rbd-cli.ts'

/** Blocks read ahead of the one digested (requests are pipelined to one helper). */
const READS_IN_FLIGHT = 4

/**
 * Digest blocks `indexes` (in order) of `reader` of `capacity` bytes,
 * calling `each(i, digest, bytes)`; reads run READS_IN_FLIGHT ahead.
 */
async function digestBlocks(
  reader: RbdImage,
  capacity: number,
  blockSize: number,
  algorithm: DigestAlgorithm,
  indexes: (i: number) => number,
  count: number,
  each: (i: number, digest: Uint8Array, bytes: number) => void,
  signal?: AbortSignal,
): Promise<void> {
  const reads: Array<Promise<Buffer>> = []
  let issued = 0
  const issue = (): void => {
    while (reads.length < READS_IN_FLIGHT && issued < count) {
      const offset = indexes(issued) * blockSize
      const r =
        offset >= capacity
          ? Promise.reject(new ReceiverError('E_RANGE', `block ${indexes(issued)} of ${blockSize} bytes is beyond the capacity ${capacity} of ${reader.label}`))
          : reader.read(offset, Math.min(blockSize, capacity - offset))
      r.catch(() => {})
      reads.push(r)
      issued++
    }
  }
  try {
    for (let i = 0; i < count; i++) {
      signal?.throwIfAborted()
      issue()
      const data = await (reads.shift() as Promise<Buffer>)
      each(i, blockDigest(algorithm, data), data.length)
    }
  } finally {
    for (const r of reads) await r.catch(() => {})
  }
}

/** A kept map to take fresh digests from (ceph-kept-map.ts): its object and the header it must have, but for the snapshot id the reader reports. */
export interface CephKeptSource {
  readonly object: string
  readonly rec: Pick<CephDiskRecord, 'image' | 'snap' | 'generation' | 'capacity'>
  readonly blockSize: number
  readonly algorithm: DigestAlgorithm
}

/**
 * The mirror's block map of one resync disk on the Ceph store: the committed
 * snapshot's digests, on request. With a kept map matching the committed
 * record (ceph-kept-map.ts) only its stale blocks are read from the
 * snapshot; every other digest comes from the map. The digests served are
 * gathered (within the kept map's bound) so that the resync's commit can
 * write the next kept map.
 */
export class CephBlockMap {
  readonly blocks: number
  /** blocks whose digest came from the kept map */
  keptBlocks = 0
  /** holes skipped without a read: none here (an RBD snapshot is read whole through librbd) */
  readonly holeBytes = 0
  readonly blockSize: number
  readonly algorithm: DigestAlgorithm
  private readonly reader: RbdImage
  private readonly capacity: number
  /** the kept map usable for this snapshot, when there is one */
  private readonly kept: boolean
  /** every served digest (undefined: too many blocks to keep a map) and which blocks were served */
  private readonly served: { digests: Buffer; seen: TouchedBlocks } | undefined

  private constructor(reader: RbdImage, capacity: number, blockSize: number, algorithm: DigestAlgorithm, kept: boolean) {
    this.reader = reader
    this.capacity = capacity
    this.blockSize = blockSize
    this.algorithm = algorithm
    this.kept = kept
    this.blocks = blockCount(capacity, blockSize)
    this.served = keepable(capacity, blockSize, algorithm) ? { digests: Buffer.alloc(this.blocks * DigestLengths[algorithm]), seen: new TouchedBlocks(capacity, blockSize) } : undefined
  }

  /**
   * Open the map of `image@snap` for a disk of `capacity` bytes (the new
   * capacity: blocks past the snapshot's size read as zeros, as a grown
   * flat does), with `kept` when the state records a kept map of that
   * snapshot (used only when its header names this snapshot's id).
   * @param why told why a kept map was not used
   * @throws ReceiverError E_IO
   */
  static async open(
    t: CephTarget,
    image: string,
    snap: string,
    capacity: number,
    blockSize: number,
    algorithm: DigestAlgorithm,
    kept?: CephKeptSource,
    why?: (reason: string) => void,
  ): Promise<CephBlockMap> {
    const usable = kept !== undefined && kept.blockSize === blockSize && kept.algorithm === algorithm && kept.rec.capacity === capacity
    const reader = await RbdImage.open(t, image, snap, undefined, usable ? { object: kept.object } : undefined)
    let ok = false
    try {
      if (usable) {
        const problem = await keptProblem(reader, keptHeaderOf(kept.rec, { blockSize, algorithm, snapId: reader.snapId }))
        if (problem !== undefined) why?.(problem)
        ok = problem === undefined
      } else why?.(kept === undefined ? 'none' : 'another block size, algorithm or capacity')
    } catch (err) {
      await reader.close()
      throw err
    }
    return new CephBlockMap(reader, capacity, blockSize, algorithm, ok)
  }

  /** mirror bytes read for this map */
  get bytesRead(): number {
    return this.reader.bytesRead
  }

  /**
   * Digests of blocks `first` … `first + count - 1`, concatenated.
   * @throws ReceiverError E_RANGE (beyond the disk), E_IO
   */
  async digests(first: number, count: number, signal?: AbortSignal): Promise<Uint8Array> {
    if (first + count > this.blocks) throw new ReceiverError('E_RANGE', `blocks ${first}…${first + count - 1} are beyond the ${this.blocks} blocks of ${this.reader.label}`)
    const len = DigestLengths[this.algorithm]
    const out = new Uint8Array(count * len)
    let read = Array.from({ length: count }, (_, i) => i)
    if (this.kept) {
      const b0 = first >> 3
      const bits = await this.reader.readSide(HEAD_BYTES + b0, ((first + count + 7) >> 3) - b0)
      const kept = await this.reader.readSide(HEAD_BYTES + Math.ceil(this.blocks / 8) + first * len, count * len)
      if (kept.length !== count * len) throw new ReceiverError('E_IO', `the kept block map of ${this.reader.label} ended early`)
      read = []
      for (let i = 0; i < count; i++) {
        const b = first + i
        if ((((bits[(b >> 3) - b0] as number) >> (b & 7)) & 1) === 1) read.push(i)
        else {
          out.set(kept.subarray(i * len, (i + 1) * len), i * len)
          this.keptBlocks++
        }
      }
    }
    await digestBlocks(
      this.reader,
      this.capacity,
      this.blockSize,
      this.algorithm,
      (k) => first + (read[k] as number),
      read.length,
      (k, d) => out.set(d, (read[k] as number) * len),
      signal,
    )
    if (this.served !== undefined) {
      this.served.digests.set(out, first * len)
      this.served.seen.mark(first * this.blockSize, count * this.blockSize)
    }
    return out
  }

  /** Every block's digest, when every block was served in this session (the next kept map), else undefined. */
  complete(): Buffer | undefined {
    return this.served !== undefined && this.served.seen.count === this.blocks ? this.served.digests : undefined
  }

  async close(): Promise<void> {
    await this.reader.close()
  }
}

/** A BlockCheck as the Ceph store needs it. */
export interface CephBlockCheck {
  readonly blockSize: number
  /** u64le block indexes, ascending */
  readonly blocks: Uint8Array
  readonly digests: Uint8Array
  readonly algorithm: DigestAlgorithm
}

/**
 * Compare the listed blocks of `image@snap` with the agent's digests; the
 * mismatched indexes as u64le.
 * @throws ReceiverError E_RANGE (a block beyond the disk), E_IO
 */
export async function checkSnapshotBlocks(
  t: CephTarget,
  image: string,
  snap: string,
  capacity: number,
  req: CephBlockCheck,
  signal?: AbortSignal,
): Promise<{ ok: boolean; mismatched: Uint8Array; bytes: number }> {
  const n = req.blocks.length / 8
  const len = req.digests.length / n
  const index = new DataView(req.blocks.buffer, req.blocks.byteOffset, req.blocks.byteLength)
  const at = (i: number): number => Number(index.getBigUint64(i * 8, true))
  const out: number[] = []
  let bytes = 0
  const reader = await RbdImage.open(t, image, snap)
  try {
    await digestBlocks(
      reader,
      capacity,
      req.blockSize,
      req.algorithm,
      at,
      n,
      (i, d, b) => {
        bytes += b
        if (!timingSafeEqual(d, req.digests.subarray(i * len, (i + 1) * len))) out.push(at(i))
      },
      signal,
    )
  } finally {
    await reader.close()
  }
  const mismatched = new Uint8Array(out.length * 8)
  const v = new DataView(mismatched.buffer)
  for (const [i, b] of out.entries()) v.setBigUint64(i * 8, BigInt(b), true)
  return { ok: out.length === 0, mismatched, bytes }
}
