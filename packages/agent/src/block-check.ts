/**
 * `--verify changed` and `--scrub N` (SPEC §5.6 BlockCheck): after the commit, the digests of
 * every block the cycle wrote — read from the frozen source view — are
 * compared with the same blocks read back from the mirror. Cost O(blocks
 * written), not O(disk). The agent's own digests are taken before the
 * commit (an incremental's written blocks read while it ships, a resync's
 * differing blocks as it sends them: written-block-digests.ts), so after the
 * commit only the BlockChecks go; without them (a seed, past the cap, a
 * failed read) the blocks are read after the commit. `--scrub N` compares 1/N of the disk per cycle in
 * rotation (the position is kept in the agent's record), so the whole mirror
 * is proven every N cycles. The rotation is known before the cycle ships, so
 * the slice's digests are taken before the commit too (an incremental reads
 * the slice while it ships, a resync keeps the digests of the slice's blocks
 * as it compares them: scrub-slice-digests.ts); without them (a seed, a slice
 * past the cap, a failed read, a slice that moved) it is read after the
 * commit. A mismatch is recorded in the disk's report
 * (`E_CHECK`, `blockCheck.ok = false`); the cycle then marks the disk
 * diverged and the next cycle resyncs exactly the differing blocks.
 */
import type { Logger } from 'pino'
import { blockDigest, DEFAULT_BLOCK_SIZE, DEFAULT_LIMITS, DigestLengths, MAX_MAP_BLOCKS, blockCount, type DigestAlgorithm } from '@grainline/protocol'
import type { ScrubRecord } from './agent-state.ts'
import type { DiskWork } from './disk-work.ts'
import { AgentError } from './errors.ts'
import { planExtents } from './extent-plan.ts'
import { blockCheckTimeoutMs, refusalError } from './receiver-client.ts'
import type { VerifyOptions } from './verification.ts'
import { ScrubSliceDigests, SLICE_DIGESTS_MAX_BLOCKS } from './scrub-slice-digests.ts'
import { ViewBlockDigests } from './view-block-digests.ts'
import { READY_DIGESTS_MAX_BLOCKS, WrittenBlockDigests } from './written-block-digests.ts'

/** Frozen-view blocks read ahead of the one digested (after the commit: nothing else runs). */
const READS_IN_FLIGHT = 4

/**
 * Frozen-view blocks read ahead by the digests taken while an incremental
 * ships: fewer than after the commit, so that the shipping's own reads keep
 * most of the disk and the thread pool.
 * @default 2
 */
export const SHIPPING_READS_IN_FLIGHT = 2

/**
 * A scrub slice at least this long asks the view's holes first and does not
 * read them; a shorter one is read whole. Asking starts the process's
 * `SEEK_DATA` helper (one `python3`, kept for the run: vmdk's
 * `keptSeekHelper`), and the agent runs once per cycle, so every cycle that
 * asks pays one start: a fork of the agent (5–19 ms of blocked event loop at
 * 43–194 MiB RSS) and the interpreter's start (20–25 ms of CPU), on a quiet
 * machine. An incremental takes its slice while it ships, and that ship is
 * CPU-bound on both cores, so the start lengthens it as much as reading
 * 128 MiB of holes from the page cache does (4 GiB disk, `--scrub 32`,
 * 2026-12-01 15:14–15:24, load 1.2–2.0, 5 interleaved rounds each: scrub
 * cycle 1.04 s vs plain 0.90 s asking, 0.94 s vs 0.91 s reading the holes;
 * scripts/bench-resync.mjs --scenario verify). Below this size the holes
 * are read. The receiver, a long-running process, keeps its helper and asks
 * as a slice of this size arrives (its block-check.ts
 * `EARLY_HOLE_ASK_MIN_BYTES`), and when it processes one only from 256 MiB
 * (`HOLE_ASK_MIN_BYTES`).
 * @default 256 MiB
 */
export const SCRUB_HOLE_ASK_MIN_BYTES = 256 * 1024 * 1024

/** The size from which a scrub slice asks its holes ({@link SCRUB_HOLE_ASK_MIN_BYTES}); tests and benchmarks set it. */
export const scrubHoles = { askMinBytes: SCRUB_HOLE_ASK_MIN_BYTES }

/** The blocks the cycle wrote, ascending: a resync's differing blocks, else every block an extent of the plan covers. */
async function* writtenBlocks(w: DiskWork, blockSize: number): AsyncGenerator<number> {
  if (w.mode === 'resync') {
    const bits = w.touched
    if (bits === undefined) return
    const n = blockCount(w.chain.capacity, w.blockSize)
    // a resync's map blocks are the blocks checked (its block size may differ from the option's)
    for (let b = 0; b < n; b++) if (((bits[b >> 3] as number) & (1 << (b & 7))) !== 0) yield b
    return
  }
  let last = -1
  for await (const e of planExtents(w.plan, 0)) {
    const first = Math.floor(e.offset / blockSize)
    const end = Math.floor((e.offset + e.length - 1) / blockSize)
    for (let b = Math.max(first, last + 1); b <= end; b++) yield b
    last = Math.max(last, end)
  }
}

/** Blocks per BlockCheck: as many as fit in a frame (SPEC §5.6: at most 65536). */
function maxBlocksPerCheck(opts: VerifyOptions): number {
  const len = DigestLengths[opts.digest]
  return Math.max(1, Math.min(MAX_MAP_BLOCKS, Math.floor(((opts.maxMessageBytes ?? DEFAULT_LIMITS.maxMessageBytes) - 256) / (8 + len))))
}

/**
 * BlockChecks sent and not yet answered (SPEC §5.6: at most 4 of a disk):
 * the receiver reads the blocks of one while the agent reads the next. A
 * scrub slice is sent in this many parts (the receiver's block-check.ts
 * `CHECK_RUNS_AHEAD` asks the holes of that many parts at once).
 * @default 4
 */
export const CHECKS_IN_FLIGHT = 4

/**
 * Bytes of blocks per BlockCheck of `--verify changed` (at least one block):
 * small, so that the receiver starts reading the first blocks while the
 * agent still reads the next ones.
 * @default 4 MiB
 */
export const VERIFY_CHECK_BYTES = 4 * 1024 * 1024

/** A block and the digest of its frozen-view bytes (a view: copy to keep it). */
type BlockDigest = readonly [block: number, digest: Uint8Array]

/**
 * The digests of the blocks `list` yields (ascending), each read from `w`'s
 * frozen view, READS_IN_FLIGHT ahead of the one digested, into a small pool
 * of reused buffers (no allocation per block). `stats.listMs`: the time
 * spent waiting for `list` (the plan's ranges read again).
 */
async function* readBlockDigests(
  w: DiskWork,
  opts: { readonly digest: DigestAlgorithm; readonly signal?: AbortSignal | undefined; readonly inFlight?: number },
  blockSize: number,
  list: AsyncIterable<number>,
  stats: { listMs: number },
): AsyncGenerator<BlockDigest> {
  const chain = w.chain
  const capacity = chain.capacity
  const inFlight = Math.max(1, opts.inFlight ?? READS_IN_FLIGHT)
  const pool = Array.from({ length: inFlight + 1 }, () => Buffer.allocUnsafe(Math.min(blockSize, capacity)))
  const reads: Array<{ block: number; buf: Buffer; length: number; done: Promise<void> }> = []
  const it = list[Symbol.asyncIterator]()
  let ended = false
  let turn = 0
  const issue = async (): Promise<void> => {
    while (!ended && reads.length < inFlight) {
      const tl = performance.now()
      const n = await it.next()
      stats.listMs += performance.now() - tl
      if (n.done === true) {
        ended = true
        return
      }
      const block = n.value
      const offset = block * blockSize
      const length = Math.min(blockSize, capacity - offset)
      const buf = pool[turn++ % pool.length] as Buffer
      const done = chain.readInto !== undefined ? chain.readInto(buf, 0, offset, length, { depth: w.depth }) : chain.read(offset, length, { depth: w.depth }).then((b) => void b.copy(buf))
      // handled when its turn comes; not an unhandled rejection while an earlier block is awaited
      done.catch(() => {})
      reads.push({ block, buf, length, done })
    }
  }
  try {
    await issue()
    while (reads.length > 0) {
      opts.signal?.throwIfAborted()
      const r = reads.shift() as (typeof reads)[number]
      await r.done
      // the next block is read (into another buffer of the pool) while this one is digested
      await issue()
      yield [r.block, blockDigest(opts.digest, r.buf.subarray(0, r.length))]
    }
  } finally {
    // reads still in flight settle before the pool (and the chain) is let go
    for (const r of reads) await r.done.catch(() => {})
  }
}

/** What comparing a list of blocks found. */
interface CheckOutcome {
  blocks: number
  mismatched: number
  /** time spent listing, reading and digesting the frozen view's blocks (the agent's own work), ms */
  readMs: number
  /** time the agent waited for answers (the receiver's side not overlapped with its own reading), ms */
  waitMs: number
  /** BlockChecks sent */
  messages: number
  /** the first few mismatched blocks (for the message) */
  readonly first: number[]
}

/**
 * Compare the blocks `digests` yields (ascending, each with the digest of its
 * frozen-view bytes) with the mirror, in BlockChecks of at most `chunkBlocks`
 * blocks, up to {@link CHECKS_IN_FLIGHT} of them unanswered: the receiver
 * reads one part while the next is read here. Answers are taken in order; a
 * refusal, or an answer naming a block its BlockCheck did not list, ends the
 * comparison (E_PROTOCOL for the latter). `beforeAnswers` reads the answers
 * to requests sent before the first BlockCheck (a trivial check sent just
 * ahead of them); it runs once, before the first BlockCheckResult is read.
 */
async function compareBlocks(
  w: DiskWork,
  opts: VerifyOptions,
  blockSize: number,
  digests: AsyncIterable<BlockDigest>,
  chunkBlocks: number,
  beforeAnswers?: () => Promise<void>,
): Promise<CheckOutcome> {
  const len = DigestLengths[opts.digest]
  const per = Math.max(1, Math.min(maxBlocksPerCheck(opts), chunkBlocks))
  const out: CheckOutcome = { blocks: 0, mismatched: 0, readMs: 0, waitMs: 0, messages: 0, first: [] }
  const unanswered: Array<{ readonly batch: readonly number[]; readonly timeoutMs: number }> = []
  const t0 = performance.now()
  let earlier = beforeAnswers
  const answerEarlier = async (): Promise<void> => {
    const read = earlier
    earlier = undefined
    if (read === undefined) return
    const tw = performance.now()
    await read()
    out.waitMs += performance.now() - tw
  }
  const settle = async (): Promise<void> => {
    await answerEarlier()
    const s = unanswered.shift() as (typeof unanswered)[number]
    const tw = performance.now()
    const r = await opts.client.blockCheckResult(w.handle, s.timeoutMs)
    out.waitMs += performance.now() - tw
    if (!r.ok) throw refusalError(`block check of ${w.name}`, r.refusal)
    const listed = new Set(s.batch)
    const mv = new DataView(r.value.mismatched.buffer, r.value.mismatched.byteOffset, r.value.mismatched.byteLength)
    for (let i = 0; i < r.value.mismatched.length; i += 8) {
      const b = Number(mv.getBigUint64(i, true))
      if (!listed.has(b)) throw new AgentError('E_PROTOCOL', `BlockCheckResult of ${w.name} names block ${b}, which its BlockCheck did not list`)
      if (out.first.length < 8) out.first.push(b)
      out.mismatched++
    }
    out.blocks += s.batch.length
  }
  const send = async (batch: readonly number[], sums: Uint8Array): Promise<void> => {
    const index = new Uint8Array(batch.length * 8)
    const iv = new DataView(index.buffer)
    for (const [i, b] of batch.entries()) iv.setBigUint64(i * 8, BigInt(b), true)
    if (unanswered.length >= CHECKS_IN_FLIGHT) await settle()
    const msg = { disk: w.handle, blockSize, blocks: index, digests: sums.subarray(0, batch.length * len) }
    await opts.client.sendBlockCheck(msg)
    unanswered.push({ batch, timeoutMs: blockCheckTimeoutMs(msg) })
    out.messages++
  }
  let batch: number[] = []
  let sums = new Uint8Array(per * len)
  for await (const [b, d] of digests) {
    opts.signal?.throwIfAborted()
    sums.set(d, batch.length * len)
    batch.push(b)
    if (batch.length === per) {
      await send(batch, sums)
      batch = []
      sums = new Uint8Array(per * len)
    }
  }
  if (batch.length > 0) await send(batch, sums)
  while (unanswered.length > 0) await settle()
  // no block written: the earlier answers are still read
  await answerEarlier()
  out.readMs = performance.now() - t0 - out.waitMs
  return out
}

/** Where a comparison's time went (logged: `readMs` the frozen view, `waitMs` the receiver's side not overlapped with it). */
function timings(o: CheckOutcome): { readMs: number; waitMs: number; messages: number } {
  return { readMs: Math.round(o.readMs), waitMs: Math.round(o.waitMs), messages: o.messages }
}

function fail(w: DiskWork, opts: VerifyOptions, what: string, o: CheckOutcome, blockSize: number, extra: Record<string, unknown> = {}): void {
  const message = `${what} failed on ${w.name}: ${o.mismatched} of the ${o.blocks} blocks compared differ in the mirror (blocks ${o.first.join(', ')}${o.mismatched > o.first.length ? ', …' : ''} of ${blockSize} bytes)`
  w.report.error = { code: 'E_CHECK', message }
  opts.log.error({ disk: w.name, blocks: o.blocks, mismatched: o.mismatched, first: o.first, ...timings(o), ...extra }, `${what} failed`)
}

/** The block size of `w`'s `--verify changed` (a resync's map blocks, else the option's). */
export function verifyBlockSize(w: DiskWork, opts: { readonly blockSize?: number | undefined }): number {
  return w.mode === 'resync' ? w.blockSize : (opts.blockSize ?? DEFAULT_BLOCK_SIZE)
}

/** The digests of every block `w`'s cycle wrote, taken before the commit with this block size and algorithm, or undefined (they are read). */
export function readyDigests(w: DiskWork, algorithm: DigestAlgorithm, blockSize: number): WrittenBlockDigests | undefined {
  const d = w.written
  return d?.ready === true && d.blockSize === blockSize && d.algorithm === algorithm ? d : undefined
}

/**
 * Start taking the digests of the blocks an incremental writes from its
 * frozen view while it ships (`--verify changed`), {@link SHIPPING_READS_IN_FLIGHT}
 * reads in flight, into `w.written`; `w.writtenTask` settles when done (it
 * never rejects: a failed read lets the digests go, and the check reads the
 * blocks after the commit, where the failure is reported). Once per plan: the
 * frozen view and the plan do not change with the connection. Not for a seed
 * (every block is written: reading the whole view a second time while it
 * ships would compete with the shipping's own reads) nor for a plan that may
 * write more than {@link READY_DIGESTS_MAX_BLOCKS} blocks.
 */
export function startWrittenDigests(w: DiskWork, o: { readonly blockSize: number; readonly digest: DigestAlgorithm; readonly signal?: AbortSignal | undefined; readonly log: Logger }): void {
  if (w.mode !== 'incremental' || w.writtenTask !== undefined) return
  // every extent covers at most its length in blocks and one more
  const most = Math.ceil(w.plan.totalBytes / o.blockSize) + w.plan.totalExtents
  if (most > READY_DIGESTS_MAX_BLOCKS) {
    o.log.info({ disk: w.name, mostBlocks: most, max: READY_DIGESTS_MAX_BLOCKS }, 'verify changed: the written blocks are read after the commit (more than kept ahead)')
    return
  }
  const written = new WrittenBlockDigests(o.blockSize, o.digest)
  w.written = written
  const t0 = performance.now()
  const stats = { listMs: 0 }
  w.writtenTask = (async () => {
    try {
      for await (const [b, d] of readBlockDigests(w, { digest: o.digest, signal: o.signal, inFlight: SHIPPING_READS_IN_FLIGHT }, o.blockSize, writtenBlocks(w, o.blockSize), stats)) written.add(b, d)
      written.complete()
      o.log.debug(
        { disk: w.name, blocks: written.count, ms: Math.round(performance.now() - t0), listMs: Math.round(stats.listMs) },
        'verify changed: digests of the written blocks taken while shipping',
      )
    } catch (err) {
      written.drop(`reading the written blocks failed: ${(err as Error).message}`)
      o.log.info({ disk: w.name, err }, 'verify changed: the written blocks are read after the commit (their digests could not be taken while shipping)')
    }
  })()
}

/**
 * Compare the blocks `w`'s cycle wrote with the mirror; record the outcome in
 * its report. Digests taken before the commit are sent as they are, in as few
 * BlockChecks as frames allow (nothing to read here: the receiver's reading
 * is all that is left); else the blocks are read in parts of
 * {@link VERIFY_CHECK_BYTES}, the receiver reading one while the next is read
 * here. `beforeAnswers`: see {@link compareBlocks}.
 */
export async function checkChangedBlocks(w: DiskWork, opts: VerifyOptions, beforeAnswers?: () => Promise<void>): Promise<void> {
  const blockSize = verifyBlockSize(w, opts)
  const stats = { listMs: 0 }
  const ready = readyDigests(w, opts.digest, blockSize)
  const o =
    ready !== undefined
      ? await compareBlocks(w, opts, blockSize, fromMemory(ready), maxBlocksPerCheck(opts), beforeAnswers)
      : await compareBlocks(w, opts, blockSize, readBlockDigests(w, opts, blockSize, writtenBlocks(w, blockSize), stats), Math.floor(VERIFY_CHECK_BYTES / blockSize), beforeAnswers)
  w.report.blockCheck = { ok: o.mismatched === 0, blockSize, blocks: o.blocks, mismatched: o.mismatched }
  if (o.mismatched > 0) fail(w, opts, 'block check', o, blockSize)
  else opts.log.info({ disk: w.name, blocks: o.blocks, blockSize, ...timings(o), listMs: Math.round(stats.listMs), ready: ready !== undefined }, 'block check ok')
}

/** The digests taken before the commit, as the comparison takes them. */
async function* fromMemory(d: { entries(): Iterable<BlockDigest> }): AsyncGenerator<BlockDigest> {
  yield* d.entries()
}

/** What a disk's scrub needs to know before the cycle ships to plan its slice. */
export interface ScrubPlan {
  /** `--scrub N` (at least 1) */
  readonly scrub: number
  /** block size of the scrub (the option's) */
  readonly blockSize: number
  /** the disk's rotation in the agent's record (none yet: from block 0) */
  readonly prev: ScrubRecord | undefined
}

/**
 * The rotation a scrub continues: the recorded one when it fits the disk and
 * the block size, else one from block 0; a `whole` cycle (a seed or resync
 * without error, which compared every block) proves the mirror and starts a
 * new rotation.
 */
function scrubRotation(total: number, blockSize: number, prev: ScrubRecord | undefined, whole: boolean, now: string): ScrubRecord {
  if (whole) return { next: 0, blockSize, clean: true, provenAt: now }
  return prev !== undefined && prev.blockSize === blockSize && prev.next < total ? prev : { next: 0, blockSize, clean: true, ...(prev?.provenAt === undefined ? {} : { provenAt: prev.provenAt }) }
}

/** The blocks `[from, to)` a scrub compares this cycle (see {@link scrubRotation} for `whole`). */
export function scrubSlice(capacity: number, plan: ScrubPlan, whole: boolean): { readonly from: number; readonly to: number } {
  const total = blockCount(capacity, plan.blockSize)
  const from = scrubRotation(total, plan.blockSize, plan.prev, whole, '').next
  return { from, to: Math.min(total, from + Math.ceil(total / Math.max(1, plan.scrub))) }
}

/**
 * The block digests of the slice `[from, to)` of `w`'s frozen view, read in
 * large spans into reused buffers, the holes of a long slice not at all
 * (their digest is the zero block's): read block by block it was the largest
 * part of a scrub's extra time (scripts/bench-resync.mjs --scenario verify),
 * 1.97× this path read alone (scripts/bench-scrub-read.mjs).
 */
function sliceSource(
  w: DiskWork,
  slice: { readonly from: number; readonly to: number; readonly blockSize: number; readonly algorithm: DigestAlgorithm },
  o: { readonly aheadBlocks: number; readonly inFlight?: number; readonly signal?: AbortSignal | undefined; readonly log: Logger },
): ViewBlockDigests {
  const chain = w.chain
  return new ViewBlockDigests({
    chain:
      (slice.to - slice.from) * slice.blockSize >= scrubHoles.askMinBytes
        ? chain
        : { capacity: chain.capacity, read: (at, n, d) => chain.read(at, n, d), readInto: (b, bAt, at, n, d) => chain.readInto(b, bAt, at, n, d) },
    depth: w.depth,
    blockSize: slice.blockSize,
    algorithm: slice.algorithm,
    fromBlock: slice.from,
    toBlock: slice.to,
    aheadBlocks: o.aheadBlocks,
    ...(o.inFlight === undefined ? {} : { inFlight: o.inFlight }),
    signal: o.signal,
    onUnknownHoles: (bytes) => o.log.info({ disk: w.name, bytes }, 'scrub: the holes of the view cannot be asked for here; they are read'),
  })
}

/**
 * Start taking the digests of an incremental's scrub slice from its frozen
 * view while it ships (`--scrub N`), {@link SHIPPING_READS_IN_FLIGHT} span
 * reads in flight, into `w.scrubSlice`; `w.scrubTask` settles when done (it
 * never rejects: a failed read lets the digests go, and the scrub reads its
 * slice after the commit, where the failure is reported). Once per disk: the
 * frozen view does not change with the plan or the connection. Not for a seed
 * (it reads every block while it ships; its slice is read after the commit)
 * nor for a slice longer than {@link SLICE_DIGESTS_MAX_BLOCKS} blocks.
 */
export function startScrubDigests(w: DiskWork, o: { readonly plan: ScrubPlan; readonly digest: DigestAlgorithm; readonly signal?: AbortSignal | undefined; readonly log: Logger }): void {
  if (w.mode !== 'incremental' || w.scrubTask !== undefined) return
  const { from, to } = scrubSlice(w.chain.capacity, o.plan, false)
  if (!ScrubSliceDigests.fits(from, to)) {
    o.log.info({ disk: w.name, from, to, max: SLICE_DIGESTS_MAX_BLOCKS }, 'scrub: the slice is read after the commit (longer than kept ahead)')
    return
  }
  const slice = new ScrubSliceDigests(from, to, o.plan.blockSize, o.digest)
  w.scrubSlice = slice
  const t0 = performance.now()
  w.scrubTask = (async () => {
    const source = sliceSource(w, slice, { aheadBlocks: to - from, inFlight: SHIPPING_READS_IN_FLIGHT, signal: o.signal, log: o.log })
    source.start()
    try {
      for (let b = from; b < to; b++) slice.set(b, await source.next())
      slice.holeBytes = source.holeBytes
      slice.complete()
      o.log.debug({ disk: w.name, from, to, holeBytes: source.holeBytes, ms: Math.round(performance.now() - t0) }, 'scrub: digests of the slice taken while shipping')
    } catch (err) {
      slice.drop(`reading the slice failed: ${(err as Error).message}`)
      o.log.info({ disk: w.name, from, to, err }, 'scrub: the slice is read after the commit (its digests could not be taken while shipping)')
    } finally {
      await source.close()
    }
  })()
}

/** The digests of the scrub slice `[from, to)` of `w` taken before the commit with this block size and algorithm, or undefined (it is read). */
function readySlice(w: DiskWork, algorithm: DigestAlgorithm, blockSize: number, from: number, to: number): ScrubSliceDigests | undefined {
  const d = w.scrubSlice
  return d?.serves(from, to, blockSize, algorithm) === true ? d : undefined
}

/** Whether `w`'s scrub this cycle (see {@link scrubDisk}) finds its slice's digests ready (nothing to read after the commit). */
export function scrubReady(w: DiskWork, opts: { readonly digest: DigestAlgorithm; readonly blockSize?: number | undefined; readonly scrub: number }, prev: ScrubRecord | undefined): boolean {
  const plan = { scrub: opts.scrub, blockSize: opts.blockSize ?? DEFAULT_BLOCK_SIZE, prev }
  const { from, to } = scrubSlice(w.chain.capacity, plan, isWhole(w))
  return readySlice(w, opts.digest, plan.blockSize, from, to) !== undefined
}

/** A seed or resync without error compared every block: the mirror is proven whole. */
function isWhole(w: DiskWork): boolean {
  return (w.mode === 'seed' || w.mode === 'resync') && w.report.error === undefined
}

/**
 * `--scrub N`: compare the next 1/N of the disk's blocks (a rotation kept in
 * the agent's record) with the mirror. Returns the disk's new scrub record:
 * the rotation moves on; a rotation completed without a mismatch — or a seed
 * or resync, which compared every block — proves the whole mirror. The
 * slice's digests taken before the commit are sent as they are, in as few
 * BlockChecks as frames allow (one for a slice up to 65536 blocks): nothing
 * is read here, so parts would only add a message, a file open and a read
 * pipeline start per part on the receiver (and a 128 MiB slice arrives whole,
 * so the receiver asks its holes as it arrives: its block-check.ts
 * `askHolesEarly`). Else the slice is read here and goes in
 * {@link CHECKS_IN_FLIGHT} parts: the receiver reads each while the next is
 * read here, and asks the holes of the parts at once (its `CHECK_RUNS_AHEAD`).
 * `beforeAnswers`: see {@link compareBlocks}.
 */
export async function scrubDisk(w: DiskWork, opts: VerifyOptions & { readonly scrub: number }, prev: ScrubRecord | undefined, beforeAnswers?: () => Promise<void>): Promise<ScrubRecord> {
  const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE
  const total = blockCount(w.chain.capacity, blockSize)
  const now = new Date().toISOString()
  const rec = scrubRotation(total, blockSize, prev, isWhole(w), now)
  const { from, to } = scrubSlice(w.chain.capacity, { scrub: opts.scrub, blockSize, prev }, isWhole(w))
  const parts = Math.ceil((to - from) / CHECKS_IN_FLIGHT)
  const ready = readySlice(w, opts.digest, blockSize, from, to)
  let o: CheckOutcome
  let holeBytes: number
  if (ready !== undefined) {
    o = await compareBlocks(w, opts, blockSize, fromMemory(ready), maxBlocksPerCheck(opts), beforeAnswers)
    holeBytes = ready.holeBytes
  } else {
    const source = sliceSource(w, { from, to, blockSize, algorithm: opts.digest }, { aheadBlocks: maxBlocksPerCheck(opts), signal: opts.signal, log: opts.log })
    source.start()
    const range = async function* (): AsyncGenerator<BlockDigest> {
      for (let b = from; b < to; b++) yield [b, await source.next()]
    }
    try {
      o = await compareBlocks(w, opts, blockSize, range(), parts, beforeAnswers)
    } finally {
      await source.close()
    }
    holeBytes = source.holeBytes
  }
  const clean = rec.clean && o.mismatched === 0
  const done = to >= total
  w.report.scrub = { ok: o.mismatched === 0, blockSize, from, to, blocks: total, mismatched: o.mismatched, rotationComplete: done }
  if (o.mismatched > 0) fail(w, opts, 'scrub', o, blockSize, { ready: ready !== undefined })
  else opts.log.info({ disk: w.name, from, to, blocks: total, blockSize, holeBytes, ...timings(o), ready: ready !== undefined }, 'scrub ok')
  const provenAt = done && clean ? now : rec.provenAt
  if (provenAt !== undefined) w.report.scrub.provenAt = provenAt
  return { next: done ? 0 : to, blockSize, clean: done ? true : clean, ...(provenAt === undefined ? {} : { provenAt }) }
}
