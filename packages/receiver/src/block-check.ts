/**
 * The receiver's side of a BlockCheck (SPEC §5.6, `--verify changed`): read
 * the listed blocks back from the mirror, digest them, answer with the
 * blocks whose digests differ, and record the verdict (a mismatch marks the
 * disk diverged). Cost: the listed blocks only.
 */
import { timingSafeEqual } from 'node:crypto'
import { blockDigest, type DigestAlgorithm } from '@grainline/protocol'
import { ReceiverError, ioError } from './errors.ts'
import { readFully } from './fs-util.ts'
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
  /** mirror bytes read */
  readonly bytes: number
  /** reading and digesting the listed blocks, ms */
  readonly readMs: number
  /** writing the verdict to the VM's state file (fsynced), ms */
  readonly recordMs: number
}

/** Mirror blocks read ahead of the one being digested. */
const READS_IN_FLIGHT = 4

/**
 * Compare the listed blocks of disk `name` (committed in this session) with
 * the agent's digests. Returns the mismatched indexes as u64le.
 * @throws ReceiverError E_RANGE (a block beyond the disk), E_IO
 */
export async function checkBlocks(vm: VmMirror, name: string, req: BlockCheckRequest, signal?: AbortSignal): Promise<BlockCheckOutcome> {
  const rec = vm.state.disks[name]
  if (rec === undefined) throw new ReceiverError('E_INTERNAL', `disk ${name} has no committed record`)
  const n = req.blocks.length / 8
  const len = req.digests.length / n
  const index = new DataView(req.blocks.buffer, req.blocks.byteOffset, req.blocks.byteLength)
  const out: number[] = []
  let bytes = 0
  const t0 = performance.now()
  let fh: Awaited<ReturnType<typeof openStoreFile>>
  try {
    fh = await openStoreFile(vm.paths.flat(rec.stem), 'read')
  } catch (err) {
    throw ioError(err, `opening the mirror of ${name}`)
  }
  // the blocks are read READS_IN_FLIGHT ahead of the one digested
  const reads: Array<Promise<Buffer>> = []
  let issued = 0
  const issue = (): void => {
    while (reads.length < READS_IN_FLIGHT && issued < n) {
      const b = Number(index.getBigUint64(issued * 8, true))
      const offset = b * req.blockSize
      const read =
        offset >= rec.capacity
          ? Promise.reject(new ReceiverError('E_RANGE', `block ${b} of ${req.blockSize} bytes is beyond the capacity ${rec.capacity} of ${name}`))
          : readFully(fh, offset, Math.min(req.blockSize, rec.capacity - offset)).catch((err: unknown) => {
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
      const data = await (reads.shift() as Promise<Buffer>)
      bytes += data.length
      const d = blockDigest(req.algorithm, data)
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
  await vm.recordVerify(name, 'blocks', { ok, at: new Date().toISOString(), algorithm: req.algorithm, digest: '', bytes }, { run: blockRun(req.blocks), blockSize: req.blockSize })
  return { ok, mismatched, bytes, readMs: t1 - t0, recordMs: performance.now() - t1 }
}
