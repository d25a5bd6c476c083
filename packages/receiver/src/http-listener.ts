/**
 * The receiver's HTTP listener (`httpListen`, old name `metricsListen`; off by
 * default), apart from the replication port: Prometheus metrics, the DR
 * dashboard and its JSON API. https:// with the receiver's certificate when
 * it has one.
 *
 * - `GET /metrics` — Prometheus text format, no token (scrapers), or a viewer
 *   token only with `metricsAuth: 'viewer'`;
 * - `GET /login`, `POST /login` (form `token=…`), `POST /logout` — a viewer
 *   token buys an HttpOnly SameSite=Strict session cookie (viewer-sessions.ts);
 * - `GET /`, `GET /vm?name=…`, `/assets/…` — the dashboard (no session: 303 to /login);
 * - `GET /api/v1/status`, `GET /api/v1/vms/NAME`, `GET /api/v1/events` (SSE) —
 *   JSON for a session cookie or `Authorization: Bearer <viewer token>`:
 *   none 401, an agent's token 403.
 *
 * Strict headers on every answer (CSP without inline script, nosniff,
 * no-referrer, frame-ancestors none, no-store). Bounded: sockets, requests per
 * socket, header and request time, login body size, event-stream clients.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo, Socket } from 'node:net'
import type { Logger } from 'pino'
import { bearerToken, mayAccess, type TokenEntry, type TokenTable } from './auth.ts'
import { loadDashboardAssets, type DashboardAsset } from './dashboard-assets.ts'
import type { LiveState } from './live-state.ts'
import { LoginThrottle } from './login-throttle.ts'
import type { ReceiverMetrics } from './metrics.ts'
import type { RefusalLog } from './refusal-log.ts'
import { folderStoreReader, storeOverview, vmDetail, type RpoPolicy, type StoreOverviewOptions, type StoreReader } from './store-overview.ts'
import { isShared, sharedStoreReader } from './shared-store-reader.ts'
import { SESSION_COOKIE, ViewerSessions } from './viewer-sessions.ts'

/** Sockets open at once on the HTTP listener. */
export const HTTP_MAX_SOCKETS = 64
/** Requests one keep-alive socket may carry. */
export const HTTP_MAX_REQUESTS_PER_SOCKET = 100
/** Sockets one client address may hold open on the HTTP listener (an address filling them all shuts out Prometheus and every viewer). */
export const HTTP_MAX_SOCKETS_PER_ADDRESS = 32
/** How often Node enforces headersTimeout and requestTimeout, ms (its default, 30 s, let a silent socket live 30 s, not 5). */
export const HTTP_CHECK_INTERVAL_MS = 1000
/**
 * The header and request deadlines, checked every second: Node checks them
 * every 30 s by default, so a silent socket lived ~30 s, not 5 (measured:
 * 30.0 s before, 6.0 s now, for a TLS-handshaken socket that sends nothing).
 */
const HTTP_DEADLINES = { headersTimeout: 5_000, requestTimeout: 10_000, connectionsCheckingInterval: HTTP_CHECK_INTERVAL_MS } as const
/** Event-stream (SSE) clients at once; one more gets 503. */
export const MAX_EVENT_CLIENTS = 16
/** Event streams of one viewer token at once (a quarter: one token cannot take them all); one more gets 503. */
export const MAX_EVENT_CLIENTS_PER_VIEWER = 4
/** Bytes of events a stream's client may leave unread before the stream is ended (a viewer that stops reading must not make the receiver buffer every status). */
export const EVENT_UNREAD_LIMIT = 1024 * 1024
/** Largest `POST /login` body, bytes. */
export const MAX_LOGIN_BODY = 4096
/** An event stream sends the status at most this often, ms (changes in between are coalesced). */
export const EVENT_MIN_INTERVAL_MS = 500
/** An event stream sends the status at least this often (ages move), ms. */
export const EVENT_REFRESH_MS = 5000

/** Headers on every answer. */
export const SECURITY_HEADERS = {
  'Content-Security-Policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
  'Cache-Control': 'no-store',
} as const

/** What the listener serves. */
export interface HttpListenerInit {
  readonly host: string
  readonly port: number
  /** PEM certificate and key: https:// */
  readonly tls?: { readonly cert: Buffer; readonly key: Buffer }
  /** the folder store, or a reader of another store (the Ceph store's); a shared one (the receiver's, which its metrics read too) is used as it is */
  readonly store: string | StoreReader
  readonly metrics: ReceiverMetrics
  readonly live: LiveState
  readonly tokens: () => TokenTable
  readonly rpo?: RpoPolicy
  /** where refused logins are logged, rate-limited (a flood of bad logins must not flood the log) and counted */
  readonly refusals: RefusalLog
  /** who may read `GET /metrics`: anyone (scrapers), or viewer tokens / sessions only. @default 'open' */
  readonly metricsAuth?: 'open' | 'viewer'
  /** the per-address brake on failed logins and Bearer tokens; a fresh one by default */
  readonly throttle?: LoginThrottle
}

/** A running HTTP listener. */
export interface HttpListener {
  readonly host: string
  readonly port: number
  close(): Promise<void>
}

type Res = ServerResponse<IncomingMessage>

function send(res: Res, status: number, type: string, body: string | Buffer, extra: Record<string, string> = {}): void {
  res.writeHead(status, { ...SECURITY_HEADERS, 'Content-Type': type, ...extra }).end(body)
}
/** What a viewer is told when the store cannot be read: the detail names paths, and goes to the receiver's log only. */
export const STORE_UNREADABLE = 'the store could not be read: see the receiver log'

/** A typed error's code, else E_IO. */
const errorCode = (err: unknown): string => {
  const c = (err as { code?: unknown }).code
  return typeof c === 'string' && /^E_[A-Z_]+$/.test(c) ? c : 'E_IO'
}

const json = (res: Res, status: number, body: unknown): void => send(res, status, 'application/json; charset=utf-8', `${JSON.stringify(body)}\n`)
const apiError = (res: Res, status: number, code: string, message: string, extra: Record<string, string> = {}): void =>
  send(res, status, 'application/json; charset=utf-8', `${JSON.stringify({ error: { code, message } })}\n`, extra)

/** Read a small body; undefined when larger than `max` (the socket is then closed). */
function readBody(req: IncomingMessage, max: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    let n = 0
    req.on('data', (c: Buffer) => {
      n += c.length
      if (n > max) {
        resolve(undefined)
        req.destroy()
        return
      }
      chunks.push(c)
    })
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    req.on('error', () => resolve(undefined))
  })
}

/** Serve metrics, dashboard and API on `init.host:init.port` (0: any free port). */
export async function startHttpListener(init: HttpListenerInit, log: Logger): Promise<HttpListener> {
  const assets = await loadDashboardAssets()
  const viewers = new ViewerSessions()
  const throttle = init.throttle ?? new LoginThrottle()
  const secure = init.tls !== undefined
  /** the open event streams: how each ends, and its viewer */
  const events = new Map<() => void, string>()
  const hlog = log.child({ component: 'http' })
  // a failing store read, logged when its message changes (an event stream retries it every few seconds)
  let lastStoreFailure = ''
  const logStoreFailure = (err: unknown): void => {
    const message = (err as Error).message
    if (message === lastStoreFailure) return
    lastStoreFailure = message
    hlog.warn({ err: { message, code: (err as { code?: unknown }).code } }, 'the store could not be read for the dashboard')
  }
  // one store read shared by every viewer, dropped on every live change (shared-store-reader.ts)
  const reader = isShared(init.store) ? init.store : sharedStoreReader(typeof init.store === 'string' ? folderStoreReader(init.store) : init.store)
  const stopInvalidate = init.live.onChange(() => reader.invalidate())

  /** The viewer of a request: its session cookie, or a Bearer token. `role` tells an agent token apart. */
  function who(req: IncomingMessage): { entry?: TokenEntry; agent?: boolean; retryAfter?: number } {
    const s = viewers.lookup(req.headers.cookie)
    if (s !== undefined) return { entry: s }
    const presented = bearerToken(req.headers.authorization)
    if (presented === undefined) return {}
    const wait = throttle.retryAfter(req.socket.remoteAddress)
    if (wait > 0) return { retryAfter: wait }
    const e = init.tokens().lookup(presented)
    if (e === undefined) {
      throttle.failed(req.socket.remoteAddress)
      return {}
    }
    return e.role === 'viewer' ? { entry: e } : { agent: true }
  }

  /** 429 for an address that failed too often; logged once per answer through the rate-limited refusal log. */
  function throttled(req: IncomingMessage, res: Res, wait: number, api: boolean): void {
    init.refusals.refused('auth-throttled', { remote: req.socket.remoteAddress, retryAfterSeconds: wait })
    const message = `too many failed logins from this address: try again in ${wait} s`
    if (api) apiError(res, 429, 'E_THROTTLED', message, { 'Retry-After': String(wait) })
    else send(res, 429, 'text/plain; charset=utf-8', `${message}\n`, { 'Retry-After': String(wait) })
  }

  const optsFor = (v: TokenEntry): StoreOverviewOptions => ({ live: init.live, covers: (vm) => mayAccess(v, vm), ...(init.rpo === undefined ? {} : { rpo: init.rpo }) })

  async function login(req: IncomingMessage, res: Res): Promise<void> {
    const body = await readBody(req, MAX_LOGIN_BODY)
    if (body === undefined) {
      send(res, 413, 'text/plain; charset=utf-8', 'login body too large\n', { Connection: 'close' })
      return
    }
    const wait = throttle.retryAfter(req.socket.remoteAddress)
    if (wait > 0) return throttled(req, res, wait, false)
    const token = new URLSearchParams(body).get('token') ?? ''
    const e = token === '' ? undefined : init.tokens().lookup(token)
    if (e === undefined || e.role !== 'viewer') {
      if (e === undefined) throttle.failed(req.socket.remoteAddress)
      const status = e === undefined ? 401 : 403
      const fields = { remote: req.socket.remoteAddress, status, via: 'dashboard login', ...(e === undefined ? {} : { peer: e.name }) }
      init.refusals.refused('auth', fields)
      send(res, 303, 'text/plain; charset=utf-8', '', { Location: `/login?failed=${status}` })
      return
    }
    const id = viewers.create(e)
    hlog.info({ remote: req.socket.remoteAddress, viewer: e.name }, 'dashboard login')
    send(res, 303, 'text/plain; charset=utf-8', '', {
      Location: '/',
      'Set-Cookie': `${SESSION_COOKIE}=${id}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200${secure ? '; Secure' : ''}`,
    })
  }

  function eventStream(req: IncomingMessage, res: Res, v: TokenEntry): void {
    if (events.size >= MAX_EVENT_CLIENTS) {
      apiError(res, 503, 'E_LIMIT', `${MAX_EVENT_CLIENTS} event streams are open already`, { 'Retry-After': '10' })
      return
    }
    let own = 0
    for (const name of events.values()) if (name === v.name) own++
    if (own >= MAX_EVENT_CLIENTS_PER_VIEWER) {
      apiError(res, 503, 'E_LIMIT', `viewer ${v.name} has ${MAX_EVENT_CLIENTS_PER_VIEWER} event streams open already (close a dashboard tab)`, { 'Retry-After': '10' })
      return
    }
    res.writeHead(200, { ...SECURITY_HEADERS, 'Content-Type': 'text/event-stream; charset=utf-8', Connection: 'keep-alive' })
    req.socket.setTimeout(0)
    let last = 0
    let timer: NodeJS.Timeout | undefined
    let busy = false
    let again = false
    const push = async (): Promise<void> => {
      if (busy) {
        again = true
        return
      }
      busy = true
      if (res.writableLength > EVENT_UNREAD_LIMIT) {
        hlog.info({ unread: res.writableLength, peer: v.name }, 'event stream ended: its client does not read it')
        busy = false
        res.destroy()
        return
      }
      try {
        const o = await storeOverview(reader, optsFor(v))
        res.write(`event: status\ndata: ${JSON.stringify(o)}\n\n`)
      } catch (err) {
        // the detail (store paths, file names) goes to the receiver's log, not to a viewer
        logStoreFailure(err)
        res.write(`event: failure\ndata: ${JSON.stringify({ code: errorCode(err), message: STORE_UNREADABLE })}\n\n`)
      }
      last = Date.now()
      busy = false
      if (again) {
        again = false
        schedule()
      }
    }
    const schedule = (): void => {
      if (timer !== undefined) return
      timer = setTimeout(
        () => {
          timer = undefined
          void push()
        },
        Math.max(0, EVENT_MIN_INTERVAL_MS - (Date.now() - last)),
      )
    }
    const refresh = setInterval(schedule, EVENT_REFRESH_MS)
    const stop = init.live.onChange(schedule)
    const end = (): void => {
      events.delete(end)
      stop()
      clearInterval(refresh)
      if (timer !== undefined) clearTimeout(timer)
      res.end()
    }
    events.set(end, v.name)
    req.on('close', end)
    void push()
  }

  async function handle(req: IncomingMessage, res: Res): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x')
    const path = url.pathname
    const method = req.method ?? 'GET'
    if (path === '/metrics' && method === 'GET') {
      if (init.metricsAuth === 'viewer') {
        const w = who(req)
        if (w.retryAfter !== undefined) return throttled(req, res, w.retryAfter, false)
        if (w.agent === true) return send(res, 403, 'text/plain; charset=utf-8', "forbidden: an agent's token does not read the metrics: use a viewer token\n")
        if (w.entry === undefined) return send(res, 401, 'text/plain; charset=utf-8', 'metrics need a viewer token: Authorization: Bearer <viewer token>\n', { 'WWW-Authenticate': 'Bearer' })
        // the metrics name every VM: a viewer limited to some VMs must not read the others' names
        if (!w.entry.vms.includes('*'))
          return send(res, 403, 'text/plain; charset=utf-8', 'forbidden: the metrics cover every VM; this viewer token is limited to some (give the scraper a viewer token without "vms")\n')
      }
      const text = await init.metrics.registry.metrics()
      send(res, 200, init.metrics.registry.contentType, text)
      return
    }
    if (path === '/favicon.ico') {
      res.writeHead(204, SECURITY_HEADERS).end()
      return
    }
    if (path === '/login' && method === 'POST') return login(req, res)
    if (path === '/logout' && method === 'POST') {
      viewers.end(req.headers.cookie)
      send(res, 303, 'text/plain; charset=utf-8', '', { Location: '/login', 'Set-Cookie': `${SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0${secure ? '; Secure' : ''}` })
      return
    }
    if (method !== 'GET' && method !== 'HEAD') {
      send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n', { Allow: 'GET' })
      return
    }
    const asset: DashboardAsset | undefined = assets.get(path)
    if (path === '/login' || path === '/assets/dashboard.css' || path === '/assets/dashboard.js') {
      send(res, 200, (asset as DashboardAsset).type, (asset as DashboardAsset).body)
      return
    }
    const w = who(req)
    if (path.startsWith('/api/')) {
      if (w.retryAfter !== undefined) return throttled(req, res, w.retryAfter, true)
      if (w.agent === true) return apiError(res, 403, 'E_FORBIDDEN', "an agent's token does not read the dashboard: use a viewer token")
      if (w.entry === undefined) return apiError(res, 401, 'E_AUTH', 'log in with a viewer token (POST /login) or send Authorization: Bearer <viewer token>', { 'WWW-Authenticate': 'Bearer' })
      const v = w.entry
      if (path === '/api/v1/status') return json(res, 200, await storeOverview(reader, optsFor(v)))
      if (path === '/api/v1/events') return eventStream(req, res, v)
      const m = /^\/api\/v1\/vms\/([^/]+)$/.exec(path)
      if (m !== null) {
        let name: string
        try {
          name = decodeURIComponent(m[1] as string)
        } catch {
          return apiError(res, 400, 'E_BAD_REQUEST', 'the VM name is not valid percent-encoding')
        }
        const d = await vmDetail(reader, name, optsFor(v))
        if (d === undefined) return apiError(res, 404, 'E_NOT_FOUND', 'no such VM in the store')
        return json(res, 200, d)
      }
      return apiError(res, 404, 'E_NOT_FOUND', 'no such endpoint: see the receiver README (HTTP API)')
    }
    if (asset !== undefined) {
      if (w.retryAfter !== undefined) return throttled(req, res, w.retryAfter, false)
      if (w.agent === true) {
        send(res, 403, 'text/plain; charset=utf-8', "forbidden: an agent's token does not read the dashboard\n")
        return
      }
      if (w.entry === undefined) {
        send(res, 303, 'text/plain; charset=utf-8', '', { Location: '/login' })
        return
      }
      send(res, 200, asset.type, asset.body)
      return
    }
    send(res, 404, 'text/plain; charset=utf-8', 'not found\n')
  }

  const onRequest = (req: IncomingMessage, res: Res): void => {
    handle(req, res).catch((err: unknown) => {
      hlog.warn({ err: { message: (err as Error).message, code: (err as { code?: unknown }).code }, path: (req.url ?? '').split('?')[0] }, 'http request failed')
      if (!res.headersSent) {
        if ((err as { code?: unknown }).code === 'E_NOT_FOUND') apiError(res, 503, 'E_NOT_FOUND', STORE_UNREADABLE)
        else send(res, 500, 'text/plain; charset=utf-8', 'unavailable: see the receiver log\n')
      } else res.end()
    })
  }
  const srv: Server =
    init.tls === undefined ? createHttpServer(HTTP_DEADLINES, onRequest) : createHttpsServer({ cert: init.tls.cert, key: init.tls.key, handshakeTimeout: 10_000, ...HTTP_DEADLINES }, onRequest)
  // per client address: at most HTTP_MAX_SOCKETS_PER_ADDRESS sockets (counted from the TCP accept, TLS handshakes included)
  const perAddress = new Map<string, number>()
  let capLogged = 0
  srv.on('connection', (socket: Socket) => {
    const key = socket.remoteAddress ?? '?'
    const n = (perAddress.get(key) ?? 0) + 1
    perAddress.set(key, n)
    socket.once('close', () => release(key))
    if (n <= HTTP_MAX_SOCKETS_PER_ADDRESS) return
    // logged at most once a minute: an address that keeps reconnecting must not flood the log
    if (Date.now() - capLogged > 60_000) {
      capLogged = Date.now()
      hlog.warn({ remote: key, max: HTTP_MAX_SOCKETS_PER_ADDRESS }, 'http: sockets of one address above the cap are closed')
    }
    socket.destroy()
  })
  const release = (key: string): void => {
    const n = (perAddress.get(key) ?? 1) - 1
    if (n <= 0) perAddress.delete(key)
    else perAddress.set(key, n)
  }
  srv.keepAliveTimeout = 5_000
  srv.maxHeadersCount = 50
  srv.maxRequestsPerSocket = HTTP_MAX_REQUESTS_PER_SOCKET
  srv.maxConnections = HTTP_MAX_SOCKETS
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject)
    srv.listen(init.port, init.host, () => {
      srv.off('error', reject)
      resolve()
    })
  })
  const addr = srv.address() as AddressInfo
  log.info({ host: addr.address, port: addr.port, tls: secure }, 'http listening (GET /metrics, dashboard /, API /api/v1)')
  return {
    host: addr.address,
    port: addr.port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const end of [...events.keys()]) end()
        stopInvalidate()
        srv.close(() => resolve())
        srv.closeAllConnections()
      }),
  }
}
