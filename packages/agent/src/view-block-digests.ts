/**
 * The block digests of a frozen view, computed ahead of the comparison that
 * consumes them (resync, SPEC §5.9). A producer task reads the view in large
 * spans (default 2 MiB, 4 in flight) into a small pool of reused
 * buffers, digests every block of a span (an all-zero block by comparison,
 * see `blockDigest`), feeds the view digester (trivial check, certify) and
 * queues the digests — never the data. The consumer takes them block by
 * block; a block that differs from the mirror is read again by the caller
 * (1 % of a disk, typically), so the reading never waits for the receiver's
 * maps and the maps never wait for the reading.
 *
 * Memory: the buffer pool (`spanBytes × (inFlight + 1)`) and at most
 * `aheadBlocks` digests. Measured in scripts/bench-resync.mjs (issue #13):
 * the former path read and hashed each 1 MiB block in a buffer of its own,
 * 16 in flight, at most 16 MiB ahead of the map received.
 */
import { blockDigest, DigestLengths, type DigestAlgorithm, zeroDigest } from '@grainline/protocol'
import { AgentError } from './errors.ts'
import type { ChainView, ViewDigester } from './extent-source.ts'

/** Options of {@link ViewBlockDigests}. */
export interface ViewBlockDigestsOptions {
  readonly chain: ChainView
  /** chain depth of the frozen layer */
  readonly depth: number
  readonly blockSize: number
  readonly algorithm: DigestAlgorithm
  /** fed with the blocks read, in order (the whole view when the range is the whole disk); none for a scrub slice */
  readonly view?: ViewDigester | undefined
  /** the first block digested (a `--scrub` slice). @default 0 */
  readonly fromBlock?: number
  /** the block after the last one digested. @default the disk's block count */
  readonly toBlock?: number
  /**
   * bytes of the view read per read call (rounded to whole blocks, at least one block;
   * small enough to be digested while still in the CPU cache)
   * @default 2 MiB
   */
  readonly spanBytes?: number
  /**
   * span reads in flight while the previous span is digested
   * @default 4
   */
  readonly inFlight?: number
  /** most digests computed and not yet taken (bounds how far the reading runs ahead) */
  readonly aheadBlocks: number
  readonly signal?: AbortSignal | undefined
  /**
   * Called once when the holes of some flat part of the view cannot be asked
   * for (no `SEEK_DATA` here: no python3, SFTP, NFS without support): those
   * bytes are read. Given the bytes concerned in the first window.
   */
  readonly onUnknownHoles?: (bytes: number) => void
}

/**
 * Bytes of the view whose data ranges are asked for at once (one helper
 * process each; the next window is asked for while this one is read).
 */
export const HOLE_WINDOW_BYTES = 4 * 1024 * 1024 * 1024

/**
 * The view's data ranges, asked for a window at a time ({@link HOLE_WINDOW_BYTES})
 * when the chain can tell (`dataRanges`), and queried span by span in order.
 */
class HoleWindows {
  readonly #chain: ChainView
  readonly #depth: number
  readonly #windowBytes: number
  /** nothing at or above this offset is asked for (the end of the blocks digested) */
  readonly #limit: number
  readonly #onUnknown: ((bytes: number) => void) | undefined
  #winEnd = 0
  #ranges: ReadonlyArray<readonly [number, number]> = []
  #at = 0
  #told = false

  constructor(chain: ChainView, depth: number, spanBytes: number, onUnknown: ((bytes: number) => void) | undefined, limit = chain.capacity) {
    this.#chain = chain
    this.#limit = Math.min(limit, chain.capacity)
    this.#depth = depth
    // whole spans per window
    this.#windowBytes = Math.max(spanBytes, Math.floor(HOLE_WINDOW_BYTES / spanBytes) * spanBytes)
    this.#onUnknown = onUnknown
  }

  #next: { start: number; answer: Promise<{ ranges: ReadonlyArray<readonly [number, number]>; unknownBytes: number }> } | undefined

  #ask(start: number): { start: number; answer: Promise<{ ranges: ReadonlyArray<readonly [number, number]>; unknownBytes: number }> } {
    const chain = this.#chain as Required<ChainView>
    const answer = chain.dataRanges(start, Math.min(this.#limit, start + this.#windowBytes) - start, { depth: this.#depth })
    // awaited when its window comes; not an unhandled rejection meanwhile
    answer.catch(() => {})
    return { start, answer }
  }

  /** Whether `[offset, offset + length)` (one span, offsets increasing) may hold data. */
  async mayHoldData(offset: number, length: number): Promise<boolean> {
    const chain = this.#chain
    if (chain.dataRanges === undefined) return true
    if (offset >= this.#winEnd) {
      const asked = this.#next !== undefined && this.#next.start === offset ? this.#next : this.#ask(offset)
      this.#winEnd = Math.min(this.#limit, offset + this.#windowBytes)
      this.#next = this.#winEnd < this.#limit ? this.#ask(this.#winEnd) : undefined
      const r = await asked.answer
      this.#ranges = r.ranges
      this.#at = 0
      if (r.unknownBytes > 0 && !this.#told) {
        this.#told = true
        this.#onUnknown?.(r.unknownBytes)
      }
    }
    const end = offset + length
    while (this.#at < this.#ranges.length && (this.#ranges[this.#at] as readonly [number, number])[1] <= offset) this.#at++
    const next = this.#ranges[this.#at]
    return next !== undefined && next[0] < end
  }
}

/** One span's digests. */
interface Span {
  readonly first: number
  readonly count: number
  readonly digests: Uint8Array
}

/** See the file comment. Call {@link start} once, {@link next} per block in order, {@link close} always. */
export class ViewBlockDigests {
  readonly #o: ViewBlockDigestsOptions
  readonly #len: number
  /** the first block and the block after the last one digested */
  readonly #from: number
  readonly #end: number
  readonly #perSpan: number
  readonly #queue: Span[] = []
  /** index in the head span of the next block to hand out */
  #at = 0
  /** blocks handed out */
  #taken = 0
  /** blocks digested */
  #made = 0
  /** bytes of the view known to be zero and not read (holes, unallocated grains) */
  holeBytes = 0
  #failure: unknown
  #stopped = false
  #task: Promise<void> | undefined
  #wake: (() => void) | undefined
  #room: (() => void) | undefined

  constructor(o: ViewBlockDigestsOptions) {
    this.#o = o
    this.#len = DigestLengths[o.algorithm]
    const total = Math.ceil(o.chain.capacity / o.blockSize)
    this.#from = Math.max(0, Math.min(total, o.fromBlock ?? 0))
    this.#end = Math.max(this.#from, Math.min(total, o.toBlock ?? total))
    this.#perSpan = Math.max(1, Math.floor((o.spanBytes ?? 2 * 1024 * 1024) / o.blockSize))
  }

  /** blocks digested and not yet taken */
  get ahead(): number {
    return this.#made - this.#taken
  }

  /** true while the reading waits for blocks to be taken (`aheadBlocks` reached) */
  get waiting(): boolean {
    return this.#room !== undefined
  }

  /** Start reading from the first block (`fromBlock`). */
  start(): void {
    this.#task ??= this.#produce().catch((err: unknown) => {
      this.#failure = err
      this.#wake?.()
    })
  }

  /** The digest of the next block in order (a view into a shared span: copy to keep it). */
  async next(): Promise<Uint8Array> {
    for (;;) {
      const head = this.#queue[0]
      if (head !== undefined) {
        const d = head.digests.subarray(this.#at * this.#len, (this.#at + 1) * this.#len)
        this.#taken++
        if (++this.#at === head.count) {
          this.#queue.shift()
          this.#at = 0
        }
        const room = this.#room
        this.#room = undefined
        room?.()
        return d
      }
      if (this.#failure !== undefined) throw this.#failure
      if (this.#taken >= this.#end - this.#from) throw new AgentError('E_PROTOCOL', `internal: block ${this.#from + this.#taken} beyond the blocks ${this.#from}–${this.#end} of the view digested`)
      await new Promise<void>((resolve) => {
        this.#wake = resolve
      })
      this.#wake = undefined
    }
  }

  /** Stop reading and wait for the reads in flight (before the chain is closed). */
  async close(): Promise<void> {
    this.#stopped = true
    const room = this.#room
    this.#room = undefined
    room?.()
    await this.#task
  }

  async #produce(): Promise<void> {
    const { chain, depth, blockSize, signal } = this.#o
    const capacity = chain.capacity
    const spanBytes = this.#perSpan * blockSize
    const inFlight = Math.max(1, this.#o.inFlight ?? 4)
    const endOffset = Math.min(capacity, this.#end * blockSize)
    const pool = Array.from({ length: inFlight + 1 }, () => Buffer.allocUnsafe(Math.min(spanBytes, endOffset - this.#from * blockSize)))
    const reads: Array<{ first: number; buf: Buffer | undefined; length: number; done: Promise<void> }> = []
    const holes = new HoleWindows(chain, depth, spanBytes, this.#o.onUnknownHoles, endOffset)
    let nextBlock = this.#from
    let turn = 0
    const issue = async (): Promise<void> => {
      while (reads.length < inFlight && nextBlock < this.#end && !this.#stopped) {
        const offset = nextBlock * blockSize
        const length = Math.min(spanBytes, endOffset - offset)
        if (!(await holes.mayHoldData(offset, length))) {
          // known to read as zeros (a hole of the flat base, an unallocated grain): no read
          this.holeBytes += length
          reads.push({ first: nextBlock, buf: undefined, length, done: Promise.resolve() })
          nextBlock += Math.ceil(length / blockSize)
          continue
        }
        const buf = pool[turn++ % pool.length] as Buffer
        const done = chain.readInto !== undefined ? chain.readInto(buf, 0, offset, length, { depth }) : chain.read(offset, length, { depth }).then((b) => void b.copy(buf))
        // handled when its turn comes; not an unhandled rejection while an earlier span is awaited
        done.catch(() => {})
        reads.push({ first: nextBlock, buf, length, done })
        nextBlock += Math.ceil(length / blockSize)
      }
    }
    try {
      await issue()
      while (reads.length > 0 && !this.#stopped) {
        signal?.throwIfAborted()
        const r = reads[0] as (typeof reads)[number]
        await r.done
        reads.shift()
        // the buffer just read is digested while the next reads (other buffers) are in flight
        await issue()
        const count = Math.ceil(r.length / blockSize)
        const digests = new Uint8Array(count * this.#len)
        const buf = r.buf
        for (let i = 0; i < count; i++) {
          const at = i * blockSize
          const n = Math.min(at + blockSize, r.length) - at
          digests.set(buf === undefined ? zeroDigest(this.#o.algorithm, n) : blockDigest(this.#o.algorithm, buf.subarray(at, at + n)), i * this.#len)
        }
        this.#o.view?.feed(r.first * blockSize, r.length, buf?.subarray(0, r.length))
        this.#queue.push({ first: r.first, count, digests })
        this.#made += count
        const wake = this.#wake
        this.#wake = undefined
        wake?.()
        while (this.#made - this.#taken > this.#o.aheadBlocks && !this.#stopped) {
          await new Promise<void>((resolve) => {
            this.#room = resolve
          })
          this.#room = undefined
        }
      }
    } finally {
      // reads still in flight settle before the pool (and the chain) is let go
      for (const r of reads) await r.done.catch(() => {})
    }
  }
}
