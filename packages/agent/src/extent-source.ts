/**
 * Reads the planned extents of a disk through the FROZEN chain view and turns
 * them into wire-ready extents: zero detection, per-extent digest, compression
 * that is skipped when it does not pay. Pull-based with a small read-ahead, so
 * memory is bounded by (readAhead + window), never by the disk size.
 */
import type { CompressionAlgorithm, DigestAlgorithm, ExtentMessage } from '@grainline/protocol'
import { compress, createDigest } from '@grainline/protocol'
import { isAllZero } from '@grainline/vmdk'
import { DataWindow, readDecision } from './data-window.ts'
import { planExtents, type ExtentPlan, type PlannedExtent } from './extent-plan.ts'

/** What the extent source needs from a chain (a subset of @grainline/vmdk's DiskChain). */
export interface ChainView {
  readonly capacity: number
  read(offset: number, length: number, opts?: { depth?: number }): Promise<Buffer>
  /** like `read`, into a caller's buffer (reused buffers: no allocation per read) */
  readInto?(buf: Uint8Array, bufOffset: number, offset: number, length: number, opts?: { depth?: number }): Promise<void>
  /** the parts of a range that may hold data, found without reading it (DiskChain.dataRanges) */
  dataRanges?(offset: number, length: number, opts?: { depth?: number }): Promise<{ ranges: ReadonlyArray<readonly [number, number]>; unknownBytes: number }>
}

/** A wire-ready extent. */
export interface PreparedExtent extends Omit<ExtentMessage, 'kind' | 'disk'> {
  /** the uncompressed bytes (for the in-pass view digest); undefined for zero extents */
  readonly raw?: Buffer
  /**
   * Call once nothing reads `raw` any more — nor `data` when it is `raw`
   * (uncompressed: once the socket wrote it): its memory is then read into
   * again ({@link ReadBuffers}). Not calling it is safe (the buffer is left
   * to the garbage collector); calling it early is not.
   */
  readonly release?: () => void
  /** bytes read from the chain for it (0: a hole, or known zero; the extent's length when read whole) */
  readonly readBytes: number
}

/**
 * Buffers the extents are read into, kept for the process (issue #17): an
 * incremental of 644 extents of 64 KiB read each into a fresh buffer (page
 * faults, garbage for V8 to collect) and the agent runs on a machine shared
 * with the receiver. A buffer comes back through {@link PreparedExtent.release}
 * once the socket has written it, and is read into again: every byte it
 * exposes is overwritten by the read (`readInto` zero-fills past a file's end).
 * At most {@link READ_BUFFERS_KEPT_BYTES} are kept; beyond, buffers are
 * garbage-collected as before.
 */
export class ReadBuffers {
  readonly #free = new Map<number, Buffer[]>()
  #freeBytes = 0
  readonly #maxBytes: number
  /** buffers handed out that were read into before (tests, logs) */
  reused = 0
  /** buffers handed out new: fresh memory, each page faulted in on its first touch (logs) */
  fresh = 0

  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes
  }

  /** Free bytes kept now. */
  get freeBytes(): number {
    return this.#freeBytes
  }

  /** A buffer of exactly `length` bytes, contents undefined (kept, else new and uninitialised). */
  take(length: number): Buffer {
    const b = this.#free.get(length)?.pop()
    if (b === undefined) {
      this.fresh++
      return Buffer.allocUnsafeSlow(length)
    }
    this.#freeBytes -= length
    this.reused++
    return b
  }

  /** Keep `b` for a later read (dropped beyond the bound). Nothing may read it afterwards. */
  give(b: Buffer): void {
    if (this.#freeBytes + b.length > this.#maxBytes) return
    const list = this.#free.get(b.length)
    if (list === undefined) this.#free.set(b.length, [b])
    else if (!list.includes(b)) list.push(b)
    else return
    this.#freeBytes += b.length
  }
}

/**
 * Free read buffers the agent keeps at most: its read-ahead (8 MiB) and the
 * socket's high-water mark (4 MiB) in flight, with room to spare.
 * @default 16 MiB
 */
export const READ_BUFFERS_KEPT_BYTES = 16 * 1024 * 1024

/** The process's read buffers (one agent process runs one job: every disk's stream shares them). */
export const READ_BUFFERS = new ReadBuffers(READ_BUFFERS_KEPT_BYTES)

const ZEROS = Buffer.alloc(1024 * 1024)

/** Options of `readPlannedExtents`. */
export interface ExtentSourceOptions {
  /** chain depth of the newest frozen layer (never the running delta) */
  readonly depth: number
  readonly digest: DigestAlgorithm
  /** negotiated compression; `none` disables */
  readonly compression: CompressionAlgorithm
  /** first seq to yield. @default 0 */
  readonly fromSeq?: number
  /** yield no further than this seq (exclusive). @default plan.totalExtents */
  readonly toSeq?: number
  /** largest number of extents read ahead of the consumer. @default 64 */
  readonly readAhead?: number
  /** largest number of bytes read ahead of the consumer. @default 8 MiB */
  readonly readAheadBytes?: number
  /** compressed must be below this fraction of the original to be used. @default 0.9 */
  readonly compressRatio?: number
  /** the buffers extents are read into. @default READ_BUFFERS (the process's) */
  readonly buffers?: ReadBuffers
  /**
   * read only the parts of an extent the chain says may hold data
   * (data-window.ts: a seed's flat base, issue #17); the rest is zeros without
   * a read, an extent wholly in a hole is a zero extent. The bytes, zero flags
   * and digests are the same either way. @default false
   */
  readonly skipHoles?: boolean
  /** counts what {@link skipHoles} saved (logs) */
  readonly holeStats?: HoleStats
  readonly signal?: AbortSignal
}

/** What reading around holes saved in one pass. */
export interface HoleStats {
  /** bytes of planned data extents not read (holes) */
  skippedBytes: number
  /** planned data extents that were holes entirely (sent as zero extents without a read) */
  holeExtents: number
  /** questions asked of the chain */
  questions: number
  /** bytes whose holes could not be asked for (no python3, SFTP): read whole */
  unknownBytes: number
}

/** Adaptive "does compression pay" state: after repeated misses, only probe now and then. */
export class CompressionGate {
  #misses = 0
  #skip = 0
  shouldTry(): boolean {
    if (this.#skip > 0) {
      this.#skip--
      return false
    }
    return true
  }

  result(paid: boolean): void {
    if (paid) {
      this.#misses = 0
      return
    }
    this.#misses++
    if (this.#misses >= 4) this.#skip = Math.min(64, 2 ** (this.#misses - 3))
  }
}

/** Read, digest and compress the planned extents in seq order. */
export async function* readPlannedExtents(chain: ChainView, plan: ExtentPlan, opts: ExtentSourceOptions): AsyncGenerator<PreparedExtent> {
  const gate = new CompressionGate()
  const ratio = opts.compressRatio ?? 0.9
  const toSeq = opts.toSeq ?? plan.totalExtents
  const buffers = opts.buffers ?? READ_BUFFERS
  const prepare = (p: PlannedExtent, raw: Buffer | undefined, readBytes: number): PreparedExtent => {
    if (raw === undefined || isAllZero(raw)) {
      if (raw !== undefined) buffers.give(raw)
      return { seq: p.seq, offset: p.offset, length: p.length, zero: true, compression: 'none', data: new Uint8Array(0), digest: new Uint8Array(0), readBytes }
    }
    const digest = createDigest(opts.digest).update(raw).digest()
    let data: Uint8Array = raw
    let compression: CompressionAlgorithm = 'none'
    if (opts.compression !== 'none' && gate.shouldTry()) {
      const c = compress(opts.compression, raw)
      const paid = c.length < raw.length * ratio
      gate.result(paid)
      if (paid) {
        data = c
        compression = opts.compression
      }
    }
    let released = false
    const release = (): void => {
      if (released) return
      released = true
      buffers.give(raw)
    }
    return { seq: p.seq, offset: p.offset, length: p.length, zero: false, compression, data, digest, raw, release, readBytes }
  }
  // into a kept buffer when the chain reads into a caller's buffer
  const readWhole = (p: PlannedExtent): Promise<Buffer> => {
    if (chain.readInto === undefined) return chain.read(p.offset, p.length, { depth: opts.depth })
    const buf = buffers.take(p.length)
    return chain.readInto(buf, 0, p.offset, p.length, { depth: opts.depth }).then(() => buf)
  }
  const dataRanges = chain.dataRanges?.bind(chain)
  const holes = opts.skipHoles === true && dataRanges !== undefined && chain.readInto !== undefined ? new DataWindow((o, l) => dataRanges(o, l, { depth: opts.depth }), chain.capacity) : undefined
  const stats = opts.holeStats
  // only the parts that may hold data; undefined = a hole (a zero extent, nothing read)
  const readAround = async (w: DataWindow, p: PlannedExtent): Promise<{ buf: Buffer | undefined; bytes: number }> => {
    const parts = await w.dataIn(p.offset, p.length)
    if (stats !== undefined) {
      stats.questions = w.questions
      stats.unknownBytes = w.unknownBytes
    }
    const d = readDecision(parts, p.length)
    if (stats !== undefined) {
      stats.skippedBytes += p.length - d.bytes
      if (d.how === 'none') stats.holeExtents++
    }
    if (d.how === 'none') return { buf: undefined, bytes: 0 }
    if (d.how === 'whole') return { buf: await readWhole(p), bytes: p.length }
    // the pieces into their places of one kept buffer, the gaps between them zeros
    // (a failed piece leaves the buffer to the garbage collector: others may still be read into it)
    const readInto = (chain.readInto as NonNullable<ChainView['readInto']>).bind(chain)
    const buf = buffers.take(p.length)
    const reads: Promise<void>[] = []
    let at = p.offset
    for (const [s, e] of parts) {
      buf.fill(0, at - p.offset, s - p.offset)
      reads.push(readInto(buf, s - p.offset, s, e - s, { depth: opts.depth }))
      at = e
    }
    buf.fill(0, at - p.offset, p.length)
    await Promise.all(reads)
    return { buf, bytes: d.bytes }
  }
  const read = (p: PlannedExtent): Promise<{ buf: Buffer | undefined; bytes: number }> => (holes === undefined ? readWhole(p).then((buf) => ({ buf, bytes: p.length })) : readAround(holes, p))
  const planned = planExtents(plan, opts.fromSeq ?? 0)
  const readAhead = Math.max(1, opts.readAhead ?? 64)
  const readAheadBytes = opts.readAheadBytes ?? 8 * 1024 * 1024
  // reads run ahead (bounded by count and bytes); digest and compression happen in order as the consumer pulls
  type Pending = { p: PlannedExtent; read: Promise<{ buf: Buffer | undefined; bytes: number }> }
  const pending: Pending[] = []
  let pendingBytes = 0
  let lookahead: PlannedExtent | undefined
  let exhausted = false
  const fill = async (): Promise<void> => {
    while (!exhausted && pending.length < readAhead) {
      if (lookahead === undefined) {
        const n = await planned.next()
        if (n.done === true || n.value.seq >= toSeq) {
          exhausted = true
          return
        }
        lookahead = n.value
      }
      const p: PlannedExtent = lookahead
      const cost = p.zero ? 0 : p.length
      if (pending.length > 0 && pendingBytes + cost > readAheadBytes) return
      lookahead = undefined
      pendingBytes += cost
      pending.push({ p, read: p.zero ? Promise.resolve({ buf: undefined, bytes: 0 }) : read(p) })
    }
  }
  try {
    await fill()
    while (pending.length > 0) {
      opts.signal?.throwIfAborted()
      const head = pending.shift() as Pending
      const got = await head.read
      pendingBytes -= head.p.zero ? 0 : head.p.length
      await fill()
      yield prepare(head.p, got.buf, got.bytes)
    }
  } finally {
    // settle reads still in flight so no rejection goes unhandled
    for (const p of pending) p.read.catch(() => {})
    await planned.return(undefined)
  }
}

/** Reads of the frozen view in flight ahead of the step {@link ViewDigester.finishFrom} digests. */
const VIEW_READS_AHEAD = 2

/**
 * The step {@link ViewDigester.finishFrom} reads a span of `span` bytes in: a
 * sixteenth of it (a power of two), between 256 KiB and 4 MiB. Its buffers are
 * fresh memory, and on the development VM the first touch of a page costs
 * ~10–25 µs under load (touching 16 MiB just read by `pread` took 43–55 ms;
 * the pages of a fresh buffer are faulted in again when user code first reads
 * them): an incremental's 16 MiB trivial prefix in 4 MiB steps faulted 12 MiB
 * of buffers for 16 MiB of data, 41–71 ms of its ship lap in cpu-profs (issue
 * #17); in 1 MiB steps 3 MiB. A certify of the whole disk keeps 4 MiB steps.
 */
export function viewStep(span: number): number {
  let step = 4 * 1024 * 1024
  while (step > 256 * 1024 && step * 16 > span) step /= 2
  return step
}

/**
 * Digests of the frozen view computed while extents stream past in disk order
 * (seed), or by reading (incremental): the trivial-check prefix and certify.
 */
export class ViewDigester {
  readonly #prefixBytes: number
  readonly #prefix: ReturnType<typeof createDigest>
  readonly #full: ReturnType<typeof createDigest> | undefined
  #pos = 0
  prefixDigest: Uint8Array | undefined
  fullDigest: Uint8Array | undefined
  readonly capacity: number

  constructor(capacity: number, trivialAlg: DigestAlgorithm, prefixBytes: number, certifyAlg: DigestAlgorithm | undefined) {
    this.capacity = capacity
    this.#prefixBytes = Math.min(prefixBytes, capacity)
    this.#prefix = createDigest(trivialAlg)
    this.#full = certifyAlg === undefined ? undefined : createDigest(certifyAlg)
    if (this.#prefixBytes === 0) this.prefixDigest = this.#prefix.digest()
  }

  /** bytes consumed so far (the next expected offset) */
  get position(): number {
    return this.#pos
  }

  /** Feed the view from `offset` (must equal `position`); `data` undefined = `length` zero bytes. */
  feed(offset: number, length: number, data: Uint8Array | undefined): void {
    if (offset !== this.#pos) throw new RangeError(`view digest expects offset ${this.#pos}, got ${offset}`)
    let done = 0
    while (done < length) {
      const n = data === undefined ? Math.min(ZEROS.length, length - done) : length - done
      const chunk = data === undefined ? ZEROS.subarray(0, n) : data.subarray(done, done + n)
      if (this.prefixDigest === undefined) {
        const room = this.#prefixBytes - this.#pos
        this.#prefix.update(chunk.length > room ? chunk.subarray(0, room) : chunk)
        if (chunk.length >= room) this.prefixDigest = this.#prefix.digest()
      }
      if (this.#full === undefined && this.prefixDigest !== undefined) {
        // nothing more to digest; jump to the end of this feed
        this.#pos += length - done
        return
      }
      this.#full?.update(chunk)
      this.#pos += n
      done += n
    }
    if (this.#pos === this.capacity && this.#full !== undefined && this.fullDigest === undefined) this.fullDigest = this.#full.digest()
  }

  /** true when everything wanted is digested */
  get complete(): boolean {
    return this.prefixDigest !== undefined && (this.#full === undefined || this.fullDigest !== undefined)
  }

  /**
   * Read the rest of the view from the chain and finish: steps of
   * {@link viewStep} (4 MiB for a certify) into a small pool of reused buffers, VIEW_READS_AHEAD reads in flight ahead of
   * the step digested (fresh buffers per step ran ~300 MiB/s on this kind of
   * VM, page faults included; reused ones several times that).
   */
  async finishFrom(chain: ChainView, depth: number, signal?: AbortSignal): Promise<void> {
    // only the prefix is wanted without a certify
    const end = this.#full === undefined ? this.#prefixBytes : this.capacity
    if (this.complete || this.#pos >= end) return
    const step = viewStep(end - this.#pos)
    const pool = Array.from({ length: VIEW_READS_AHEAD + 1 }, () => Buffer.allocUnsafe(Math.min(step, end - this.#pos)))
    const reads: Array<{ offset: number; length: number; buf: Buffer; done: Promise<void> }> = []
    let next = this.#pos
    let turn = 0
    const issue = (): void => {
      while (next < end && reads.length < VIEW_READS_AHEAD) {
        const length = Math.min(step, end - next)
        const buf = pool[turn++ % pool.length] as Buffer
        const offset = next
        const done = chain.readInto !== undefined ? chain.readInto(buf, 0, offset, length, { depth }) : chain.read(offset, length, { depth }).then((b) => void b.copy(buf))
        // handled when its turn comes; not an unhandled rejection meanwhile
        done.catch(() => {})
        reads.push({ offset, length, buf, done })
        next += length
      }
    }
    try {
      issue()
      while (reads.length > 0 && !this.complete) {
        signal?.throwIfAborted()
        const r = reads.shift() as (typeof reads)[number]
        await r.done
        // the next steps are read into the other buffers while this one is digested
        issue()
        this.feed(r.offset, r.length, r.buf.subarray(0, r.length))
      }
    } finally {
      // reads still in flight settle before the pool (and the chain) is let go
      for (const r of reads) await r.done.catch(() => {})
    }
  }
}
