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
  readonly #samples: Array<{ t: number; bytes: number }> = []
  readonly #sink: ProgressSink
  #lastEmit = 0
  readonly #intervalMs: number

  constructor(vm: string, disk: string, sink: ProgressSink, intervalMs = 250) {
    this.vm = vm
    this.disk = disk
    this.#sink = sink
    this.#intervalMs = intervalMs
  }

  /** Record progress; emits at most every `intervalMs` unless `force`. */
  update(phase: ProgressEvent['phase'], force = false): void {
    const t = performance.now()
    this.#samples.push({ t, bytes: this.doneBytes })
    while (this.#samples.length > 2 && t - (this.#samples[0] as { t: number }).t > 5000) this.#samples.shift()
    if (!force && t - this.#lastEmit < this.#intervalMs) return
    this.#lastEmit = t
    const first = this.#samples[0] as { t: number; bytes: number }
    const dt = (t - first.t) / 1000
    const rate = dt > 0.05 ? (this.doneBytes - first.bytes) / dt : 0
    const left = this.totalBytes - this.doneBytes
    this.#sink({
      vm: this.vm,
      disk: this.disk,
      phase,
      doneBytes: this.doneBytes,
      totalBytes: this.totalBytes,
      wireBytes: this.wireBytes,
      rate,
      etaSeconds: left <= 0 ? 0 : rate > 0 ? left / rate : undefined,
    })
  }
}
