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
  readonly #cache = new Map<number, Float64Array>()
  readonly #cacheMax: number
  #lastGrain: { off: number, data: Buffer } | undefined

  constructor (file: DiskFile, size: number, grainSize: number, gtEntries: number, gtBytes: number, gd: Float64Array) {
    this.file = file
    this.size = size
    this.grainSize = grainSize
    this.gtEntries = gtEntries
    this.gtBytes = gtBytes
    this.gd = gd
    // enough to hold a 1 GiB window twice over, bounded to ~32 MiB of decoded tables
    const cover = grainSize * gtEntries
    const perTable = gtEntries * 8
    this.#cacheMax = Math.max(16, Math.min(Math.ceil(2 * 2 ** 30 / cover), Math.floor(32 * 2 ** 20 / perTable)))
  }

  /** Decode one on-disk grain table (validating every entry). */
  protected abstract decodeTable (buf: Buffer, offset: number, gdIndex: number): Float64Array

  /** bytes of disk covered by one grain table */
  get tableCover (): number { return this.grainSize * this.gtEntries }

  #remember (gdIndex: number, t: Float64Array): void {
    this.#cache.set(gdIndex, t)
    if (this.#cache.size > this.#cacheMax) {
      const first = this.#cache.keys().next()
      if (first.done !== true) this.#cache.delete(first.value)
    }
  }

  /** The decoded table for one GD entry, or null when the GD entry is empty. */
  table (gdIndex: number): Float64Array | null {
    const off = this.gd[gdIndex] ?? 0
    if (off === 0) return null
    const hit = this.#cache.get(gdIndex)
    if (hit !== undefined) {
      this.#cache.delete(gdIndex)
      this.#cache.set(gdIndex, hit)
      return hit
    }
    const buf = this.file.readMetaSync(off, this.gtBytes, 'grain table')
    const t = this.decodeTable(buf, 0, gdIndex)
    this.#remember(gdIndex, t)
    return t
  }

  /** Drop a cached table (writers call this after changing it on disk). */
  setTable (gdIndex: number, t: Float64Array): void {
    this.#cache.delete(gdIndex)
    this.#remember(gdIndex, t)
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
      const buf = this.file.readMetaSync(base, (j - k) * this.gtBytes, 'grain tables')
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
      while (pos < tEnd) {
        const gi = Math.floor(pos / g)
        const gEnd = Math.min(tEnd, (gi + 1) * g)
        const v = t[gi - gdIndex * this.gtEntries] ?? 0
        if (v === GTE_NONE) pushRun(out, pos, gEnd - pos, RunState.None, -1, true)
        else if (v === GTE_ZERO) pushRun(out, pos, gEnd - pos, RunState.Zero, -1, true)
        else if (v > 0) pushRun(out, pos, gEnd - pos, RunState.Data, v + (pos - gi * g), true)
        else out.push({ start: pos, length: gEnd - pos, state: RunState.Data, off: v })
        pos = gEnd
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
        const n = Math.min(this.gtEntries, Math.ceil((this.size - base) / this.grainSize))
        for (let j = 0; j < n; j++) {
          const v = t[j] ?? 0
          if (v === GTE_NONE) continue
          const state = v === GTE_ZERO ? RunState.Zero : RunState.Data
          const s = base + j * this.grainSize
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
