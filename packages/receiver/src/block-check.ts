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

/** Mirror blocks read ahead of the one being digested. */
const READS_IN_FLIGHT = 4

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
  // the blocks are read READS_IN_FLIGHT ahead of the one digested; undefined: a hole, not read
  const reads: Array<Promise<Buffer | number>> = []
  // blocks are read into reused buffers (a fresh one per block cost a page fault per 4 KiB:
  // the scrub read ~8× slower per byte than certify); a buffer is digested before its turn comes again
  const pool = Array.from({ length: READS_IN_FLIGHT + 1 }, () => Buffer.allocUnsafe(Math.min(req.blockSize, rec.capacity)))
  let turn = 0
  let issued = 0
  const issue = (): void => {
    while (reads.length < READS_IN_FLIGHT && issued < n) {
      const b = Number(index.getBigUint64(issued * 8, true))
      const offset = b * req.blockSize
      const length = Math.min(req.blockSize, rec.capacity - offset)
      const read: Promise<Buffer | number> =
        offset >= rec.capacity
          ? Promise.reject(new ReceiverError('E_RANGE', `block ${b} of ${req.blockSize} bytes is beyond the capacity ${rec.capacity} of ${name}`))
          : !mayHoldData(offset, offset + length)
            ? Promise.resolve(length)
            : readFullyInto(fh, pool[turn++ % pool.length] as Buffer, offset, length).catch((err: unknown) => {
                throw ioError(err, `reading the mirror of ${name}`)
              })
      // handled when its turn comes; not an unhandled rejection while an earlier block is awaited
      read.catch(() => {})
      reads.push(read)
      issued++
    }
  }
  try {
    for (let i = 0; i < n; i++) {
      signal?.throwIfAborted()
      issue()
      const got = await (reads.shift() as Promise<Buffer | number>)
      // a hole of the flat reads as zeros: the zero block's digest, without a read
      const d = typeof got === 'number' ? zeroDigest(req.algorithm, got) : blockDigest(req.algorithm, got)
      if (typeof got === 'number') holeBytes += got
      bytes += typeof got === 'number' ? got : got.length
      if (!timingSafeEqual(d, req.digests.subarray(i * len, (i + 1) * len))) out.push(Number(index.getBigUint64(i * 8, true)))
    }
  } finally {
    // reads still in flight settle before the file closes
    for (const r of reads) await r.catch(() => {})
    await fh.close()
  }
  const mismatched = new Uint8Array(out.length * 8)
  const v = new DataView(mismatched.buffer)
  for (const [i, b] of out.entries()) v.setBigUint64(i * 8, BigInt(b), true)
  const ok = out.length === 0
  const t1 = performance.now()
  await vm.recordVerify(name, 'blocks', { ok, at: new Date().toISOString(), algorithm: req.algorithm, digest: '', bytes }, { run, blockSize: req.blockSize }, { defer: opts.defer === true })
  return { ok, mismatched, bytes, holeBytes, readMs: t1 - t0, recordMs: performance.now() - t1 }
}
