/**
 * The mirror's block map of a resync in flight (SPEC §5.9): the digests of
 * the mirror's blocks at its committed point, computed on request and made
 * durable in `.grainline/<stem>.blockmap` BEFORE they are sent, so that a
 * resumed cycle is answered with exactly the map the first connection saw
 * (the blocks below the persisted frontier may have been rewritten since;
 * the blocks above it never were: no extent runs ahead of the map sent).
 *
 * File layout: `GLBMAP1\n` • u32le(header JSON bytes) • header JSON
 * `{cycleId, blockSize, algorithm, capacity}` • digests of blocks 0, 1, 2, …
 * (a torn trailing digest is ignored). Memory: one read buffer; the digests
 * live in the file, never as a JS array.
 */
import type { FileHandle } from 'node:fs/promises'
import { blockCount, createDigest, DigestLengths, type DigestAlgorithm } from '@grainline/protocol'
import { ReceiverError } from './errors.ts'
import { fsyncDir, readFully, unlinkIfExists, writeFully } from './fs-util.ts'
import { openStoreFile } from './store-fs.ts'
import type { InflightDisk } from './state-file.ts'
import type { VmPaths } from './vm-paths.ts'

const MAGIC = Buffer.from('GLBMAP1\n', 'latin1')
/** Bytes of the mirror read per step while hashing (several blocks). */
const READ_BYTES = 8 * 1024 * 1024

/** What a map file belongs to: one resync cycle of one disk. */
interface MapHeader {
  readonly cycleId: string
  readonly blockSize: number
  readonly algorithm: DigestAlgorithm
  readonly capacity: number
}

function encodeHeader(h: MapHeader): Buffer {
  const json = Buffer.from(JSON.stringify(h), 'utf8')
  const len = Buffer.alloc(4)
  len.writeUInt32LE(json.length, 0)
  return Buffer.concat([MAGIC, len, json])
}

/** The header of a map file, or undefined when it is not one (or a torn one). */
async function readHeader(fh: FileHandle): Promise<{ header: MapHeader; end: number } | undefined> {
  const head = await readFully(fh, 0, MAGIC.length + 4)
  if (!head.subarray(0, MAGIC.length).equals(MAGIC)) return undefined
  const n = head.readUInt32LE(MAGIC.length)
  if (n > 4096) return undefined
  try {
    const h = JSON.parse((await readFully(fh, MAGIC.length + 4, n)).toString('utf8')) as MapHeader
    return { header: h, end: MAGIC.length + 4 + n }
  } catch {
    return undefined
  }
}

/** The in-flight block map of one resync disk; see the file comment. */
export class ResyncMap {
  readonly #fh: FileHandle
  readonly #info: InflightDisk & { readonly blockSize: number }
  readonly #flat: string
  readonly #start: number
  readonly #len: number
  /** blocks whose digests are durable in the file */
  #persisted: number
  readonly blocks: number

  private constructor(fh: FileHandle, info: InflightDisk & { readonly blockSize: number }, flat: string, start: number, persisted: number) {
    this.#fh = fh
    this.#info = info
    this.#flat = flat
    this.#start = start
    this.#len = DigestLengths[info.algorithm]
    this.#persisted = persisted
    this.blocks = blockCount(info.capacity, info.blockSize)
  }

  /** blocks whose digests are durable (and may have been sent) */
  get persisted(): number {
    return this.#persisted
  }

  /**
   * Open the map of a resync disk. A cycle with nothing applied yet may
   * start a new map; one with applied extents must find its own (same cycle
   * identity, block size and algorithm), else its extent sequence could not
   * be reproduced.
   * @throws ReceiverError E_STATE (the map of an applied cycle is missing), E_INTERNAL (not a resync)
   */
  static async open(paths: VmPaths, info: InflightDisk, applied: boolean): Promise<ResyncMap> {
    const blockSize = info.blockSize ?? 0
    if (info.mode !== 'resync' || blockSize <= 0) throw new ReceiverError('E_INTERNAL', `disk ${info.name} is not a resync`)
    const want: MapHeader = { cycleId: info.cycleId, blockSize, algorithm: info.algorithm, capacity: info.capacity }
    const path = paths.blockMap(info.stem)
    const full = { ...info, blockSize }
    let fh: FileHandle | undefined
    try {
      fh = await openStoreFile(path, 'update')
    } catch (err) {
      if ((err as { code?: unknown }).code !== 'ENOENT') throw err
    }
    if (fh !== undefined) {
      const h = await readHeader(fh).catch(() => undefined)
      const same = h !== undefined && h.header.cycleId === want.cycleId && h.header.blockSize === want.blockSize && h.header.algorithm === want.algorithm && h.header.capacity === want.capacity
      if (same) {
        const size = (await fh.stat()).size
        const len = DigestLengths[info.algorithm]
        const persisted = Math.min(blockCount(info.capacity, blockSize), Math.floor((size - h.end) / len))
        // a torn trailing digest is cut off: appends continue on a whole digest
        await fh.truncate(h.end + persisted * len)
        return new ResyncMap(fh, full, paths.flat(info.stem), h.end, persisted)
      }
      await fh.close()
    }
    if (applied) {
      throw new ReceiverError(
        'E_STATE',
        `the block map of the interrupted resync of disk ${info.name} is missing or belongs to another cycle: roll the cycle back (the agent does so on E_CYCLE_MISMATCH) and resync again`,
      )
    }
    const head = encodeHeader(want)
    const nfh = await openStoreFile(path, 'replace')
    try {
      await writeFully(nfh, head, 0)
      await nfh.sync()
      await fsyncDir(paths.gdir)
    } catch (err) {
      await nfh.close().catch(() => {})
      throw err
    }
    return new ResyncMap(nfh, full, paths.flat(info.stem), head.length, 0)
  }

  /**
   * The digests of blocks `first` … `first + count - 1`, concatenated: read
   * from the file below the persisted frontier, computed from the mirror
   * above it and made durable before they are returned.
   * @throws ReceiverError E_RANGE (beyond the map), E_SEQUENCE (a gap above the frontier)
   */
  async digests(first: number, count: number, signal?: AbortSignal): Promise<Uint8Array> {
    const end = first + count
    if (count < 1 || end > this.blocks) throw new ReceiverError('E_RANGE', `blocks ${first} … ${end - 1} beyond the ${this.blocks} blocks of ${this.#info.name}`)
    if (first > this.#persisted) throw new ReceiverError('E_SEQUENCE', `block map of ${this.#info.name} requested from block ${first}, the map is known up to ${this.#persisted}`)
    if (end > this.#persisted) await this.#extend(end, signal)
    return await readFully(this.#fh, this.#start + first * this.#len, count * this.#len)
  }

  /** Digest the mirror's blocks from the frontier up to `end`, append, fdatasync. */
  async #extend(end: number, signal: AbortSignal | undefined): Promise<void> {
    const { blockSize, capacity, algorithm } = this.#info
    const flat = await openStoreFile(this.#flat, 'read')
    let next: Promise<Buffer> | undefined
    try {
      const per = Math.max(1, Math.floor(READ_BYTES / blockSize))
      let b = this.#persisted
      const readAt = (from: number): Promise<Buffer> => {
        const off = from * blockSize
        return readFully(flat, off, Math.min(Math.min(end, from + per) * blockSize, capacity) - off)
      }
      next = readAt(b)
      while (b < end) {
        signal?.throwIfAborted()
        const buf = await (next as Promise<Buffer>)
        const n = Math.min(per, end - b)
        // read the next run while this one is hashed
        next = b + n < end ? readAt(b + n) : undefined
        const out = Buffer.alloc(n * this.#len)
        for (let i = 0; i < n; i++) {
          const d = createDigest(algorithm)
            .update(buf.subarray(i * blockSize, Math.min((i + 1) * blockSize, buf.length)))
            .digest()
          out.set(d, i * this.#len)
        }
        await writeFully(this.#fh, out, this.#start + b * this.#len)
        b += n
      }
      await this.#fh.datasync()
      this.#persisted = end
    } finally {
      // a read still in flight (an abort) settles before the file closes
      await next?.catch(() => {})
      await flat.close()
    }
  }

  async close(): Promise<void> {
    await this.#fh.close().catch(() => {})
  }
}

/** Remove the block maps of `stems` (after their cycle committed or rolled back; idempotent). */
export async function removeResyncMaps(paths: VmPaths, stems: Iterable<string>): Promise<void> {
  for (const s of stems) await unlinkIfExists(paths.blockMap(s))
}
