/**
 * A token-bucket rate limiter for the sender (issue #5 "Rate limit").
 *
 * Bytes are paid for BEFORE they are sent: `take(n)` waits until the bucket
 * holds the tokens, so over any window W at most `rate·W + burst` bytes leave.
 * The bucket starts empty and holds at most `burst` tokens (default a fifth of
 * a second's worth), so an idle period never turns into a burst above one
 * second's worth, and the error over any 10 s stays within 2% + one message.
 *
 * The rate may follow a timetable (rate-schedule.ts): the bucket asks for the
 * rate in force at every refill, a waiting sender wakes up at the next change
 * at the latest (a switch to `off` releases it at once), and credit never
 * carries over from an unlimited period.
 */
import { msUntilChange, rateAt, type Bandwidth } from './rate-schedule.ts'

export interface RateLimiterInit {
  /** bytes per second (0 or Infinity = unlimited), or a timetable */
  readonly rate: Bandwidth
  /** largest credit accumulated while idle, bytes. @default the rate in force / 5 */
  readonly burst?: number
  /** clock in ms (tests). @default performance.now */
  readonly now?: () => number
  /** wall clock the timetable is read with (tests). @default () => new Date() */
  readonly clock?: () => Date
}

/** A token bucket; `take` resolves when the bytes may be sent. */
export interface RateLimiter {
  /** the rate in force now, bytes/s (Infinity = unlimited) */
  readonly rate: number
  /** the limit as configured: a constant or the timetable */
  readonly bandwidth: Bandwidth
  /** wait until `bytes` may be sent, then account for them */
  take(bytes: number, opts?: { signal?: AbortSignal }): Promise<void>
}

/** Create a token bucket limiter. */
export function createRateLimiter(init: RateLimiterInit): RateLimiter {
  const bandwidth: Bandwidth = typeof init.rate === 'number' && !(init.rate > 0) ? Infinity : init.rate
  const unlimited = bandwidth === Infinity
  const now = init.now ?? (() => performance.now())
  const clock = init.clock ?? (() => new Date())
  // a constant needs no clock reading per take (the sender's hot path)
  const rateNow =
    typeof bandwidth === 'number'
      ? (): number => bandwidth
      : (): number => {
          const r = rateAt(bandwidth, clock())
          return r > 0 ? r : Infinity
        }
  const burstOf = (r: number): number => init.burst ?? r / 5
  let tokens = 0
  let last = now()
  // serialize takers so that bytes leave in the order they were asked for
  let queue: Promise<void> = Promise.resolve()

  async function takeNow(bytes: number, signal?: AbortSignal): Promise<void> {
    let rate = rateNow()
    const t0 = now()
    if (rate === Infinity) {
      // unlimited now: nothing to wait for, and no credit carried into a limited period
      tokens = 0
      last = t0
      return
    }
    tokens = Math.min(burstOf(rate), tokens + ((t0 - last) / 1000) * rate) - bytes
    last = t0
    while (tokens < 0) {
      signal?.throwIfAborted()
      // wake at the next change of the timetable at the latest
      const waitMs = Math.max(1, Math.min(Math.ceil((-tokens / rate) * 1000), msUntilChange(bandwidth, clock()) + 1))
      await sleep(waitMs, signal)
      const t = now()
      // no cap while in debt: the cap only limits credit
      tokens += ((t - last) / 1000) * rate
      last = t
      rate = rateNow()
      if (rate === Infinity) {
        tokens = 0
        return
      }
    }
    if (tokens > burstOf(rate)) tokens = burstOf(rate)
  }

  return {
    get rate() {
      return rateNow()
    },
    bandwidth,
    take(bytes, opts = {}) {
      if (unlimited || bytes <= 0) return Promise.resolve()
      const p = queue.then(() => takeNow(bytes, opts.signal))
      queue = p.catch(() => {})
      return p
    },
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    const onAbort = (): void => {
      clearTimeout(timer)
      reject(signal?.reason as Error)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}
