/**
 * Read buffers of {@link SPAN_BYTES} kept between reads of the mirror, for
 * the whole receiver: a trivial check, a certify (digest-file.ts) and the
 * BlockChecks of a scrub slice (block-check.ts) each read through a few of
 * them, one after the other, right after a commit. A fresh buffer's pages are
 * faulted in on first touch (fresh memory read ~300 MiB/s here, reused
 * several times that: digest-file.ts), so a trivial check that allocated its
 * own three spent most of its time faulting in 12 MiB (issue #13).
 */

/**
 * Size of a kept buffer: the read step of digest-file.ts and block-check.ts.
 * @default 4 MiB
 */
export const SPAN_BYTES = 4 * 1024 * 1024

/**
 * Buffers kept at most (16 MiB for the whole receiver): what one BlockCheck
 * holds at once (its reads in flight plus the span digested); a trivial check
 * or certify holds three.
 * @default 4
 */
export const SPARE_SPANS_MAX = 4

const spare: Buffer[] = []

/**
 * `count` buffers of at least `bytes` (at most {@link SPAN_BYTES}: kept ones
 * first; above it, fresh ones of `bytes`, never kept). Give them back with
 * {@link giveSpans} once no read into them is in flight.
 */
export function takeSpans(count: number, bytes: number): Buffer[] {
  if (bytes > SPAN_BYTES) return Array.from({ length: count }, () => Buffer.allocUnsafe(bytes))
  return Array.from({ length: count }, () => spare.pop() ?? Buffer.allocUnsafe(SPAN_BYTES))
}

/** Give buffers back for the next reader (beyond {@link SPARE_SPANS_MAX}, or of another size, they are let go). */
export function giveSpans(bufs: readonly Buffer[]): void {
  for (const b of bufs) if (b.length === SPAN_BYTES && spare.length < SPARE_SPANS_MAX && !spare.includes(b)) spare.push(b)
}

/** Buffers kept now (tests). */
export function spareSpans(): number {
  return spare.length
}
