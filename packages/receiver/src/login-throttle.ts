/**
 * A per-address brake on failed logins to the HTTP listener (dashboard
 * `POST /login` and `Authorization: Bearer` on the API).
 *
 * Tokens are long random strings, so guessing one is hopeless anyway; the
 * brake is defence in depth and keeps a scanner from spending the receiver's
 * CPU and log on endless token lookups. After {@link LOGIN_MAX_FAILURES}
 * failures from one address within {@link LOGIN_WINDOW_MS}, every further
 * attempt from it — right or wrong — is answered 429 with `Retry-After` until
 * the oldest failure leaves the window; a success does not clear the count
 * (an attacker holding one viewer token must not reset the brake for guesses
 * at others). IPv6 addresses count by their /64 (one host owns a whole /64).
 *
 * Memory is bounded: at most {@link LOGIN_MAX_ADDRESSES} addresses are
 * remembered (the one seen least recently is forgotten first), each with at
 * most {@link LOGIN_MAX_FAILURES} timestamps.
 */
import { isIPv6 } from 'node:net'

/** Failed attempts one address may make within {@link LOGIN_WINDOW_MS}. */
export const LOGIN_MAX_FAILURES = 10
/** The window failures are counted in, ms: 5 minutes. */
export const LOGIN_WINDOW_MS = 5 * 60 * 1000
/** Addresses remembered at once. */
export const LOGIN_MAX_ADDRESSES = 4096

/** The key an address is counted under: IPv4 (also IPv4-mapped) as is, IPv6 by its /64. */
export function addressKey(address: string | undefined): string {
  if (address === undefined || address === '') return '?'
  if (address.startsWith('::ffff:') && address.includes('.')) return address.slice(7)
  if (!isIPv6(address)) return address
  const [head = '', tail = ''] = address.split('::', 2)
  const h = head === '' ? [] : head.split(':')
  const t = tail === '' ? [] : tail.split(':')
  const groups = address.includes('::') ? [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t] : h
  return `${groups
    .slice(0, 4)
    .map((g) => Number.parseInt(g, 16).toString(16))
    .join(':')}::/64`
}

/** Failed-login counts per address. `now` is injectable for tests. */
export class LoginThrottle {
  readonly #failures = new Map<string, number[]>()
  readonly #now: () => number

  constructor(now: () => number = Date.now) {
    this.#now = now
  }

  /** Seconds until `address` may try again; 0 when it may try now. */
  retryAfter(address: string | undefined): number {
    const key = addressKey(address)
    const list = this.#recent(key)
    if (list === undefined || list.length < LOGIN_MAX_FAILURES) return 0
    return Math.max(1, Math.ceil(((list[0] as number) + LOGIN_WINDOW_MS - this.#now()) / 1000))
  }

  /** Count one failed attempt from `address`. */
  failed(address: string | undefined): void {
    const key = addressKey(address)
    const list = this.#recent(key) ?? []
    list.push(this.#now())
    if (list.length > LOGIN_MAX_FAILURES) list.splice(0, list.length - LOGIN_MAX_FAILURES)
    this.#failures.delete(key)
    this.#failures.set(key, list)
    if (this.#failures.size > LOGIN_MAX_ADDRESSES) this.#failures.delete(this.#failures.keys().next().value as string)
  }

  /** Addresses remembered now (for tests and metrics). */
  get size(): number {
    return this.#failures.size
  }

  #recent(key: string): number[] | undefined {
    const list = this.#failures.get(key)
    if (list === undefined) return undefined
    const cutoff = this.#now() - LOGIN_WINDOW_MS
    while (list.length > 0 && (list[0] as number) <= cutoff) list.shift()
    if (list.length === 0) {
      this.#failures.delete(key)
      return undefined
    }
    return list
  }
}
