import type { FileHandle } from 'node:fs/promises'
import { readFully, readFullyInto } from './fs-util.ts'

/** Reads in flight at once, at most (pieces, bytes). @default 16 pieces, 16 MiB */
export interface ReadAheadLimits {
  readonly pieces: number
  readonly bytes: number
}

/** @default the limits {@link readAhead} uses unless given others */
export const READ_AHEAD: ReadAheadLimits = { pieces: 16, bytes: 16 * 1024 * 1024 } as const

/**
 * Read ranges of a file ahead of their consumer and yield their contents in
 * the order given: at most `limits.pieces` reads and `limits.bytes` bytes in
 * flight (bounded memory; a single range larger than `limits.bytes` goes
 * alone), so that many small scattered ranges wait for one read round trip at
 * a time rather than one each. A range of length 0 yields `undefined` without
 * reading. `signal` is checked before each read is started; a failed read
 * rejects when its turn comes (the others are not left unhandled). `take`
 * gives the buffer each range is read into (reused memory; called in range
 * order, once per range of length > 0, as its read starts); without it each
 * range gets a fresh one.
 */
export async function* readAhead<T extends { readonly pos: number; readonly n: number }>(
  fh: FileHandle,
  ranges: readonly T[],
  opts: { signal?: AbortSignal; limits?: ReadAheadLimits; take?: (n: number) => Buffer } = {},
): AsyncGenerator<{ range: T; data: Buffer | undefined }> {
  const take = opts.take
  const limits = opts.limits ?? READ_AHEAD
  const reads: Array<Promise<Buffer> | undefined> = []
  let started = 0
  let aheadBytes = 0
  try {
    for (let k = 0; k < ranges.length; k++) {
      while (started < ranges.length && (started === k || (started - k < limits.pieces && aheadBytes + (ranges[started] as T).n <= limits.bytes))) {
        const r = ranges[started] as T
        if (r.n > 0) {
          opts.signal?.throwIfAborted()
          const p = take === undefined ? readFully(fh, r.pos, r.n) : readFullyInto(fh, take(r.n), r.pos, r.n)
          p.catch(() => {}) // awaited in order below
          reads[started] = p
          aheadBytes += r.n
        }
        started++
      }
      const range = ranges[k] as T
      if (range.n === 0) {
        yield { range, data: undefined }
        continue
      }
      const data = await (reads[k] as Promise<Buffer>)
      reads[k] = undefined
      aheadBytes -= range.n
      yield { range, data }
    }
  } finally {
    // an early end (error, abort, consumer stopped): let the reads still in flight finish before the file may be closed
    await Promise.allSettled(reads.filter((p) => p !== undefined))
  }
}
