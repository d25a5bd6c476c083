/**
 * Compact sets and lists of 4 KiB grain indexes, for the grains a journal
 * indexes (type 4 records, journal.ts) and a reverse increment has saved
 * (increment.ts). One JS object or Set entry per grain cost ~60–80 bytes of
 * heap: an incremental of 100 GiB in 4 KiB grains is ~25 M grains, GBs of
 * heap at a resume or rollback. Here a grain costs a bit of a bitmap
 * ({@link GrainSet}) and, in a {@link GrainList}, 12 bytes of typed arrays.
 */

/**
 * Grains one bitmap page covers: 2^10 grains (4 MiB of disk) in 128 bytes.
 * Small pages, so grains scattered over a large disk (or a journal whose head
 * claims a huge capacity) cost ~0.3 KiB each, not a page of 8 KiB each: with
 * pages of 2^16 grains, one 4 KiB write per 256 MiB of a 16 TiB disk took
 * 512 MiB of bitmap, and a journal of N bytes could allocate ~680 N.
 */
const PAGE_GRAINS = 2 ** 10

/**
 * A set of grain indexes (non-negative safe integers): a bitmap allocated in
 * pages of 128 bytes as grains are added, so its memory is bounded by the span
 * of the disk it touches (~capacity / 32 Ki bytes of bitmap plus a Map entry
 * and a typed array per 4 MiB: ~7 MiB for 100 GiB) and by one page a grain added.
 */
export class GrainSet {
  readonly #pages = new Map<number, Uint32Array>()
  #size = 0
  // the page of the last look-up: grains come mostly in runs
  #lastKey = -1
  #last: Uint32Array | undefined

  #page(g: number, make: boolean): Uint32Array | undefined {
    const key = Math.floor(g / PAGE_GRAINS)
    if (key === this.#lastKey && this.#last !== undefined) return this.#last
    let p = this.#pages.get(key)
    if (p === undefined && make) {
      p = new Uint32Array(PAGE_GRAINS / 32)
      this.#pages.set(key, p)
    }
    if (p !== undefined) {
      this.#lastKey = key
      this.#last = p
    }
    return p
  }

  has(g: number): boolean {
    const p = this.#page(g, false)
    if (p === undefined) return false
    const b = g % PAGE_GRAINS
    return ((p[b >>> 5] as number) & (1 << (b & 31))) !== 0
  }

  /** Add grain `g`; true when it was not in the set yet. */
  add(g: number): boolean {
    const p = this.#page(g, true) as Uint32Array
    const b = g % PAGE_GRAINS
    const w = b >>> 5
    const m = 1 << (b & 31)
    const v = p[w] as number
    if ((v & m) !== 0) return false
    p[w] = v | m
    this.#size++
    return true
  }

  /** Grains in the set. */
  get size(): number {
    return this.#size
  }
}

/** A grain of a {@link GrainList}: what a journal's type 4 entry says. */
export interface GrainEntry {
  /** grain index (4 KiB grains) */
  readonly grain: number
  /** crc32 of the grain's old bytes */
  readonly crc: number
}

/** Entries of one chunk of a {@link GrainList}: 768 KiB of typed arrays, no copy as the list grows. */
const CHUNK = 2 ** 16

/**
 * The first entry of each grain, in the order given: a later entry of a grain
 * already listed is dropped (everything that reads a journal's grains lets
 * the first entry of a grain win: it holds the committed bytes). 12 bytes an
 * entry (a Float64Array of indexes, a Uint32Array of crcs, in chunks of 64 Ki
 * entries) and a {@link GrainSet} of the grains listed; entries are read by
 * position ({@link grainAt}, {@link crcAt}) without an object each.
 */
export class GrainList implements Iterable<GrainEntry> {
  readonly #grains: Float64Array[] = []
  readonly #crcs: Uint32Array[] = []
  readonly #seen = new GrainSet()
  #n = 0

  /** A list of the first entry of each grain of `entries`. */
  static from(entries: Iterable<GrainEntry>): GrainList {
    if (entries instanceof GrainList) return entries
    const l = new GrainList()
    for (const e of entries) l.push(e.grain, e.crc)
    return l
  }

  /** Append `grain` (a non-negative safe integer) with its crc, unless listed already; true when appended. */
  push(grain: number, crc: number): boolean {
    if (!this.#seen.add(grain)) return false
    const c = Math.floor(this.#n / CHUNK)
    if (c === this.#grains.length) {
      this.#grains.push(new Float64Array(CHUNK))
      this.#crcs.push(new Uint32Array(CHUNK))
    }
    const i = this.#n % CHUNK
    ;(this.#grains[c] as Float64Array)[i] = grain
    ;(this.#crcs[c] as Uint32Array)[i] = crc >>> 0
    this.#n++
    return true
  }

  /** Entries listed (distinct grains). */
  get length(): number {
    return this.#n
  }

  /** Whether `grain` is listed. */
  has(grain: number): boolean {
    return this.#seen.has(grain)
  }

  /** The grain of entry `i` (0 ≤ i < length). */
  grainAt(i: number): number {
    return (this.#grains[Math.floor(i / CHUNK)] as Float64Array)[i % CHUNK] as number
  }

  /** The crc of entry `i` (0 ≤ i < length). */
  crcAt(i: number): number {
    return (this.#crcs[Math.floor(i / CHUNK)] as Uint32Array)[i % CHUNK] as number
  }

  /** Entry `i` as an object (negative: from the end, as `Array.prototype.at`). */
  at(i: number): GrainEntry | undefined {
    const k = i < 0 ? this.#n + i : i
    if (!Number.isInteger(k) || k < 0 || k >= this.#n) return undefined
    return { grain: this.grainAt(k), crc: this.crcAt(k) }
  }

  *[Symbol.iterator](): Iterator<GrainEntry> {
    for (let i = 0; i < this.#n; i++) yield { grain: this.grainAt(i), crc: this.crcAt(i) }
  }
}
