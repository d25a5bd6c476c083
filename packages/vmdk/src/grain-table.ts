/**
 * Decoded grain tables and the pure conversions around them (table → runs,
 * table → allocated ranges). Shared by the KDMV, COWD and SEsparse extents.
 */
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
const ZERO_BLOCK = Buffer.alloc(65536)

/**
 * Collects a table's non-zero entries while one table is decoded (synchronously:
 * the scratch arrays are shared).
 */
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

/** True if buf[off, off+len) is all zero (len <= 65536; one memcmp). */
export function isZeroBlock (buf: Buffer, off: number, len: number): boolean {
  return buf.compare(ZERO_BLOCK, 0, len, off, off + len) === 0
}

/** Approximate bytes a decoded table keeps alive. */
export function tableCost (t: GrainTable): number {
  return 128 + t.idx.length * 10
}

/** Index of the first entry >= j. */
export function lowerBound (idx: Uint16Array, j: number): number {
  let lo = 0
  let hi = idx.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((idx[mid] ?? 0) < j) lo = mid + 1
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
export function tablesToRuns (geo: TableGeometry, tables: ReadonlyArray<GrainTable | null>, first: number, start: number, length: number, out: Run[] = []): Run[] {
  const end = start + length
  const g = geo.grainSize
  const cover = g * geo.gtEntries
  let pos = start
  while (pos < end) {
    const gdIndex = Math.floor(pos / cover)
    const tEnd = Math.min(end, (gdIndex + 1) * cover)
    const t = tables[gdIndex - first] ?? null
    if (t === null || t.idx.length === 0) {
      pushRun(out, pos, tEnd - pos, RunState.None, -1, true)
      pos = tEnd
      continue
    }
    const tBase = gdIndex * geo.gtEntries
    const idx = t.idx
    const val = t.val
    const n = idx.length
    let k = lowerBound(idx, Math.floor(pos / g) - tBase)
    while (pos < tEnd) {
      if (k >= n) { pushRun(out, pos, tEnd - pos, RunState.None, -1, true); pos = tEnd; break }
      const gs = (tBase + (idx[k] as number)) * g
      if (gs >= tEnd) { pushRun(out, pos, tEnd - pos, RunState.None, -1, true); pos = tEnd; break }
      if (gs > pos) { pushRun(out, pos, gs - pos, RunState.None, -1, true); pos = gs }
      const gEnd = Math.min(tEnd, gs + g)
      const v = val[k] as number
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
export function tablesToAllocated (geo: TableGeometry, tables: ReadonlyArray<GrainTable | null>, first: number, pending: Run | undefined, out: Run[]): Run | undefined {
  const g = geo.grainSize
  const cover = g * geo.gtEntries
  for (let k = 0; k < tables.length; k++) {
    const t = tables[k]
    if (t === null || t === undefined) continue
    const base = (first + k) * cover
    const idx = t.idx
    const val = t.val
    for (let m = 0; m < idx.length; m++) {
      const state = val[m] === GTE_ZERO ? RunState.Zero : RunState.Data
      const s = base + (idx[m] as number) * g
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
