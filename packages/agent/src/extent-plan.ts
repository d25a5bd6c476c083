/**
 * The extent plan of one disk cycle: which ranges are shipped, cut into
 * extents in a deterministic order, so that sequence numbers are stable across
 * reconnects and runs (ARCHITECTURE §4.2 "Resume, don't restart").
 *
 * A plan does not hold its ranges: it holds a re-iterable source (the grain
 * tables or the allocation map, read again when needed) and the totals
 * counted in one pass, so memory does not grow with the number of ranges.
 */

/** A byte range of the virtual disk; `zero` = reads as zeros in the frozen view. */
export interface PlanRange {
  readonly offset: number
  readonly length: number
  readonly zero: boolean
}

/** A re-iterable source of sorted, disjoint ranges. */
export type RangeSource = () => AsyncIterable<PlanRange>

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
  /** coalesced ranges in disk order (iterated again for every pass) */
  readonly source: RangeSource
  /** largest data extent, bytes */
  readonly chunkBytes: number
  /** largest zero extent, bytes */
  readonly zeroChunkBytes: number
  readonly totalExtents: number
  /** bytes covered by every extent (data + zero) */
  readonly totalBytes: number
  /** bytes covered by data ranges (an upper bound of the payload before compression) */
  readonly dataBytes: number
  /** offset of the first range (-1 when empty) */
  readonly firstOffset: number
}

/** A source over an array (tests, small plans). */
export function arraySource(ranges: readonly PlanRange[]): RangeSource {
  return async function* () {
    yield* ranges
  }
}

/** Merge touching ranges with the same zero flag (input sorted, disjoint); drops empty ones. */
export function coalesceSource(source: RangeSource): RangeSource {
  return async function* () {
    let cur: PlanRange | undefined
    for await (const r of source()) {
      if (r.length <= 0) continue
      if (cur !== undefined && cur.offset + cur.length === r.offset && cur.zero === r.zero) {
        cur = { offset: cur.offset, length: cur.length + r.length, zero: cur.zero }
        continue
      }
      if (cur !== undefined) yield cur
      cur = { offset: r.offset, length: r.length, zero: r.zero }
    }
    if (cur !== undefined) yield cur
  }
}

/**
 * Union of the changed ranges of several layers, `layers[0]` the OLDEST,
 * streamed: where layers overlap the newest one decides whether the range is
 * zero. Each layer's ranges must be disjoint and sorted (as `changedRanges`
 * yields). Memory: one range per layer.
 */
export function unionSource(layers: readonly RangeSource[]): RangeSource {
  if (layers.length === 1) return coalesceSource(layers[0] as RangeSource)
  const merged: RangeSource = async function* () {
    const its = layers.map((l) => l()[Symbol.asyncIterator]())
    const pull = async (k: number): Promise<PlanRange | undefined> => {
      for (;;) {
        const n = await (its[k] as AsyncIterator<PlanRange>).next()
        if (n.done === true) return undefined
        if (n.value.length > 0) return n.value
      }
    }
    const head: Array<PlanRange | undefined> = await Promise.all(its.map((_it, k) => pull(k)))
    let pos = 0
    for (;;) {
      let next = Infinity
      for (const h of head) if (h !== undefined) next = Math.min(next, h.offset > pos ? h.offset : h.offset + h.length)
      if (next === Infinity) return
      if (next > pos) {
        for (let l = head.length - 1; l >= 0; l--) {
          const h = head[l]
          if (h !== undefined && h.offset <= pos && pos < h.offset + h.length) {
            yield { offset: pos, length: next - pos, zero: h.zero }
            break
          }
        }
      }
      pos = next
      for (let l = 0; l < head.length; l++) {
        while (head[l] !== undefined && (head[l] as PlanRange).offset + (head[l] as PlanRange).length <= pos) head[l] = await pull(l)
      }
    }
  }
  return coalesceSource(merged)
}

/**
 * Ranges a plan keeps from its counting pass, at most (~50 bytes each: 3 MiB).
 * Every later pass over a plan of no more ranges (the ship, a resume's
 * replay, `--verify changed`'s written blocks) reads them from memory instead
 * of walking the chain's grain tables again: an incremental of 646 extents
 * walked them once more while it shipped (issue #17). A larger plan (a
 * fragmented seed) streams from its source every pass, memory bounded.
 * @default 65536
 */
export const PLAN_KEPT_RANGES = 65_536

/** Count a plan: one pass over the source (its ranges kept when they are at most `keptRanges`). */
export async function buildPlan(source: RangeSource, opts: { chunkBytes: number; zeroChunkBytes?: number; keptRanges?: number }): Promise<ExtentPlan> {
  const chunkBytes = opts.chunkBytes
  const zeroChunkBytes = opts.zeroChunkBytes ?? 1024 * 1024 * 1024
  if (!(chunkBytes >= 512) || chunkBytes % 512 !== 0) throw new RangeError(`chunkBytes ${chunkBytes} must be a multiple of 512`)
  const keptRanges = opts.keptRanges ?? PLAN_KEPT_RANGES
  let kept: PlanRange[] | undefined = []
  let totalExtents = 0
  let totalBytes = 0
  let dataBytes = 0
  let firstOffset = -1
  for await (const r of source()) {
    if (firstOffset < 0) firstOffset = r.offset
    totalExtents += Math.ceil(r.length / (r.zero ? zeroChunkBytes : chunkBytes))
    totalBytes += r.length
    if (!r.zero) dataBytes += r.length
    if (kept !== undefined) {
      if (kept.length < keptRanges) kept.push({ offset: r.offset, length: r.length, zero: r.zero })
      else kept = undefined
    }
  }
  return { source: kept === undefined ? source : arraySource(kept), chunkBytes, zeroChunkBytes, totalExtents, totalBytes, dataBytes, firstOffset }
}

/** The plan's extents in seq order, starting at `fromSeq` (skipping costs no data I/O). */
export async function* planExtents(plan: ExtentPlan, fromSeq = 0): AsyncGenerator<PlannedExtent> {
  let seq = 0
  for await (const r of plan.source()) {
    const chunk = r.zero ? plan.zeroChunkBytes : plan.chunkBytes
    const n = Math.ceil(r.length / chunk)
    if (seq + n <= fromSeq) {
      seq += n
      continue
    }
    for (let k = 0; k < n; k++, seq++) {
      if (seq < fromSeq) continue
      const offset = r.offset + k * chunk
      yield { seq, offset, length: Math.min(chunk, r.offset + r.length - offset), zero: r.zero }
    }
  }
}
