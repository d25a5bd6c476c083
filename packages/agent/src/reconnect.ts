/**
 * Reconnect with backoff (STYLE §18): a step that fails with a retryable
 * connection loss is run again after `min(2^n × 100 ms, maxBackoff)` plus up
 * to 50 % jitter, until the receiver has been unreachable, or has acknowledged
 * nothing new, for `giveUpMs`.
 *
 * The outage rule: an outage starts at the first failure after the last
 * progress the receiver confirmed (`progressed()`: it acknowledged an extent
 * not acknowledged before), so a link that keeps coming back and dropping
 * again never gives up while data gets through, and the backoff restarts at
 * 100 ms after such progress. A handshake alone is not progress: a receiver
 * that accepts every connection and Hello and VmOpen, then drops or times out
 * the session before acknowledging anything, ends in `E_GAVE_UP` after
 * `giveUpMs` instead of holding the agent (and the VM's snapshot) forever.
 * What counts as progress is the caller's (the cycle: an extent acknowledged,
 * a resync's block mapped, a disk ended, each beyond the furthest so far):
 * every such measure is bounded by the disk, so however slowly a receiver
 * answers, the progress it can show is finite and the retries end.
 */
import type { Logger } from 'pino'
import { isRetryable } from './connection.ts'
import { AgentError } from './errors.ts'

/** Options of a {@link Reconnector}. */
export interface ReconnectInit {
  /** give up once the receiver has been unreachable, or has acknowledged nothing new, this long, ms */
  readonly giveUpMs: number
  /** largest backoff before jitter, ms */
  readonly maxBackoffMs: number
  readonly signal?: AbortSignal
  /** the logger of the VM being replicated (read at each retry: it gains fields as the cycle goes) */
  readonly log: () => Logger
  /** called before each retry (the report counts reconnects) */
  readonly onRetry?: () => void
  /** clock, ms. @default performance.now */
  readonly now?: () => number
  /** [0, 1) source for the jitter. @default Math.random */
  readonly random?: () => number
}

/** The delay before retry number `attempt` (0-based): `min(2^attempt × 100, max)` plus `jitter` (0…1) × half of it. */
export function backoffDelay(attempt: number, maxBackoffMs: number, jitter: number): number {
  const base = Math.min(2 ** attempt * 100, maxBackoffMs)
  return base + jitter * base * 0.5
}

/** Wait `ms`; rejects with `E_ABORTED` when `signal` aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(new AgentError('E_ABORTED', 'aborted'))
      return
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    const onAbort = (): void => {
      clearTimeout(t)
      reject(new AgentError('E_ABORTED', 'aborted'))
    }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

/** Runs steps with retries across connection losses; one per VM cycle (it holds the outage clock). */
export class Reconnector {
  readonly #init: ReconnectInit
  readonly #now: () => number
  readonly #random: () => number
  #lastProgress = -Infinity

  constructor(init: ReconnectInit) {
    this.#init = init
    this.#now = init.now ?? (() => performance.now())
    this.#random = init.random ?? Math.random
  }

  /** Record progress the receiver confirmed (work it had not confirmed before): the current outage (if any) is over. */
  progressed(): void {
    this.#lastProgress = this.#now()
  }

  /**
   * Run `fn`; when it fails with a retryable connection loss, wait and run it
   * again. Other errors pass through. After `giveUpMs` of outage: `E_GAVE_UP`.
   */
  async run<T>(what: string, fn: () => Promise<T>): Promise<T> {
    let attempt = 0
    let outageStart: number | undefined
    for (;;) {
      try {
        return await fn()
      } catch (err) {
        if (!isRetryable(err)) throw err
        const t = this.#now()
        if (outageStart === undefined || this.#lastProgress > outageStart) {
          outageStart = t
          attempt = 0
        }
        if (t - outageStart > this.#init.giveUpMs) {
          throw new AgentError(
            'E_GAVE_UP',
            `${what}: receiver unreachable or acknowledging nothing for ${Math.round((t - outageStart) / 1000)} s (${(err as Error).message}); the snapshot chain is left for the next run`,
            {
              cause: err,
            },
          )
        }
        const delay = backoffDelay(attempt, this.#init.maxBackoffMs, this.#random())
        this.#init.log().warn({ err: (err as Error).message, attempt: attempt + 1, delayMs: Math.round(delay) }, 'connection lost, reconnecting')
        attempt++
        this.#init.onRetry?.()
        await sleep(delay, this.#init.signal)
      }
    }
  }
}
