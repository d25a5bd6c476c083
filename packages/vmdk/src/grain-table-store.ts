/**
 * Loading and keeping decoded grain tables of one sparse extent, built for
 * high-latency files: tables that sit back to back (or nearly) are read with one
 * large read, up to `concurrency` reads are in flight, concurrent callers share
 * a load in progress, and decoded tables stay in a byte-bounded LRU.
 *
 * In-order walks (`map`, `changedRanges`) use {@link TableWalk}: it sweeps the
 * extent's tables in FILE order (sequential, large reads) and keeps the ones of
 * the lowest grain-directory indices that fit its byte budget, so a delta whose
 * tables were allocated in random order is still read front to back once.
 */
import type { DiskFile } from './disk-file.ts'
import { forEachLimited } from './concurrency.ts'
import { type GrainTable, tableCost } from './grain-table.ts'

/** What the store needs from its extent. */
export interface TableSource {
  readonly file: DiskFile
  /** byte offset of each grain table in the file (0 = none), one per GD entry */
  readonly gd: Float64Array
  /** bytes of one grain table on disk */
  readonly gtBytes: number
  /** decode (and validate) the table of GD entry `gdIndex` found at `buf[offset…]` */
  decodeTable(buf: Buffer, offset: number, gdIndex: number): GrainTable
}

/** Decoded tables kept per extent for random access (bytes, approximate). */
export const TABLE_CACHE_BYTES = 32 * 1024 * 1024
/** Decoded tables a walk keeps ahead of itself (bytes, approximate). */
export const WALK_BYTES = 24 * 1024 * 1024
/**
 * Largest grain-table read (and `maxReadBytes` when smaller). Tables are scanned
 * right after they are read: 1 MiB pieces are still in the CPU caches then and scan
 * 3-4× faster than 4 MiB ones (measured with scripts/bench-vmdk.mjs).
 */
export const TABLE_READ_BYTES = 1024 * 1024
/** Most GD entries one sweep covers (bounds its dense result array). */
const MAX_SWEEP_SPAN = 1 << 20
/** Read through gaps up to this size rather than issue another read. */
const GAP_BYTES = 64 * 1024
/** Reads up to this size allocate their own buffer; larger ones reuse pooled ones. */
const SMALL_READ = 64 * 1024

interface Chunk {
  off: number
  bytes: number
  items: number[]
}

/**
 * GD indices sorted by their tables' file offsets: a native sort of packed
 * (sector, index) keys when they fit a double exactly, else a comparator sort.
 */
function byOffset(indices: readonly number[], gd: Float64Array): number[] {
  const n = indices.length
  if (n < 2) return indices.slice()
  let maxSector = 0
  let maxIdx = 0
  for (let k = 0; k < n; k++) {
    const i = indices[k] as number
    const sec = Math.floor((gd[i] as number) / 512)
    if (sec > maxSector) maxSector = sec
    if (i > maxIdx) maxIdx = i
  }
  const shift = 2 ** Math.ceil(Math.log2(maxIdx + 1))
  if ((maxSector + 1) * shift > Number.MAX_SAFE_INTEGER) {
    return indices.slice().sort((a, b) => (gd[a] as number) - (gd[b] as number))
  }
  const keys = new Float64Array(n)
  for (let k = 0; k < n; k++) {
    const i = indices[k] as number
    keys[k] = Math.floor((gd[i] as number) / 512) * shift + i
  }
  keys.sort()
  const out = new Array<number>(n)
  for (let k = 0; k < n; k++) out[k] = (keys[k] as number) % shift
  return out
}

/** Counters (for tests and benchmarks). */
export interface TableStoreStats {
  /** read calls issued for grain tables */
  reads: number
  /** bytes read for grain tables */
  bytes: number
  /** tables decoded */
  decoded: number
}

/** The decoded grain tables of one sparse extent: LRU, shared in-flight loads, sweeps for walks. */
export class GrainTableStore {
  readonly #src: TableSource
  readonly #cache = new Map<number, GrainTable>()
  #cacheBytes = 0
  readonly #cacheLimit: number
  readonly #inflight = new Map<number, Promise<GrainTable>>()
  readonly #pool: Buffer[] = []
  /** average decoded cost of a table seen by sweeps (0 = none yet) */
  #avgCost = 0
  readonly stats: TableStoreStats = { reads: 0, bytes: 0, decoded: 0 }

  constructor(src: TableSource, cacheBytes = TABLE_CACHE_BYTES) {
    this.#src = src
    this.#cacheLimit = cacheBytes
  }

  get #maxChunk(): number {
    return Math.max(this.#src.gtBytes, Math.min(TABLE_READ_BYTES, this.#src.file.maxReadBytes))
  }

  /** A cached table (refreshing its LRU position), null for no table, undefined when not loaded. */
  cached(gdIndex: number): GrainTable | null | undefined {
    if ((this.#src.gd[gdIndex] ?? 0) === 0) return null
    const t = this.#cache.get(gdIndex)
    if (t !== undefined) {
      this.#cache.delete(gdIndex)
      this.#cache.set(gdIndex, t)
    }
    return t
  }

  /** Put a table in the LRU (the writer's replacement, or a walk's result). */
  remember(gdIndex: number, t: GrainTable): void {
    const old = this.#cache.get(gdIndex)
    if (old === t) return
    if (old !== undefined) {
      this.#cacheBytes -= tableCost(old)
      this.#cache.delete(gdIndex)
    }
    this.#cache.set(gdIndex, t)
    this.#cacheBytes += tableCost(t)
    while (this.#cacheBytes > this.#cacheLimit && this.#cache.size > 1) {
      const first = this.#cache.entries().next()
      if (first.done === true) break
      this.#cache.delete(first.value[0])
      this.#cacheBytes -= tableCost(first.value[1])
    }
  }

  /** The tables of GD entries [first, last] when all are in memory (no I/O, no await), else undefined. */
  tablesIfCached(first: number, last: number): Array<GrainTable | null> | undefined {
    const out = new Array<GrainTable | null>(last - first + 1)
    for (let i = first; i <= last; i++) {
      const c = this.cached(i)
      if (c === undefined) return undefined
      out[i - first] = c
    }
    return out
  }

  /** The tables of GD entries [first, last] (null where there is none), loading what is missing. */
  async tables(first: number, last: number): Promise<Array<GrainTable | null>> {
    const out = new Array<GrainTable | null>(last - first + 1).fill(null)
    const missing: number[] = []
    let waits: Array<Promise<void>> | undefined
    for (let i = first; i <= last; i++) {
      const c = this.cached(i)
      if (c !== undefined) {
        out[i - first] = c
        continue
      }
      const p = this.#inflight.get(i)
      if (p !== undefined) {
        waits ??= []
        waits.push(
          p.then((t) => {
            out[i - first] = t
          }),
        )
        continue
      }
      missing.push(i)
    }
    if (missing.length > 0) {
      waits ??= []
      waits.push(
        this.#load(missing, (i, t) => {
          this.remember(i, t)
          if (i >= first && i <= last) out[i - first] = t
        }),
      )
    }
    // one Promise.all over everything, so a failure of one never leaves another unhandled
    if (waits !== undefined) await Promise.all(waits)
    return out
  }

  /** Start an in-order walk over GD entries [first, end). */
  walk(first: number, end: number): TableWalk {
    return new TableWalk(this, first, end)
  }

  clear(): void {
    this.#cache.clear()
    this.#cacheBytes = 0
    this.#pool.length = 0
  }

  /** Group GD indices (sorted by file offset) into reads of back-to-back or nearby tables. */
  #plan(sorted: readonly number[], accept: (i: number) => boolean, from: { k: number }): Chunk | undefined {
    const gd = this.#src.gd
    const gt = this.#src.gtBytes
    const max = this.#maxChunk
    let c: Chunk | undefined
    while (from.k < sorted.length) {
      const i = sorted[from.k] as number
      if (!accept(i)) {
        from.k++
        continue
      }
      const off = gd[i] as number
      if (c === undefined) {
        c = { off, bytes: gt, items: [i] }
      } else {
        const end = c.off + c.bytes
        if (off < end || off - end > GAP_BYTES || off + gt - c.off > max) break
        c.bytes = off + gt - c.off
        c.items.push(i)
      }
      from.k++
    }
    return c
  }

  #take(bytes: number): Buffer {
    if (bytes <= SMALL_READ) return Buffer.allocUnsafe(bytes)
    return this.#pool.pop() ?? Buffer.allocUnsafe(this.#maxChunk)
  }

  #give(buf: Buffer): void {
    if (buf.length === this.#maxChunk && this.#pool.length < this.#src.file.concurrency) this.#pool.push(buf)
  }

  async #readChunk(c: Chunk): Promise<Buffer> {
    const buf = this.#take(c.bytes)
    try {
      await this.#src.file.readExact(c.off, c.bytes, 'grain tables', buf)
    } catch (err) {
      this.#give(buf)
      throw err
    }
    this.stats.reads++
    this.stats.bytes += c.bytes
    return buf
  }

  #decode(buf: Buffer, c: Chunk, i: number): GrainTable {
    this.stats.decoded++
    return this.#src.decodeTable(buf, (this.#src.gd[i] as number) - c.off, i)
  }

  /**
   * Load the tables of `indices` (none cached or in flight), registering each as
   * in flight so concurrent callers share the reads; `sink` gets every table.
   */
  async #load(indices: number[], sink: (i: number, t: GrainTable) => void): Promise<void> {
    const sorted = indices.length > 1 ? byOffset(indices, this.#src.gd) : indices
    const chunks: Chunk[] = []
    const from = { k: 0 }
    for (let c = this.#plan(sorted, () => true, from); c !== undefined; c = this.#plan(sorted, () => true, from)) chunks.push(c)
    const settle = new Map<number, { resolve: (t: GrainTable) => void; reject: (e: unknown) => void }>()
    for (const i of indices) {
      const p = new Promise<GrainTable>((resolve, reject) => {
        settle.set(i, { resolve, reject })
      })
      p.catch(() => {})
      this.#inflight.set(i, p)
    }
    try {
      await forEachLimited(chunks, this.#src.file.concurrency, async (c) => {
        const buf = await this.#readChunk(c)
        try {
          for (const i of c.items) {
            const t = this.#decode(buf, c, i)
            sink(i, t)
            settle.get(i)?.resolve(t)
            settle.delete(i)
            this.#inflight.delete(i)
          }
        } finally {
          this.#give(buf)
        }
      })
    } catch (err) {
      for (const s of settle.values()) s.reject(err)
      throw err
    } finally {
      for (const i of settle.keys()) this.#inflight.delete(i)
    }
  }

  /**
   * Sweep for a walk: read the tables of GD entries [s, end) in file order and
   * keep those of the lowest indices whose decoded size fits `budget` (always at
   * least [s, mustCover]; never more than MAX_SWEEP_SPAN entries). Returns the
   * tables of [s, covered) densely (undefined = no table).
   */
  async sweep(s: number, end: number, mustCover: number, budget: number): Promise<{ covered: number; tables: Array<GrainTable | undefined> }> {
    const gd = this.#src.gd
    const floor = Math.min(end, mustCover + 1)
    // after a first sweep the average table cost predicts where the budget runs out
    let g = Math.min(end, Math.max(floor, s + MAX_SWEEP_SPAN))
    if (this.#avgCost > 0) g = Math.min(g, Math.max(floor, s + Math.floor(budget / this.#avgCost)))
    const tables = new Array<GrainTable | undefined>(g - s)
    let kept = 0
    const toRead: number[] = []
    for (let i = s; i < g; i++) {
      if ((gd[i] ?? 0) === 0) continue
      const c = this.cached(i)
      if (c !== undefined && c !== null) {
        tables[i - s] = c
        kept += tableCost(c)
        continue
      }
      toRead.push(i)
    }
    let decodedCost = 0
    let decodedCount = 0
    const add = (i: number, t: GrainTable): void => {
      const cost = tableCost(t)
      decodedCost += cost
      decodedCount++
      if (i >= g) return
      tables[i - s] = t
      kept += cost
      while (kept > budget && g > floor) {
        g--
        const d = tables[g - s]
        if (d !== undefined) {
          kept -= tableCost(d)
          tables[g - s] = undefined
        }
      }
    }
    const sorted = byOffset(toRead, gd)
    const from = { k: 0 }
    let failed = false
    const worker = async (): Promise<void> => {
      try {
        for (let c = this.#plan(sorted, (i) => i < g, from); c !== undefined && !failed; c = this.#plan(sorted, (i) => i < g, from)) {
          const buf = await this.#readChunk(c)
          try {
            for (const i of c.items) if (i < g) add(i, this.#decode(buf, c, i))
          } finally {
            this.#give(buf)
          }
        }
      } catch (err) {
        failed = true
        throw err
      }
    }
    const n = Math.max(1, this.#src.file.concurrency)
    const workers: Array<Promise<void>> = []
    for (let k = 0; k < n; k++) workers.push(worker())
    const results = await Promise.allSettled(workers)
    for (const r of results) if (r.status === 'rejected') throw r.reason
    if (decodedCount > 0) this.#avgCost = decodedCost / decodedCount
    tables.length = g - s
    return { covered: g, tables }
  }
}

/**
 * An in-order walk over a range of GD entries: windows must not go back. Tables
 * come from sweeps in file order (see {@link GrainTableStore.sweep}); each table
 * handed out is also put in the extent's LRU for later random reads.
 */
export class TableWalk {
  readonly #store: GrainTableStore
  readonly #end: number
  /** the current sweep's tables of GD entries [#base, #covered) */
  #base: number
  #tabs: Array<GrainTable | undefined> = []
  #covered: number
  /** entries below this were dropped (windows never go back) */
  #released: number

  constructor(store: GrainTableStore, first: number, end: number) {
    this.#store = store
    this.#end = end
    this.#base = first
    this.#covered = first
    this.#released = first
  }

  #get(i: number): GrainTable | null {
    const t = this.#tabs[i - this.#base]
    if (t === undefined) return null
    this.#store.remember(i, t)
    return t
  }

  async tables(first: number, last: number): Promise<Array<GrainTable | null>> {
    for (; this.#released < first && this.#released < this.#covered; this.#released++) {
      if (this.#released >= this.#base) this.#tabs[this.#released - this.#base] = undefined
    }
    this.#released = Math.max(this.#released, first)
    const out = new Array<GrainTable | null>(last - first + 1)
    let i = first
    for (; i <= last && i < this.#covered; i++) out[i - first] = this.#get(i)
    if (i <= last) {
      const r = await this.#store.sweep(i, Math.max(this.#end, last + 1), last, WALK_BYTES)
      this.#base = i
      this.#tabs = r.tables
      this.#covered = r.covered
      for (; i <= last; i++) out[i - first] = this.#get(i)
    }
    return out
  }
}
