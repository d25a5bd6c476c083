import { ioError } from './errors.ts'
import type { ApplyExtent, DiskApply } from './disk-apply.ts'

/** A disk open in a session, as the pipeline sees it. */
export interface PipelineDisk {
  readonly handle: number
  readonly name: string
  readonly apply: DiskApply
}

/**
 * The two-stage durable batch pipeline of a session. Accepted extents of one
 * disk gather in a batch; {@link flush} journals it (stage 1: old contents,
 * fdatasync) and then, once the previous batch's stage 2 is done, starts
 * writing it (stage 2: write, fdatasync, resume marker) — stage 2 overlaps
 * with receiving and journaling the next batch. `onDurable(disk, seq)` runs
 * when a batch is durable: the session sends the cumulative ExtentAck.
 */
export class ApplyPipeline {
  private batch: ApplyExtent[] = []
  private disk: PipelineDisk | undefined
  private bytes = 0
  /** stage 2 of the previous batch, still running */
  private writing: Promise<void> | undefined
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
   * once the previous batch's write is done.
   */
  async flush(): Promise<void> {
    const d = this.disk
    const batch = this.batch
    if (d === undefined || batch.length === 0) return
    this.batch = []
    this.disk = undefined
    this.bytes = 0
    const a = d.apply
    const opts = this.signal === undefined ? {} : { signal: this.signal }
    await a.prepareBatch(batch, opts).catch((err: unknown) => {
      throw ioError(err, `journaling extents of ${d.name}`)
    })
    await this.drain()
    const p = a.writeBatch(batch, opts).then(
      () => {
        this.onDurable(d, a.appliedSeq)
      },
      (err: unknown) => {
        throw ioError(err, `writing extents of ${d.name}`)
      },
    )
    p.catch(() => {}) // surfaced by drain
    this.writing = p
  }

  /** Wait for the running stage 2, rethrowing its error. */
  async drain(): Promise<void> {
    const p = this.writing
    this.writing = undefined
    if (p !== undefined) await p
  }

  /** Drop the pending batch and wait for the running stage 2, ignoring its outcome (abort paths). */
  async discard(): Promise<void> {
    this.batch = []
    this.disk = undefined
    this.bytes = 0
    await this.writing?.catch(() => {})
    this.writing = undefined
  }
}
