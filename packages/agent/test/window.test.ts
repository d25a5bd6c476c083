import t from 'tap'
import { once } from 'node:events'
import { WebSocketServer, type WebSocket } from 'ws'
import { decodeMessage, encodeMessage, MessageKind, PROTOCOL_VERSION, SUBPROTOCOL, type ExtentMessage, type Message } from '@grainline/protocol'
import { Connection } from '../src/connection.ts'
import { SendWindow } from '../src/window.ts'

/**
 * A WebSocket server speaking the receiver's side of the conversation up to an
 * accepted disk 0 (Welcome, VmState, DiskState), then handing every message to
 * `onConn`'s listeners: the Connection checks SPEC §8 on every message, so
 * extents are legal only after that.
 */
async function server(t: { teardown: (fn: () => unknown) => void }, onConn: (ws: WebSocket) => void, speak = true): Promise<string> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (p) => (p.has(SUBPROTOCOL) ? SUBPROTOCOL : false) })
  await once(wss, 'listening')
  wss.on('connection', (ws) => {
    if (speak)
      ws.on('message', (d: Buffer) => {
        const m = decodeMessage(d)
        const reply = (r: Message): void => {
          ws.send(encodeMessage(r))
        }
        if (m.kind === MessageKind.Hello) reply({ kind: MessageKind.Welcome, version: PROTOCOL_VERSION, software: 'window-test', digest: 'xxh64', compression: 'none', limits: m.limits, session: 's' })
        if (m.kind === MessageKind.VmOpen) reply({ kind: MessageKind.VmState, vm: m.vm, exists: false, committedCycle: 0, inflightCycle: 0, compatible: true, generation: '' })
        if (m.kind === MessageKind.DiskOpen)
          reply({ kind: MessageKind.DiskState, disk: m.disk, accepted: true, reason: '', committedCycle: 0, committedSource: null, mirrorCid: '', modified: false, resumeSeq: 0, resumeBytes: 0 })
      })
    onConn(ws)
  })
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate()
        wss.close(() => resolve())
      }),
  )
  return `ws://127.0.0.1:${(wss.address() as { port: number }).port}`
}

/** Open a connection and walk it to an accepted disk 0 (Hello, VmOpen, DiskOpen). */
async function openAccepted(opts: { url: string; token: string; highWaterMark?: number; idleTimeoutMs?: number }): Promise<Connection> {
  const conn = await Connection.open(opts)
  await conn.send({
    kind: MessageKind.Hello,
    versions: [PROTOCOL_VERSION],
    software: 't',
    digests: ['xxh64'],
    compressions: ['none'],
    limits: { maxMessageBytes: 2 << 20, maxExtentBytes: 1 << 20, windowBytes: 64 << 20 },
  })
  await conn.receive()
  await conn.send({ kind: MessageKind.VmOpen, vm: 'vm', cycle: 1, compat: { hwVersion: 14, datastoreType: 'local', guestOS: '' }, files: [], disks: ['d.vmdk'] })
  await conn.receive()
  await conn.send({
    kind: MessageKind.DiskOpen,
    disk: 0,
    name: 'd.vmdk',
    capacity: 1 << 30,
    cycle: 1,
    mode: 'seed',
    baseCycle: 0,
    baseGeneration: '',
    source: { layers: [{ file: 'd.vmdk', cid: '00000001', parentCid: 'ffffffff' }], successor: 'd-000001.vmdk' },
    cycleId: '00'.repeat(32),
    ddb: {},
    totalBytes: 1 << 30,
    totalExtents: 1 << 20,
    blockSize: 0,
  })
  const ds = await conn.receive()
  if (ds.kind !== MessageKind.DiskState || !ds.accepted) throw new Error('disk not accepted')
  return conn
}

const extent = (seq: number, size: number): ExtentMessage => ({
  kind: MessageKind.Extent,
  disk: 0,
  seq,
  offset: seq * size,
  length: size,
  zero: false,
  compression: 'none',
  data: new Uint8Array(size).fill(seq & 0xff),
  digest: new Uint8Array(8),
})

t.test('window: unacked bytes stay within the window with slow acks', async (t) => {
  const windowBytes = 256 * 1024
  const size = 32 * 1024
  let maxUnacked = 0
  let received = 0
  let acked = 0
  const url = await server(t, (ws) => {
    const pending: number[] = []
    ws.on('message', (d: Buffer) => {
      const m = decodeMessage(d)
      if (m.kind !== MessageKind.Extent) return
      received += m.data.length + 64
      pending.push(m.seq)
      maxUnacked = Math.max(maxUnacked, received - acked)
    })
    // ack in bursts every 20 ms (a slow receiver)
    const timer = setInterval(() => {
      const seq = pending.pop()
      if (seq === undefined) return
      pending.length = 0
      acked = received
      ws.send(encodeMessage({ kind: MessageKind.ExtentAck, disk: 0, seq }))
    }, 20)
    ws.on('close', () => clearInterval(timer))
  })
  const conn = await openAccepted({ url, token: 'x' })
  const win = new SendWindow(windowBytes)
  conn.onAck = (a) => {
    t.ok(win.ack(a.seq))
  }
  const n = 64
  for (let seq = 0; seq < n; seq++) {
    const cost = size + 64
    await win.reserve(cost, conn.failed())
    await conn.send(extent(seq, size))
    win.sent(seq, cost)
  }
  while (win.count > 0) await win.reserve(windowBytes, conn.failed())
  t.equal(win.acked, n - 1)
  t.ok(maxUnacked <= windowBytes, `max unacked ${maxUnacked} ≤ window ${windowBytes}`)
  t.ok(maxUnacked >= windowBytes / 2, `pipelined: ${maxUnacked} bytes were in flight at once (not stop-and-wait)`)
  t.notOk(win.ack(n + 5), 'an ack beyond what was sent is rejected')
  await conn.close()
})

t.test('bufferedAmount high-water mark: send waits while the peer does not read', async (t) => {
  let serverSocket: WebSocket | undefined
  let got = 0
  const url = await server(t, (ws) => {
    serverSocket = ws
    ws.on('message', (d: Buffer) => {
      got += d.length
    })
  })
  const conn = await openAccepted({ url, token: 'x', highWaterMark: 1024 * 1024 })
  while (serverSocket === undefined) await new Promise((r) => setTimeout(r, 5))
  const raw = (serverSocket as unknown as { _socket: import('node:net').Socket })._socket
  raw.pause()
  let sent = 0
  let blocked = false
  const pump = (async () => {
    for (let seq = 0; seq < 4096; seq++) {
      await conn.send(extent(seq, 64 * 1024))
      sent++
    }
  })()
  // the kernel buffers some MiB; after that send() must stop returning
  const before = performance.now()
  let last = -1
  while (performance.now() - before < 3000) {
    await new Promise((r) => setTimeout(r, 100))
    if (sent === last) {
      blocked = true
      break
    }
    last = sent
  }
  t.ok(blocked, `sending stalled at ${sent} extents while the peer did not read`)
  t.ok(sent < 4096, 'not everything was queued in memory')
  raw.resume()
  await pump
  t.equal(sent, 4096)
  await new Promise((r) => setTimeout(r, 200))
  t.ok(got > 0)
  await conn.close()
})

t.test('a peer that never reads again: the send waiting for the buffer to drain ends after the idle timeout', async (t) => {
  let serverSocket: WebSocket | undefined
  const url = await server(t, (ws) => {
    serverSocket = ws
  })
  const conn = await openAccepted({ url, token: 'x', highWaterMark: 256 * 1024, idleTimeoutMs: 1000 })
  while (serverSocket === undefined)
    await new Promise((r) => setTimeout(r, 5))
    // paused for good, the connection left open: only the agent's own deadline can end the wait
  ;(serverSocket as unknown as { _socket: import('node:net').Socket })._socket.pause()
  const pump = (async () => {
    for (let seq = 0; seq < 4096; seq++) await conn.send(extent(seq, 64 * 1024))
  })()
  let watchdog: NodeJS.Timeout | undefined
  const hung = new Promise<never>((_r, reject) => {
    watchdog = setTimeout(() => reject(new Error('send() still waiting after 30 s')), 30_000)
  })
  const t0 = performance.now()
  await t.rejects(Promise.race([pump, hung]), { name: 'ConnectionLost', message: /the receiver read nothing for 1 s/ })
  clearTimeout(watchdog)
  t.ok(performance.now() - t0 < 15_000, `ended in ${Math.round(performance.now() - t0)} ms`)
  const { isRetryable } = await import('../src/connection.ts')
  t.match(conn.failure, { name: 'ConnectionLost', message: /the receiver read nothing for 1 s/ }, "the connection's failure is the stall, at once")
  t.ok(isRetryable(conn.failure), 'retryable: the cycle reconnects and resumes')
})

t.test('connection loss rejects waiters with a retryable error', async (t) => {
  const url = await server(
    t,
    (ws) => {
      ws.on('message', () => {
        ws.terminate()
      })
    },
    false,
  )
  const conn = await Connection.open({ url, token: 'x' })
  const r = conn.receive()
  await conn.send({
    kind: MessageKind.Hello,
    versions: [PROTOCOL_VERSION],
    software: 't',
    digests: ['xxh64'],
    compressions: ['none'],
    limits: { maxMessageBytes: 2 << 20, maxExtentBytes: 1 << 20, windowBytes: 64 << 20 },
  })
  await t.rejects(r, { name: 'ConnectionLost' })
  const { isRetryable } = await import('../src/connection.ts')
  t.ok(isRetryable(conn.failure))
})

t.test('a stop that fired before open or receive is heard at once (a listener added later never hears it)', async (t) => {
  const url = await server(t, () => {}, false)
  const stopped = new AbortController()
  stopped.abort(new Error('interrupted by SIGTERM'))
  await t.rejects(Connection.open({ url, token: 'x', signal: stopped.signal }), { code: 'E_ABORTED', message: 'interrupted by SIGTERM' })
  const conn = await Connection.open({ url, token: 'x' })
  t.teardown(() => conn.terminate())
  const t0 = performance.now()
  // the silent server answers nothing: the old receive waited for the 120 s idle timeout
  await t.rejects(conn.receive({ signal: stopped.signal }), { code: 'E_ABORTED', message: 'interrupted by SIGTERM' })
  t.ok(performance.now() - t0 < 1000)
  const later = new AbortController()
  const r = conn.receive({ signal: later.signal })
  later.abort(new Error('interrupted by SIGINT'))
  await t.rejects(r, { code: 'E_ABORTED', message: 'interrupted by SIGINT' }, 'a stop while waiting names its reason too')
})

t.test('refused upgrade is a typed, non-retryable error', async (t) => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, verifyClient: (_i, cb) => cb(false, 401) })
  await once(wss, 'listening')
  t.teardown(() => wss.close())
  await t.rejects(Connection.open({ url: `ws://127.0.0.1:${(wss.address() as { port: number }).port}`, token: 'bad' }), { code: 'E_REFUSED' })
  await t.rejects(Connection.open({ url: 'http://127.0.0.1:1', token: 'x' }), { code: 'E_CONFIG' })
})

t.test('a receiver that stops acknowledging is detected (stall timeout), not waited on forever', async (t) => {
  const url = await server(t, () => {})
  const conn = await openAccepted({ url, token: 'x' })
  const win = new SendWindow(64 * 1024)
  const t0 = performance.now()
  let sent = 0
  const run = (async () => {
    for (let seq = 0; seq < 10; seq++) {
      await win.reserve(32 * 1024, conn.failed(), 300, () => new Error('stalled'))
      await conn.send(extent(seq, 32 * 1024))
      win.sent(seq, 32 * 1024)
      sent++
    }
  })()
  await t.rejects(run, { message: 'stalled' })
  t.equal(sent, 2, 'the window filled, then the wait for an ack timed out')
  t.ok(performance.now() - t0 >= 290)
  await t.rejects(
    win.reserve(64 * 1024, conn.failed(), 100, () => new Error('still stalled')),
    { message: 'still stalled' },
  )
  conn.terminate()
})

t.test('a connection cut during the TLS handshake is retryable, not a certificate failure', async (t) => {
  const { createServer } = await import('node:net')
  const { isRetryable, isTlsVerificationFailure } = await import('../src/connection.ts')
  // a TCP server that reads the ClientHello and drops the socket (a link cut mid-handshake)
  const srv = createServer((s) => {
    s.once('data', () => s.destroy())
  })
  srv.listen(0, '127.0.0.1')
  await once(srv, 'listening')
  t.teardown(() => srv.close())
  const err = await Connection.open({ url: `wss://127.0.0.1:${(srv.address() as { port: number }).port}`, token: 'x' }).then(
    () => undefined,
    (e: unknown) => e,
  )
  t.match(err, { name: 'ConnectionLost' })
  t.ok(isRetryable(err), `retried: ${(err as Error).message}`)
  t.notOk(isTlsVerificationFailure(err))
  t.ok(isTlsVerificationFailure(Object.assign(new Error('unable to verify the first certificate'), { code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' })))
  t.ok(isTlsVerificationFailure({ message: 'x', cause: { code: 'ERR_TLS_CERT_ALTNAME_INVALID', message: 'Hostname/IP does not match' } }))
})

t.test('fits: true exactly when reserve would not wait (the sender awaits only then)', async (t) => {
  const win = new SendWindow(100, 3)
  const never = new Promise<never>(() => {})
  t.ok(win.fits(1000), 'an empty window takes an extent larger than itself')
  win.sent(0, 60)
  t.ok(win.fits(40))
  t.notOk(win.fits(41), 'bytes')
  win.sent(1, 20)
  win.sent(2, 10)
  t.notOk(win.fits(1), 'extents: maxExtents in flight')
  let reserved = false
  const p = win.reserve(41, never).then(() => {
    reserved = true
  })
  await new Promise((resolve) => setImmediate(resolve))
  t.notOk(reserved, 'reserve waits while fits is false')
  t.ok(win.ack(0))
  t.ok(win.fits(41))
  await p
  t.ok(reserved, 'and returns once it is true')
  t.ok(win.ack(2))
  t.ok(win.fits(1000))
})
