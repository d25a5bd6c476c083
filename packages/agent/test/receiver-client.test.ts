/**
 * The typed receiver client against scripted receivers: replies and refusals
 * are values, retryable Errors are connection losses, and a message that
 * breaks the conversation (SPEC §8) is E_PROTOCOL.
 */
import t from 'tap'
import { once } from 'node:events'
import { WebSocketServer, type WebSocket } from 'ws'
import { decodeMessage, encodeMessage, MessageKind, PROTOCOL_VERSION, SUBPROTOCOL, type Message } from '@grainline/protocol'
import { isRetryable } from '../src/connection.ts'
import { ReceiverClient } from '../src/receiver-client.ts'

/** A receiver whose answer to each message kind is scripted (undefined: the default happy answer). */
async function scripted(t: { teardown: (fn: () => unknown) => void }, answer: (m: Message, ws: WebSocket) => Message | 'default' | 'none'): Promise<string> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (p) => (p.has(SUBPROTOCOL) ? SUBPROTOCOL : false) })
  await once(wss, 'listening')
  wss.on('connection', (ws) => {
    ws.on('message', (d: Buffer) => {
      const m = decodeMessage(d)
      const a = answer(m, ws)
      if (a === 'none') return
      if (a !== 'default') {
        ws.send(encodeMessage(a))
        return
      }
      if (m.kind === MessageKind.Hello)
        ws.send(encodeMessage({ kind: MessageKind.Welcome, version: PROTOCOL_VERSION, software: 'scripted', digest: 'xxh64', compression: 'none', limits: m.limits, session: 's' }))
      if (m.kind === MessageKind.VmOpen)
        ws.send(encodeMessage({ kind: MessageKind.VmState, vm: m.vm, exists: true, committedCycle: 3, inflightCycle: 0, compatible: true, generation: 'ab'.repeat(16) }))
    })
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

const hello = {
  versions: [PROTOCOL_VERSION],
  software: 't',
  digests: ['xxh64'] as const,
  compressions: ['none'] as const,
  limits: { maxMessageBytes: 2 << 20, maxExtentBytes: 1 << 20, windowBytes: 64 << 20 },
}
const vmOpen = { vm: 'vm', cycle: 4, compat: { hwVersion: 14, datastoreType: 'local', guestOS: '' }, files: [], disks: ['d.vmdk'] }
const diskOpen = {
  disk: 0,
  name: 'd.vmdk',
  capacity: 1 << 20,
  cycle: 4,
  mode: 'incremental' as const,
  baseCycle: 3,
  baseGeneration: 'cd'.repeat(16),
  source: { layers: [{ file: 'd-000001.vmdk', cid: '00000002', parentCid: '00000001' }], successor: 'd-000002.vmdk' },
  cycleId: '00'.repeat(32),
  ddb: {},
  totalBytes: 0,
  totalExtents: 0,
  blockSize: 0,
}

t.test('replies and refusals are values', async (t) => {
  const url = await scripted(t, (m) => {
    if (m.kind === MessageKind.DiskOpen) {
      return {
        kind: MessageKind.DiskState,
        disk: m.disk,
        accepted: m.disk !== 0,
        reason: m.disk === 0 ? 'E_GENERATION' : '',
        committedCycle: 3,
        committedSource: null,
        mirrorCid: '',
        modified: false,
        resumeSeq: 0,
        resumeBytes: 0,
      }
    }
    return 'default'
  })
  const c = await ReceiverClient.connect({ url, token: 'x' })
  t.teardown(() => c.terminate())
  const w = await c.hello(hello)
  t.match(w, { ok: true, value: { kind: MessageKind.Welcome, digest: 'xxh64' } })
  const s = await c.vmOpen(vmOpen)
  t.match(s, { ok: true, value: { committedCycle: 3, generation: 'ab'.repeat(16) } })
  const refused = await c.openDisk(diskOpen)
  t.match(refused, { ok: false, refusal: { code: 'E_GENERATION', fatal: false }, state: { accepted: false, committedCycle: 3 } })
  // SPEC §8.2: the refused handle is spent; the disk opens again under a new handle, in the same connection
  const again = await c.openDisk({ ...diskOpen, disk: 1, mode: 'seed', baseCycle: 0, baseGeneration: '' })
  t.match(again, { ok: true, value: { disk: 1, accepted: true } })
})

t.test('an Error in place of a reply is a refusal; E_BUSY, E_SHUTDOWN and E_TIMEOUT are retryable losses', async (t) => {
  const forbidden = await scripted(t, (m) => (m.kind === MessageKind.VmOpen ? { kind: MessageKind.Error, code: 'E_FORBIDDEN', message: 'not yours', fatal: true } : 'default'))
  const c = await ReceiverClient.connect({ url: forbidden, token: 'x' })
  t.teardown(() => c.terminate())
  await c.hello(hello)
  t.same(await c.vmOpen(vmOpen), { ok: false, refusal: { code: 'E_FORBIDDEN', message: 'not yours', fatal: true } })
  for (const [code, close] of [
    ['E_BUSY', 4429],
    ['E_SHUTDOWN', 1001],
    ['E_TIMEOUT', 4408],
  ] as const) {
    const url = await scripted(t, (m, ws) => {
      if (m.kind !== MessageKind.Hello) return 'default'
      ws.send(encodeMessage({ kind: MessageKind.Error, code, message: 'later', fatal: true }))
      ws.close(close)
      return 'none'
    })
    const k = await ReceiverClient.connect({ url, token: 'x' })
    const err = await k.hello(hello).then(
      () => undefined,
      (e: unknown) => e,
    )
    t.match(err, { name: 'ConnectionLost' }, code)
    t.ok(isRetryable(err), `${code} is retried`)
    k.terminate()
  }
})

t.test('a reply out of turn breaks the conversation: E_PROTOCOL', async (t) => {
  // DiskEnded before any disk was opened (SPEC §8): checked by the conversation state machine on receipt
  const url = await scripted(t, (m) => (m.kind === MessageKind.VmOpen ? { kind: MessageKind.DiskEnded, disk: 0 } : 'default'))
  const c = await ReceiverClient.connect({ url, token: 'x' })
  t.teardown(() => c.terminate())
  await c.hello(hello)
  await t.rejects(c.vmOpen(vmOpen), { code: 'E_PROTOCOL', message: /conversation/ })
  // and the agent's own illegal message is caught before it leaves
  const d = await ReceiverClient.connect({ url: await scripted(t, () => 'default'), token: 'x' })
  t.teardown(() => d.terminate())
  await t.rejects(d.vmOpen(vmOpen), { code: 'E_PROTOCOL', message: /internal: the agent broke the conversation/ }, 'VmOpen before Hello')
})

t.test("a fatal Error that overtakes the agent's extents is the cause reported, not the agent's next message", async (t) => {
  // the receiver's disk fills while extents are in flight: its Error arrives before the agent's next send (the
  // disk-full e2e case once reported "internal: the agent broke the conversation" here)
  const url = await scripted(t, (m, ws) => {
    if (m.kind === MessageKind.DiskOpen)
      return { kind: MessageKind.DiskState, disk: m.disk, accepted: true, reason: '', committedCycle: 3, committedSource: null, mirrorCid: '', modified: false, resumeSeq: 0, resumeBytes: 0 }
    if (m.kind !== MessageKind.Extent) return 'default'
    ws.send(encodeMessage({ kind: MessageKind.Error, code: 'E_NO_SPACE', message: 'no space left while writing disk d.vmdk', fatal: true }))
    return 'none'
  })
  const c = await ReceiverClient.connect({ url, token: 'x' })
  t.teardown(() => c.terminate())
  await c.hello(hello)
  await c.vmOpen(vmOpen)
  t.match(await c.openDisk(diskOpen), { ok: true })
  const failed = c.failed()
  const extent = { disk: 0, seq: 0, offset: 0, length: 512, zero: true, compression: 'none' as const, data: new Uint8Array(0), digest: new Uint8Array(0) }
  await c.sendExtent(extent)
  // wait for the Error to arrive before the next extent leaves
  const deadline = Date.now() + 10_000
  let err: unknown
  while (err === undefined && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20))
    err = await c.sendExtent({ ...extent, seq: 1, offset: 512 }).then(
      () => undefined,
      (e: unknown) => e,
    )
  }
  t.match(err, { code: 'E_REFUSED', remoteCode: 'E_NO_SPACE', message: /extent 1 of disk 0: the receiver refused \(E_NO_SPACE: no space left.*free space/ }, 'the next send throws the receiver error')
  t.notMatch(String((err as Error).message), /broke the conversation/)
  // a request after it gets the Error as its refusal; the connection's failure is the refusal too
  t.match(await c.endDisk({ disk: 0, extents: 2, dataBytes: 0, zeroBytes: 1024, digest: new Uint8Array(8) }), { ok: false, refusal: { code: 'E_NO_SPACE', fatal: true } })
  c.terminate()
  await t.rejects(failed, { code: 'E_REFUSED', remoteCode: 'E_NO_SPACE' }, 'failed() rejects with the refusal, not the lost connection')
})

t.test('retryable Errors that end the conversation stay retryable for the next send', async (t) => {
  const url = await scripted(t, (m, ws) => {
    if (m.kind !== MessageKind.VmOpen) return 'default'
    ws.send(encodeMessage({ kind: MessageKind.Error, code: 'E_SHUTDOWN', message: 'stopping', fatal: true }))
    return 'none'
  })
  const c = await ReceiverClient.connect({ url, token: 'x' })
  t.teardown(() => c.terminate())
  await c.hello(hello)
  t.match(await c.vmOpen(vmOpen).then(undefined, (e: unknown) => e), { name: 'ConnectionLost', closeCode: 1001 })
  const err = await c.rollback('vm').then(undefined, (e: unknown) => e)
  t.match(err, { name: 'ConnectionLost', closeCode: 1001 })
  t.ok(isRetryable(err))
})
