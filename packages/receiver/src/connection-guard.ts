import type { Server } from 'node:http'
import type { Socket } from 'node:net'
import type { RefusalLog } from './refusal-log.ts'

/** Bounds on what a peer may hold before it has authenticated. */
export interface ConnectionLimits {
  /** TCP sockets at once, counted before TLS (`server.maxConnections`; more are dropped on accept) */
  readonly maxSockets: number
  /** from the (TLS) connection to the WebSocket upgrade request, ms */
  readonly upgradeTimeoutMs: number
}

/**
 * Guard a listener against peers that hold sockets without speaking: cap the
 * sockets (counted before TLS: the TLS handshake deadline is the server's
 * `handshakeTimeout` option) and give every connection `upgradeTimeoutMs` to
 * send its upgrade request, then destroy it. Each refusal goes to `refusals`.
 */
export function guardConnections(srv: Server, tls: boolean, limits: ConnectionLimits, refusals: RefusalLog): void {
  srv.maxConnections = limits.maxSockets
  srv.on('drop', (data?: { remoteAddress?: string }) => refusals.refused('socket-cap', { remote: data?.remoteAddress, maxSockets: limits.maxSockets }))
  if (tls) {
    srv.on('tlsClientError', (err: Error & { code?: string }, sock: Socket) => {
      refusals.refused(err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT' ? 'tls-handshake-timeout' : 'tls-error', { remote: sock.remoteAddress, code: err.code })
    })
  }
  const timers = new WeakMap<Socket, NodeJS.Timeout>()
  srv.on(tls ? 'secureConnection' : 'connection', (sock: Socket) => {
    const timer = setTimeout(() => {
      refusals.refused('upgrade-timeout', { remote: sock.remoteAddress, upgradeTimeoutMs: limits.upgradeTimeoutMs })
      sock.destroy()
    }, limits.upgradeTimeoutMs)
    timer.unref()
    timers.set(sock, timer)
    sock.once('close', () => clearTimeout(timer))
  })
  // before ws handles it: the upgrade request arrived in time
  srv.prependListener('upgrade', (req) => {
    const timer = timers.get(req.socket)
    if (timer !== undefined) clearTimeout(timer)
  })
}
