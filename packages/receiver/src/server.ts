import { join } from 'node:path'
import { createServer as createHttpServer, type IncomingMessage, type Server } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { readFile } from 'node:fs/promises'
import { mkdir } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import type { Logger } from 'pino'
import { WebSocketServer, type WebSocket } from 'ws'
import { CompressionAlgorithms, DEFAULT_MAX_EXTENT_BYTES, DigestAlgorithms, PROTOCOL_VERSIONS, SUBPROTOCOL, initDigests, maxMessageBytesFor, type LocalCapabilities } from '@grainline/protocol'
import { ReceiverError } from './errors.ts'
import { DEFAULT_MAX_SESSIONS, bearerToken, createTokenTable, loadTokensFile, type TokenEntry, type TokenTable } from './auth.ts'
import { guardConnections } from './connection-guard.ts'
import { RefusalLog } from './refusal-log.ts'
import { ReceiverMetrics } from './metrics.ts'
import { startHttpListener, type HttpListener } from './http-listener.ts'
import { LiveState, fanOut } from './live-state.ts'
import { folderStoreReader, type RpoPolicy } from './store-overview.ts'
import { sharedStoreReader } from './shared-store-reader.ts'
import { recoverStore } from './recovery.ts'
import { STORE_MARKER, markStoreClosed, markStoreOpen, writeStoreMarker } from './store-marker.ts'
import { pdeathsigAvailable } from './tied-spawn.ts'
import { DEFAULT_DISPLAY_SUFFIX } from './mirror-vmx.ts'
import { Session } from './session.ts'
import { FramePool } from './frame-pool.ts'
import { PayloadPool } from './payload-pool.ts'
import { PendingOpens } from './quota-room.ts'
import type { SessionSettings } from './session-settings.ts'
import { globMatch } from './auth.ts'
import type { RetentionLimits, RetentionPolicy } from './retention.ts'

/** The retention policy of a VM: the first `retentionVms` glob matching it, else `retention`. */
export function retentionFor(init: Pick<ReceiverInit, 'retention' | 'retentionVms'>, vm: string): RetentionPolicy | undefined {
  for (const [glob, p] of Object.entries(init.retentionVms ?? {})) if (globMatch(glob, vm)) return p
  return init.retention
}
import { RECEIVER_TLS_OPTIONS } from './tls-options.ts'
import { SOFTWARE } from './version.ts'
import { hostname } from 'node:os'
import { checkCephPool, isCephStore, parseCephStore } from './store/ceph/ceph-store.ts'
import { cephStoreReader } from './store/ceph/ceph-overview.ts'

/** Components handed to the receiver (STYLE §16). */
export interface ReceiverComponents {
  /** pino logger; sessions log through children of it */
  readonly logger: Logger
}

/** Receiver options. */
export interface ReceiverInit {
  /** address to listen on. @default "127.0.0.1" */
  readonly host?: string
  /** TCP port; 0 picks a free one. @default 0 */
  readonly port?: number
  /** the mirror store folder (created if missing), or `ceph:POOL` (docs/CEPH.md) */
  readonly store: string
  /** Ceph store: `ceph.conf` @default the client default */
  readonly cephConf?: string
  /** Ceph store: client id @default the client default */
  readonly cephId?: string
  /** Ceph store: keyring @default the client default */
  readonly cephKeyring?: string
  /** Ceph store: lease of a VM lock, seconds @default 30 */
  readonly cephLeaseSeconds?: number
  /** tokens file `{"tokens":[{name, token, vms}]}`; this or `tokens` is required */
  readonly tokensFile?: string
  /** tokens given directly (instead of `tokensFile`) */
  readonly tokens?: readonly TokenEntry[]
  /** PEM certificate file; with `tlsKey` the receiver speaks wss:// */
  readonly tlsCert?: string
  /** PEM private key file */
  readonly tlsKey?: string
  /** allow plain ws:// on a non-loopback address. @default false */
  readonly insecure?: boolean
  /** largest prefix (MiB) a trivial check may ask to digest. @default 1024 */
  readonly trivialMiB?: number
  /** appended to the mirror's displayName. @default " (grainline mirror)" */
  readonly displaySuffix?: string
  /** concurrent sessions (upgraded connections); more get HTTP 503 before the upgrade. @default 64 */
  readonly maxConnections?: number
  /** TCP sockets at once, counted before TLS (`server.maxConnections`); more are dropped at accept. Keep it well below the process's file limit. @default 256 */
  readonly maxSockets?: number
  /** a TLS handshake must finish within this many ms. @default 10000 */
  readonly handshakeTimeoutMs?: number
  /** the WebSocket upgrade request must arrive within this many ms of the (TLS) connection. @default 10000 */
  readonly upgradeTimeoutMs?: number
  /** Hello must arrive within this many ms of the upgrade, else `E_TIMEOUT`. @default 10000 */
  readonly helloTimeoutMs?: number
  /**
   * a session that receives nothing (no frame, no ping) for this long while
   * idle is ended with `E_TIMEOUT` and its VM lock released; longer than the
   * agent's ping interval (SPEC §1.1: 30 s). @default 300000
   */
  readonly idleTimeoutMs?: number
  /** largest extent payload accepted, bytes. @default 16 MiB */
  readonly maxExtentBytes?: number
  /** unacknowledged bytes an agent may have in flight. @default 64 MiB */
  readonly windowBytes?: number
  /** payload bytes per durable batch (journal, write, fsync, ack); at most half the negotiated window. @default 32 MiB */
  readonly batchBytes?: number
  /** wait for more extents this long before flushing a partial batch, ms. @default 5 */
  readonly batchIdleMs?: number
  /** ping interval; a connection that misses a pong is terminated. @default 30000 */
  readonly pingIntervalMs?: number
  /** how long a new session waits for a VM held by a closing one, ms. @default 5000 */
  readonly lockWaitMs?: number
  /** at start-up, roll back interrupted cycles older than this (ms) instead of keeping them for resume. @default undefined (keep) */
  readonly abandonAfterMs?: number
  /** run start-up recovery in `listen()`. @default true */
  readonly recover?: boolean
  /** restore points every VM keeps (docs/POINTS.md). @default undefined (no points) */
  readonly retention?: RetentionPolicy
  /** per-VM retention by VM-name glob (`*`, `?`), first match wins over `retention` */
  readonly retentionVms?: Readonly<Record<string, RetentionPolicy>>
  /** what an agent's per-job retention request may ask; without it requests are ignored (SPEC §5.5) */
  readonly retentionLimits?: RetentionLimits
  /**
   * serve the HTTP listener on this address, apart from the replication
   * port: Prometheus metrics (`GET /metrics`), the dashboard and its API
   * (viewer tokens); https:// when the receiver has a certificate, else
   * plain HTTP (keep it on loopback or a management network).
   * @default undefined (off)
   */
  readonly httpListen?: { readonly host: string; readonly port: number }
  /** who may read `GET /metrics`: anyone, or viewer tokens only. @default 'open' */
  readonly metricsAuth?: 'open' | 'viewer'
  /** old name of `httpListen` (used when `httpListen` is absent) */
  readonly metricsListen?: { readonly host: string; readonly port: number }
  /** RPO targets shown by the dashboard. @default 24 h for every VM */
  readonly rpo?: RpoPolicy
}

/** A running receiver. */
export interface Receiver {
  /** recover the store, then listen; resolves with the bound address */
  listen(): Promise<{ host: string; port: number }>
  /** graceful: stop accepting, finish the current durable step of every session, close them (1001) */
  close(): Promise<void>
  /** immediate: terminate every connection and the listener */
  abort(): void
  /** number of open sessions */
  readonly sessions: number
  /** the HTTP listener (metrics, dashboard, API) once listening (`httpListen`), else undefined */
  readonly httpAddress: { readonly host: string; readonly port: number } | undefined
  /** old name of `httpAddress` */
  readonly metricsAddress: { readonly host: string; readonly port: number } | undefined
}

const MiB = 1024 * 1024

/** Whether an address is loopback-only. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host) || host === '::ffff:127.0.0.1'
}

/** Create a receiver (not yet listening). */
export function createReceiver(components: ReceiverComponents, init: ReceiverInit): Receiver {
  const log = components.logger
  const host = init.host ?? '127.0.0.1'
  const tls = init.tlsCert !== undefined || init.tlsKey !== undefined
  if (tls && (init.tlsCert === undefined || init.tlsKey === undefined)) throw new ReceiverError('E_CONFIG', 'TLS needs both a certificate and a key')
  if (!tls && !isLoopback(host) && init.insecure !== true) {
    throw new ReceiverError('E_CONFIG', `refusing to listen on ${host} without TLS; give --tls-cert/--tls-key or --insecure`)
  }
  if (init.tokensFile === undefined && init.tokens === undefined) throw new ReceiverError('E_CONFIG', 'a tokens file is required: the receiver never runs without authentication')
  // flags arrive as Number(text): NaN, 0 or a huge value would only fail later, in every session's Welcome or batch
  for (const [key, flag] of [
    ['windowBytes', '--window-bytes'],
    ['batchBytes', '--batch-bytes'],
  ] as const) {
    const v = init[key]
    if (v !== undefined && !(Number.isSafeInteger(v) && v >= 1 && v <= 1024 * MiB)) {
      throw new ReceiverError('E_CONFIG', `${flag} (${key}) must be a whole number of bytes from 1 to 1 GiB, not ${String(v)}`)
    }
  }
  if (init.trivialMiB !== undefined && !(Number.isSafeInteger(init.trivialMiB) && init.trivialMiB >= 0 && init.trivialMiB <= MiB)) {
    throw new ReceiverError('E_CONFIG', `--trivial-mb (trivialMiB) must be a whole number of MiB from 0 to 1048576 (1 TiB), not ${String(init.trivialMiB)}`)
  }
  const maxExtentBytes = init.maxExtentBytes ?? DEFAULT_MAX_EXTENT_BYTES
  const local: LocalCapabilities = {
    versions: [...PROTOCOL_VERSIONS],
    digests: [...DigestAlgorithms],
    compressions: [...CompressionAlgorithms],
    limits: { maxExtentBytes, maxMessageBytes: maxMessageBytesFor(maxExtentBytes), windowBytes: init.windowBytes ?? 64 * MiB },
  }
  const sessions = new Set<Session>()
  const httpListen = init.httpListen ?? init.metricsListen
  const ceph = isCephStore(init.store)
    ? {
        target: parseCephStore(init.store, {
          ...(init.cephConf === undefined ? {} : { conf: init.cephConf }),
          ...(init.cephId === undefined ? {} : { id: init.cephId }),
          ...(init.cephKeyring === undefined ? {} : { keyring: init.cephKeyring }),
        }),
        holder: `receiver ${hostname()} pid ${process.pid}`,
        ...(init.cephLeaseSeconds === undefined ? {} : { leaseSeconds: init.cephLeaseSeconds }),
      }
    : undefined
  // the HTTP listener reads the store through one reader: the folder, or the pool's state and history objects
  // shared by the scrapes of /metrics and every viewer (shared-store-reader.ts): at most one store read per second
  // whoever asks — /metrics answers without a token by default — dropped on every live change
  const reader = sharedStoreReader(ceph === undefined ? folderStoreReader(init.store) : cephStoreReader(ceph.target))
  const metrics = httpListen === undefined ? undefined : new ReceiverMetrics(reader, () => sessions.size, init.rpo)
  // errors are kept with folder mirrors; with a Ceph store they live in this process's memory (docs/CEPH.md)
  // whether listen wrote the store's marker (store-marker.ts), which a clean close removes
  let marked = false
  const live = new LiveState(ceph === undefined ? { storeDir: init.store, log } : { log })
  let httpServer: HttpListener | undefined
  const refusals = new RefusalLog(log, 10_000, metrics)
  const guard = { maxSockets: init.maxSockets ?? 256, upgradeTimeoutMs: init.upgradeTimeoutMs ?? 10_000 }
  const handshakeTimeoutMs = init.handshakeTimeoutMs ?? 10_000
  const maxConnections = init.maxConnections ?? 64
  const batchBytes = init.batchBytes ?? 32 * MiB
  const highWaterBytes = Math.max(2 * batchBytes, 2 * local.limits.maxMessageBytes)
  const settings: SessionSettings = {
    storeDir: init.store,
    ...(ceph === undefined ? {} : { ceph }),
    software: SOFTWARE,
    local,
    displaySuffix: init.displaySuffix ?? DEFAULT_DISPLAY_SUFFIX,
    batchBytes,
    batchIdleMs: init.batchIdleMs ?? 5,
    highWaterBytes,
    lockWaitMs: init.lockWaitMs ?? 5000,
    trivialMaxBytes: (init.trivialMiB ?? 1024) * MiB,
    helloTimeoutMs: init.helloTimeoutMs ?? 10_000,
    idleTimeoutMs: init.idleTimeoutMs ?? 300_000,
    refusals,
    retentionFor: (vm: string) => retentionFor(init, vm),
    ...(init.retentionLimits === undefined ? {} : { retentionLimits: init.retentionLimits }),
    observer: fanOut(metrics, live),
    // frames and payloads in reused memory, kept from one agent connection to the next (each cycle is a new
    // session): at most what one session's own pools may own (the inbox's bound plus two batches; the inbox's)
    buffers: { frames: new FramePool(() => highWaterBytes + 2 * batchBytes), payloads: new PayloadPool(() => highWaterBytes) },
    pendingOpens: new PendingOpens(),
  }
  /** open sessions per token entry (the per-token cap) */
  const byToken = new Map<TokenEntry, number>()
  const peers = new WeakMap<IncomingMessage, TokenEntry>()
  let table: TokenTable | undefined
  let server: Server | undefined
  let wss: WebSocketServer | undefined
  let pinger: NodeJS.Timeout | undefined
  const alive = new WeakMap<WebSocket, boolean>()
  /**
   * Each connection's socket and the bytes read from it at the last ping: bytes
   * still arriving prove the peer alive as a pong does. On a slow uplink the
   * agent's pong waits behind the megabytes it queued before it (its send
   * buffers hold more than a ping interval's worth of the link), so a missed
   * pong alone would cut an agent in the middle of delivering a seed, at
   * every ping, for ever.
   */
  const reads = new WeakMap<WebSocket, { readonly socket: { readonly bytesRead: number }; readonly peer: string; last: number }>()

  /**
   * Recover the store, then listen. A start that fails after it marked the store (a port in use, a recovery error)
   * removes its marker: no receiver runs on the store, and a copy of it made now is a stopped one's.
   */
  async function listen(): Promise<{ host: string; port: number }> {
    try {
      return await start()
    } catch (err) {
      if (marked) {
        marked = false
        await markStoreClosed(init.store, log)
      }
      throw err
    }
  }

  async function start(): Promise<{ host: string; port: number }> {
    if (server !== undefined) throw new ReceiverError('E_CONFIG', 'already listening')
    table = createTokenTable(init.tokens ?? (await loadTokensFile(init.tokensFile as string)))
    if (table.size === 0) throw new ReceiverError('E_CONFIG', 'the tokens file lists no token')
    await initDigests()
    if (ceph !== undefined) {
      // nothing to recover on the host: a cycle in flight resumes or rolls back from the pool (docs/CEPH.md)
      await checkCephPool(ceph.target)
    } else {
      try {
        await mkdir(init.store, { recursive: true })
      } catch (err) {
        throw new ReceiverError('E_CONFIG', `cannot create the store ${init.store}: ${(err as Error).message}`)
      }
    }
    if (ceph === undefined && !pdeathsigAvailable())
      log.warn(
        { command: 'setpriv --pdeathsig KILL' },
        "util-linux's setpriv is missing or too old here: a base point's cp does not die with a receiver killed with SIGKILL (docs/POINTS.md); install util-linux ≥ 2.33",
      )
    // a store copied while a receiver ran on it is told by its marker (store-marker.ts)
    const marker = ceph === undefined ? await markStoreOpen(init.store, log) : { copied: false }
    marked = ceph === undefined && !marker.copied
    let owed: string[] | undefined
    if (init.recover !== false && ceph === undefined) {
      const reports = await recoverStore(init.store, log.child({ component: 'recovery' }), {
        ...(init.abandonAfterMs === undefined ? {} : { abandonAfterMs: init.abandonAfterMs }),
        storeCopied: marker.copied,
      })
      log.info({ vms: reports.length, recovered: reports.filter((r) => r.action !== 'none') }, 'store recovery done')
      owed = reports.filter((r) => r.copyOwed === true).map((r) => r.vm)
    }
    // a copied marker is replaced by ours once every VM is marked diverged: until then (a crash meanwhile, a VM whose
    // recovery failed first) the next start finds the copy again, and marks them again
    if (marker.copied && owed?.length === 0) {
      await writeStoreMarker(init.store, log)
      marked = true
    } else if (marker.copied)
      log.error(
        { marker: join(init.store, STORE_MARKER), vms: owed ?? null },
        `the store marker ${STORE_MARKER} that is a copy is kept: ${owed === undefined ? 'recovery is off' : `the recovery of VM ${owed.join(', ')} failed`} before its disks were marked diverged, and the next start marks every VM of the store again (restart the receiver once the VM's recovery error is fixed)`,
      )
    const srv: Server = tls
      ? createHttpsServer({ cert: await readFile(init.tlsCert as string), key: await readFile(init.tlsKey as string), handshakeTimeout: handshakeTimeoutMs, ...RECEIVER_TLS_OPTIONS })
      : createHttpServer()
    guardConnections(srv, tls, guard, refusals)
    srv.on('request', (_req, res) => {
      res.writeHead(426, { 'Content-Type': 'text/plain', Upgrade: 'websocket', Connection: 'close' })
      res.end('grainline receiver: WebSocket only\n')
    })
    const ws = new WebSocketServer({
      server: srv,
      maxPayload: local.limits.maxMessageBytes,
      perMessageDeflate: false,
      clientTracking: true,
      handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
      verifyClient: (info, cb) => {
        const req = info.req
        const remote = req.socket.remoteAddress
        if (sessions.size >= maxConnections) {
          refusals.refused('session-cap', { remote, maxConnections })
          cb(false, 503, 'Too many connections')
          return
        }
        const entry = (table as TokenTable).lookup(bearerToken(req.headers.authorization) ?? '')
        if (entry === undefined) {
          refusals.refused('auth', { remote })
          cb(false, 401, 'Unauthorized', { 'WWW-Authenticate': 'Bearer' })
          return
        }
        if (entry.role === 'viewer') {
          // a dashboard viewer's token never replicates
          refusals.refused('auth', { remote, peer: entry.name, role: 'viewer' })
          cb(false, 403, 'Forbidden: a viewer token')
          return
        }
        const cap = entry.maxSessions ?? DEFAULT_MAX_SESSIONS
        if ((byToken.get(entry) ?? 0) >= cap) {
          refusals.refused('token-session-cap', { remote, peer: entry.name, maxSessions: cap })
          cb(false, 503, 'Too many sessions for this token')
          return
        }
        const offered = String(req.headers['sec-websocket-protocol'] ?? '')
          .split(',')
          .map((s) => s.trim())
        if (!offered.includes(SUBPROTOCOL)) {
          refusals.refused('subprotocol', { remote, peer: entry.name })
          cb(false, 400, `Subprotocol ${SUBPROTOCOL} required`)
          return
        }
        peers.set(req, entry)
        cb(true)
      },
    })
    ws.on('connection', (sock, req) => {
      const entry = peers.get(req)
      if (entry === undefined || sock.protocol !== SUBPROTOCOL) {
        sock.close(1002, 'E_VERSION')
        return
      }
      alive.set(sock, true)
      reads.set(sock, { socket: req.socket, peer: entry.name, last: req.socket.bytesRead })
      sock.on('pong', () => alive.set(sock, true))
      const s = new Session(sock, entry, settings, log)
      sessions.add(s)
      metrics?.sessionOpened(entry.name)
      byToken.set(entry, (byToken.get(entry) ?? 0) + 1)
      void s.done.then(() => {
        sessions.delete(s)
        const n = (byToken.get(entry) ?? 1) - 1
        if (n === 0) byToken.delete(entry)
        else byToken.set(entry, n)
      })
    })
    ws.on('error', (err) => log.error({ err }, 'websocket server error'))
    server = srv
    wss = ws
    const interval = init.pingIntervalMs ?? 30000
    pinger = setInterval(() => {
      for (const c of ws.clients) {
        const r = reads.get(c)
        const read = r?.socket.bytesRead ?? 0
        if (r !== undefined && read !== r.last) {
          r.last = read
          alive.set(c, true)
        }
        if (alive.get(c) !== true) {
          log.warn({ peer: r?.peer }, 'peer missed a pong and sent nothing since the last ping: terminating')
          c.terminate()
          continue
        }
        alive.set(c, false)
        c.ping()
      }
    }, interval)
    pinger.unref()
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject)
      srv.listen(init.port ?? 0, host, () => {
        srv.off('error', reject)
        resolve()
      })
    })
    const addr = srv.address() as AddressInfo
    if (metrics !== undefined && httpListen !== undefined) {
      try {
        httpServer = await startHttpListener(
          {
            host: httpListen.host,
            port: httpListen.port,
            ...(tls ? { tls: { cert: await readFile(init.tlsCert as string), key: await readFile(init.tlsKey as string) } } : {}),
            store: reader,
            metrics,
            live,
            tokens: () => table as TokenTable,
            refusals,
            ...(init.rpo === undefined ? {} : { rpo: init.rpo }),
            ...(init.metricsAuth === undefined ? {} : { metricsAuth: init.metricsAuth }),
          },
          log,
        )
      } catch (err) {
        srv.close()
        throw new ReceiverError('E_CONFIG', `cannot serve HTTP (metrics, dashboard) on ${httpListen.host}:${httpListen.port}: ${(err as Error).message}`)
      }
    }
    log.info(
      {
        host: addr.address,
        port: addr.port,
        tls,
        limits: { ...guard, maxConnections, handshakeTimeoutMs, helloTimeoutMs: settings.helloTimeoutMs, idleTimeoutMs: settings.idleTimeoutMs, highWaterBytes: settings.highWaterBytes },
      },
      'listening',
    )
    return { host: addr.address, port: addr.port }
  }

  async function close(): Promise<void> {
    if (pinger !== undefined) clearInterval(pinger)
    const srv = server
    const closed = srv === undefined ? Promise.resolve() : new Promise<void>((resolve) => srv.close(() => resolve()))
    for (const s of sessions) s.shutdown()
    await Promise.all([...sessions].map((s) => s.done))
    wss?.close()
    srv?.closeAllConnections()
    await closed
    await httpServer?.close()
    await live.flush()
    if (marked) await markStoreClosed(init.store, log)
    log.info('receiver closed')
  }

  function abort(): void {
    if (pinger !== undefined) clearInterval(pinger)
    for (const c of wss?.clients ?? []) c.terminate()
    for (const s of sessions) s.stop()
    wss?.close()
    server?.close()
    server?.closeAllConnections()
    void httpServer?.close()
  }

  return {
    listen,
    close,
    abort,
    get sessions() {
      return sessions.size
    },
    get httpAddress() {
      return httpServer === undefined ? undefined : { host: httpServer.host, port: httpServer.port }
    },
    get metricsAddress() {
      return httpServer === undefined ? undefined : { host: httpServer.host, port: httpServer.port }
    },
  }
}
