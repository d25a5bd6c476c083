/**
 * The codec over a real WebSocket on loopback (ws, port 0): subprotocol,
 * one frame per message, an Extent sent as fragments from encodeMessageParts
 * arriving as one message, and a bad frame answered by Error + close code.
 */
import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import t from 'tap'
import { WebSocket, WebSocketServer, type RawData } from 'ws'
import { decodeMessage, encodeMessage, encodeMessageParts } from '../src/codec.ts'
import { createDigest, initDigests } from '../src/digest.ts'
import { ProtocolError } from '../src/errors.ts'
import { MessageKind, SUBPROTOCOL, type ExtentMessage, type HelloMessage, type Message } from '../src/messages.ts'
import { negotiate } from '../src/negotiation.ts'
import { ConversationState } from '../src/session-state.ts'
import { canonical } from './json.ts'

const MiB = 1 << 20
const limits = { maxMessageBytes: 4 * MiB, maxExtentBytes: 2 * MiB, windowBytes: 8 * MiB }

async function pair(
  t: { teardown: (fn: () => Promise<void>) => void; equal: (a: unknown, b: unknown) => void },
  onServerMessage: (ws: WebSocket, msg: Message | ProtocolError) => void,
): Promise<WebSocket> {
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    perMessageDeflate: false,
    maxPayload: limits.maxMessageBytes,
    handleProtocols: (offered) => (offered.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
  })
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate()
        wss.close(() => resolve())
      }),
  )
  await once(wss, 'listening')
  wss.on('connection', (ws) => {
    ws.on('message', (data: RawData, isBinary: boolean) => {
      const buf = data as Buffer
      let msg: Message | ProtocolError
      try {
        if (!isBinary) throw new ProtocolError('E_MALFORMED', 'text frame')
        msg = decodeMessage(buf, { maxMessageBytes: limits.maxMessageBytes, maxExtentBytes: limits.maxExtentBytes })
      } catch (err) {
        msg = err as ProtocolError
      }
      onServerMessage(ws, msg)
    })
  })
  const { port } = wss.address() as { port: number }
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, SUBPROTOCOL, { perMessageDeflate: false, maxPayload: limits.maxMessageBytes })
  await once(ws, 'open')
  t.equal(ws.protocol, SUBPROTOCOL)
  return ws
}

t.test('handshake and a fragmented 1 MiB extent over a real socket', async (t) => {
  await initDigests()
  const received: Message[] = []
  let gotThree: () => void = () => {}
  const three = new Promise<void>((resolve) => {
    gotThree = resolve
  })
  const state = new ConversationState()
  const ws = await pair(t, (server, msg) => {
    if (msg instanceof ProtocolError) throw msg
    received.push(msg)
    if (received.length === 3) gotThree()
    if (msg.kind === MessageKind.Hello) {
      state.observe(msg, 'agent')
      const n = negotiate(msg, { versions: [2], digests: ['sha256', 'xxh64'], compressions: ['none'], limits })
      const welcome: Message = { kind: MessageKind.Welcome, ...n, software: 'test-receiver', session: 'x' }
      state.observe(welcome, 'receiver')
      server.send(encodeMessage(welcome))
    }
  })
  const hello: HelloMessage = { kind: MessageKind.Hello, versions: [2], software: 'test-agent', digests: ['xxh64'], compressions: ['lz4', 'none'], limits }
  ws.send(encodeMessage(hello))
  const [welcomeFrame] = (await once(ws, 'message')) as [Buffer]
  const welcome = decodeMessage(welcomeFrame)
  t.match(welcome, { kind: MessageKind.Welcome, version: 2, digest: 'xxh64', compression: 'none' })
  t.equal(state.phase, 'ready')

  const payload = randomBytes(MiB)
  const extent: ExtentMessage = {
    kind: MessageKind.Extent,
    disk: 0,
    seq: 0,
    offset: 0,
    length: MiB,
    zero: false,
    compression: 'none',
    data: payload,
    digest: createDigest('xxh64').update(payload).digest(),
  }
  const parts = encodeMessageParts(extent)
  t.equal(parts[1], payload, 'payload is sent without an encoder copy')
  for (const [i, p] of parts.entries()) ws.send(p, { binary: true, fin: i === parts.length - 1 })
  ws.send(encodeMessage({ kind: MessageKind.Error, code: 'E_SHUTDOWN', message: 'bye', fatal: false }))
  await three
  t.equal(received.length, 3, 'fragments arrive as one message')
  t.equal(canonical(received[1]), canonical(extent))
  t.equal(received[2]!.kind, MessageKind.Error)
  ws.close(1000)
  await once(ws, 'close')
})

t.test('a bad frame is answered with Error and the close code of its code', async (t) => {
  const ws = await pair(t, (server, msg) => {
    if (!(msg instanceof ProtocolError)) return
    server.send(encodeMessage({ kind: MessageKind.Error, code: msg.code, message: msg.message, fatal: msg.fatal }))
    server.close(msg.closeCode, msg.code)
  })
  ws.send(Uint8Array.of(0x03, 0x80)) // unknown kind
  const [frame] = (await once(ws, 'message')) as [Buffer]
  t.match(decodeMessage(frame), { kind: MessageKind.Error, code: 'E_UNKNOWN_KIND', fatal: true })
  const [code, reason] = (await once(ws, 'close')) as [number, Buffer]
  t.equal(code, 1008)
  t.equal(reason.toString(), 'E_UNKNOWN_KIND')
})
