/**
 * The receiver's words for a refused DiskOpen reach the agent's operator
 * (SPEC §5.1, protocol v9 `DiskState.detail`), against the real receiver
 * process. Before, the agent heard only the code (`E_MIRROR_MODIFIED`) and
 * printed a generic advice; what the receiver found (the CIDs, the
 * descriptor that does not decode) was only in the receiver's log.
 *
 * The mirror's descriptor is made undecodable behind the receiver: the next
 * incremental is refused `E_MIRROR_MODIFIED` and the agent resyncs the disk;
 * on version 9 the refusal says why — naming the descriptor by its
 * VM-relative path, never the store's absolute folder — and the agent logs
 * it. An agent that offers version 8 at most hears no detail. A proxy that
 * turns the refusal into one that fails the VM (`E_HELD`) shows the error
 * carrying the receiver's text before the advice, and a hostile receiver's
 * text (terminal escapes, control characters, any length) cleaned and bounded.
 */
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { WebSocket, WebSocketServer } from 'ws'
import { decodeMessage, encodeMessage, MessageKind, refusalDetail, SUBPROTOCOL, type DiskStateMessage, type Message } from '@grainline/protocol'
import { replicate } from '../src/replicate.ts'
import type { VmReport } from '../src/report.ts'
import { createSampleVm, simulateGuestWrites, type SampleVm } from '../src/sample-vm.ts'
import { untrustedText } from '../src/untrusted-text.ts'
import { haveReceiver, memoryLogger, MiB, scratch, startReceiver, TOKEN, type ReceiverEnv } from './helpers.ts'

if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')

interface TapProxy {
  readonly url: string
  /** every DiskState the receiver sent, as it sent it */
  readonly diskStates: DiskStateMessage[]
  /** when set, every Hello (to the receiver) and DiskState (to the agent) passes through it, re-encoded */
  rewrite: ((m: Message) => Message) | undefined
}

/** A plain-WebSocket proxy on loopback in front of the receiver (wss), passing every frame, recording DiskStates. */
async function tapProxy(t: Test, rx: ReceiverEnv): Promise<TapProxy> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, maxPayload: 256 * MiB, handleProtocols: (p) => (p.has(SUBPROTOCOL) ? SUBPROTOCOL : false) })
  await once(wss, 'listening')
  const sockets = new Set<WebSocket>()
  const proxy: TapProxy = { url: `ws://127.0.0.1:${(wss.address() as { port: number }).port}`, diskStates: [], rewrite: undefined }
  const pass = (d: Buffer): Buffer => {
    if (d[0] === MessageKind.DiskState) proxy.diskStates.push(decodeMessage(d) as DiskStateMessage)
    if (proxy.rewrite === undefined || (d[0] !== MessageKind.Hello && d[0] !== MessageKind.DiskState)) return d
    return Buffer.from(encodeMessage(proxy.rewrite(decodeMessage(d))))
  }
  wss.on('connection', (client, req) => {
    sockets.add(client)
    const early: Buffer[] = []
    const up = new WebSocket(rx.url, SUBPROTOCOL, { headers: { Authorization: req.headers.authorization ?? '' }, ca: rx.ca, perMessageDeflate: false, maxPayload: 256 * MiB })
    sockets.add(up)
    client.on('message', (d: Buffer) => {
      if (up.readyState === WebSocket.OPEN) up.send(pass(d))
      else early.push(pass(d))
    })
    up.on('open', () => {
      for (const d of early.splice(0)) up.send(d)
    })
    up.on('message', (d: Buffer) => client.send(pass(d)))
    const cut = (): void => {
      client.terminate()
      up.terminate()
    }
    client.on('close', cut)
    client.on('error', cut)
    up.on('close', cut)
    up.on('error', cut)
  })
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.terminate()
        wss.close(() => resolve())
      }),
  )
  return proxy
}

async function run(vm: SampleVm, url: string, stateDir: string): Promise<{ report: VmReport; lines: Array<Record<string, unknown>> }> {
  const { logger, lines } = memoryLogger()
  const r = await replicate({ logger }, { vm: vm.vmxPath, to: url, token: TOKEN, stateDir, progress: 'none', trivialMiB: 0, compress: 'none', maxBackoffMs: 200 })
  return { report: r.vms[0] as VmReport, lines }
}

/** The mirror's descriptor made undecodable behind the receiver (bytes that are not the UTF-8 it declares). */
async function spoilDescriptor(rx: ReceiverEnv, vm: string): Promise<void> {
  const file = join(rx.store, vm, `${vm}.vmdk`)
  await writeFile(file, Buffer.concat([await readFile(file), Buffer.from([0xff, 0xfe, 0x0a])]))
}

const refusedIncremental = (p: TapProxy): DiskStateMessage | undefined => p.diskStates.find((d) => !d.accepted)

t.test('version 9: the refusal of a spoiled mirror says why, without the store folder; the agent logs it and resyncs; version 8 hears no detail', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const proxy = await tapProxy(t, rx)
  const vm = await createSampleVm(join(dir, 'src'), { name: 'spoilt', disks: [{ sizeBytes: 2 * MiB, fill: 'random' }], seed: 41 })
  const state = join(dir, 'state')
  t.ok((await run(vm, proxy.url, state)).report.ok, 'seed')

  await simulateGuestWrites(vm.vmxPath, { bytes: 128 * 1024, writeSize: 64 * 1024, seed: 2 })
  await spoilDescriptor(rx, 'spoilt')
  proxy.diskStates.length = 0
  const second = await run(vm, proxy.url, state)
  t.ok(second.report.ok, `resynced ${JSON.stringify(second.report.error)}`)
  t.equal(second.report.disks[0]?.mode, 'resync')
  const refused = refusedIncremental(proxy)
  t.equal(refused?.reason, 'E_MIRROR_MODIFIED')
  const detail = refused?.detail ?? ''
  t.match(
    detail,
    /^mirror of spoilt\.vmdk changed since the last commit \(CID missing, recorded [0-9a-f]{8}; its descriptor is not text in the encoding it declares/,
    'the receiver says what it found',
  )
  t.match(detail, /\(spoilt\/spoilt\.vmdk\)/, 'the descriptor named by its VM-relative path')
  t.notOk(detail.includes(rx.store), `no store folder (${rx.store}) in ${detail}`)
  t.ok(rx.logs.join('\n').includes(join(rx.store, 'spoilt', 'spoilt.vmdk')), "the receiver's own log keeps the full path")
  t.ok(
    proxy.diskStates.filter((d) => d.accepted).every((d) => !('detail' in d)),
    'an accepted DiskState has no detail',
  )
  const warned = second.lines.find((l) => l['msg'] === 'incremental refused; resync of the disk by block digests')
  t.equal(warned?.['receiverSays'], detail, "the agent's log says the receiver's words")

  // an agent that offers version 8 at most: the same refusal, no detail on the wire, nothing to say
  await simulateGuestWrites(vm.vmxPath, { bytes: 128 * 1024, writeSize: 64 * 1024, seed: 3 })
  await spoilDescriptor(rx, 'spoilt')
  proxy.diskStates.length = 0
  proxy.rewrite = (m) => (m.kind === MessageKind.Hello ? { ...m, versions: [8, 7, 6, 5, 4, 3, 2] } : m)
  const third = await run(vm, proxy.url, state)
  proxy.rewrite = undefined
  t.ok(third.report.ok)
  t.equal(third.report.disks[0]?.mode, 'resync')
  t.equal(refusedIncremental(proxy)?.reason, 'E_MIRROR_MODIFIED', 'version 8: refused the same')
  t.notOk(
    proxy.diskStates.some((d) => 'detail' in d),
    'version 8: no detail on the wire',
  )
  const warned8 = third.lines.find((l) => l['msg'] === 'incremental refused; resync of the disk by block digests')
  t.ok(warned8 !== undefined && !('receiverSays' in warned8), 'version 8: nothing said')
})

t.test("a refusal that fails the VM carries the receiver's words before the advice; a hostile receiver's are cleaned and bounded", async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const proxy = await tapProxy(t, rx)
  const vm = await createSampleVm(join(dir, 'src'), { name: 'held', disks: [{ sizeBytes: MiB, fill: 'random' }], seed: 42 })
  const state = join(dir, 'state')
  t.ok((await run(vm, proxy.url, state)).report.ok, 'seed')

  // the receiver's real refusal, its code turned into one the operator must handle (as a hold's)
  await simulateGuestWrites(vm.vmxPath, { bytes: 64 * 1024, writeSize: 64 * 1024, seed: 2 })
  await spoilDescriptor(rx, 'held')
  proxy.rewrite = (m) => (m.kind === MessageKind.DiskState && !m.accepted ? { ...m, reason: 'E_HELD' } : m)
  const failed = await run(vm, proxy.url, state)
  t.notOk(failed.report.ok)
  t.equal(failed.report.error?.code, 'E_REFUSED')
  t.equal(failed.report.error?.remoteCode, 'E_HELD')
  t.match(
    failed.report.error?.message,
    /^receiver refused disk held\.vmdk: E_HELD: receiver says: mirror of held\.vmdk changed since the last commit \(CID missing, .*\(held\/held\.vmdk\)\)\): a hold on the mirror/,
    "code, then the receiver's words, then the advice",
  )
  t.notOk(failed.report.error?.message.includes(rx.store), 'no store folder')

  // a hostile receiver: escapes, control characters, bidi overrides, 2048 bytes of them
  const hostile = `\u001b[2J\u001b]0;pwned\u0007evil\r\nline\u0000two \u202eesrever\u009b31m ${'\u001b[31m€'.repeat(300)}`
  proxy.rewrite = (m) => (m.kind === MessageKind.DiskState && !m.accepted ? { ...m, reason: 'E_HELD', detail: refusalDetail(hostile) } : m)
  const worse = await run(vm, proxy.url, state)
  proxy.rewrite = undefined
  const message = worse.report.error?.message ?? ''
  t.equal(worse.report.error?.code, 'E_REFUSED')
  t.notOk(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/.test(message), `no control character: ${JSON.stringify(message.slice(0, 120))}`)
  t.match(message, /^receiver refused disk held\.vmdk: E_HELD: receiver says: evil line two +esrever €€€/)
  t.ok(message.includes('…: a hold on the mirror'), 'cut, then the advice')
  const says = /receiver says: (.*): a hold on the mirror/.exec(message)?.[1] ?? ''
  t.ok(Buffer.byteLength(says) <= 2048, `bounded: ${Buffer.byteLength(says)} bytes`)
})

t.test('untrustedText: escape sequences removed, control characters a space, cut with "…"', async (t) => {
  t.equal(untrustedText('plain text, “quoted”'), 'plain text, “quoted”')
  t.equal(untrustedText('\u001b[1;31mred\u001b[0m'), 'red')
  t.equal(untrustedText('a\u001b]8;;http://x\u001b\\link\u001b]8;;\u0007b'), 'alinkb')
  t.equal(untrustedText('a\tb\nc\u0000d\u007fe\u0085f\u2028g'), 'a b c d e f g')
  t.equal(untrustedText('\u202eabc\u2066'), 'abc')
  t.equal(untrustedText('x'.repeat(10), 8), 'xxxxx…')
  t.equal(untrustedText('x'.repeat(8), 8), 'x'.repeat(8))
  t.equal(untrustedText('\u001b'), '')
})
