// The cutting proxy between a real client socket and a real server on
// loopback: exact cut and hold points, one plan entry per connection.
import t from 'tap'
import { EventEmitter, once } from 'node:events'
import { connect, createServer, type Socket } from 'node:net'
import { startCuttingProxy } from '../src/index.ts'

interface Peer {
  /** bytes this side received so far */
  readonly bytes: () => Buffer
  /** resolves once this side received at least n bytes */
  waitForBytes(n: number): Promise<void>
  readonly closed: Promise<void>
  readonly sock: Socket
}

function peer(sock: Socket): Peer {
  const ev = new EventEmitter()
  const chunks: Buffer[] = []
  let n = 0
  sock.on('data', (d: Buffer) => {
    chunks.push(d)
    n += d.length
    ev.emit('data')
  })
  sock.on('error', () => {})
  // not events.once: that rejects on the 'error' (ECONNRESET) a cut may cause first
  const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()))
  return {
    sock,
    closed,
    bytes: () => Buffer.concat(chunks),
    waitForBytes: (want) =>
      new Promise((resolve) => {
        const check = (): void => {
          if (n >= want) {
            ev.off('data', check)
            resolve()
          }
        }
        ev.on('data', check)
        check()
      }),
  }
}

/** A server keeping one Peer per accepted connection; each connection greets with 'hi'. */
async function server(t: { teardown(fn: () => unknown): void }): Promise<{ port: number; peers: Peer[]; next: () => Promise<Peer>; close: () => Promise<void> }> {
  const peers: Peer[] = []
  const ev = new EventEmitter()
  const srv = createServer((s) => {
    s.write('hi')
    peers.push(peer(s))
    ev.emit('peer')
  })
  srv.listen(0, '127.0.0.1')
  await once(srv, 'listening')
  let taken = 0
  const close = async (): Promise<void> => {
    for (const p of peers) p.sock.destroy()
    if (srv.listening) {
      srv.close()
      await once(srv, 'close')
    }
  }
  t.teardown(close)
  return {
    port: (srv.address() as { port: number }).port,
    peers,
    close,
    next: () =>
      new Promise((resolve) => {
        const check = (): void => {
          const p = peers[taken]
          if (p !== undefined) {
            taken++
            ev.off('peer', check)
            resolve(p)
          }
        }
        ev.on('peer', check)
        check()
      }),
  }
}

async function dial(port: number): Promise<Peer> {
  const sock = connect(port, '127.0.0.1')
  const p = peer(sock)
  await once(sock, 'connect')
  return p
}

const data = (n: number, seed = 1): Buffer => {
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff
  return b
}

t.test('forwards both ways unchanged', async (t) => {
  const srv = await server(t)
  const proxy = await startCuttingProxy(srv.port)
  t.teardown(() => proxy.close())
  const c = await dial(proxy.port)
  const s = await srv.next()
  const payload = data(3 << 20)
  c.sock.write(payload)
  await s.waitForBytes(payload.length)
  t.same(s.bytes(), payload, 'the server got every byte in order')
  await c.waitForBytes(2)
  t.equal(c.bytes().toString(), 'hi', 'server → client flows too')
  t.equal(proxy.forwarded, payload.length)
  t.equal(proxy.connections, 1)
  t.equal(proxy.cuts, 0)
  c.sock.end()
  await Promise.all([c.closed, s.closed])
})

t.test('a cut budget lets exactly that many bytes through, then closes both sides', async (t) => {
  const srv = await server(t)
  const proxy = await startCuttingProxy({ target: srv.port })
  t.teardown(() => proxy.close())
  proxy.plan = [100_000]
  const c = await dial(proxy.port)
  const s = await srv.next()
  c.sock.write(data(40_000))
  c.sock.write(data(200_000, 2))
  await proxy.waitForCuts(1)
  await Promise.all([c.closed, s.closed])
  t.equal(s.bytes().length, 100_000, 'the server saw the budget and not a byte more')
  t.same(s.bytes(), Buffer.concat([data(40_000), data(200_000, 2)]).subarray(0, 100_000), 'the bytes before the cut are intact')
  t.equal(proxy.cuts, 1)
})

t.test('plan entries are consumed one per connection; cutAfter applies once the plan is empty', async (t) => {
  const srv = await server(t)
  const proxy = await startCuttingProxy({ target: () => srv.port })
  t.teardown(() => proxy.close())
  proxy.plan = [10, undefined]
  proxy.cutAfter = 20
  const budgets = [10, Infinity, 20, 20]
  for (const [i, budget] of budgets.entries()) {
    const c = await dial(proxy.port)
    const s = await srv.next()
    c.sock.write(data(1000, i))
    if (budget === Infinity) {
      await s.waitForBytes(1000)
      t.equal(s.bytes().length, 1000, `connection ${i} is not cut`)
      c.sock.destroy()
    } else {
      await Promise.all([c.closed, s.closed])
      t.equal(s.bytes().length, budget, `connection ${i} is cut after ${budget} bytes`)
    }
  }
  t.equal(proxy.connections, 4)
  t.equal(proxy.cuts, 3)
  t.same(proxy.plan, [], 'the plan was consumed')
})

t.test('a hold stops the stream at a byte, release() lets the rest through in order', async (t) => {
  const srv = await server(t)
  const proxy = await startCuttingProxy(srv.port)
  t.teardown(() => proxy.close())
  proxy.plan = [{ holdAfter: 5000 }]
  const c = await dial(proxy.port)
  const s = await srv.next()
  const payload = data(50_000, 3)
  c.sock.write(payload)
  await proxy.waitForHolds(1)
  await s.waitForBytes(5000)
  t.equal(proxy.forwarded, 5000, 'held exactly at the hold point')
  // server → client still flows while the upstream direction is held
  s.sock.write('more')
  await c.waitForBytes(6)
  t.equal(c.bytes().toString(), 'himore')
  proxy.release()
  await s.waitForBytes(payload.length)
  t.same(s.bytes(), payload, 'after release every byte arrived, in order')
  t.equal(proxy.holds, 1)
  c.sock.destroy()
})

t.test('hold then cut on one connection', async (t) => {
  const srv = await server(t)
  const proxy = await startCuttingProxy(srv.port)
  t.teardown(() => proxy.close())
  proxy.plan = [{ holdAfter: 0, cutAfter: 700 }]
  const c = await dial(proxy.port)
  const s = await srv.next()
  c.sock.write(data(1000))
  await proxy.waitForHolds(1)
  t.equal(proxy.forwarded, 0, 'holdAfter 0 holds before the first byte')
  proxy.release()
  await proxy.waitForCuts(1)
  await s.closed
  t.equal(s.bytes().length, 700)
})

t.test('cutAll breaks open connections; the target function follows a server that moved', async (t) => {
  const a = await server(t)
  let port = a.port
  const proxy = await startCuttingProxy({ target: () => port })
  t.teardown(() => proxy.close())
  const c1 = await dial(proxy.port)
  const s1 = await a.next()
  proxy.cutAll()
  await Promise.all([c1.closed, s1.closed])
  t.equal(proxy.cuts, 0, 'cutAll is not a budget cut')
  await a.close()
  const b = await server(t)
  port = b.port
  const c2 = await dial(proxy.port)
  const s2 = await b.next()
  c2.sock.write('x')
  await s2.waitForBytes(1)
  t.equal(s2.bytes().toString(), 'x', 'the second connection reached the new server')
  c2.sock.destroy()
})

t.test('waiting on a proxy that closes first rejects', async (t) => {
  const srv = await server(t)
  const proxy = await startCuttingProxy(srv.port)
  const waiting = proxy.waitForCuts(1)
  await proxy.close()
  await t.rejects(waiting, /proxy closed after 0 of 1 cut/)
  await proxy.close()
  t.pass('close twice is fine')
})

t.test('a server that is down: the client connection is reset, not closed gracefully', async (t) => {
  const srv = await server(t)
  const port = srv.port
  await srv.close()
  const proxy = await startCuttingProxy(port)
  t.teardown(() => proxy.close())
  const sock = connect(proxy.port, '127.0.0.1')
  // 'error' comes before 'close'; a graceful close would resolve with 'closed'
  const outcome = await new Promise<string | undefined>((resolve) => {
    sock.once('error', (e: NodeJS.ErrnoException) => resolve(e.code))
    sock.once('close', () => resolve('closed'))
  })
  t.equal(outcome, 'ECONNRESET')
})
