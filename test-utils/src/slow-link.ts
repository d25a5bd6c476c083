/**
 * A TCP proxy on loopback that carries the client's bytes to the server at a
 * fixed rate (a slow WAN uplink; the way back is not slowed). The client's
 * socket is paused while a chunk waits for its turn, so its own send buffers
 * fill as they would behind a slow link: what the client writes later (a
 * WebSocket pong) waits behind what it wrote before.
 */
import { once } from 'node:events'
import { connect, createServer, type Socket } from 'node:net'

/** A running slow link. */
export interface SlowLink {
  /** the link's own port: point the client here */
  readonly port: number
  /** bytes carried client → server so far */
  readonly carried: number
  close(): Promise<void>
}

/** Start a link to `target` on `host` that carries the client's bytes at `bytesPerSecond`. */
export async function startSlowLink(init: { readonly target: number; readonly bytesPerSecond: number; readonly host?: string }): Promise<SlowLink> {
  const host = init.host ?? '127.0.0.1'
  const sockets = new Set<Socket>()
  let carried = 0
  const server = createServer((client) => {
    const upstream = connect(init.target, host)
    sockets.add(client)
    sockets.add(upstream)
    const end = (): void => {
      client.destroy()
      upstream.destroy()
      sockets.delete(client)
      sockets.delete(upstream)
    }
    client.on('error', end)
    upstream.on('error', end)
    client.on('close', end)
    upstream.on('close', end)
    upstream.on('data', (d: Buffer) => {
      if (!client.write(d)) upstream.pause()
    })
    client.on('drain', () => upstream.resume())
    // the link is free again at `free` (ms, performance.now()); each chunk takes its length / rate
    let free = 0
    client.on('data', (d: Buffer) => {
      const now = performance.now()
      free = Math.max(free, now) + (d.length * 1000) / init.bytesPerSecond
      client.pause()
      setTimeout(
        () => {
          carried += d.length
          upstream.write(d)
          client.resume()
        },
        Math.max(0, free - now),
      )
    })
  })
  server.listen(0, host)
  await once(server, 'listening')
  const port = (server.address() as { port: number }).port
  return {
    port,
    get carried() {
      return carried
    },
    async close() {
      for (const s of sockets) s.destroy()
      server.close()
      await once(server, 'close').catch(() => {})
    },
  }
}
