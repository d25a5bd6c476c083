/**
 * Decoded grain tables and the pure conversions around them (table → runs,
 * table → allocated ranges). Shared by the KDMV, COWD and SEsparse extents.
 */
import { endianness } from 'node:os'
import { type Run, RunState, pushRun } from './extent.ts'

/**
 * Decoded grain table entry values:
 *   0          not in this extent (read the parent)
 *   -1         zero grain
 *   > 0        byte offset of the grain's data in the file
 *   < -1       compressed grain whose record starts at byte offset -value
 */
export const GTE_NONE = 0
export const GTE_ZERO = -1

/**
 * A decoded grain table, kept sparse: its non-zero entries as (index, value)
 * pairs in ascending index order, interleaved in one plain array of doubles
 * (`t[2k]` = entry index, `t[2k+1]` = decoded value). A 2 TiB delta with
 * 100,000 scattered grains has ~70,000 tables with one or two entries each;
 * dense tables would churn gigabytes. Plain arrays, not typed arrays: every
 * typed array brings an ArrayBuffer the garbage collector tracks one by one,
 * which made each young-generation GC of a 70,000-table walk 20–90 ms.
 */
export type GrainTable = readonly number[]

/** The table with no entries (shared). */
export const EMPTY_TABLE: GrainTable = Object.freeze([])

// a packed array of doubles (filled with a non-integer first, so it never holds small-integer elements)
const SCRATCH: number[] = new Array<number>(2 * 4096).fill(0.5)
const ZERO_BLOCK = Buffer.alloc(65536)

/**
 * Collects a table's non-zero entries while one table is decoded (synchronously:
 * the scratch array is shared).
 */
export class TableBuilder {
  n = 0
  push(j: number, v: number): void {
    SCRATCH[2 * this.n] = j
    SCRATCH[2 * this.n + 1] = v
    this.n++
  }

  done(): GrainTable {
    const n = this.n
    this.n = 0
    return n === 0 ? EMPTY_TABLE : SCRATCH.slice(0, 2 * n)
  }
}

/** True if buf[off, off+len) is all zero (len <= 65536; one memcmp). */
export function isZeroBlock(buf: Buffer, off: number, len: number): boolean {
  return buf.compare(ZERO_BLOCK, 0, len, off, off + len) === 0
}

const LITTLE_ENDIAN = endianness() === 'LE'
/** Bytes of a non-zero 4 KiB block compared with zeros at a time before its words are walked (a multiple of 8). */
const SUB_BLOCK = 256
/**
 * Bytes of a non-zero 4 KiB block compared with zeros before its 256-byte pieces are (a multiple of SUB_BLOCK):
 * a guest's 64 KiB write is 128 bytes of entries, so most of a block's pieces lie in quarters that are all zero,
 * and a cold agent process pays ~1.4 µs per `Buffer.compare` call (its argument checks run in the interpreter).
 */
const QUARTER = 1024
/** Counters of {@link nonZeroEntries} (for tests): the sub-blocks whose words were walked one by one. */
export const scanStats = { subBlocksWalked: 0 }
/** Most entries a table has (SEsparse and COWD: 4096); {@link nonZeroEntries} writes up to this many. */
const MAX_ENTRIES = 4096
/**
 * The entry indices found by the last {@link nonZeroEntries} call (shared scratch,
 * valid until the next call; decoding is synchronous).
 */
export const ENTRY_HITS = new Int32Array(MAX_ENTRIES)
/**
 * The little-endian words of those entries (shared scratch like {@link ENTRY_HITS}):
 * `ENTRY_LO[h]` the low 32 bits of hit `h`, `ENTRY_HI[h]` its high 32 bits (0 for
 * 4-byte entries). The decoders read these instead of calling `readUInt32LE` per
 * entry: a cold agent process decodes a plan's tables in the interpreter, where
 * each such call costs more than the rest of the entry's decoding (issue #17).
 */
export const ENTRY_LO = new Uint32Array(MAX_ENTRIES)
export const ENTRY_HI = new Uint32Array(MAX_ENTRIES)
// an Int32Array over the whole ArrayBuffer of the last buffer scanned: the sweep decodes the
// 32 tables of one 1 MiB read back to back, so this is one view per read, not one per table
let viewOf: ArrayBufferLike | undefined
let view: Int32Array<ArrayBufferLike> = new Int32Array(0)

/**
 * Find the non-zero entries of a grain table of `bytes` bytes at `buf[offset…]`
 * whose entries are `entryBytes` (4 or 8) little-endian bytes each: each 4 KiB
 * block is first compared with zeros in one memcmp, then each 1 KiB quarter of a
 * block that is not all zero, then each 256-byte piece of a quarter that is not,
 * and only a piece that is not all zero is walked,
 * word by word through an Int32Array view of the buffer (no per-entry
 * bounds-checked reads). Writes the indices, ascending, to
 * {@link ENTRY_HITS} and returns how many there are (at most `bytes / entryBytes`,
 * at most 4096).
 */
export function nonZeroEntries(buf: Buffer, offset: number, bytes: number, entryBytes: 4 | 8): number {
  if (bytes / entryBytes > MAX_ENTRIES) throw new RangeError(`a grain table of ${bytes / entryBytes} entries`)
  let n = 0
  for (let b = 0; b < bytes; b += 4096) {
    const len = Math.min(4096, bytes - b)
    if (isZeroBlock(buf, offset + b, len)) continue
    const abs = buf.byteOffset + offset + b
    if (buf.buffer !== viewOf) {
      viewOf = buf.buffer
      view = new Int32Array(buf.buffer, 0, buf.buffer.byteLength >> 2)
    }
    if (LITTLE_ENDIAN && (abs & 3) === 0 && (len & 3) === 0 && abs + len <= view.length * 4) {
      const v = view
      // a guest's scattered writes leave a few runs of entries in a 4 KiB block: each SUB_BLOCK is
      // compared with zeros first, and only the non-zero ones are walked (a cold agent process walks
      // this loop in the interpreter, where every word costs ~30 ns)
      for (let s = 0; s < len; s += SUB_BLOCK) {
        // a whole QUARTER that is zero is skipped in one memcmp (a block's non-zero entries are mostly one run or two)
        if (s % QUARTER === 0 && isZeroBlock(buf, offset + b + s, Math.min(QUARTER, len - s))) {
          s += QUARTER - SUB_BLOCK
          continue
        }
        const sl = Math.min(SUB_BLOCK, len - s)
        if (isZeroBlock(buf, offset + b + s, sl)) continue
        scanStats.subBlocksWalked++
        const w0 = (abs + s) >> 2
        const wn = w0 + (sl >> 2)
        if (entryBytes === 8) {
          const e0 = (b + s) >> 3
          for (let w = w0; w < wn; w += 2) {
            const lo = v[w] as number
            const hi = v[w + 1] as number
            if ((lo | hi) === 0) continue
            ENTRY_HITS[n] = e0 + ((w - w0) >> 1)
            ENTRY_LO[n] = lo
            ENTRY_HI[n++] = hi
          }
        } else {
          const e0 = (b + s) >> 2
          for (let w = w0; w < wn; w++) {
            const lo = v[w] as number
            if (lo === 0) continue
            ENTRY_HITS[n] = e0 + (w - w0)
            ENTRY_LO[n] = lo
            ENTRY_HI[n++] = 0
          }
        }
      }
    } else {
      for (let k = 0; k < len; k += entryBytes) {
        const lo = buf.readUInt32LE(offset + b + k)
        const hi = entryBytes === 8 ? buf.readUInt32LE(offset + b + k + 4) : 0
        if ((lo | hi) === 0) continue
        ENTRY_HITS[n] = (b + k) / entryBytes
        ENTRY_LO[n] = lo
        ENTRY_HI[n++] = hi
      }
    }
  }
  return n
}

/** Approximate bytes a decoded table keeps alive. */
export function tableCost(t: GrainTable): number {
  return 32 + t.length * 8
}

/** Position k of the first entry whose index is >= j. */
export function lowerBound(t: GrainTable, j: number): number {
  const e = t
  let lo = 0
  let hi = t.length >> 1
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((e[2 * mid] as number) < j) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** Geometry of a sparse extent needed to turn tables into runs. */
export interface TableGeometry {
  /** bytes per grain */
  readonly grainSize: number
  /** entries per table */
  readonly gtEntries: number
  /** extent size in bytes */
  readonly size: number
}

/**
 * Runs covering [start, start+length) of an extent from its decoded tables
 * (`tables[k]` is the table of GD entry `first + k`, null when there is none).
 * Data runs merge only when file-contiguous; compressed grains stay one run each.
 */
export function tablesToRuns(geo: TableGeometry, tables: ReadonlyArray<GrainTable | null>, first: number, start: number, length: number, out: Run[] = []): Run[] {
  const end = start + length
  const g = geo.grainSize
  const cover = g * geo.gtEntries
  let pos = start
  while (pos < end) {
    const gdIndex = Math.floor(pos / cover)
    const tEnd = Math.min(end, (gdIndex + 1) * cover)
    const t = tables[gdIndex - first] ?? null
    if (t === null || t.length === 0) {
      pushRun(out, pos, tEnd - pos, RunState.None, -1, true)
      pos = tEnd
      continue
    }
    const tBase = gdIndex * geo.gtEntries
    const e = t
    const n = t.length >> 1
    let k = lowerBound(t, Math.floor(pos / g) - tBase)
    while (pos < tEnd) {
      if (k >= n) {
        pushRun(out, pos, tEnd - pos, RunState.None, -1, true)
        pos = tEnd
        break
      }
      const gs = (tBase + (e[2 * k] as number)) * g
      if (gs >= tEnd) {
        pushRun(out, pos, tEnd - pos, RunState.None, -1, true)
        pos = tEnd
        break
      }
      if (gs > pos) {
        pushRun(out, pos, gs - pos, RunState.None, -1, true)
        pos = gs
      }
      const gEnd = Math.min(tEnd, gs + g)
      const v = e[2 * k + 1] as number
      if (v === GTE_ZERO) pushRun(out, pos, gEnd - pos, RunState.Zero, -1, true)
      else if (v > 0) pushRun(out, pos, gEnd - pos, RunState.Data, v + (pos - gs), true)
      else out.push({ start: pos, length: gEnd - pos, state: RunState.Data, off: v })
      pos = gEnd
      k++
    }
  }
  return out
}

/**
 * Append what the tables of GD entries [first, first+tables.length) hold as
 * allocated runs (data or zero, merged regardless of file offsets, clipped to
 * the extent size). `pending` is the run still open from the previous call; the
 * function returns the run left open after this one (not yet in `out`).
 */
export function tablesToAllocated(geo: TableGeometry, tables: ReadonlyArray<GrainTable | null>, first: number, pending: Run | undefined, out: Run[]): Run | undefined {
  const g = geo.grainSize
  const cover = g * geo.gtEntries
  for (let k = 0; k < tables.length; k++) {
    const t = tables[k]
    if (t === null || t === undefined) continue
    const base = (first + k) * cover
    const e = t
    const n = t.length >> 1
    for (let m = 0; m < n; m++) {
      const state = e[2 * m + 1] === GTE_ZERO ? RunState.Zero : RunState.Data
      const s = base + (e[2 * m] as number) * g
      if (s >= geo.size) break
      const len = Math.min(g, geo.size - s)
      if (pending !== undefined && pending.state === state && pending.start + pending.length === s) {
        pending.length += len
      } else {
        if (pending !== undefined) out.push(pending)
        pending = { start: s, length: len, state, off: -1 }
      }
    }
  }
  return pending
}
