import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { readdirSync, readFileSync, existsSync } from 'node:fs'
import { join } from 'node:path'
import { MessageKind, SUBPROTOCOL, encodeMessage, initDigests, type Message } from '@grainline/protocol'
import { Agent, MiB, TOKEN, TOKEN_B, diskOpen, extentMessage, hello, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen, type DiskPlan } from './helpers.ts'

async function statusOf(p: Promise<unknown>): Promise<number | string> {
  try {
    await p
    return 'connected'
  } catch (err) {
    return (err as { status?: number }).status ?? 'no status'
  }
}

t.test('bad input: typed errors, close codes, nothing written, receiver stays up', async (t) => {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env, { lockWaitMs: 200 })
  t.teardown(() => receiver.close())
  const img = Buffer.concat([pattern(MiB, 5), Buffer.alloc(MiB)])
  // a committed mirror to protect
  const a0 = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a0, 'web-01', 1, [seedPlan(0, 'web-01.vmdk', img, '00'.repeat(8))])
  a0.close()
  await a0.whenClosed()
  const flat = join(env.store, 'web-01', 'web-01-flat.vmdk')
  const snapshot = (): string => JSON.stringify(readdirSync(join(env.store, 'web-01')).sort()) + readFileSync(flat).toString('base64').length

  await t.test('authentication at upgrade', async (t) => {
    t.equal(await statusOf(Agent.connect(url, { ca: env.tls.ca })), 401, 'no token → 401')
    t.equal(await statusOf(Agent.connect(url, { token: 'wrong-token-0123456789', ca: env.tls.ca })), 401, 'wrong token → 401')
    t.equal(await statusOf(Agent.connect(url, { token: TOKEN.slice(0, -1), ca: env.tls.ca })), 401, 'prefix of a token → 401')
    t.equal(await statusOf(Agent.connect(url, { token: TOKEN, ca: env.tls.ca, protocol: 'grainline.v1' })), 400, 'an old or wrong subprotocol → 400')
    await t.rejects(Agent.connect(url.replace('wss:', 'ws:'), { token: TOKEN }), 'plain ws to a TLS listener fails')
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    t.equal(a.ws.protocol, SUBPROTOCOL)
    a.close()
    t.notOk(logs.text().includes(TOKEN) || logs.text().includes('wrong-token'), 'tokens never logged')
  })

  const cases: Array<{ name: string; code: string; close: number; script: (d: DiskPlan) => Array<Message | Uint8Array | string>; token?: string }> = []
  let caseVm = 'web-c0'
  const seedD = (name = 'web-02.vmdk'): DiskPlan => seedPlan(0, name, img, '11'.repeat(8))
  const pre = (d = seedD()): Message[] => [hello(), vmOpen(caseVm, 1, [d.name]), diskOpen(d, 1, caseVm)]
  cases.push({ name: 'forbidden VM (exists)', code: 'E_FORBIDDEN', close: 4403, token: TOKEN_B, script: () => [hello(), vmOpen('web-01', 2, [])] })
  cases.push({ name: 'forbidden VM (absent)', code: 'E_FORBIDDEN', close: 4403, token: TOKEN_B, script: () => [hello(), vmOpen('web-77', 1, [])] })
  cases.push({ name: 'VM name ..', code: 'E_BAD_NAME', close: 4400, script: () => [hello(), { ...vmOpen('x', 1, []), vm: '..' } as Message] })
  cases.push({ name: 'VM name with /', code: 'E_BAD_NAME', close: 4400, script: () => [hello(), { ...vmOpen('x', 1, []), vm: 'web-01/../db01' } as Message] })
  cases.push({ name: 'VM name with NUL', code: 'E_BAD_NAME', close: 4400, script: () => [hello(), { ...vmOpen('x', 1, []), vm: 'web-\u0000x' } as Message] })
  cases.push({ name: 'disk name with ..', code: 'E_BAD_NAME', close: 4400, script: (d) => [hello(), vmOpen(caseVm, 1, []), { ...diskOpen(d, 1, caseVm), name: '../evil.vmdk' } as Message] })
  cases.push({ name: 'disk name -flat', code: 'E_BAD_NAME', close: 4400, script: (d) => [hello(), vmOpen(caseVm, 1, []), { ...diskOpen(d, 1, caseVm), name: 'a-flat.vmdk' } as Message] })
  cases.push({ name: 'file name path', code: 'E_BAD_NAME', close: 4400, script: () => [hello(), { ...vmOpen(caseVm, 1, []), files: [{ name: '../x.vmx', data: new Uint8Array(1) }] } as Message] })
  cases.push({ name: 'text frame', code: 'E_MALFORMED', close: 1007, script: () => [hello(), 'hello'] })
  cases.push({ name: 'unknown kind', code: 'E_UNKNOWN_KIND', close: 1008, script: () => [hello(), Uint8Array.from([0x66, 0x80])] })
  cases.push({ name: 'garbage msgpack', code: 'E_MALFORMED', close: 1007, script: () => [hello(), Uint8Array.from([0x10, 0xc1, 0xff, 0x00])] })
  cases.push({ name: 'VmOpen before Hello', code: 'E_UNEXPECTED', close: 4004, script: () => [vmOpen(caseVm, 1, [])] })
  cases.push({ name: 'Extent before DiskOpen', code: 'E_UNEXPECTED', close: 4004, script: (d) => [hello(), vmOpen(caseVm, 1, []), extentMessage(d, 0, 'sha256')] })
  cases.push({ name: 'out-of-order seq', code: 'E_SEQUENCE', close: 4411, script: (d) => [...pre(), extentMessage(d, 1, 'sha256')] })
  cases.push({ name: 'repeated seq', code: 'E_SEQUENCE', close: 4411, script: (d) => [...pre(), extentMessage(d, 0, 'sha256'), extentMessage(d, 0, 'sha256')] })
  cases.push({ name: 'out-of-range extent', code: 'E_RANGE', close: 4412, script: (d) => [...pre(), { ...extentMessage(d, 0, 'sha256'), offset: 2 * MiB - 512 * 4 } as Message] })
  cases.push({ name: 'bad digest', code: 'E_BAD_DIGEST', close: 4410, script: (d) => [...pre(), { ...extentMessage(d, 0, 'sha256'), digest: new Uint8Array(32).fill(7) } as Message] })
  cases.push({
    name: 'corrupt deflate payload',
    code: 'E_DECOMPRESS',
    close: 4413,
    script: (d) => {
      const m = extentMessage(d, 0, 'sha256')
      return [hello('sha256', 'deflate'), ...pre().slice(1), { ...m, compression: 'deflate', data: pattern(4096, 3) } as Message]
    },
  })
  cases.push({
    name: 'data length ≠ length',
    code: 'E_SCHEMA',
    close: 1008,
    script: (d) => {
      const m = extentMessage(d, 0, 'sha256')
      return [...pre(), { ...m, data: m.data.subarray(0, 4096) } as Message]
    },
  })
  // SPEC §8.2: DiskEnd's extent count must be the extents sent, else the message is not legal
  cases.push({
    name: 'DiskEnd extent count ≠ extents sent',
    code: 'E_UNEXPECTED',
    close: 4004,
    script: (d) => [...pre(), extentMessage(d, 0, 'sha256'), { kind: MessageKind.DiskEnd, disk: 0, extents: 2, dataBytes: MiB, zeroBytes: MiB, digest: new Uint8Array(32) }],
  })
  cases.push({
    name: 'DiskEnd byte counts mismatch',
    code: 'E_END_MISMATCH',
    close: 4430,
    script: (d) => [...pre(), extentMessage(d, 0, 'sha256'), { kind: MessageKind.DiskEnd, disk: 0, extents: 1, dataBytes: MiB, zeroBytes: MiB, digest: new Uint8Array(32) }],
  })
  cases.push({
    name: 'DiskEnd cycle digest mismatch',
    code: 'E_END_MISMATCH',
    close: 4430,
    script: (d) => [...pre(), extentMessage(d, 0, 'sha256'), { kind: MessageKind.DiskEnd, disk: 0, extents: 1, dataBytes: MiB, zeroBytes: 0, digest: new Uint8Array(32) }],
  })
  cases.push({
    name: 'commit without DiskEnd',
    code: 'E_UNEXPECTED',
    close: 4004,
    script: (d) => [...pre(), extentMessage(d, 0, 'sha256'), { kind: MessageKind.Commit, vm: caseVm, cycle: 1, retention: null }],
  })
  cases.push({
    name: 'cycleId not the identity of the fields',
    code: 'E_SCHEMA',
    close: 1008,
    script: (d) => [hello(), vmOpen(caseVm, 1, []), { ...diskOpen(d, 1, caseVm), cycleId: 'ab'.repeat(32) } as Message],
  })
  cases.push({ name: 'cycleId of another VM', code: 'E_SCHEMA', close: 1008, script: (d) => [hello(), vmOpen(caseVm, 1, []), { ...diskOpen(d, 1, 'web-other') } as Message] })
  cases.push({ name: 'capacity not a sector multiple', code: 'E_SCHEMA', close: 1008, script: (d) => [hello(), vmOpen(caseVm, 1, []), { ...diskOpen(d, 1, caseVm), capacity: 1000 } as Message] })

  let caseNo = 0
  for (const c of cases) {
    caseVm = `web-c${++caseNo}`
    await t.test(c.name, async (t) => {
      const before = snapshot()
      const a = await Agent.connect(url, { token: c.token ?? TOKEN, ca: env.tls.ca })
      for (const m of c.script(seedD())) {
        if (typeof m === 'string') a.ws.send(m)
        else if (m instanceof Uint8Array) a.sendRaw(m)
        else {
          let frame: Uint8Array
          try {
            frame = encodeMessage(m)
          } catch {
            // the codec refuses to build it: hand-encode so the receiver sees the bad field
            const { Packr } = await import('msgpackr')
            const { kind, ...fields } = m as unknown as Record<string, unknown>
            const body = new Packr({ useRecords: false }).pack(fields)
            frame = Buffer.concat([Buffer.from([kind as number]), body])
          }
          a.sendRaw(frame)
        }
      }
      const r = await a.expectError()
      t.equal(r.code, c.code, 'error code')
      t.equal(r.closeCode, c.close, 'close code')
      t.equal(snapshot(), before, 'committed mirror untouched')
      t.notOk(existsSync(join(env.store, caseVm, 'web-02-flat.vmdk')), 'no mirror flat created')
      t.notOk(existsSync(join(env.store, '..', 'evil.vmdk')) || existsSync(join(env.store, 'evil.vmdk')) || existsSync(join(env.dir, 'x.vmx')), 'nothing outside')
    })
  }

  await t.test('forbidden answers do not reveal whether a mirror exists', async (t) => {
    const msgs: string[] = []
    for (const vm of ['web-01', 'web-77']) {
      const a = await Agent.connect(url, { token: TOKEN_B, ca: env.tls.ca })
      a.send(hello())
      await a.expect(MessageKind.Welcome)
      a.send(vmOpen(vm, 2, []))
      const e = await a.expect(MessageKind.Error)
      msgs.push(`${e.code}:${e.message}`)
      await a.whenClosed()
    }
    t.equal(msgs[0], msgs[1])
  })

  await t.test('oversized frame closes 1009', async (t) => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    a.send(hello())
    await a.expect(MessageKind.Welcome)
    a.sendRaw(Buffer.alloc(16 * MiB + 65536 + 10, 0x20))
    const c = await a.whenClosed()
    t.equal(c.code, 1009)
  })

  await t.test('one writer per VM: E_BUSY while another session holds it; others unaffected', async (t) => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    a.send(hello())
    await a.expect(MessageKind.Welcome)
    a.send(vmOpen('web-01', 2, ['web-01-000001.vmdk']))
    await a.expect(MessageKind.VmState)
    const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    b.send(hello())
    await b.expect(MessageKind.Welcome)
    b.send(vmOpen('web-01', 2, ['web-01-000001.vmdk']))
    const r = await b.expectError()
    t.same(r, { code: 'E_BUSY', closeCode: 4429 })
    // another VM proceeds meanwhile
    const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const res = await runCycle(c, 'db01', 1, [seedPlan(0, 'db01.vmdk', img, '22'.repeat(8))])
    t.equal(res.committed?.cycle, 1)
    c.close()
    a.close()
    await a.whenClosed()
  })

  await t.test('receiver still serves after all of that', async (t) => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const res = await runCycle(a, 'web-02', 1, [seedPlan(0, 'web-02.vmdk', img, '33'.repeat(8))])
    t.equal(res.committed?.cycle, 1)
    t.ok(readFileSync(join(env.store, 'web-02', 'web-02-flat.vmdk')).equals(img))
    a.close()
  })
})
