/**
 * Progress of one disk: totals are known before the first extent (the plan),
 * so rate and ETA are exact. The samples go to a sink — normally the job's
 * aggregate (job-progress.ts), shown by a terminal view (progress-tty.ts) or
 * as pino lines (progress-log.ts).
 */

/** One progress sample of a disk. */
export interface ProgressEvent {
  readonly vm: string
  readonly disk: string
  readonly phase: 'plan' | 'send' | 'end' | 'commit' | 'check' | 'done'
  /** bytes of the virtual disk covered by sent extents (data + zero) */
  readonly doneBytes: number
  readonly totalBytes: number
  /** payload bytes handed to the socket (after compression) */
  readonly wireBytes: number
  /** covered bytes per second, averaged over the last seconds */
  readonly rate: number
  /** seconds left at the current rate; undefined while unknown */
  readonly etaSeconds: number | undefined
  /**
   * the bytes the disk reads from its source, done by this run and in all
   * (once counted) — what the ETA follows when present: a seed that skips
   * holes covers a hole's bytes at once and its data at the link's pace, so
   * covered bytes would promise an end while holes fly by (absent: the
   * covered bytes are the measure)
   */
  readonly workDoneBytes?: number
  readonly workTotalBytes?: number
}

/** Where progress goes. */
export type ProgressSink = (ev: ProgressEvent) => void

/** Tracks one disk's progress with a sliding-window rate. */
export class DiskProgress {
  readonly vm: string
  readonly disk: string
  totalBytes = 0
  doneBytes = 0
  wireBytes = 0
  /** the ETA follows the bytes read, not those covered (a seed that skips holes) */
  workMode = false
  /** bytes to read in all from the first extent this run sends, once counted */
  workTotalBytes: number | undefined = undefined
  /** bytes read so far by this run */
  workDoneBytes = 0
  readonly #samples: Array<{ t: number; bytes: number; work: number }> = []
  readonly #sink: ProgressSink
  #lastEmit = 0
  readonly #intervalMs: number

  readonly #now: () => number

  /** `now`: a clock in ms (tests) */
  constructor(vm: string, disk: string, sink: ProgressSink, intervalMs = 250, now: () => number = () => performance.now()) {
    this.vm = vm
    this.disk = disk
    this.#sink = sink
    this.#intervalMs = intervalMs
    this.#now = now
  }

  /** Record progress; emits at most every `intervalMs` unless `force`. */
  update(phase: ProgressEvent['phase'], force = false): void {
    const t = this.#now()
    this.#samples.push({ t, bytes: this.doneBytes, work: this.workDoneBytes })
    while (this.#samples.length > 2 && t - (this.#samples[0] as { t: number }).t > 5000) this.#samples.shift()
    if (!force && t - this.#lastEmit < this.#intervalMs) return
    this.#lastEmit = t
    const first = this.#samples[0] as { t: number; bytes: number; work: number }
    const dt = (t - first.t) / 1000
    const rate = dt > 0.05 ? (this.doneBytes - first.bytes) / dt : 0
    const left = this.totalBytes - this.doneBytes
    const work = this.workTotalBytes
    let etaSeconds: number | undefined
    if (left <= 0) etaSeconds = 0
    else if (!this.workMode) etaSeconds = rate > 0 ? left / rate : undefined
    else {
      // what is left to read, at the pace reading goes (the holes left cost next to nothing);
      // until counted, the bytes left to cover bound it
      const workLeft = work === undefined ? left : work - this.workDoneBytes
      const workRate = dt > 0.05 ? (this.workDoneBytes - first.work) / dt : 0
      etaSeconds = workLeft <= 0 ? 0 : workRate > 0 ? workLeft / workRate : undefined
    }
    this.#sink({
      vm: this.vm,
      disk: this.disk,
      phase,
      doneBytes: this.doneBytes,
      totalBytes: this.totalBytes,
      wireBytes: this.wireBytes,
      rate,
      etaSeconds,
      ...(this.workMode ? { workDoneBytes: this.workDoneBytes, ...(work === undefined ? {} : { workTotalBytes: work }) } : {}),
    })
  }
}
