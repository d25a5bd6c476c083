/**
 * The extent plan of one disk cycle: which ranges are shipped, cut into
 * extents in a deterministic order, so that sequence numbers are stable across
 * reconnects and runs (ARCHITECTURE §4.2 "Resume, don't restart").
 */

/** A byte range of the virtual disk; `zero` = reads as zeros in the frozen view. */
export interface PlanRange {
  readonly offset: number
  readonly length: number
  readonly zero: boolean
}

/** One planned extent. */
export interface PlannedExtent {
  readonly seq: number
  readonly offset: number
  readonly length: number
  /** known zero from metadata alone (data extents may still turn out all-zero when read) */
  readonly zero: boolean
}

/** The plan of a disk cycle. */
export interface ExtentPlan {
  /** coalesced ranges in disk order */
  readonly ranges: readonly PlanRange[]
  /** largest data extent, bytes */
  readonly chunkBytes: number
  /** largest zero extent, bytes */
  readonly zeroChunkBytes: number
  readonly totalExtents: number
  /** bytes covered by every extent (data + zero) */
  readonly totalBytes: number
  /** bytes covered by data ranges (an upper bound of the payload before compression) */
  readonly dataBytes: number
}

/**
 * Union of the changed ranges of several layers, `layers[0]` the OLDEST. Where
 * layers overlap the newest one decides whether the range is zero. Ranges
 * within one layer must be disjoint and sorted (as `changedRanges` yields).
 */
export function unionRanges (layers: ReadonlyArray<readonly PlanRange[]>): PlanRange[] {
  if (layers.length === 1) return coalesce(layers[0] as readonly PlanRange[])
  interface Ev { pos: number, layer: number, start: boolean, zero: boolean }
  const evs: Ev[] = []
  layers.forEach((ranges, layer) => {
    for (const r of ranges) {
      if (r.length <= 0) continue
      evs.push({ pos: r.offset, layer, start: true, zero: r.zero })
      evs.push({ pos: r.offset + r.length, layer, start: false, zero: r.zero })
    }
  })
  // ends before starts at the same position, so touching ranges do not double count
  evs.sort((a, b) => a.pos - b.pos || Number(a.start) - Number(b.start))
  const active: Array<boolean | undefined> = new Array(layers.length).fill(undefined)
  const out: PlanRange[] = []
  let prev = 0
  for (let i = 0; i < evs.length;) {
    const pos = (evs[i] as Ev).pos
    if (pos > prev) {
      for (let l = active.length - 1; l >= 0; l--) {
        const z = active[l]
        if (z !== undefined) { push(out, { offset: prev, length: pos - prev, zero: z }); break }
      }
    }
    while (i < evs.length && (evs[i] as Ev).pos === pos) {
      const e = evs[i] as Ev
      active[e.layer] = e.start ? e.zero : undefined
      i++
    }
    prev = pos
  }
  return out
}

function push (out: PlanRange[], r: PlanRange): void {
  const last = out[out.length - 1]
  if (last !== undefined && last.offset + last.length === r.offset && last.zero === r.zero) {
    out[out.length - 1] = { offset: last.offset, length: last.length + r.length, zero: last.zero }
  } else {
    out.push(r)
  }
}

/** Merge touching ranges with the same zero flag (input sorted, disjoint). */
export function coalesce (ranges: readonly PlanRange[]): PlanRange[] {
  const out: PlanRange[] = []
  for (const r of ranges) if (r.length > 0) push(out, r)
  return out
}

/** Build a plan from coalesced ranges. */
export function buildPlan (ranges: readonly PlanRange[], opts: { chunkBytes: number, zeroChunkBytes?: number }): ExtentPlan {
  const chunkBytes = opts.chunkBytes
  const zeroChunkBytes = opts.zeroChunkBytes ?? 1024 * 1024 * 1024
  if (!(chunkBytes >= 512) || chunkBytes % 512 !== 0) throw new RangeError(`chunkBytes ${chunkBytes} must be a multiple of 512`)
  let totalExtents = 0
  let totalBytes = 0
  let dataBytes = 0
  for (const r of ranges) {
    totalExtents += Math.ceil(r.length / (r.zero ? zeroChunkBytes : chunkBytes))
    totalBytes += r.length
    if (!r.zero) dataBytes += r.length
  }
  return { ranges, chunkBytes, zeroChunkBytes, totalExtents, totalBytes, dataBytes }
}

/** The plan's extents in seq order, starting at `fromSeq` (cheap to skip: no I/O). */
export function * planExtents (plan: ExtentPlan, fromSeq = 0): Generator<PlannedExtent> {
  let seq = 0
  for (const r of plan.ranges) {
    const chunk = r.zero ? plan.zeroChunkBytes : plan.chunkBytes
    const n = Math.ceil(r.length / chunk)
    if (seq + n <= fromSeq) { seq += n; continue }
    for (let k = 0; k < n; k++, seq++) {
      if (seq < fromSeq) continue
      const offset = r.offset + k * chunk
      yield { seq, offset, length: Math.min(chunk, r.offset + r.length - offset), zero: r.zero }
    }
  }
}
