/** The deadlines of a session: Hello in time, then no long silence. */
export interface DeadlineOptions {
  /** Hello must arrive within this many ms of the upgrade */
  readonly helloMs: number
  /** after Hello, this many ms without any frame or ping while the session is idle end it */
  readonly idleMs: number
  /** whether the session is processing a message (a long certify is not silence) */
  readonly busy: () => boolean
  /** called once when a deadline passes */
  readonly onTimeout: (reason: 'hello-timeout' | 'idle-timeout', ms: number) => void
  /** time source (tests drive it by hand) @default the real clock and timers */
  readonly clock?: Clock
}

/** What the deadlines need of time. */
export interface Clock {
  now(): number
  setTimeout(fn: () => void, ms: number): { unref?: () => void }
  clearTimeout(t: unknown): void
}

const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (t) => clearTimeout(t as NodeJS.Timeout),
}

/**
 * The two deadlines of SPEC §8.3 that a peer cannot hold off by doing
 * nothing: Hello within `helloMs` of the upgrade; after it, an inactivity
 * timeout. Activity is any frame and any ping from the agent (an agent pings
 * every 30 s, SPEC §1.1, so a busy agent that sends nothing for minutes —
 * digesting a large disk — is not idle); time spent processing a message
 * does not count. One timer at a time, re-armed lazily (not per frame).
 */
export class SessionDeadlines {
  private readonly opts: DeadlineOptions
  private readonly clock: Clock
  private timer: unknown
  private last: number
  private helloSeen = false
  private done = false

  constructor(opts: DeadlineOptions) {
    this.opts = opts
    this.clock = opts.clock ?? realClock
    this.last = this.clock.now()
    this.arm(opts.helloMs)
  }

  /** Hello arrived: from now on, the inactivity timeout. */
  hello(): void {
    this.helloSeen = true
    this.activity()
    this.arm(this.opts.idleMs)
  }

  /** A frame or ping arrived, or a step of the session ended. */
  activity(): void {
    this.last = this.clock.now()
  }

  /** No more deadlines (the session ended). */
  stop(): void {
    this.done = true
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer)
    this.timer = undefined
  }

  private arm(ms: number): void {
    if (this.done) return
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer)
    const t = this.clock.setTimeout(() => this.check(), Math.max(1, ms))
    t.unref?.()
    this.timer = t
  }

  private check(): void {
    this.timer = undefined
    if (this.done) return
    if (!this.helloSeen) {
      this.done = true
      this.opts.onTimeout('hello-timeout', this.opts.helloMs)
      return
    }
    if (this.opts.busy()) {
      // processing a message is not silence
      this.last = this.clock.now()
      this.arm(this.opts.idleMs)
      return
    }
    const quiet = this.clock.now() - this.last
    if (quiet < this.opts.idleMs) {
      this.arm(this.opts.idleMs - quiet)
      return
    }
    this.done = true
    this.opts.onTimeout('idle-timeout', this.opts.idleMs)
  }
}
