/**
 * The block map kept with a committed mirror between cycles (issue #13):
 * `.grainline/<stem>.map` holds the digests of the mirror's blocks as of the
 * commit named in its header, and a stale bitmap for the blocks written since
 * their digest was taken. A resync then reads only the stale blocks of the
 * mirror (resync-map.ts); every other block's digest comes from here.
 *
 * Trusted only when its header names exactly the disk's committed record
 * (generation, mirror CID, flat size, capacity) and the mirror on disk still
 * has that CID and size: any commit not recorded here, a mirror modified
 * behind the receiver's back, a torn or hostile file (wrong magic, header
 * checksum, length; a link, FIFO or folder at its name) makes it unusable,
 * and the next resync digests the whole mirror again. A failed check
 * (E_DIVERGED) or a hold (a failover may boot the mirror) removes it.
 *
 * Layout: `GLKMAP1\n` • u32le(header JSON bytes) • 8 bytes of SHA-256(header
 * JSON) • header JSON • zeros up to {@link HEAD_BYTES} • stale bitmap (bit
 * `b % 8` of byte `b >> 3`, 1 = stale) • digests of blocks 0, 1, 2, … The file
 * is exactly that long. Memory: the caller reads ranges; nothing holds the
 * whole map, and {@link TouchedBlocks} is one bit per block.
 *
 * Crash safety (ARCHITECTURE §4.1): the commit updates the map BEFORE its
 * state.json replace, naming the generation it is about to commit. A crash
 * before the replace leaves a map naming a generation that never committed
 * (discarded: only slower); stale bits set in place are always safe.
 */
import { createHash } from 'node:crypto'
import { rename } from 'node:fs/promises'
import { dirname } from 'node:path'
import type { FileHandle } from 'node:fs/promises'
import { blockCount, DigestLengths, MIN_BLOCK_SIZE, type DigestAlgorithm } from '@grainline/protocol'
import { fsyncDir, readFully, tempName, unlinkIfExists, writeFully } from './fs-util.ts'
import { openStoreFile } from './store-fs.ts'

const MAGIC = Buffer.from('GLKMAP1\n', 'latin1')
/** Bytes before the stale bitmap (magic, lengths, header JSON, padding). */
export const HEAD_BYTES = 4096
/**
 * Most blocks a kept map covers (16 M: a 16 TiB disk at 1 MiB blocks; a 2 MiB
 * bitmap in memory while a cycle tracks its touched blocks). A disk with more
 * blocks keeps no map: every resync reads the whole mirror.
 */
export const MAX_KEPT_BLOCKS = 16 * 1024 * 1024
/** Blocks handled per read while copying or scanning a map. */
const STEP_BLOCKS = 65536

/** What a kept map describes: one committed state of one disk's mirror. */
export interface KeptHeader {
  readonly blockSize: number
  readonly algorithm: DigestAlgorithm
  readonly capacity: number
  /** generation of the commit the digests belong to (SPEC §5.8) */
  readonly generation: string
  /** the mirror descriptor's CID at that commit */
  readonly mirrorCid: string
  /** the flat file's size at that commit */
  readonly size: number
}

/** The committed facts a kept map must match (a DiskRecord's fields, or the mirror's at a resync start). */
export interface KeptExpectation {
  readonly generation: string
  readonly mirrorCid: string
  readonly size: number
  readonly capacity: number
  /** when set, the map must have this block size and algorithm */
  readonly blockSize?: number
  readonly algorithm?: DigestAlgorithm
}

const bitmapBytes = (blocks: number): number => Math.ceil(blocks / 8)

/** The exact length of a kept map file of `h`. */
export function keptMapLength(h: KeptHeader): number {
  const blocks = blockCount(h.capacity, h.blockSize)
  return HEAD_BYTES + bitmapBytes(blocks) + blocks * DigestLengths[h.algorithm]
}

function headerSum(json: Buffer): Buffer {
  return createHash('sha256').update(json).digest().subarray(0, 8)
}

/** Encode the first {@link HEAD_BYTES} of a kept map. Pure. */
export function encodeKeptHeader(h: KeptHeader): Buffer {
  const json = Buffer.from(JSON.stringify(h), 'utf8')
  const out = Buffer.alloc(HEAD_BYTES)
  MAGIC.copy(out, 0)
  out.writeUInt32LE(json.length, MAGIC.length)
  headerSum(json).copy(out, MAGIC.length + 4)
  json.copy(out, MAGIC.length + 12)
  return out
}

/** Why a header is not a usable one, or undefined when it is. */
function headerProblem(h: Partial<KeptHeader>): string | undefined {
  if (!Number.isSafeInteger(h.blockSize) || (h.blockSize as number) < MIN_BLOCK_SIZE || ((h.blockSize as number) & ((h.blockSize as number) - 1)) !== 0) return 'bad block size'
  if (typeof h.algorithm !== 'string' || !Object.hasOwn(DigestLengths, h.algorithm)) return 'unknown algorithm'
  if (!Number.isSafeInteger(h.capacity) || (h.capacity as number) <= 0) return 'bad capacity'
  if (blockCount(h.capacity as number, h.blockSize as number) > MAX_KEPT_BLOCKS) return 'too many blocks'
  if (typeof h.generation !== 'string' || h.generation === '' || typeof h.mirrorCid !== 'string' || !Number.isSafeInteger(h.size)) return 'bad commit fields'
  return undefined
}

/**
 * Decode the first {@link HEAD_BYTES} of a kept map. Pure.
 * @returns the header, or a reason it is not one (torn, wrong magic, checksum, fields)
 */
export function decodeKeptHeader(head: Uint8Array): KeptHeader | string {
  const b = Buffer.from(head.buffer, head.byteOffset, head.byteLength)
  if (b.length < HEAD_BYTES) return 'truncated header'
  if (!b.subarray(0, MAGIC.length).equals(MAGIC)) return 'not a kept block map'
  const n = b.readUInt32LE(MAGIC.length)
  if (n === 0 || n > HEAD_BYTES - MAGIC.length - 12) return 'bad header length'
  const json = b.subarray(MAGIC.length + 12, MAGIC.length + 12 + n)
  if (!headerSum(json).equals(b.subarray(MAGIC.length + 4, MAGIC.length + 12))) return 'header checksum mismatch'
  let h: Partial<KeptHeader>
  try {
    h = JSON.parse(json.toString('utf8')) as Partial<KeptHeader>
  } catch {
    return 'header not JSON'
  }
  if (typeof h !== 'object' || h === null) return 'header not an object'
  const p = headerProblem(h)
  if (p !== undefined) return p
  const { blockSize, algorithm, capacity, generation, mirrorCid, size } = h as KeptHeader
  return { blockSize, algorithm, capacity, generation, mirrorCid, size }
}

/** Why header `h` does not describe `want`, or undefined when it does. Pure. */
export function keptMismatch(h: KeptHeader, want: KeptExpectation): string | undefined {
  if (want.generation === '' || h.generation !== want.generation) return 'written for another commit'
  if (h.mirrorCid !== want.mirrorCid || h.size !== want.size) return 'the mirror changed since'
  if (h.capacity !== want.capacity) return 'another capacity'
  if (want.blockSize !== undefined && h.blockSize !== want.blockSize) return 'another block size'
  if (want.algorithm !== undefined && h.algorithm !== want.algorithm) return 'another algorithm'
  return undefined
}

/**
 * The blocks a cycle wrote, one bit per block of `blockSize` (set by every
 * extent the apply accepts, replayed ones included).
 */
export class TouchedBlocks {
  readonly blockSize: number
  readonly blocks: number
  readonly #bits: Uint8Array
  #count = 0

  constructor(capacity: number, blockSize: number) {
    this.blockSize = blockSize
    this.blocks = blockCount(capacity, blockSize)
    this.#bits = new Uint8Array(bitmapBytes(this.blocks))
  }

  /** How many distinct blocks were touched. */
  get count(): number {
    return this.#count
  }

  /** Mark the blocks overlapping `[offset, offset + length)`. */
  mark(offset: number, length: number): void {
    if (length <= 0) return
    const last = Math.min(this.blocks - 1, Math.floor((offset + length - 1) / this.blockSize))
    for (let b = Math.floor(offset / this.blockSize); b <= last; b++) {
      const m = 1 << (b & 7)
      const i = b >> 3
      if (((this.#bits[i] as number) & m) === 0) {
        this.#bits[i] = (this.#bits[i] as number) | m
        this.#count++
      }
    }
  }

  has(b: number): boolean {
    return (((this.#bits[b >> 3] as number) >> (b & 7)) & 1) === 1
  }

  /** The bitmap bytes covering blocks `[8 * firstByte, …)` (a view). */
  bytes(firstByte: number, n: number): Uint8Array {
    return this.#bits.subarray(firstByte, firstByte + n)
  }
}

/** An open kept map whose header matched what was expected. */
export class KeptMap {
  readonly header: KeptHeader
  readonly blocks: number
  readonly #fh: FileHandle
  readonly #len: number

  private constructor(fh: FileHandle, header: KeptHeader) {
    this.#fh = fh
    this.header = header
    this.blocks = blockCount(header.capacity, header.blockSize)
    this.#len = DigestLengths[header.algorithm]
  }

  /**
   * Open the kept map at `path` when it describes `want`.
   * @returns the map, or the reason it is absent or unusable (the caller logs it; never trusted)
   */
  static async open(path: string, want: KeptExpectation, mode: 'read' | 'update' = 'read'): Promise<KeptMap | string> {
    let fh: FileHandle
    try {
      fh = await openStoreFile(path, mode)
    } catch (err) {
      const code = (err as { code?: unknown }).code
      if (code === 'ENOENT') return 'none'
      if (code === 'E_STORE_FILE') return (err as Error).message
      throw err
    }
    try {
      const size = (await fh.stat()).size
      const h = size < HEAD_BYTES ? 'truncated header' : decodeKeptHeader(await readFully(fh, 0, HEAD_BYTES))
      const why = typeof h === 'string' ? h : (keptMismatch(h, want) ?? (size !== keptMapLength(h) ? 'truncated or overlong' : undefined))
      if (why !== undefined) {
        await fh.close()
        return why
      }
      return new KeptMap(fh, h as KeptHeader)
    } catch (err) {
      await fh.close().catch(() => {})
      throw err
    }
  }

  /**
   * Blocks `first` … `first + count - 1`: one byte per block (1 = stale) and
   * their digests, concatenated.
   */
  async read(first: number, count: number): Promise<{ stale: Uint8Array; digests: Buffer }> {
    const b0 = first >> 3
    const bits = await readFully(this.#fh, HEAD_BYTES + b0, bitmapBytes(first + count) - b0)
    const stale = new Uint8Array(count)
    for (let i = 0; i < count; i++) {
      const b = first + i
      stale[i] = ((bits[(b >> 3) - b0] as number) >> (b & 7)) & 1
    }
    const digests = await readFully(this.#fh, HEAD_BYTES + bitmapBytes(this.blocks) + first * this.#len, count * this.#len)
    return { stale, digests }
  }

  /**
   * Carry the map over to the next commit of an incremental: set the bits of
   * `touched` in place (durable), then name the new commit in the header.
   */
  async advance(touched: TouchedBlocks, next: KeptHeader): Promise<void> {
    const n = bitmapBytes(this.blocks)
    for (let at = 0; at < n; at += STEP_BLOCKS) {
      const k = Math.min(STEP_BLOCKS, n - at)
      const bits = await readFully(this.#fh, HEAD_BYTES + at, k)
      const add = touched.bytes(at, k)
      let changed = false
      for (let i = 0; i < k; i++) {
        const v = (bits[i] as number) | (add[i] as number)
        if (v !== bits[i]) {
          bits[i] = v
          changed = true
        }
      }
      if (changed) await writeFully(this.#fh, bits, HEAD_BYTES + at)
    }
    await this.#fh.datasync()
    await writeFully(this.#fh, encodeKeptHeader(next), 0)
    await this.#fh.datasync()
  }

  async close(): Promise<void> {
    await this.#fh.close().catch(() => {})
  }
}

/**
 * Write a new kept map at `path` (temp file, fsync, rename, fsync dir): the
 * digests of every block read from `digestsAt` (a file holding them
 * contiguously at `offset`, e.g. a resync's block map), the blocks of
 * `touched` stale.
 */
export async function writeKeptMap(path: string, header: KeptHeader, digestsFrom: { fh: FileHandle; offset: number }, touched: TouchedBlocks | undefined): Promise<void> {
  const blocks = blockCount(header.capacity, header.blockSize)
  const len = DigestLengths[header.algorithm]
  const tmp = tempName(path)
  const fh = await openStoreFile(tmp, 'create')
  try {
    await writeFully(fh, encodeKeptHeader(header), 0)
    const n = bitmapBytes(blocks)
    const bits = touched !== undefined && touched.blockSize === header.blockSize && touched.blocks === blocks ? touched.bytes(0, n) : new Uint8Array(n).fill(0xff)
    await writeFully(fh, bits, HEAD_BYTES)
    for (let b = 0; b < blocks; b += STEP_BLOCKS) {
      const k = Math.min(STEP_BLOCKS, blocks - b)
      await writeFully(fh, await readFully(digestsFrom.fh, digestsFrom.offset + b * len, k * len), HEAD_BYTES + n + b * len)
    }
    await fh.sync()
    await fh.close()
    await rename(tmp, path)
  } catch (err) {
    await fh.close().catch(() => {})
    await unlinkIfExists(tmp).catch(() => {})
    throw err
  }
  await fsyncDir(dirname(path))
}
