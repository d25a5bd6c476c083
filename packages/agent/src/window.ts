/**
 * The send window: unacknowledged payload bytes (and extents) in flight are
 * bounded; `reserve` waits for cumulative ExtentAcks to free room
 * (pipelined, not stop-and-wait).
 */
export class SendWindow {
  readonly windowBytes: number
  readonly maxExtents: number
  #inflight: Array<{ seq: number; bytes: number }> = []
  #head = 0
  #bytes = 0
  #acked = -1
  #wake: (() => void) | undefined
  readonly #onAdvance: ((seq: number) => void) | undefined

  /** @param onAdvance called with the new cumulative ack when an ack moves it forward (progress, for the reconnect rule) */
  constructor(windowBytes: number, maxExtents = 8192, onAdvance?: (seq: number) => void) {
    this.windowBytes = windowBytes
    this.maxExtents = maxExtents
    this.#onAdvance = onAdvance
  }

  /** unacknowledged payload bytes */
  get bytes(): number {
    return this.#bytes
  }
  /** highest seq acknowledged (cumulative), -1 before any */
  get acked(): number {
    return this.#acked
  }
  /** number of unacknowledged extents */
  get count(): number {
    return this.#inflight.length - this.#head
  }

  /** Start over (new disk or new connection) with everything below `nextSeq` durable. */
  reset(nextSeq: number): void {
    this.#inflight = []
    this.#head = 0
    this.#bytes = 0
    this.#acked = nextSeq - 1
    this.#wakeUp()
  }

  /** True when an extent costing `bytes` fits now: `reserve` would not wait (the sender skips the await). */
  fits(bytes: number): boolean {
    return this.count === 0 || (this.#bytes + bytes <= this.windowBytes && this.count < this.maxExtents)
  }

  /**
   * Wait until an extent costing `bytes` fits (an extent larger than the window goes alone).
   * Rejects with `onStall()`'s error when no ack arrives for `stallMs` while waiting.
   */
  async reserve(bytes: number, failed: Promise<never>, stallMs = Infinity, onStall?: () => Error): Promise<void> {
    while (!this.fits(bytes)) {
      await this.#wait(failed, stallMs, onStall)
    }
  }

  #wait(failed: Promise<never>, stallMs: number, onStall?: () => Error): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    const woke = new Promise<void>((resolve, reject) => {
      this.#wake = resolve
      if (Number.isFinite(stallMs)) {
        timer = setTimeout(() => {
          reject(onStall?.() ?? new Error(`no acknowledgement for ${stallMs} ms`))
        }, stallMs)
      }
    })
    return Promise.race([woke, failed]).finally(() => {
      if (timer !== undefined) clearTimeout(timer)
    })
  }

  /** Record a sent extent. */
  sent(seq: number, bytes: number): void {
    this.#inflight.push({ seq, bytes })
    this.#bytes += bytes
  }

  /** Apply a cumulative ack. Returns false when it acknowledges something never sent. */
  ack(seq: number): boolean {
    if (seq <= this.#acked) return true
    const last = this.#inflight[this.#inflight.length - 1]
    if (last === undefined || seq > last.seq) return false
    while (this.#head < this.#inflight.length && (this.#inflight[this.#head] as { seq: number }).seq <= seq) {
      this.#bytes -= (this.#inflight[this.#head] as { bytes: number }).bytes
      this.#head++
    }
    if (this.#head > 1024 && this.#head * 2 > this.#inflight.length) {
      this.#inflight = this.#inflight.slice(this.#head)
      this.#head = 0
    }
    this.#acked = seq
    this.#wakeUp()
    this.#onAdvance?.(seq)
    return true
  }

  #wakeUp(): void {
    const w = this.#wake
    this.#wake = undefined
    w?.()
  }
}
