/**
 * The receiver's side of a BlockCheck (SPEC §5.6, `--verify changed`): read
 * the listed blocks back from the mirror, digest them, answer with the
 * blocks whose digests differ, and record the verdict (a mismatch marks the
 * disk diverged). Cost: the listed blocks only.
 */
import { timingSafeEqual } from 'node:crypto'
import { blockDigest, type DigestAlgorithm, zeroDigest } from '@grainline/protocol'
import { type DataRange, dataCursor, keptSeekHelper } from '@grainline/vmdk'
import { ReceiverError, ioError } from './errors.ts'
import { readFullyInto } from './fs-util.ts'
import { openStoreFile } from './store-fs.ts'
import type { VmMirror } from './vm-mirror.ts'
import { blockRun } from './proof.ts'
import { giveSpans, SPAN_BYTES, takeSpans } from './span-buffers.ts'

/** A BlockCheck as the receiver needs it. */
export interface BlockCheckRequest {
  readonly blockSize: number
  /** u64le block indexes, ascending (checked by the decoder) */
  readonly blocks: Uint8Array
  readonly digests: Uint8Array
  readonly algorithm: DigestAlgorithm
}

/** What a BlockCheck found, and where its time went (logged by the session). */
export interface BlockCheckOutcome {
  readonly ok: boolean
  /** the mismatched block indexes, u64le */
  readonly mismatched: Uint8Array
  /** mirror bytes compared (read, or known to be a hole) */
  readonly bytes: number
  /** of those, bytes of holes of the flat, not read */
  readonly holeBytes: number
  /** reading and digesting the listed blocks, ms */
  readonly readMs: number
  /** writing the verdict to the VM's state file (fsynced), ms; ~0 when a clean verdict is deferred */
  readonly recordMs: number
}

/**
 * Bytes of consecutive listed blocks read per read call (a block larger than
 * this is read alone): as certify reads the mirror (digest-file.ts), so a
 * scrub slice reads as fast per byte as a certify. Read one block at a time,
 * the slice cost a thread-pool hand-off per block. The read buffers are the
 * receiver's kept ones (span-buffers.ts): a scrub slice comes as several
 * BlockChecks, right behind a trivial check that read through them too.
 * @default 4 MiB
 */
export const CHECK_SPAN_BYTES = SPAN_BYTES

/**
 * Span reads in flight ahead of the span being digested.
 * @default 3
 */
export const SPANS_IN_FLIGHT = 3

/**
 * A run of consecutive blocks (a `--scrub` slice) whose window (the run, or
 * the {@link CHECK_RUNS_AHEAD} runs of a slice sent in parts) is at least
 * this long asks the flat's holes first (one `SEEK_DATA` helper process,
 * data-ranges.ts) and does not read them; below it the holes are read
 * (kernel zero-fill). Asked when the BlockCheck is processed, the helper is
 * on the scrub's path after the commit: on a quiet machine it cost 36–44 ms,
 * reading 128 MiB of holes 35–41 ms (lead, 2026-12-01, 4 GiB: the first part
 * of a 128 MiB slice took 66–76 ms with the helper).
 * A window asked for as the BlockCheck arrives, while the session still
 * answers the trivial check ahead of it, uses {@link EARLY_HOLE_ASK_MIN_BYTES}.
 * @default 256 MiB
 */
export const HOLE_ASK_MIN_BYTES = 256 * 1024 * 1024

/**
 * A BlockCheck's run at least this long asks its holes as soon as it arrives
 * ({@link askHolesEarly}: the helper runs while the session answers what is
 * queued ahead of it, the trivial check); shorter ones are read when
 * processed, or asked then when their window is at least
 * {@link HOLE_ASK_MIN_BYTES}.
 * @default 64 MiB
 */
export const EARLY_HOLE_ASK_MIN_BYTES = 64 * 1024 * 1024

/**
 * BlockChecks of a disk an agent keeps in flight at once (SPEC §5.6: at most
 * 4 unanswered); the agent sends a scrub slice as that many consecutive runs,
 * so the first run of a slice asks the holes of this many runs' bytes.
 * @default 4
 */
export const CHECK_RUNS_AHEAD = 4

/**
 * The flat's data ranges asked for by a BlockCheck that was a run, by disk
 * name, kept for the next runs of the same slice (one `SEEK_DATA` helper per
 * slice, not per BlockCheck); `ranges` undefined when they cannot be known
 * (every block read). Valid while the flat is not written: a session keeps
 * them after its commit only (SPEC §8: nothing but checks follows a Commit),
 * when nothing writes the mirror.
 */
export type CheckHoleWindows = Map<string, { readonly start: number; readonly end: number; readonly ranges: Promise<readonly DataRange[] | undefined> }>

/** Options of {@link checkBlocks}. */
export interface CheckBlocksOptions {
  readonly signal?: AbortSignal | undefined
  /**
   * record a clean verdict in memory only (written by the VM's next save,
   * `VmMirror.saveUnsaved`); a mismatch is always written before the answer
   * @default false
   */
  readonly defer?: boolean
  /** the data ranges asked for by earlier runs of this session, or as they arrived (none: asked per BlockCheck) */
  readonly windows?: CheckHoleWindows
}

/** The bytes `[start, ahead)` a run's hole question covers (see {@link CHECK_RUNS_AHEAD}), or undefined when it is not a run inside the disk. */
function runWindow(run: { from: number; to: number } | undefined, blockSize: number, capacity: number, slice: boolean): { start: number; end: number; ahead: number } | undefined {
  if (run === undefined || run.from * blockSize >= capacity) return undefined
  const start = run.from * blockSize
  const end = Math.min(run.to * blockSize, capacity)
  // one run alone, or with the runs expected after it (a slice sent in parts)
  return { start, end, ahead: slice ? Math.min(capacity, start + (end - start) * CHECK_RUNS_AHEAD) : end }
}

/**
 * Ask the data ranges of `[start, end)` of the open file (never rejects:
 * undefined when unknown), through the process's kept `SEEK_DATA` helper
 * (@grainline/vmdk `keptSeekHelper`: one `python3` for the receiver, started
 * at its first question; a helper per question cost 36–44 ms quiet and
 * 80–450 ms at load 7–9, a question to the kept one 1–6 ms at load 10).
 */
function askRanges(fd: number, start: number, end: number): Promise<readonly DataRange[] | undefined> {
  return keptSeekHelper.dataRanges(fd, start, end).catch(() => undefined)
}

/** Where `[start, end)` of the flat may hold data (undefined: unknown, every block is read). */
async function runDataRanges(
  fd: number,
  name: string,
  run: { from: number; to: number } | undefined,
  blockSize: number,
  capacity: number,
  windows: CheckHoleWindows | undefined,
): Promise<readonly DataRange[] | undefined> {
  const w = runWindow(run, blockSize, capacity, windows !== undefined)
  if (w === undefined) return undefined
  const known = windows?.get(name)
  if (known !== undefined && known.start <= w.start && w.end <= known.end) return await known.ranges
  if (w.ahead - w.start < HOLE_ASK_MIN_BYTES) return undefined
  const ranges = askRanges(fd, w.start, w.ahead)
  windows?.set(name, { start: w.start, end: w.ahead, ranges })
  return await ranges
}

/**
 * A BlockCheck of disk `name` has arrived and waits behind other messages
 * (the trivial check the agent sends just ahead of a scrub slice whose
 * digests it took while shipping, whole in one BlockCheck): when its blocks
 * are a run of at least {@link EARLY_HOLE_ASK_MIN_BYTES} not asked yet, ask
 * the flat's data ranges of that run now, into `windows`, so that the
 * `SEEK_DATA` helper runs while the session answers what is ahead of it
 * rather than on the scrub's path. (A slice sent in parts — read by the
 * agent after the commit — is not behind a trivial check: its first part
 * asks for the parts' window when processed, {@link HOLE_ASK_MIN_BYTES}.) Only after the session's commit (the answer holds while
 * nothing writes the mirror: see {@link CheckHoleWindows}). Returns the
 * window asked, or undefined; never rejects (a failed question: the blocks
 * are read).
 */
export function askHolesEarly(vm: VmMirror, name: string, req: { readonly blockSize: number; readonly blocks: Uint8Array }, windows: CheckHoleWindows): { start: number; end: number } | undefined {
  const rec = vm.state.disks[name]
  if (rec === undefined || !(req.blockSize > 0)) return undefined
  const w = runWindow(blockRun(req.blocks), req.blockSize, rec.capacity, false)
  if (w === undefined || w.ahead - w.start < EARLY_HOLE_ASK_MIN_BYTES) return undefined
  const known = windows.get(name)
  if (known !== undefined && known.start <= w.start && w.end <= known.end) return undefined
  const path = vm.paths.flat(rec.stem)
  const ranges = (async () => {
    let fh: Awaited<ReturnType<typeof openStoreFile>> | undefined
    try {
      fh = await openStoreFile(path, 'read')
      return await askRanges(fh.fd, w.start, w.ahead)
    } catch {
      return undefined
    } finally {
      await fh?.close().catch(() => {})
    }
  })()
  windows.set(name, { start: w.start, end: w.ahead, ranges })
  return { start: w.start, end: w.ahead }
}

/**
 * Compare the listed blocks of disk `name` (committed in this session) with
 * the agent's digests. Returns the mismatched indexes as u64le.
 * @throws ReceiverError E_RANGE (a block beyond the disk), E_IO
 */
export async function checkBlocks(vm: VmMirror, name: string, req: BlockCheckRequest, opts: CheckBlocksOptions = {}): Promise<BlockCheckOutcome> {
  const signal = opts.signal
  const rec = vm.state.disks[name]
  if (rec === undefined) throw new ReceiverError('E_INTERNAL', `disk ${name} has no committed record`)
  const n = req.blocks.length / 8
  const len = req.digests.length / n
  const index = new DataView(req.blocks.buffer, req.blocks.byteOffset, req.blocks.byteLength)
  const out: number[] = []
  let bytes = 0
  let holeBytes = 0
  const t0 = performance.now()
  let fh: Awaited<ReturnType<typeof openStoreFile>>
  try {
    fh = await openStoreFile(vm.paths.flat(rec.stem), 'read')
  } catch (err) {
    throw ioError(err, `opening the mirror of ${name}`)
  }
  // a long run of blocks: where the flat holds data (undefined: unknown, every block is read)
  const run = blockRun(req.blocks)
  // asked with increasing offsets
  const mayHoldData = dataCursor(await runDataRanges(fh.fd, name, run, req.blockSize, rec.capacity, opts.windows))
  const blockAt = (i: number): number => Number(index.getBigUint64(i * 8, true))
  // consecutive listed blocks are read together, up to CHECK_SPAN_BYTES a read, SPANS_IN_FLIGHT reads ahead of the
  // span digested, into reused buffers; `data` undefined: holes of the flat (every block of the span), not read
  const spanBlocks = Math.max(1, Math.floor(CHECK_SPAN_BYTES / req.blockSize))
  const pool = takeSpans(SPANS_IN_FLIGHT + 1, Math.min(spanBlocks * req.blockSize, rec.capacity))
  const spans: Array<{ readonly at: number; readonly count: number; readonly length: number; readonly data: Promise<Buffer | undefined> }> = []
  let turn = 0
  let issued = 0
  const issue = (): void => {
    while (spans.length < SPANS_IN_FLIGHT && issued < n) {
      const at = issued
      const b = blockAt(at)
      const offset = b * req.blockSize
      const hole = (o: number): boolean => !mayHoldData(o, Math.min(o + req.blockSize, rec.capacity))
      // a span: consecutive listed blocks, all holes or all read
      const holes = offset < rec.capacity && hole(offset)
      let count = 1
      if (offset < rec.capacity) {
        for (let o = offset + req.blockSize; count < spanBlocks && at + count < n && blockAt(at + count) === b + count && o < rec.capacity && hole(o) === holes; o += req.blockSize) count++
      }
      const length = Math.max(0, Math.min(count * req.blockSize, rec.capacity - offset))
      const data: Promise<Buffer | undefined> =
        offset >= rec.capacity
          ? Promise.reject(new ReceiverError('E_RANGE', `block ${b} of ${req.blockSize} bytes is beyond the capacity ${rec.capacity} of ${name}`))
          : holes
            ? Promise.resolve(undefined)
            : readFullyInto(fh, pool[turn++ % pool.length] as Buffer, offset, length).catch((err: unknown) => {
                throw ioError(err, `reading the mirror of ${name}`)
              })
      // handled when its turn comes; not an unhandled rejection while an earlier span is awaited
      data.catch(() => {})
      spans.push({ at, count, length, data })
      issued += count
    }
  }
  try {
    issue()
    while (spans.length > 0) {
      signal?.throwIfAborted()
      const s = spans.shift() as (typeof spans)[number]
      const got = await s.data
      // the next spans are read into the other buffers while this one is digested
      issue()
      for (let k = 0; k < s.count; k++) {
        const from = k * req.blockSize
        const bl = Math.min(req.blockSize, s.length - from)
        // a hole of the flat reads as zeros: the zero block's digest, without a read
        const d = got === undefined ? zeroDigest(req.algorithm, bl) : blockDigest(req.algorithm, got.subarray(from, from + bl))
        if (got === undefined) holeBytes += bl
        bytes += bl
        const i = s.at + k
        if (!timingSafeEqual(d, req.digests.subarray(i * len, (i + 1) * len))) out.push(blockAt(i))
      }
    }
  } finally {
    // reads still in flight settle before the file closes and the buffers are reused
    for (const s of spans) await s.data.catch(() => {})
    await fh.close()
    giveSpans(pool)
  }
  const mismatched = new Uint8Array(out.length * 8)
  const v = new DataView(mismatched.buffer)
  for (const [i, b] of out.entries()) v.setBigUint64(i * 8, BigInt(b), true)
  const ok = out.length === 0
  const t1 = performance.now()
  await vm.recordVerify(name, 'blocks', { ok, at: new Date().toISOString(), algorithm: req.algorithm, digest: '', bytes }, { run, blockSize: req.blockSize }, { defer: opts.defer === true })
  return { ok, mismatched, bytes, holeBytes, readMs: t1 - t0, recordMs: performance.now() - t1 }
}
