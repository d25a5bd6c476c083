/**
 * Dashboard logins. A viewer posts its token once (`POST /login`, a form
 * body, never a URL); the receiver answers with a random session id in an
 * `HttpOnly; SameSite=Strict` cookie, so the token itself is never stored by
 * the browser, never sent again and never reachable by page scripts. Bounded
 * per viewer token and in all: at most {@link MAX_SESSIONS_PER_VIEWER} per
 * token (its own oldest is dropped: a token that logs in in a loop cannot
 * log the others out) and {@link MAX_VIEWER_SESSIONS} in all (the oldest of
 * the token holding the most is dropped), each expiring after
 * {@link VIEWER_SESSION_TTL_MS}.
 */
import { randomBytes } from 'node:crypto'
import type { TokenEntry } from './auth.ts'

/** The cookie's name. */
export const SESSION_COOKIE = 'grainline_session'
/** Logged-in viewers at once. */
export const MAX_VIEWER_SESSIONS = 256
/** Sessions of one viewer token at once (browsers, tabs, a wall screen). */
export const MAX_SESSIONS_PER_VIEWER = 16
/** A login lasts 12 hours. */
export const VIEWER_SESSION_TTL_MS = 12 * 3600 * 1000

/** Parse a `Cookie` header into name → value (first wins; at most 50 cookies read). */
export function parseCookies(header: string | undefined): Map<string, string> {
  const out = new Map<string, string>()
  for (const part of (header ?? '').split(';').slice(0, 50)) {
    const i = part.indexOf('=')
    if (i <= 0) continue
    const k = part.slice(0, i).trim()
    if (!out.has(k)) out.set(k, part.slice(i + 1).trim())
  }
  return out
}

/** The logged-in viewers of one receiver process. */
export class ViewerSessions {
  readonly #byId = new Map<string, { entry: TokenEntry; expires: number }>()
  readonly #now: () => number

  constructor(now: () => number = Date.now) {
    this.#now = now
  }

  get size(): number {
    return this.#byId.size
  }

  /** Start a session for a viewer entry; returns its id (64 hex digits). */
  create(entry: TokenEntry): string {
    this.#sweep()
    const mine = this.#idsOf(entry.name)
    if (mine.length >= MAX_SESSIONS_PER_VIEWER) this.#byId.delete(mine[0] as string)
    else if (this.#byId.size >= MAX_VIEWER_SESSIONS) this.#byId.delete(this.#oldestOfBusiest())
    const id = randomBytes(32).toString('hex')
    this.#byId.set(id, { entry, expires: this.#now() + VIEWER_SESSION_TTL_MS })
    return id
  }

  /** The viewer of a `Cookie` header, or undefined. */
  lookup(cookieHeader: string | undefined): TokenEntry | undefined {
    const id = parseCookies(cookieHeader).get(SESSION_COOKIE)
    if (id === undefined || !/^[0-9a-f]{64}$/.test(id)) return undefined
    const s = this.#byId.get(id)
    if (s === undefined) return undefined
    if (s.expires <= this.#now()) {
      this.#byId.delete(id)
      return undefined
    }
    return s.entry
  }

  /** End the session of a `Cookie` header. */
  end(cookieHeader: string | undefined): void {
    const id = parseCookies(cookieHeader).get(SESSION_COOKIE)
    if (id !== undefined) this.#byId.delete(id)
  }

  /** Session ids of viewer `name`, oldest first. */
  #idsOf(name: string): string[] {
    const ids: string[] = []
    for (const [id, s] of this.#byId) if (s.entry.name === name) ids.push(id)
    return ids
  }

  /** The oldest session of the viewer holding the most sessions. */
  #oldestOfBusiest(): string {
    const count = new Map<string, number>()
    for (const s of this.#byId.values()) count.set(s.entry.name, (count.get(s.entry.name) ?? 0) + 1)
    let busiest = ''
    let most = 0
    for (const [name, n] of count) if (n > most) [busiest, most] = [name, n]
    return this.#idsOf(busiest)[0] as string
  }

  #sweep(): void {
    const now = this.#now()
    for (const [id, s] of this.#byId) if (s.expires <= now) this.#byId.delete(id)
  }
}
