/**
 * A connection to the receiver that dropped or could not be made, and the
 * rule for when that is worth a reconnect (SPEC §7 close codes).
 */

/** The connection dropped or could not be made; the cycle may retry. */
export class ConnectionLost extends Error {
  override readonly name = 'ConnectionLost'
  readonly closeCode: number
  constructor(message: string, closeCode = 1006, opts?: { cause?: unknown }) {
    super(message, opts)
    this.closeCode = closeCode
  }
}

// close codes after which a retry makes sense (SPEC §7: E_BUSY, E_SHUTDOWN, E_TIMEOUT, E_INTERNAL, abnormal)
const RETRYABLE_CLOSE = new Set([1001, 1005, 1006, 1011, 1012, 1013, 4408, 4429])

/** True when `err` is worth a reconnect. */
export function isRetryable(err: unknown): boolean {
  if (err instanceof ConnectionLost) return RETRYABLE_CLOSE.has(err.closeCode) || err.closeCode < 1000
  return false
}
