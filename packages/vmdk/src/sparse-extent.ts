import { inflateSync } from 'node:zlib'
import type { DiskFile } from './disk-file.ts'
import { VmdkError } from './errors.ts'
import type { Extent, ExtentWalk, Run } from './extent.ts'
import { type GrainTable, TableBuilder, tablesToAllocated, tablesToRuns } from './grain-table.ts'
import { GrainTableStore, type TableStoreStats } from './grain-table-store.ts'

export { GTE_NONE, GTE_ZERO, TableBuilder, isZeroBlock } from './grain-table.ts'
export type { GrainTable } from './grain-table.ts'

/** Largest grain directory we agree to hold in memory. */
export const MAX_GD_BYTES = 64 * 1024 * 1024
/** Largest virtual size we accept (VMDK's own cap is 62 TB). */
export const MAX_CAPACITY = 2 ** 47
/** GD entries per batch of `allocated()`. */
const ALLOCATED_WINDOW = 256

/**
 * Common machinery for grain-directory/grain-table extents (KDMV, COWD, SEsparse):
 * an in-memory GD, decoded tables loaded with few large concurrent reads and kept
 * in a byte-bounded LRU ({@link GrainTableStore}), in-order walks that read the
 * tables in file order, run computation and allocated-range walking.
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
  readonly #store: GrainTableStore
  #lastGrain: { off: number; data: Buffer } | undefined

  constructor(file: DiskFile, size: number, grainSize: number, gtEntries: number, gtBytes: number, gd: Float64Array) {
    this.file = file
    this.size = size
    this.grainSize = grainSize
    this.gtEntries = gtEntries
    this.gtBytes = gtBytes
    this.gd = gd
    this.#store = new GrainTableStore(this)
  }

  /** Decode one on-disk grain table (validating every non-zero entry). */
  abstract decodeTable(buf: Buffer, offset: number, gdIndex: number): GrainTable

  /** bytes of disk covered by one grain table */
  get tableCover(): number {
    return this.grainSize * this.gtEntries
  }

  /** Grain-table I/O counters of this extent. */
  get tableStats(): Readonly<TableStoreStats> {
    return this.#store.stats
  }

  #gdRange(start: number, length: number): [number, number] {
    const cover = this.tableCover
    const first = Math.floor(start / cover)
    const last = Math.min(this.gd.length - 1, Math.floor((start + length - 1) / cover))
    return [first, Math.max(first - 1, last)]
  }

  async runs(start: number, length: number): Promise<Run[]> {
    if (length <= 0) return []
    const [first, last] = this.#gdRange(start, length)
    const tables = last < first ? [] : (this.#store.tablesIfCached(first, last) ?? (await this.#store.tables(first, last)))
    return tablesToRuns(this, tables, first, start, length)
  }

  walk(start: number, end: number): ExtentWalk {
    const [first, last] = this.#gdRange(start, Math.max(1, end - start))
    const w = this.#store.walk(first, last + 1)
    return {
      runs: async (s: number, length: number): Promise<Run[]> => {
        if (length <= 0) return []
        const [a, b] = this.#gdRange(s, length)
        const tables = b >= a ? await w.tables(a, b) : []
        return tablesToRuns(this, tables, a, s, length)
      },
    }
  }

  async *allocated(signal?: AbortSignal): AsyncGenerator<Run[]> {
    const w = this.#store.walk(0, this.gd.length)
    let pending: Run | undefined
    for (let first = 0; first < this.gd.length; first += ALLOCATED_WINDOW) {
      if (signal?.aborted === true) throw new VmdkError('E_ABORTED', 'walk aborted', this.file.path)
      const last = Math.min(this.gd.length, first + ALLOCATED_WINDOW) - 1
      const out: Run[] = []
      pending = tablesToAllocated(this, await w.tables(first, last), first, pending, out)
      if (out.length > 0) yield out
    }
    if (pending !== undefined) yield [pending]
  }

  /** The decoded table for one GD entry, or null when the GD entry is empty. */
  async table(gdIndex: number): Promise<GrainTable | null> {
    return (await this.#store.tables(gdIndex, gdIndex))[0] ?? null
  }

  /** A table as a dense, mutable array of decoded values (for the writer), or null. */
  async denseTable(gdIndex: number): Promise<Float64Array | null> {
    const t = await this.table(gdIndex)
    if (t === null) return null
    const d = new Float64Array(this.gtEntries)
    for (let k = 0; k + 1 < t.length; k += 2) d[t[k] as number] = t[k + 1] as number
    return d
  }

  /** Replace a cached table after the writer changed it. */
  setTable(gdIndex: number, dense: Float64Array): void {
    const b = new TableBuilder()
    for (let j = 0; j < dense.length; j++) if ((dense[j] ?? 0) !== 0) b.push(j, dense[j] ?? 0)
    this.#store.remember(gdIndex, b.done())
  }

  /** Read and inflate one compressed grain record (streamOptimized), cached once. */
  protected async readCompressedGrain(off: number): Promise<Buffer> {
    if (this.#lastGrain?.off === off) return this.#lastGrain.data
    const data = await this.inflateGrain(off)
    this.#lastGrain = { off, data }
    return data
  }

  /** Overridden by the hosted extent (the only one with compressed grains). */
  protected async inflateGrain(off: number): Promise<Buffer> {
    throw new VmdkError('E_FORMAT', `compressed grain at ${off} in a non-compressed extent`, this.file.path)
  }

  async readRun(run: Run, start: number, length: number, buf: Uint8Array, bufOffset: number): Promise<void> {
    if (run.off >= 0) {
      await this.file.readInto(buf, bufOffset, length, run.off + (start - run.start))
      return
    }
    const grain = await this.readCompressedGrain(-run.off)
    const within = start % this.grainSize
    // a grain inflates to the whole grain, or to the end of the extent for its last, partial grain
    // (VMDK.md §4.2 "last grain may be partial"): shorter is a corrupt grain, never zeros (QEMU refuses it too)
    const need = Math.min(this.grainSize, this.size - (start - within))
    if (grain.length < need) {
      throw new VmdkError(
        'E_FORMAT',
        `compressed grain at byte ${-run.off} (disk bytes ${start - within}–${start - within + need}) inflates to ${grain.length} bytes, not ${need}: the file is corrupt; make it again from the source`,
        this.file.path,
      )
    }
    buf.set(grain.subarray(within, within + length), bufOffset)
  }

  async close(): Promise<void> {
    this.#store.clear()
    await this.file.close()
  }
}

/** Inflate a zlib (RFC 1950) or raw deflate stream with an output bound. */
export function inflateBounded(data: Buffer, maxOut: number, file: string): Buffer {
  try {
    return inflateSync(data, { maxOutputLength: maxOut })
  } catch (err) {
    throw new VmdkError('E_FORMAT', `compressed grain does not inflate: ${(err as Error).message}`, file, { cause: err })
  }
}
