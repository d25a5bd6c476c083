/**
 * Block digests of an RBD snapshot through the librbd reader
 * (rbd-image.ts): the mirror's block map of a resync (SPEC §5.9) and the
 * receiver's side of a BlockCheck (SPEC §5.6, `--verify changed`, `--scrub`).
 *
 * A resync on the Ceph store compares with the committed snapshot, which
 * nothing in a cycle writes (the apply goes to the head): the digests of a
 * block are the same whenever they are asked for, so a resumed cycle (same
 * or another receiver) is answered with exactly the map the first connection
 * saw without keeping the map anywhere — the folder store must persist its
 * map (resync-map.ts) because its apply rewrites the blocks it digests.
 */
import { timingSafeEqual } from 'node:crypto'
import { blockCount, blockDigest, DigestLengths, type DigestAlgorithm } from '@grainline/protocol'
import { ReceiverError } from '../../errors.ts'
import { RbdImage } from './rbd-image.ts'
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

/** The mirror's block map of one resync disk on the Ceph store (the committed snapshot's digests, on request). */
export class CephBlockMap {
  readonly blocks: number
  /** blocks taken from a kept map: none on Ceph (every digest is read) */
  readonly keptBlocks = 0
  /** holes skipped without a read: none here (an RBD snapshot is read whole through librbd) */
  readonly holeBytes = 0
  private readonly reader: RbdImage
  private readonly capacity: number
  private readonly blockSize: number
  private readonly algorithm: DigestAlgorithm

  private constructor(reader: RbdImage, capacity: number, blockSize: number, algorithm: DigestAlgorithm) {
    this.reader = reader
    this.capacity = capacity
    this.blockSize = blockSize
    this.algorithm = algorithm
    this.blocks = blockCount(capacity, blockSize)
  }

  /**
   * Open the map of `image@snap` for a disk of `capacity` bytes (the new
   * capacity: blocks past the snapshot's size read as zeros, as a grown flat does).
   * @throws ReceiverError E_IO
   */
  static async open(t: CephTarget, image: string, snap: string, capacity: number, blockSize: number, algorithm: DigestAlgorithm): Promise<CephBlockMap> {
    return new CephBlockMap(await RbdImage.open(t, image, snap), capacity, blockSize, algorithm)
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
    await digestBlocks(
      this.reader,
      this.capacity,
      this.blockSize,
      this.algorithm,
      (i) => first + i,
      count,
      (i, d) => out.set(d, i * len),
      signal,
    )
    return out
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
