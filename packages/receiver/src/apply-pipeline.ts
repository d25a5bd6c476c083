import { ioError } from './errors.ts'
import type { ApplyExtent } from './disk-apply.ts'
import type { StoreApply } from './store/mirror-store.ts'

/** A disk open in a session, as the pipeline sees it. */
export interface PipelineDisk {
  readonly handle: number
  readonly name: string
  readonly apply: StoreApply
}

/**
 * How long a session waits for more extents before flushing a partial batch
 * when its inbox ran dry: `idleMs` when the bytes not yet acknowledged leave
 * the agent less than two messages of window (it may be waiting for an ack,
 * and bytes still on the wire count against it too), else `holdMs` — the
 * agent is sending at its own pace, and a fuller batch costs fewer
 * fdatasyncs. Pure.
 */
export function partialBatchWaitMs(o: { windowBytes: number; maxMessageBytes: number; unackedBytes: number; idleMs: number; holdMs: number }): number {
  return o.windowBytes - o.unackedBytes < 2 * o.maxMessageBytes ? o.idleMs : o.holdMs
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
  private disk: PipelineDisk | undefined
  private bytes = 0
  /** cost of the batches flushed but not yet durable (acknowledged) */
  private unsynced = 0
  /** stage 2 of the previous batch (write, then sync), still running */
  private writing: Promise<void> | undefined
  /** the writes of the previous batch (stage 2 up to its fdatasync) */
  private written: Promise<void> | undefined
  private readonly target: () => number
  private readonly onDurable: (disk: PipelineDisk, seq: number) => void
  private readonly signal: AbortSignal | undefined

  /**
   * @param target bytes per durable batch (read at each extent)
   * @param onDurable called once a batch is durable
   * @param signal the session's: journaling and writing stop between pieces once it is aborted
   */
  constructor(target: () => number, onDurable: (disk: PipelineDisk, seq: number) => void, signal?: AbortSignal) {
    this.target = target
    this.onDurable = onDurable
    this.signal = signal
  }

  /** Whether a batch is gathering and below its target size (worth waiting briefly for more). */
  get partial(): boolean {
    return this.batch.length > 0 && this.bytes < this.target()
  }

  /** Cost of the extents accepted and not yet durable: the gathering batch and those flushed but not yet synced. */
  get unackedBytes(): number {
    return this.unsynced + this.bytes
  }

  /** Queue an accepted extent; flushes first when it belongs to another disk, after when the batch is full. */
  async add(disk: PipelineDisk, e: ApplyExtent): Promise<void> {
    // a batch holds one disk's extents
    if (this.disk !== undefined && this.disk !== disk) await this.flush()
    this.batch.push(e)
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
    const cost = this.bytes
    this.batch = []
    this.disk = undefined
    this.bytes = 0
    this.unsynced += cost
    const a = d.apply
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
      // markers in batch order: the previous batch's fdatasync and marker first (its error is ours)
      if (prev !== undefined) await prev
      await a.syncBatch(batch).catch((err: unknown) => {
        throw ioError(err, `writing extents of ${d.name}`)
      })
      this.unsynced -= cost
      this.onDurable(d, a.appliedSeq)
    })()
    p.catch(() => {}) // surfaced by drain
    this.written = written
    this.writing = p
  }

  /** Wait for the running stage 2, rethrowing its error. */
  async drain(): Promise<void> {
    const p = this.writing
    this.writing = undefined
    this.written = undefined
    if (p !== undefined) await p
    this.unsynced = 0
  }

  /** Drop the pending batch and wait for the running stage 2, ignoring its outcome (abort paths). */
  async discard(): Promise<void> {
    this.batch = []
    this.disk = undefined
    this.bytes = 0
    await this.writing?.catch(() => {})
    this.writing = undefined
    this.written = undefined
    this.unsynced = 0
  }
}
