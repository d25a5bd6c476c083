/**
 * Where the frozen view may hold data, asked window by window as a seed's
 * reads move through the disk (issue #17: a seed must not read what the
 * file system knows to be a hole).
 *
 * A seed's plan covers a flat base whole, in extents of 1 MiB. Reading a
 * thin disk's holes costs as much as reading its data: on the development VM
 * `dd` of a 16 GiB flat file holding 315 MiB ran 52 s (the kernel fills a
 * page-cache page with zeros for every page of a hole, and each such page
 * faults on the host), and a seed of it 41–60 s; over NFS every hole crosses
 * the network as zeros. The chain answers `SEEK_DATA`/`SEEK_HOLE` questions
 * for its flat layers and its grain tables for sparse ones
 * (`DiskChain.dataRanges`): one question a window (1 GiB by default) costs a
 * line each way to the process's seek helper.
 *
 * The plan — its extents and their sequence numbers — does not depend on the
 * answers: only which bytes of an extent are read. A hole reads as zeros, so
 * an extent gets the same bytes, zero flag and digest either way, and a
 * resumed cycle's replay agrees with the first run's. Answers are
 * conservative (a range not listed reads as zeros; a listed one may hold
 * zeros); where they are unknown (SFTP, no python3) the whole window is data
 * and every extent is read as before.
 */

/** A byte range `[start, end)` of the view that may hold data. */
export type ViewRange = readonly [start: number, end: number]

/** The question the window asks (DiskChain.dataRanges at the view's depth). */
export type DataRangesQuery = (offset: number, length: number) => Promise<{ ranges: ReadonlyArray<readonly [number, number]>; unknownBytes: number }>

/**
 * Bytes of the view one question covers.
 * @default 1 GiB
 */
export const DATA_WINDOW_BYTES = 2 ** 30

/**
 * The data ranges of the view around the extents being read, in disk order.
 * Holds one window's answer at a time (at most the helper's `maxRanges`
 * ranges); an extent before the current window, or across its end, starts a
 * new window at its own offset.
 */
export class DataWindow {
  readonly #query: DataRangesQuery
  readonly #capacity: number
  readonly #windowBytes: number
  #start = 0
  #end = 0
  #answer: Promise<readonly ViewRange[]> | undefined
  /** questions asked (tests, logs) */
  questions = 0
  /** bytes whose holes could not be asked for, over every answer (no python3, SFTP: read whole) */
  unknownBytes = 0

  constructor(query: DataRangesQuery, capacity: number, windowBytes = DATA_WINDOW_BYTES) {
    if (!(windowBytes > 0)) throw new RangeError(`windowBytes ${windowBytes} must be positive`)
    this.#query = query
    this.#capacity = capacity
    this.#windowBytes = windowBytes
  }

  /**
   * The parts of `[offset, offset + length)` that may hold data, clipped to
   * it, in order. Rejects when the chain's question fails (a read would
   * have failed the same way).
   */
  async dataIn(offset: number, length: number): Promise<ViewRange[]> {
    const end = offset + length
    if (this.#answer === undefined || offset < this.#start || end > this.#end) {
      this.#start = offset
      this.#end = Math.min(this.#capacity, Math.max(end, offset + this.#windowBytes))
      this.questions++
      const asked = this.#query(offset, this.#end - offset).then((a) => {
        this.unknownBytes += a.unknownBytes
        return a.ranges.map(([s, e]): ViewRange => [s, e])
      })
      // a failed question is the reads' failure, reported by the extent that awaits it
      asked.catch(() => {})
      this.#answer = asked
    }
    return clip(await this.#answer, offset, end)
  }
}

/**
 * An extent with more data ranges than this is read whole: one `pread` of
 * 1 MiB costs less than many small ones.
 */
export const MAX_PIECES = 4

/** How an extent is read given its data ranges, and the bytes that reads. */
export type ReadDecision = { readonly how: 'none' | 'whole' | 'pieces'; readonly bytes: number }

/** The one rule the reads and the ETA's count share: nothing for a hole, the extent whole for data throughout or many pieces. Pure. */
export function readDecision(parts: readonly ViewRange[], length: number): ReadDecision {
  if (parts.length === 0) return { how: 'none', bytes: 0 }
  let covered = 0
  for (const [s, e] of parts) covered += e - s
  if (parts.length > MAX_PIECES || covered === length) return { how: 'whole', bytes: length }
  return { how: 'pieces', bytes: covered }
}

/** The ranges (ordered, disjoint) that meet `[from, to)`, clipped to it. */
export function clip(ranges: readonly ViewRange[], from: number, to: number): ViewRange[] {
  // binary search for the first range ending after `from`
  let lo = 0
  let hi = ranges.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((ranges[mid] as ViewRange)[1] <= from) lo = mid + 1
    else hi = mid
  }
  const out: ViewRange[] = []
  for (let k = lo; k < ranges.length; k++) {
    const [s, e] = ranges[k] as ViewRange
    if (s >= to) break
    out.push([Math.max(s, from), Math.min(e, to)])
  }
  return out
}

/**
 * The bytes a pass over `extents` (in disk order) reads by {@link readDecision}:
 * the ETA's measure of a seed that skips holes, counted beside the shipping
 * with its own window (the same questions again: a line each way per GiB).
 * Known-zero extents read nothing. Gives way to I/O every 4096 extents (a
 * plan of a 2 TiB disk has two million).
 */
export async function bytesToRead(extents: AsyncIterable<{ readonly offset: number; readonly length: number; readonly zero: boolean }>, window: DataWindow, signal?: AbortSignal): Promise<number> {
  let bytes = 0
  let n = 0
  for await (const e of extents) {
    if (++n % 4096 === 0) {
      signal?.throwIfAborted()
      await new Promise((resolve) => setImmediate(resolve))
    }
    if (e.zero) continue
    bytes += readDecision(await window.dataIn(e.offset, e.length), e.length).bytes
  }
  return bytes
}
