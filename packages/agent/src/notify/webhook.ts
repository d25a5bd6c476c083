/**
 * Webhooks: the run's report as a JSON POST, signed with HMAC-SHA256, retried
 * with bounded back-off.
 *
 * The signature scheme (documented in the README, checked by
 * {@link verifyWebhookSignature}):
 *
 *   X-Grainline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
 *
 * The timestamp is part of what is signed, so a receiver that refuses a `t`
 * older than a few minutes (default 300 s) cannot be fed a replayed POST; the
 * `X-Grainline-Delivery` id is the same for every attempt of one delivery, so
 * a receiver can also drop duplicates. Each attempt is signed anew.
 *
 * Retried: network errors, timeouts, HTTP 5xx and 429, `attempts` times in
 * all with a back-off of 1 s, 2 s, 4 s … capped at 30 s (a `Retry-After` of
 * at most 30 s is honoured). Any other answer is final: 2xx delivered, other
 * 4xx refused.
 *
 * Bounded in time: `timeout` is the whole attempt's (connect, send, status
 * line, and at most that long reading the answer's body — an endpoint that
 * trickles its answer a byte at a time is cut there: its status, once come,
 * is the answer), never an idle timer that each byte re-arms. With `signal`
 * aborted (the run stopped: SIGTERM), the attempt in flight finishes within
 * its timeout and no other follows, nor any back-off wait.
 */
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto'
import { request as httpRequest, type IncomingMessage } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { hostname as osHostname } from 'node:os'
import type { Logger } from 'pino'
import type { WebhookSettings } from '../job/notify-schema.ts'
import { runOutcome, type ReplicationReport } from '../report.ts'
import { AGENT_SOFTWARE } from '../version.ts'

/** The signature header. */
export const SIGNATURE_HEADER = 'x-grainline-signature'
/** The delivery id header (one per delivery, the same on each attempt). */
export const DELIVERY_HEADER = 'x-grainline-delivery'
/** The event header: `run.succeeded`, `run.warning` (every VM committed, one needs a look: report.ts runOutcome) or `run.failed`. */
export const EVENT_HEADER = 'x-grainline-event'

/** The event of each run outcome. */
const WEBHOOK_EVENTS = { success: 'run.succeeded', warning: 'run.warning', failure: 'run.failed' } as const

/** Longest back-off between attempts, ms. */
const MAX_BACKOFF_MS = 30_000
/** Most bytes of an answer read (the rest is dropped). */
const MAX_ANSWER_BYTES = 64 * 1024

/** The body of a webhook POST. */
export interface WebhookPayload {
  readonly event: 'run.succeeded' | 'run.warning' | 'run.failed'
  /** the proxy that ran the job */
  readonly host: string
  readonly software: string
  readonly report: ReplicationReport
}

/** `t=…,v1=…` for `body` at `timestamp` (unix seconds). */
export function signWebhook(secret: string, body: string, timestamp: number): string {
  const mac = createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')
  return `t=${timestamp},v1=${mac}`
}

/** Why a signature was not accepted. */
export type SignatureCheck = { readonly ok: true } | { readonly ok: false; readonly reason: 'malformed' | 'stale' | 'mismatch' }

/**
 * Check a received signature: well formed, `t` within `toleranceSeconds` of
 * `now`, and the HMAC of `"<t>.<body>"` equal (constant-time).
 */
export function verifyWebhookSignature(opts: { secret: string; header: string | undefined; body: string | Buffer; toleranceSeconds?: number; now?: number }): SignatureCheck {
  const m = /^t=(\d{1,12}),v1=([0-9a-f]{64})$/.exec(opts.header ?? '')
  if (m === null) return { ok: false, reason: 'malformed' }
  const t = Number(m[1])
  const now = Math.floor((opts.now ?? Date.now()) / 1000)
  if (Math.abs(now - t) > (opts.toleranceSeconds ?? 300)) return { ok: false, reason: 'stale' }
  const body = typeof opts.body === 'string' ? opts.body : opts.body.toString('utf8')
  const want = createHmac('sha256', opts.secret).update(`${t}.${body}`).digest()
  const got = Buffer.from(m[2] as string, 'hex')
  return got.length === want.length && timingSafeEqual(got, want) ? { ok: true } : { ok: false, reason: 'mismatch' }
}

/** How a delivery went. */
export interface WebhookResult {
  readonly ok: boolean
  readonly attempts: number
  /** the last HTTP status, if any answer came */
  readonly status?: number
  readonly error?: string
}

/** Options of {@link sendWebhook}. */
export interface SendWebhookOptions {
  readonly logger?: Logger
  /** @default os.hostname() */
  readonly hostname?: string
  /** first back-off, ms (doubled each attempt). @default 1000 */
  readonly retryBaseMs?: number
  /** @default Date.now */
  readonly now?: () => number
  /** the run's stop: aborted, no further attempt is made (the one in flight ends within its timeout) */
  readonly signal?: AbortSignal
}

interface Answer {
  readonly status: number
  readonly retryAfter: string | undefined
}

/**
 * One attempt, over within `timeoutMs` whatever the endpoint does: no status line by then is an error; a status
 * whose body is still coming then is that status (the body is only drained, at most MAX_ANSWER_BYTES of it).
 */
function post(url: URL, body: string, headers: Record<string, string>, opts: { timeoutMs: number; ca?: string }): Promise<Answer> {
  return new Promise((resolve, reject) => {
    let answer: IncomingMessage | undefined
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(
      url,
      {
        method: 'POST',
        headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) },
        ...(url.protocol === 'https:' && opts.ca !== undefined ? { ca: opts.ca } : {}),
      },
      (res) => {
        answer = res
        let n = 0
        res.on('data', (c: Buffer) => {
          n += c.length
          if (n > MAX_ANSWER_BYTES) res.destroy()
        })
        res.on('close', () => {
          clearTimeout(deadline)
          resolve({ status: res.statusCode ?? 0, retryAfter: typeof res.headers['retry-after'] === 'string' ? res.headers['retry-after'] : undefined })
        })
        res.on('error', () => {})
      },
    )
    // the whole attempt's deadline (Node's request `timeout` is an idle timer: a byte every few seconds re-arms it)
    const deadline = setTimeout(() => {
      if (answer === undefined) req.destroy(new Error(`no answer within ${opts.timeoutMs} ms`))
      else answer.destroy()
    }, opts.timeoutMs)
    req.on('error', (err) => {
      clearTimeout(deadline)
      reject(err)
    })
    req.end(body)
  })
}

/** `ms`, or less when `signal` aborts. */
const sleep = (ms: number, signal: AbortSignal | undefined): Promise<void> =>
  new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal?.addEventListener('abort', done, { once: true })
  })

/** A webhook URL as logs and reports show it: a password in it replaced by `***` (it would be sent as Basic auth, never shown). */
export function shownWebhookUrl(url: string): string {
  if (!URL.canParse(url)) return url
  const u = new URL(url)
  if (u.password === '') return url
  u.password = '***'
  return u.href
}

/** POST the report to one webhook; never throws (the result says how it went). */
export async function sendWebhook(hook: WebhookSettings, report: ReplicationReport, opts: SendWebhookOptions = {}): Promise<WebhookResult> {
  const url = new URL(hook.url)
  const now = opts.now ?? Date.now
  const payload: WebhookPayload = { event: WEBHOOK_EVENTS[runOutcome(report)], host: opts.hostname ?? osHostname(), software: AGENT_SOFTWARE, report }
  const body = JSON.stringify(payload)
  const delivery = randomUUID()
  const attempts = hook.attempts ?? 5
  const base = opts.retryBaseMs ?? 1000
  let last: WebhookResult = { ok: false, attempts: 0, error: 'not sent' }
  for (let n = 1; n <= attempts; n++) {
    // the run was stopped: the report goes once (a stop before the first attempt still sends it), never retried
    if (n > 1 && opts.signal?.aborted === true) {
      opts.logger?.warn({ url: shownWebhookUrl(hook.url), attempts: n - 1, error: last.error }, 'webhook not retried: the run was stopped')
      return { ...last, error: `${last.error ?? 'not delivered'}; not retried: the run was stopped` }
    }
    const headers = {
      'content-type': 'application/json',
      'user-agent': AGENT_SOFTWARE,
      [EVENT_HEADER]: payload.event,
      [DELIVERY_HEADER]: delivery,
      [SIGNATURE_HEADER]: signWebhook(hook.secretFile.secret, body, Math.floor(now() / 1000)),
    }
    let retryAfterMs: number | undefined
    try {
      const a = await post(url, body, headers, { timeoutMs: hook.timeout ?? 10_000, ...(hook.caFile === undefined ? {} : { ca: hook.caFile.pem }) })
      if (a.status >= 200 && a.status < 300) return { ok: true, attempts: n, status: a.status }
      last = { ok: false, attempts: n, status: a.status, error: `HTTP ${a.status}` }
      if (a.status !== 429 && a.status < 500) return last
      const ra = a.retryAfter !== undefined && /^\d{1,5}$/.test(a.retryAfter) ? Number(a.retryAfter) * 1000 : undefined
      if (ra !== undefined && ra <= MAX_BACKOFF_MS) retryAfterMs = ra
    } catch (err) {
      last = { ok: false, attempts: n, error: (err as Error).message }
    }
    if (n === attempts) break
    const delay = retryAfterMs ?? Math.min(base * 2 ** (n - 1), MAX_BACKOFF_MS)
    opts.logger?.warn({ url: shownWebhookUrl(hook.url), attempt: n, error: last.error, delayMs: delay }, 'webhook attempt failed; retrying')
    await sleep(delay, opts.signal)
  }
  return last
}
