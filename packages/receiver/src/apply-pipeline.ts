import { ioError } from './errors.ts'
import type { ApplyExtent } from './disk-apply.ts'
import type { FrameLender } from './frame-pool.ts'
import type { PayloadLender } from './payload-pool.ts'
import type { StoreApply } from './store/mirror-store.ts'

/** One step of a batch's way (flushed: journaled, its writes about to start; written; durable) and the batch. */
export type PipelineTrace = (step: 'flushed' | 'written' | 'durable', batch: { disk: string; first: number; last: number; bytes: number }) => void

/** A disk open in a session, as the pipeline sees it. */
export interface PipelineDisk {
  readonly handle: number
  readonly name: string
  readonly apply: StoreApply
  /** whether the store is done with a payload once its batch's writes resolved (its buffer may then be reused) */
  readonly reusePayload?: boolean
}

/**
 * The durable batch pipeline of a session. Accepted extents of one disk
 * gather in a batch; {@link flush} journals it (stage 1: old contents,
 * fdatasync) and then, once the previous batch's bytes are written, starts
 * stage 2: write the batch's bytes, then — after the previous batch's
 * fdatasync — fdatasync the target and queue the resume marker. Stage 2
 * overlaps with receiving and journaling the next batch, and a batch's writes
 * overlap with the previous batch's fdatasync (a group commit: the disk
 * flushes one batch while the next is copied into the page cache). Crash
 * safety is that of one batch at a time: a batch's bytes are written only
 * once its journal is durable, its marker only after an fdatasync that began
 * after they were written, and markers go in batch order.
 * `onDurable(disk, seq)` runs when a batch is durable: the session sends the
 * cumulative ExtentAck.
 */
export class ApplyPipeline {
  private batch: ApplyExtent[] = []
  /** the pooled frames the gathering batch's payloads lie in (given back once the batch is written) */
  private leases: Uint8Array[] = []
  private disk: PipelineDisk | undefined
  private bytes = 0
  /** the disk of the last batch flushed (its store may hold a queued resume marker) */
  private lastFlushed: PipelineDisk | undefined
  /** stage 2 of the previous batch (write, then sync), still running */
  private writing: Promise<void> | undefined
  /** the writes of the previous batch (stage 2 up to its fdatasync) */
  private written: Promise<void> | undefined
  private readonly target: () => number
  private readonly onDurable: (disk: PipelineDisk, seq: number) => void
  private readonly signal: AbortSignal | undefined
  private readonly trace: PipelineTrace | undefined
  private readonly pool: PayloadLender | undefined
  private readonly frames: FrameLender | undefined

  /**
   * @param target bytes per durable batch (read at each extent)
   * @param onDurable called once a batch is durable
   * @param signal the session's: journaling and writing stop between pieces once it is aborted
   * @param opts `trace`: told when each batch is flushed, written and durable (the session's debug log: a timeline
   *   of batches); `pool`: payloads of disks with `reusePayload` are copied into its buffers, given back once written;
   *   `frames`: the pool of the frames {@link add} takes as leases
   */
  constructor(target: () => number, onDurable: (disk: PipelineDisk, seq: number) => void, signal?: AbortSignal, opts: { trace?: PipelineTrace; pool?: PayloadLender; frames?: FrameLender } = {}) {
    this.target = target
    this.onDurable = onDurable
    this.signal = signal
    this.trace = opts.trace
    this.pool = opts.pool
    this.frames = opts.frames
  }

  /** Whether a batch is gathering and below its target size (worth waiting briefly for more). */
  get partial(): boolean {
    return this.batch.length > 0 && this.bytes < this.target()
  }

  /**
   * Queue an accepted extent; flushes first when it belongs to another disk, after when the batch is full.
   * `lease`: a frame of the `frames` pool that `e`'s payload (of a disk with `reusePayload`) lies in; it is
   * written from there and given back to the pool once its batch's bytes are written (dropped, never reused,
   * when the batch is discarded).
   */
  async add(disk: PipelineDisk, e: ApplyExtent, lease?: Uint8Array): Promise<void> {
    // a batch holds one disk's extents
    if (this.disk !== undefined && this.disk !== disk) await this.flush()
    if (lease !== undefined && disk.reusePayload === true) {
      this.batch.push(e)
      this.leases.push(lease)
    } else {
      this.frames?.forget(lease)
      // written from a reused buffer (payload-pool.ts): writing from fresh memory is several times slower
      this.batch.push(this.pool !== undefined && disk.reusePayload === true && e.data !== undefined ? { ...e, data: this.pool.copy(e.data) } : e)
    }
    this.disk = disk
    this.bytes += disk.apply.cost(e)
    if (this.bytes >= this.target()) await this.flush()
  }

  /**
   * Journal the pending batch (stage 1), then start writing it (stage 2)
   * once the previous batch's bytes are written; its fdatasync follows the
   * previous batch's.
   */
  async flush(): Promise<void> {
    const d = this.disk
    const batch = this.batch
    if (d === undefined || batch.length === 0) return
    const bytes = this.bytes
    const leases = this.leases
    this.batch = []
    this.leases = []
    this.disk = undefined
    this.bytes = 0
    this.lastFlushed = d
    const a = d.apply
    const span = this.trace === undefined ? undefined : { disk: d.name, first: (batch[0] as ApplyExtent).seq, last: (batch[batch.length - 1] as ApplyExtent).seq, bytes }
    if (span !== undefined) this.trace?.('flushed', span)
    const opts = this.signal === undefined ? {} : { signal: this.signal }
    await a.prepareBatch(batch, opts).catch((err: unknown) => {
      throw ioError(err, `journaling extents of ${d.name}`)
    })
    // the previous batch's bytes must be written first (its fdatasync may still run);
    // if its stage 2 failed, that error ends the session before this batch writes anything
    const prev = this.writing
    if (
      this.written !== undefined &&
      (await this.written.then(
        () => false,
        () => true,
      ))
    )
      await this.drain()
    const written = a.writeBatchData(batch, opts)
    written.catch(() => {}) // awaited below
    const p = (async () => {
      try {
        await written
      } catch (err) {
        await prev?.catch(() => {})
        throw ioError(err, `writing extents of ${d.name}`)
      }
      // the bytes are in the page cache: nothing reads the payloads any more
      if (this.pool !== undefined) for (const e of batch) this.pool.give(e.data)
      for (const f of leases) this.frames?.give(f)
      if (span !== undefined) this.trace?.('written', span)
      // markers in batch order: the previous batch's fdatasync and marker first (its error is ours)
      if (prev !== undefined) await prev
      await a.syncBatch(batch).catch((err: unknown) => {
        throw ioError(err, `writing extents of ${d.name}`)
      })
      if (span !== undefined) this.trace?.('durable', span)
      this.onDurable(d, a.appliedSeq)
    })()
    p.catch(() => {}) // surfaced by drain
    this.written = written
    this.writing = p
  }

  /** Settles when every batch flushed so far is durable (rejects with the error of one that failed); does not consume it: {@link drain} still rethrows. */
  settled(): Promise<void> {
    return this.writing ?? Promise.resolve()
  }

  /** Wait for the running stage 2, rethrowing its error. */
  async drain(): Promise<void> {
    const p = this.writing
    this.writing = undefined
    this.written = undefined
    if (p !== undefined) await p
  }

  /**
   * The inbox ran dry: flush the gathering batch, wait until every batch is
   * durable, then let the store write out the resume point of the last one
   * ({@link StoreApply.settle}) — nothing else writes its journal meanwhile.
   */
  async idle(): Promise<void> {
    await this.flush()
    await this.drain()
    const d = this.lastFlushed
    if (d?.apply.settle === undefined) return
    await d.apply.settle().catch((err: unknown) => {
      throw ioError(err, `writing the resume point of ${d.name}`)
    })
  }

  /** Drop the pending batch and wait for the running stage 2, ignoring its outcome (abort paths). */
  async discard(): Promise<void> {
    this.lastFlushed = undefined
    for (const f of this.leases) this.frames?.forget(f)
    this.leases = []
    this.batch = []
    this.disk = undefined
    this.bytes = 0
    await this.writing?.catch(() => {})
    this.writing = undefined
    this.written = undefined
  }
}
