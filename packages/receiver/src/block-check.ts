/**
 * The receiver's side of a BlockCheck (SPEC §5.6, `--verify changed`): read
 * the listed blocks back from the mirror, digest them, answer with the
 * blocks whose digests differ, and record the verdict (a mismatch marks the
 * disk diverged). Cost: the listed blocks only.
 */
import { timingSafeEqual } from 'node:crypto'
import { blockDigest, type DigestAlgorithm, zeroDigest } from '@grainline/protocol'
import { type DataRange, dataCursor, fileDataRanges } from '@grainline/vmdk'
import { ReceiverError, ioError } from './errors.ts'
import { readFullyInto } from './fs-util.ts'
import { openStoreFile } from './store-fs.ts'
import type { VmMirror } from './vm-mirror.ts'
import { blockRun } from './proof.ts'

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
 * the slice cost a thread-pool hand-off per block.
 * @default 4 MiB
 */
export const CHECK_SPAN_BYTES = 4 * 1024 * 1024

/**
 * Span reads in flight ahead of the span being digested.
 * @default 3
 */
export const SPANS_IN_FLIGHT = 3

/**
 * Span buffers kept between BlockChecks, at most `SPANS_IN_FLIGHT + 1` of
 * {@link CHECK_SPAN_BYTES} (16 MiB) for the whole receiver: a scrub slice
 * comes as several BlockChecks, and buffers allocated per BlockCheck had
 * their pages faulted in again each time (fresh memory read ~300 MiB/s here,
 * reused several times that: digest-file.ts).
 */
const spareSpans: Buffer[] = []

/** `count` buffers of at least `bytes` (spare span buffers first). */
function takeSpans(count: number, bytes: number): Buffer[] {
  if (bytes > CHECK_SPAN_BYTES) return Array.from({ length: count }, () => Buffer.allocUnsafe(bytes))
  return Array.from({ length: count }, () => spareSpans.pop() ?? Buffer.allocUnsafe(CHECK_SPAN_BYTES))
}

/** Give span buffers back for the next BlockCheck (beyond the bound, or of another size, they are let go). */
function giveSpans(bufs: readonly Buffer[]): void {
  for (const b of bufs) if (b.length === CHECK_SPAN_BYTES && spareSpans.length < SPANS_IN_FLIGHT + 1) spareSpans.push(b)
}

/**
 * A run of consecutive blocks (a `--scrub` slice) at least this long asks the
 * flat's holes first (one `SEEK_DATA` helper process, data-ranges.ts) and
 * does not read them; below it, starting the helper costs more than reading
 * the holes (kernel zero-fill).
 * @default 64 MiB
 */
export const HOLE_ASK_MIN_BYTES = 64 * 1024 * 1024

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
 * slice, not per BlockCheck). Valid while the flat is not written: a session
 * keeps one after its commit only, when nothing writes the mirror.
 */
export type CheckHoleWindows = Map<string, { readonly start: number; readonly end: number; readonly ranges: readonly DataRange[] }>

/** Options of {@link checkBlocks}. */
export interface CheckBlocksOptions {
  readonly signal?: AbortSignal | undefined
  /**
   * record a clean verdict in memory only (written by the VM's next save,
   * `VmMirror.saveUnsaved`); a mismatch is always written before the answer
   * @default false
   */
  readonly defer?: boolean
  /** the data ranges asked for by earlier runs of this session (none: asked per BlockCheck) */
  readonly windows?: CheckHoleWindows
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
  if (run === undefined || run.from * blockSize >= capacity) return undefined
  const start = run.from * blockSize
  const end = Math.min(run.to * blockSize, capacity)
  const known = windows?.get(name)
  if (known !== undefined && known.start <= start && end <= known.end) return known.ranges
  // one run alone, or with the runs expected after it (a slice sent in parts), long enough to be worth the helper
  const ahead = windows === undefined ? end : Math.min(capacity, start + (end - start) * CHECK_RUNS_AHEAD)
  if (ahead - start < HOLE_ASK_MIN_BYTES) return undefined
  const ranges = await fileDataRanges(fd, start, ahead).catch(() => undefined)
  if (ranges !== undefined) windows?.set(name, { start, end: ahead, ranges })
  return ranges
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
