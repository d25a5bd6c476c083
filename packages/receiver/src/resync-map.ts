/**
 * The mirror's block map of a resync in flight (SPEC §5.9): the digests of
 * the mirror's blocks at its committed point, computed on request and made
 * durable in `.grainline/<stem>.blockmap` BEFORE they are sent, so that a
 * resumed cycle is answered with exactly the map the first connection saw
 * (the blocks below the persisted frontier may have been rewritten since;
 * the blocks above it never were: no extent runs ahead of the map sent).
 *
 * File layout: `GLBMAP1\n` • u32le(header JSON bytes) • header JSON
 * `{cycleId, blockSize, algorithm, capacity, kept}` • digests of blocks 0, 1,
 * 2, … (a torn trailing digest is ignored). Memory: one read buffer; the
 * digests live in the file, never as a JS array.
 *
 * When the mirror has a kept map (kept-map.ts) matching its committed record
 * and the mirror is unmodified, the digests of its fresh blocks are taken
 * from it and only its stale blocks are read from the mirror (`kept: true`
 * in the header; such a resync does not prove the whole mirror).
 */
import type { FileHandle } from 'node:fs/promises'
import { blockCount, blockDigest, DigestLengths, type DigestAlgorithm, zeroDigest } from '@grainline/protocol'
import { type DataRange, dataCursor, fileDataRanges } from '@grainline/vmdk'
import { ReceiverError } from './errors.ts'
import { fsyncDir, readFully, readFullyInto, unlinkIfExists, writeFully } from './fs-util.ts'
import { openStoreFile } from './store-fs.ts'
import type { DiskRecord, InflightDisk } from './state-file.ts'
import { KeptMap } from './kept-map.ts'
import type { VmPaths } from './vm-paths.ts'

const MAGIC = Buffer.from('GLBMAP1\n', 'latin1')
/** Bytes of the mirror read per step while hashing (several blocks). */
const READ_BYTES = 2 * 1024 * 1024
/** Reads of `READ_BYTES` in flight while the span before is digested (libuv has 4 threads: one stays free). */
const READS_IN_FLIGHT = 3
/** Bytes of the mirror whose data ranges are asked for at once (one `SEEK_DATA` helper process). */
const HOLE_WINDOW_BYTES = 64 * 1024 * 1024 * 1024

/** What a map file belongs to: one resync cycle of one disk. */
interface MapHeader {
  readonly cycleId: string
  readonly blockSize: number
  readonly algorithm: DigestAlgorithm
  readonly capacity: number
  /** whether the digests of fresh blocks come from the kept map */
  readonly kept?: boolean
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
  readonly #kept: KeptMap | undefined
  readonly blocks: number
  /** whether this cycle's map takes digests from the kept map (recorded in its header) */
  readonly usesKept: boolean
  /** bytes of the mirror read by this object (for logs and tests) */
  bytesRead = 0
  /** blocks whose digests this object took from the kept map */
  keptBlocks = 0
  /** bytes of the mirror known to be holes (SEEK_DATA) and not read */
  holeBytes = 0
  /** true once the mirror's holes could not be asked for (no python3, a file system that refuses): it is read whole */
  holesUnknown = false
  /** the last answer of the mirror's data ranges (see #dataRanges) */
  #holes: { start: number; end: number; ranges: DataRange[] | undefined } | undefined
  /** called once when {@link holesUnknown} becomes true (a log line) */
  onUnknownHoles: (() => void) | undefined

  private constructor(fh: FileHandle, info: InflightDisk & { readonly blockSize: number }, flat: string, start: number, persisted: number, kept: KeptMap | undefined, usesKept: boolean) {
    this.#fh = fh
    this.#kept = kept
    this.usesKept = usesKept
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
   * be reproduced. `committed` is the disk's committed record: its kept map
   * is used when it matches and the mirror was unmodified at the start.
   * @throws ReceiverError E_STATE (the map of an applied cycle is missing), E_INTERNAL (not a resync)
   */
  static async open(paths: VmPaths, info: InflightDisk, applied: boolean, committed?: DiskRecord, onKept?: (why: string) => void): Promise<ResyncMap> {
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
        const kept = h.header.kept === true ? await openKept(paths, full, committed, onKept) : undefined
        return new ResyncMap(fh, full, paths.flat(info.stem), h.end, persisted, kept, h.header.kept === true)
      }
      await fh.close()
    }
    if (applied) {
      throw new ReceiverError(
        'E_STATE',
        `the block map of the interrupted resync of disk ${info.name} is missing or belongs to another cycle: roll the cycle back (the agent does so on E_CYCLE_MISMATCH) and resync again`,
      )
    }
    const kept = await openKept(paths, full, committed, onKept)
    const head = encodeHeader({ ...want, kept: kept !== undefined })
    let nfh: FileHandle | undefined
    try {
      nfh = await openStoreFile(path, 'replace')
      await writeFully(nfh, head, 0)
      await nfh.sync()
      await fsyncDir(paths.gdir)
    } catch (err) {
      await nfh?.close().catch(() => {})
      await kept?.close()
      throw err
    }
    return new ResyncMap(nfh, full, paths.flat(info.stem), head.length, 0, kept, kept !== undefined)
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
    if (end > this.#persisted) await (this.#kept === undefined ? this.#extend(end, signal) : this.#extendKept(this.#kept, end, signal))
    return await readFully(this.#fh, this.#start + first * this.#len, count * this.#len)
  }

  /** Like {@link #extend}, but only the kept map's stale blocks are read from the mirror. */
  async #extendKept(kept: KeptMap, end: number, signal: AbortSignal | undefined): Promise<void> {
    const { blockSize, capacity, algorithm } = this.#info
    const flat = await openStoreFile(this.#flat, 'read')
    try {
      const per = Math.max(1, Math.floor(READ_BYTES / blockSize))
      for (let b = this.#persisted; b < end; ) {
        signal?.throwIfAborted()
        const n = Math.min(per, end - b)
        const { stale, digests } = await kept.read(b, n)
        for (let i = 0; i < n; ) {
          if (stale[i] === 0) {
            this.keptBlocks++
            i++
            continue
          }
          // a run of stale blocks: one read, one digest per block
          let j = i
          while (j < n && stale[j] === 1) j++
          const off = (b + i) * blockSize
          const buf = await readFully(flat, off, Math.min((b + j) * blockSize, capacity) - off)
          this.bytesRead += buf.length
          for (let k = i; k < j; k++) digests.set(blockDigest(algorithm, buf.subarray((k - i) * blockSize, Math.min((k - i + 1) * blockSize, buf.length))), k * this.#len)
          i = j
        }
        await writeFully(this.#fh, digests, this.#start + b * this.#len)
        b += n
      }
      await this.#fh.datasync()
      this.#persisted = end
    } finally {
      await flat.close()
    }
  }

  /**
   * Digest the mirror's blocks from the frontier up to `end`, append (one
   * write), fdatasync. The flat is read in `READ_BYTES` spans, `READS_IN_FLIGHT` of
   * them in flight into reused buffers while the span before is digested
   * (an all-zero block — a hole of a sparse mirror — by comparison).
   */
  async #extend(end: number, signal: AbortSignal | undefined): Promise<void> {
    const { blockSize, capacity, algorithm } = this.#info
    const flat = await openStoreFile(this.#flat, 'read')
    const per = Math.max(1, Math.floor(READ_BYTES / blockSize))
    const spanBytes = Math.min(per * blockSize, capacity)
    const pool = Array.from({ length: READS_IN_FLIGHT + 1 }, () => Buffer.allocUnsafe(spanBytes))
    const reads: Array<{ from: number; n: number; buf: Buffer | undefined; done: Promise<number> }> = []
    let turn = 0
    const first = this.#persisted
    const out = Buffer.allocUnsafe((end - first) * this.#len)
    let issued = first
    // the mirror's data ranges above the frontier (no extent has been written there: they hold);
    // undefined = unknown here, every span is read
    const data = await this.#dataRanges(flat, first * blockSize, Math.min(end * blockSize, capacity))
    if (data === undefined && !this.holesUnknown) {
      this.holesUnknown = true
      this.onUnknownHoles?.()
    }
    // asked in increasing order of `from`
    const mayHoldData = dataCursor(data)
    const blockEnd = (b: number): number => Math.min((b + 1) * blockSize, capacity)
    const issue = (): void => {
      while (reads.length < READS_IN_FLIGHT && issued < end) {
        // a run of up to `per` blocks that are all holes, or all may hold data (block granularity)
        const hole = !mayHoldData(issued * blockSize, blockEnd(issued))
        let n = 1
        while (n < per && issued + n < end && !mayHoldData((issued + n) * blockSize, blockEnd(issued + n)) === hole) n++
        const off = issued * blockSize
        const len = blockEnd(issued + n - 1) - off
        if (hole) {
          // a hole of the sparse mirror: zeros, not read
          this.holeBytes += len
          reads.push({ from: issued, n, buf: undefined, done: Promise.resolve(len) })
          issued += n
          continue
        }
        const buf = pool[turn++ % pool.length] as Buffer
        // a flat shorter than the disk reads as zeros past its end
        const done = readFullyInto(flat, buf, off, len).then(() => len)
        // handled when its turn comes; not an unhandled rejection while an earlier span is awaited
        done.catch(() => {})
        reads.push({ from: issued, n, buf, done })
        issued += n
      }
    }
    try {
      issue()
      while (reads.length > 0) {
        signal?.throwIfAborted()
        const r = reads[0] as (typeof reads)[number]
        const got = await r.done
        reads.shift()
        issue()
        const o = (r.from - first) * this.#len
        const buf = r.buf
        if (buf === undefined) {
          for (let i = 0; i < r.n; i++) out.set(zeroDigest(algorithm, Math.min((i + 1) * blockSize, got) - i * blockSize), o + i * this.#len)
          continue
        }
        this.bytesRead += got
        for (let i = 0; i < r.n; i++) out.set(blockDigest(algorithm, buf.subarray(i * blockSize, Math.min((i + 1) * blockSize, got))), o + i * this.#len)
      }
      // one write of the run's digests (at most MAX_MAP_BLOCKS of them): no write waits behind the reads
      await writeFully(this.#fh, out, this.#start + first * this.#len)
      await this.#fh.datasync()
      this.#persisted = end
    } finally {
      // reads still in flight (an abort) settle before the file closes
      for (const r of reads) await r.done.catch(() => {})
      await flat.close()
    }
  }

  /**
   * The mirror's data ranges within `[from, to)`: one question per
   * `HOLE_WINDOW_BYTES` (a helper process each), kept for the next map
   * requests — the mirror above the frontier is not written while the map is
   * made, so the answer holds. Undefined when unknown here.
   */
  async #dataRanges(flat: FileHandle, from: number, to: number): Promise<readonly DataRange[] | undefined> {
    let w = this.#holes
    if (w === undefined || from < w.start || to > w.end) {
      const end = Math.min(this.#info.capacity, Math.max(to, from + HOLE_WINDOW_BYTES))
      w = { start: from, end, ranges: await fileDataRanges(flat.fd, from, end) }
      this.#holes = w
    }
    if (w.ranges === undefined) return undefined
    return w.ranges.filter((r) => r[1] > from && r[0] < to)
  }

  async close(): Promise<void> {
    await this.#fh.close().catch(() => {})
    await this.#kept?.close()
  }
}

/**
 * The kept map of a resync's disk when it can stand in for reading the
 * mirror: it matches the committed record, and the mirror at the resync's
 * start had the record's CID and size (a modified mirror is read whole).
 */
async function openKept(paths: VmPaths, info: InflightDisk & { readonly blockSize: number }, rec: DiskRecord | undefined, onKept?: (why: string) => void): Promise<KeptMap | undefined> {
  if (rec === undefined) return undefined
  const from = info.resyncFrom
  if (from === undefined || from.cid !== rec.mirrorCid || from.flatSize !== rec.size || rec.diverged !== undefined) {
    onKept?.('the mirror was modified or diverged')
    return undefined
  }
  const k = await KeptMap.open(paths.keptMap(info.stem), {
    generation: rec.generation ?? '',
    mirrorCid: rec.mirrorCid,
    size: rec.size,
    capacity: info.capacity,
    blockSize: info.blockSize,
    algorithm: info.algorithm,
  }).catch((err: unknown) => (err as Error).message)
  if (typeof k === 'string') {
    onKept?.(k)
    return undefined
  }
  return k
}

/**
 * The finished map of a resync about to commit, for the kept map: its open
 * file, where its digests start and whether they came partly from the kept
 * map. Undefined when it is missing, of another cycle or incomplete.
 */
export async function finishedResyncMap(paths: VmPaths, info: InflightDisk): Promise<{ fh: FileHandle; offset: number; usedKept: boolean } | undefined> {
  const blockSize = info.blockSize ?? 0
  if (info.mode !== 'resync' || blockSize <= 0) return undefined
  let fh: FileHandle
  try {
    fh = await openStoreFile(paths.blockMap(info.stem), 'read')
  } catch {
    return undefined
  }
  const h = await readHeader(fh).catch(() => undefined)
  const blocks = blockCount(info.capacity, blockSize)
  const ok =
    h !== undefined &&
    h.header.cycleId === info.cycleId &&
    h.header.blockSize === blockSize &&
    h.header.algorithm === info.algorithm &&
    h.header.capacity === info.capacity &&
    (await fh.stat()).size >= h.end + blocks * DigestLengths[info.algorithm]
  if (!ok) {
    await fh.close()
    return undefined
  }
  return { fh, offset: h.end, usedKept: h.header.kept === true }
}

/** Remove the block maps of `stems` (after their cycle committed or rolled back; idempotent). */
export async function removeResyncMaps(paths: VmPaths, stems: Iterable<string>): Promise<void> {
  for (const s of stems) await unlinkIfExists(paths.blockMap(s))
}
