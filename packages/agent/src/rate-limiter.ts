/**
 * A token-bucket rate limiter for the sender (issue #5 "Rate limit").
 *
 * Bytes are paid for BEFORE they are sent: `take(n)` waits until the bucket
 * holds the tokens, so over any window W at most `rate·W + burst` bytes leave.
 * The bucket starts empty and holds at most `burst` tokens (default a fifth of
 * a second's worth), so an idle period never turns into a burst above one
 * second's worth, and the error over any 10 s stays within 2% + one message.
 */
export interface RateLimiterInit {
  /** bytes per second; 0 or Infinity = unlimited */
  readonly rate: number
  /** largest credit accumulated while idle, bytes. @default rate / 5 */
  readonly burst?: number
  /** clock in ms (tests). @default performance.now */
  readonly now?: () => number
}

/** A token bucket; `take` resolves when the bytes may be sent. */
export interface RateLimiter {
  readonly rate: number
  /** wait until `bytes` may be sent, then account for them */
  take(bytes: number, opts?: { signal?: AbortSignal }): Promise<void>
}

/** Create a token bucket limiter. */
export function createRateLimiter(init: RateLimiterInit): RateLimiter {
  const rate = init.rate
  const unlimited = !(rate > 0) || !Number.isFinite(rate)
  const burst = init.burst ?? rate / 5
  const now = init.now ?? (() => performance.now())
  let tokens = 0
  let last = now()
  // serialize takers so that bytes leave in the order they were asked for
  let queue: Promise<void> = Promise.resolve()

  const refill = (): void => {
    const t = now()
    tokens = Math.min(burst, tokens + ((t - last) / 1000) * rate)
    last = t
  }

  async function takeNow(bytes: number, signal?: AbortSignal): Promise<void> {
    refill()
    tokens -= bytes
    while (tokens < 0) {
      signal?.throwIfAborted()
      const waitMs = Math.max(1, Math.ceil((-tokens / rate) * 1000))
      await sleep(waitMs, signal)
      const t = now()
      // no cap while in debt: the cap only limits credit
      tokens += ((t - last) / 1000) * rate
      last = t
    }
    if (tokens > burst) tokens = burst
  }

  return {
    rate: unlimited ? Infinity : rate,
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
