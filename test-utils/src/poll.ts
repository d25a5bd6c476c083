/**
 * Waiting on a condition that has no event (a file another process writes, a
 * status a CLI prints). Prefer an event: a log line, a process's `exit`, a
 * proxy's hold point. No deadline here: a condition that never holds is
 * reported by tap's timeout, a machine under load only makes it slower.
 */
import { setTimeout as sleep } from 'node:timers/promises'

/** Options of {@link pollUntil}. */
export interface PollOptions {
  /**
   * pause between two checks, in milliseconds
   * @default 50
   */
  readonly intervalMs?: number
  /** stop waiting (rejects with the signal's reason) */
  readonly signal?: AbortSignal
}

/** Call `check` until it returns a value other than `undefined`, and resolve with it. */
export async function pollUntil<T>(check: () => T | undefined | Promise<T | undefined>, opts: PollOptions = {}): Promise<T> {
  for (;;) {
    opts.signal?.throwIfAborted()
    const v = await check()
    if (v !== undefined) return v
    await sleep(opts.intervalMs ?? 50, undefined, opts.signal !== undefined ? { signal: opts.signal } : {})
  }
}
