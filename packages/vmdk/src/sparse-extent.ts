import { inflateSync } from 'node:zlib'
import type { DiskFile } from './disk-file.ts'
import { VmdkError } from './errors.ts'
import { type Extent, type Run, RunState, pushRun } from './extent.ts'

/**
 * Decoded grain table entry values (Float64Array):
 *   0          not in this extent (read the parent)
 *   -1         zero grain
 *   > 0        byte offset of the grain's data in the file
 *   < -1       compressed grain whose record starts at byte offset -value
 */
export const GTE_NONE = 0
export const GTE_ZERO = -1

/**
 * A decoded grain table, kept sparse: the indices of its non-zero entries (ascending)
 * and their decoded values. A 2 TiB delta with 100,000 scattered grains has ~70,000
 * tables with one or two entries each; dense tables would churn gigabytes.
 */
export interface GrainTable {
  readonly idx: Uint16Array
  readonly val: Float64Array
}

const SCRATCH_IDX = new Uint16Array(4096)
const SCRATCH_VAL = new Float64Array(4096)
const ZERO_BLOCK = Buffer.alloc(4096)

/** Collects a table's non-zero entries during decoding. */
export class TableBuilder {
  n = 0
  push (j: number, v: number): void {
    SCRATCH_IDX[this.n] = j
    SCRATCH_VAL[this.n] = v
    this.n++
  }

  done (): GrainTable {
    const t = { idx: SCRATCH_IDX.slice(0, this.n), val: SCRATCH_VAL.slice(0, this.n) }
    this.n = 0
    return t
  }
}

/** True if buf[off, off+len) is all zero (len <= 4096; one memcmp). */
export function isZeroBlock (buf: Buffer, off: number, len: number): boolean {
  return buf.compare(ZERO_BLOCK, 0, len, off, off + len) === 0
}

/** Metadata is decoded right after it is read, so one scratch buffer serves every extent. */
let SCRATCH = Buffer.allocUnsafe(64 * 1024)
function scratch (n: number): Buffer {
  if (SCRATCH.length < n) SCRATCH = Buffer.allocUnsafe(n)
  return SCRATCH
}

/** Index of the first entry >= j. */
function lowerBound (idx: Uint16Array, j: number): number {
  let lo = 0
  let hi = idx.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((idx[mid] ?? 0) < j) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** Decoded grain tables kept per extent (bytes, approximate). */
const CACHE_BUDGET = 32 * 1024 * 1024

function tableCost (t: GrainTable): number {
  return 128 + t.idx.length * 10
}

/** Largest grain directory we agree to hold in memory. */
export const MAX_GD_BYTES = 64 * 1024 * 1024
/** Largest virtual size we accept (VMDK's own cap is 62 TB). */
export const MAX_CAPACITY = 2 ** 47
/** Largest single metadata read when loading grain tables in bulk. */
const MAX_BULK_READ = 4 * 1024 * 1024

/**
 * Common machinery for grain-directory/grain-table extents (KDMV, COWD, SEsparse):
 * an in-memory GD, an LRU cache of decoded GTs, bulk prefetch with coalesced reads,
 * run computation and allocated-range walking.
 */
export abstract class SparseExtent implements Extent {
  abstract readonly format: 'hosted' | 'cowd' | 'sesparse'
  readonly sparse = true
  readonly file: DiskFile
  readonly size: number
  /** grain size in bytes */
  readonly grainSize: number
  /** entries per grain table */
  readonly gtEntries: number
  /** bytes of one grain table on disk */
  readonly gtBytes: number
  /** byte offset of each grain table in the file (0 = none), one per GD entry */
  readonly gd: Float64Array
  readonly #cache = new Map<number, GrainTable>()
  /** tables kept at least (a prefetch window must survive until it is walked) */
  readonly #cacheMax: number
  #cacheBytes = 0
  #lastGrain: { off: number, data: Buffer } | undefined

  constructor (file: DiskFile, size: number, grainSize: number, gtEntries: number, gtBytes: number, gd: Float64Array) {
    this.file = file
    this.size = size
    this.grainSize = grainSize
    this.gtEntries = gtEntries
    this.gtBytes = gtBytes
    this.gd = gd
    // enough to hold a 1 GiB map window twice over; tables are sparse, a full one is 10 bytes/entry
    const cover = grainSize * gtEntries
    const perTable = gtEntries * 10
    this.#cacheMax = Math.max(16, Math.min(Math.ceil(2 * 2 ** 30 / cover), Math.floor(48 * 2 ** 20 / perTable)))
  }

  /** Decode one on-disk grain table (validating every non-zero entry). */
  protected abstract decodeTable (buf: Buffer, offset: number, gdIndex: number): GrainTable

  /** bytes of disk covered by one grain table */
  get tableCover (): number { return this.grainSize * this.gtEntries }

  #remember (gdIndex: number, t: GrainTable): void {
    const old = this.#cache.get(gdIndex)
    if (old !== undefined) { this.#cacheBytes -= tableCost(old); this.#cache.delete(gdIndex) }
    this.#cache.set(gdIndex, t)
    this.#cacheBytes += tableCost(t)
    // LRU by bytes: sparse tables are small, so a whole delta's tables usually stay
    // (a later read pass then needs no table I/O); never below #cacheMax tables
    while (this.#cacheBytes > CACHE_BUDGET && this.#cache.size > this.#cacheMax) {
      const first = this.#cache.entries().next()
      if (first.done === true) break
      this.#cache.delete(first.value[0])
      this.#cacheBytes -= tableCost(first.value[1])
    }
  }

  /** The decoded table for one GD entry, or null when the GD entry is empty. */
  table (gdIndex: number): GrainTable | null {
    const off = this.gd[gdIndex] ?? 0
    if (off === 0) return null
    const hit = this.#cache.get(gdIndex)
    if (hit !== undefined) {
      this.#cache.delete(gdIndex)
      this.#cache.set(gdIndex, hit)
      return hit
    }
    const buf = this.file.readMetaSyncInto(scratch(this.gtBytes), off, this.gtBytes, 'grain table')
    const t = this.decodeTable(buf, 0, gdIndex)
    this.#remember(gdIndex, t)
    return t
  }

  /** A table as a dense, mutable array of decoded values (for the writer), or null. */
  denseTable (gdIndex: number): Float64Array | null {
    const t = this.table(gdIndex)
    if (t === null) return null
    const d = new Float64Array(this.gtEntries)
    for (let k = 0; k < t.idx.length; k++) d[t.idx[k] ?? 0] = t.val[k] ?? 0
    return d
  }

  /** Replace a cached table after the writer changed it. */
  setTable (gdIndex: number, dense: Float64Array): void {
    const b = new TableBuilder()
    for (let j = 0; j < dense.length; j++) if ((dense[j] ?? 0) !== 0) b.push(j, dense[j] ?? 0)
    this.#remember(gdIndex, b.done())
  }

  prefetch (start: number, length: number): void {
    const cover = this.tableCover
    const first = Math.floor(start / cover)
    const last = Math.min(this.gd.length - 1, Math.floor((start + length - 1) / cover))
    const want: number[] = []
    for (let i = first; i <= last; i++) if ((this.gd[i] ?? 0) !== 0 && !this.#cache.has(i)) want.push(i)
    if (want.length < 2) return
    if (want.length > this.#cacheMax / 2) want.length = Math.floor(this.#cacheMax / 2)
    want.sort((a, b) => (this.gd[a] ?? 0) - (this.gd[b] ?? 0))
    let k = 0
    while (k < want.length) {
      // coalesce tables that sit back to back in the file
      let j = k + 1
      const base = this.gd[want[k] ?? 0] ?? 0
      while (j < want.length && (this.gd[want[j] ?? 0] ?? 0) === base + (j - k) * this.gtBytes && (j - k + 1) * this.gtBytes <= MAX_BULK_READ) j++
      const buf = this.file.readMetaSyncInto(scratch((j - k) * this.gtBytes), base, (j - k) * this.gtBytes, 'grain tables')
      for (let m = k; m < j; m++) {
        const gdIndex = want[m] ?? 0
        this.#remember(gdIndex, this.decodeTable(buf, (m - k) * this.gtBytes, gdIndex))
      }
      k = j
    }
  }

  runs (start: number, length: number): Run[] {
    const out: Run[] = []
    const end = start + length
    const g = this.grainSize
    const cover = this.tableCover
    let pos = start
    while (pos < end) {
      const gdIndex = Math.floor(pos / cover)
      const tEnd = Math.min(end, (gdIndex + 1) * cover)
      const t = gdIndex < this.gd.length ? this.table(gdIndex) : null
      if (t === null) {
        pushRun(out, pos, tEnd - pos, RunState.None, -1, true)
        pos = tEnd
        continue
      }
      const tBase = gdIndex * this.gtEntries
      let k = lowerBound(t.idx, Math.floor(pos / g) - tBase)
      while (pos < tEnd) {
        const j = t.idx[k]
        const gs = j === undefined ? tEnd : (tBase + j) * g
        if (gs >= tEnd) { pushRun(out, pos, tEnd - pos, RunState.None, -1, true); pos = tEnd; break }
        if (gs > pos) { pushRun(out, pos, gs - pos, RunState.None, -1, true); pos = gs }
        const gEnd = Math.min(tEnd, gs + g)
        const v = t.val[k] ?? 0
        if (v === GTE_ZERO) pushRun(out, pos, gEnd - pos, RunState.Zero, -1, true)
        else if (v > 0) pushRun(out, pos, gEnd - pos, RunState.Data, v + (pos - gs), true)
        else out.push({ start: pos, length: gEnd - pos, state: RunState.Data, off: v })
        pos = gEnd
        k++
      }
    }
    return out
  }

  * allocated (): Generator<Run> {
    const cover = this.tableCover
    const window = Math.max(1, Math.floor(this.#cacheMax / 4))
    let pending: Run | undefined
    for (let w = 0; w < this.gd.length; w += window) {
      this.prefetch(w * cover, window * cover)
      const wEnd = Math.min(this.gd.length, w + window)
      for (let i = w; i < wEnd; i++) {
        const t = this.table(i)
        if (t === null) continue
        const base = i * cover
        for (let k = 0; k < t.idx.length; k++) {
          const v = t.val[k] ?? 0
          const state = v === GTE_ZERO ? RunState.Zero : RunState.Data
          const s = base + (t.idx[k] ?? 0) * this.grainSize
          if (s >= this.size) break
          const len = Math.min(this.grainSize, this.size - s)
          if (pending !== undefined && pending.state === state && pending.start + pending.length === s) {
            pending.length += len
          } else {
            if (pending !== undefined) yield pending
            pending = { start: s, length: len, state, off: -1 }
          }
        }
      }
    }
    if (pending !== undefined) yield pending
  }

  /** Read and inflate one compressed grain record (streamOptimized), cached once. */
  protected readCompressedGrain (off: number): Buffer {
    if (this.#lastGrain?.off === off) return this.#lastGrain.data
    const data = this.inflateGrain(off)
    this.#lastGrain = { off, data }
    return data
  }

  /** Overridden by the hosted extent (the only one with compressed grains). */
  protected inflateGrain (off: number): Buffer {
    throw new VmdkError('E_FORMAT', `compressed grain at ${off} in a non-compressed extent`, this.file.path)
  }

  async readRun (run: Run, start: number, length: number, buf: Uint8Array, bufOffset: number): Promise<void> {
    if (run.off >= 0) {
      await this.file.readInto(buf, bufOffset, length, run.off + (start - run.start))
      return
    }
    const grain = this.readCompressedGrain(-run.off)
    const within = start % this.grainSize
    buf.set(grain.subarray(within, within + length), bufOffset)
  }

  async close (): Promise<void> {
    this.#cache.clear()
    this.#cacheBytes = 0
    await this.file.close()
  }
}

/** Inflate a zlib (RFC 1950) or raw deflate stream with an output bound. */
export function inflateBounded (data: Buffer, maxOut: number, file: string): Buffer {
  try {
    return inflateSync(data, { maxOutputLength: maxOut })
  } catch (err) {
    throw new VmdkError('E_FORMAT', `compressed grain does not inflate: ${(err as Error).message}`, file, { cause: err })
  }
}
