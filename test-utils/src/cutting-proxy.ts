/**
 * A TCP proxy on loopback between a client under test and a real server that
 * can cut or hold each connection after a byte budget (client → server), to
 * put a link failure at a chosen point of a stream without timers.
 */
import { EventEmitter, once } from 'node:events'
import { connect, createServer, type Server, type Socket } from 'node:net'

/**
 * What happens to one connection: a number is a cut budget; `cutAfter` destroys
 * both sockets once exactly that many bytes went upstream; `holdAfter` stops
 * forwarding upstream at that byte (the server sees a stalled peer) until
 * {@link CuttingProxy.release}. `undefined`: forward everything.
 */
export type ConnectionPlan = number | { readonly cutAfter?: number; readonly holdAfter?: number } | undefined

/** Where the proxy forwards to. */
export interface CuttingProxyInit {
  /** the server's port, or a function read at each new connection (a restarted server may listen on another port) */
  readonly target: number | (() => number)
  /**
   * host of the server and of the proxy's own listener
   * @default '127.0.0.1'
   */
  readonly host?: string
}

/** A running cutting proxy. */
export interface CuttingProxy {
  /** the proxy's own port: point the client here */
  readonly port: number
  /**
   * plans of the NEXT connections, one consumed per accepted connection
   * (`proxy.plan = [2 * MiB, undefined, { holdAfter: 1 }]`)
   */
  plan: ConnectionPlan[]
  /**
   * cut budget of every connection accepted while `plan` is empty; `undefined`: never cut
   * @default undefined
   */
  cutAfter: number | undefined
  /** connections accepted so far */
  readonly connections: number
  /** connections cut by a budget so far (not by {@link cutAll} or a peer) */
  readonly cuts: number
  /** connections that reached a hold point so far */
  readonly holds: number
  /** bytes forwarded client → server, all connections */
  readonly forwarded: number
  /** resolves once `n` connections in total were cut by a budget; rejects when the proxy closes first */
  waitForCuts(n: number): Promise<void>
  /** resolves once `n` connections in total reached their hold point; rejects when the proxy closes first */
  waitForHolds(n: number): Promise<void>
  /** resolves once `n` connections in total were accepted; rejects when the proxy closes first */
  waitForConnections(n: number): Promise<void>
  /** forward what held connections buffered and keep forwarding */
  release(): void
  /**
   * destroy every open connection now (both sides). An error on one side (a
   * server that refuses because it is down, a reset) resets the other side:
   * the client then sees ECONNRESET, not a clean close.
   */
  cutAll(): void
  /** stop listening and destroy every connection */
  close(): Promise<void>
}

/** Start a cutting proxy on `host`:0 in front of `init.target`. */
export async function startCuttingProxy(init: CuttingProxyInit | number): Promise<CuttingProxy> {
  const { target, host = '127.0.0.1' } = typeof init === 'number' ? { target: init } : init
  const events = new EventEmitter()
  const sockets = new Set<Socket>()
  const releases = new Set<() => void>()
  let connections = 0
  let cuts = 0
  let holds = 0
  let forwarded = 0
  let closed = false

  const waitCount = (read: () => number, event: string, n: number): Promise<void> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        if (read() >= n) {
          done()
          resolve()
        } else if (closed) {
          done()
          reject(new Error(`proxy closed after ${read()} of ${n} ${event}`))
        }
      }
      const done = (): void => {
        events.off(event, check)
        events.off('closed', check)
      }
      events.on(event, check)
      events.on('closed', check)
      check()
    })

  const server: Server = createServer((client) => {
    const index = connections++
    const entry: ConnectionPlan = proxy.plan.length > 0 ? proxy.plan.shift() : proxy.cutAfter
    const cutAt = typeof entry === 'number' ? entry : entry?.cutAfter
    const holdAt = typeof entry === 'number' ? undefined : entry?.holdAfter
    const upstream = connect(typeof target === 'function' ? target() : target, host)
    sockets.add(client)
    sockets.add(upstream)
    let sent = 0
    let dead = false
    // the hold point is one byte offset: reached once, held until release()
    let holdReached = false
    let holding = false
    const queued: Buffer[] = []
    const kill = (): void => {
      dead = true
      client.destroy()
      upstream.destroy()
    }
    const forward = (d: Buffer): void => {
      // the largest prefix the budgets ahead allow
      let n = d.length
      if (cutAt !== undefined) n = Math.min(n, cutAt - sent)
      if (holdAt !== undefined && !holdReached) n = Math.min(n, holdAt - sent)
      n = Math.max(0, n)
      if (n > 0) {
        sent += n
        forwarded += n
        if (!upstream.write(d.subarray(0, n))) client.pause()
      }
      if (cutAt !== undefined && sent >= cutAt) {
        // let the allowed prefix reach the kernel, then break the link
        dead = true
        client.destroy()
        upstream.end(() => upstream.destroy())
        cuts++
        events.emit('cut', index)
        return
      }
      if (holdAt !== undefined && !holdReached && sent >= holdAt) {
        holdReached = true
        holding = true
        holds++
        releases.add(release)
        client.pause()
        events.emit('hold', index)
      }
      if (n < d.length) queued.push(d.subarray(n))
    }
    const release = (): void => {
      releases.delete(release)
      holding = false
      for (const d of queued.splice(0)) if (!dead) forward(d)
      if (!dead && !upstream.writableNeedDrain) client.resume()
    }
    client.on('data', (d: Buffer) => {
      if (dead) return
      if (holding) {
        queued.push(d)
        return
      }
      forward(d)
    })
    upstream.on('drain', () => {
      if (!holding) client.resume()
    })
    upstream.on('data', (d: Buffer) => {
      if (!client.write(d)) upstream.pause()
    })
    client.on('drain', () => upstream.resume())
    // Pass on how a side ended: an error (a refused connect, a reset, a peer
    // that died) resets the other side; a close closes it. A server that is
    // down is then seen as a reset, never as a peer that politely dropped the
    // TLS handshake.
    const resetBoth = (): void => {
      if (dead) return
      dead = true
      for (const s of [client, upstream]) if (!s.destroyed) s.resetAndDestroy()
    }
    for (const s of [client, upstream]) {
      s.on('error', resetBoth)
      s.on('close', () => {
        sockets.delete(s)
        releases.delete(release)
        if (!dead) kill()
      })
    }
    events.emit('connection', index)
  })

  const proxy: CuttingProxy = {
    port: 0,
    plan: [],
    cutAfter: undefined,
    get connections() {
      return connections
    },
    get cuts() {
      return cuts
    },
    get holds() {
      return holds
    },
    get forwarded() {
      return forwarded
    },
    waitForCuts: (n) => waitCount(() => cuts, 'cut', n),
    waitForHolds: (n) => waitCount(() => holds, 'hold', n),
    waitForConnections: (n) => waitCount(() => connections, 'connection', n),
    release() {
      for (const r of [...releases]) r()
    },
    cutAll() {
      for (const s of sockets) s.destroy()
    },
    async close() {
      if (closed) return
      closed = true
      events.emit('closed')
      const done = once(server, 'close')
      server.close()
      proxy.cutAll()
      await done
    },
  }
  server.listen(0, host)
  await once(server, 'listening')
  ;(proxy as { port: number }).port = (server.address() as { port: number }).port
  return proxy
}
