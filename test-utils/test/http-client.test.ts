// The small HTTP(S) client of the receiver's listener tests, against real
// node:http and node:https servers on loopback (the test certificate as CA).
import t from 'tap'
import { once } from 'node:events'
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { readFileSync } from 'node:fs'
import { httpCall, readEvents, tlsFixture } from '../src/index.ts'

type Handler = (req: IncomingMessage, res: ServerResponse) => void

async function listen(server: Server, t: { teardown(fn: () => unknown): void }): Promise<number> {
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => {
    server.closeAllConnections()
    server.close()
  })
  return (server.address() as AddressInfo).port
}

/** Echoes method, a header and the body back as JSON. */
const echo: Handler = (req, res) => {
  const chunks: Buffer[] = []
  req.on('data', (c: Buffer) => chunks.push(c))
  req.on('end', () => {
    res.setHeader('x-seen', String(req.headers['x-probe'] ?? ''))
    res.end(JSON.stringify({ method: req.method, url: req.url, body: Buffer.concat(chunks).toString('utf8') }))
  })
}

t.test('httpCall over https with the test CA: method, headers, body, status', async (t) => {
  const tls = tlsFixture()
  const port = await listen(createHttpsServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, echo) as unknown as Server, t)
  const r = await httpCall(`https://127.0.0.1:${port}/login?x=1`, { method: 'POST', headers: { 'x-probe': 'p1' }, body: 'token=abc', ca: tls.ca })
  t.equal(r.status, 200)
  t.equal(r.headers['x-seen'], 'p1', 'the request header arrived')
  t.same(JSON.parse(r.text), { method: 'POST', url: '/login?x=1', body: 'token=abc' })
  // without the CA the self-signed certificate is refused: the error reaches the caller
  await t.rejects(httpCall(`https://127.0.0.1:${port}/`), /self[- ]signed|certificate/i)
})

t.test('httpCall over plain http defaults to GET without a body', async (t) => {
  const port = await listen(createHttpServer(echo), t)
  const r = await httpCall(`http://127.0.0.1:${port}/metrics`)
  t.equal(r.status, 200)
  t.same(JSON.parse(r.text), { method: 'GET', url: '/metrics', body: '' })
})

t.test('httpCall rejects when nothing listens', async (t) => {
  const server = createHttpServer(echo)
  const port = await listen(server, t)
  server.close()
  await once(server, 'close')
  await t.rejects(httpCall(`http://127.0.0.1:${port}/`), { code: 'ECONNREFUSED' })
})

t.test('readEvents parses an event stream, split across writes, and stops at the count', async (t) => {
  const tls = tlsFixture()
  const handler: Handler = (req, res) => {
    if (req.headers.authorization !== 'Bearer ok') {
      res.statusCode = 401
      res.end('no')
      return
    }
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    // one event split in the middle, one without an event name (a "message"), then more than asked for
    res.write('event: cycle\ndata: {"n":1}')
    setImmediate(() => {
      res.write('\n\ndata: plain\n\nevent: cycle\ndata: {"n":3}\n\nevent: cycle\ndata: {"n":4}\n\n')
    })
  }
  const port = await listen(createHttpsServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, handler) as unknown as Server, t)
  const url = `https://127.0.0.1:${port}/events`
  const r = await readEvents(url, 3, { headers: { authorization: 'Bearer ok' }, ca: tls.ca })
  t.equal(r.status, 200)
  t.same(r.events, [
    { event: 'cycle', data: '{"n":1}' },
    { event: 'message', data: 'plain' },
    { event: 'cycle', data: '{"n":3}' },
  ])
  const refused = await readEvents(url, 1, { ca: tls.ca })
  t.same(refused, { status: 401, events: [] }, 'a refused stream ends with its status and no events')
})

t.test('readEvents returns what arrived when a plain-http stream ends early, and rejects on a refused connection', async (t) => {
  const server = createHttpServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    res.end('event: only\ndata: 1\n\n')
  })
  const port = await listen(server, t)
  t.same(await readEvents(`http://127.0.0.1:${port}/events`, 5), { status: 200, events: [{ event: 'only', data: '1' }] })
  server.close()
  await once(server, 'close')
  await t.rejects(readEvents(`http://127.0.0.1:${port}/events`, 1), { code: 'ECONNREFUSED' })
})
