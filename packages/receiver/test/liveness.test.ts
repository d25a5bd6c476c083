import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { once } from 'node:events'
import WebSocket from 'ws'
import { MessageKind, SUBPROTOCOL, type Message } from '@grainline/protocol'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { storeStatus } from '../src/index.ts'
import { Agent, MiB, TOKEN, evolve, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen } from './helpers.ts'

t.test('a peer that stops answering pings is terminated; one that answers stays', async (t) => {
  const env = makeEnv(scratchDir(t))
  // (a ping interval long enough for a loaded machine to answer in time)
  const { receiver, url } = await startReceiver(env, { pingIntervalMs: 1000 })
  t.teardown(() => receiver.close())
  const live = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const mute = new WebSocket(url, SUBPROTOCOL, { headers: { Authorization: `Bearer ${TOKEN}` }, ca: env.tls.ca, autoPong: false })
  await once(mute, 'open')
  const [code] = (await once(mute, 'close')) as [number]
  t.equal(code, 1006, 'terminated without a close frame')
  t.equal(live.closed, undefined, 'the answering peer is still connected')
  // the terminated session's clean-up is asynchronous: look again until it has run
  while (receiver.sessions !== 1) await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(receiver.sessions, 1, 'its session was released')
  live.close()
  await live.whenClosed()
})

t.test('a peer whose pongs are late but whose bytes keep arriving is alive (a slow uplink); once it sends nothing, it is terminated', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { pingIntervalMs: 300 })
  t.teardown(() => receiver.close())
  // never answers a ping (as an agent whose pong waits behind its queued frames), but keeps sending
  const busy = new WebSocket(url, SUBPROTOCOL, { headers: { Authorization: `Bearer ${TOKEN}` }, ca: env.tls.ca, autoPong: false })
  await once(busy, 'open')
  let closedAt = 0
  busy.once('close', () => {
    closedAt = performance.now()
  })
  const sending = setInterval(() => busy.ping(), 100)
  await new Promise((resolve) => setTimeout(resolve, 1500))
  t.equal(closedAt, 0, 'five ping intervals without a pong, bytes arriving: still connected')
  clearInterval(sending)
  const stopped = performance.now()
  while (closedAt === 0) await new Promise((resolve) => setTimeout(resolve, 20))
  t.ok(closedAt - stopped < 1500, `silent and mute: terminated ${Math.round(closedAt - stopped)} ms after its last bytes`)
})

t.test('maxConnections: one more gets 503 before the upgrade', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { maxConnections: 1 })
  t.teardown(() => receiver.close())
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const err = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca }).then(
    () => 'connected',
    (e: { status?: number }) => e.status,
  )
  t.equal(err, 503)
  a.close()
})

t.test('abort() terminates every connection at once; VmState reports compatibility', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  const img = pattern(MiB, 8)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'vm-c', 1, [seedPlan(0, 'vm-c.vmdk', img, 'c1'.repeat(8))])
  a.close()
  await a.whenClosed()
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  b.send(hello())
  await b.expect(MessageKind.Welcome)
  const open = vmOpen('vm-c', 2, ['vm-c-000001.vmdk']) as Extract<Message, { kind: typeof MessageKind.VmOpen }>
  b.send({ ...open, compat: { ...open.compat, hwVersion: 19 } })
  const vs = await b.expect(MessageKind.VmState)
  t.same({ exists: vs.exists, committedCycle: vs.committedCycle, compatible: vs.compatible }, { exists: true, committedCycle: 1, compatible: false })
  receiver.abort()
  const c = await b.whenClosed()
  t.equal(c.code, 1006, 'terminated')
})

t.test('policy: an interrupted cycle older than abandonAfterMs is rolled back at start-up', async (t) => {
  const env = makeEnv(scratchDir(t))
  const imgA = pattern(2 * MiB, 1)
  const ranges = [{ offset: 0, length: 2 * MiB }]
  const imgB = evolve(imgA, 2, ranges)
  const first = await startReceiver(env, { batchBytes: 256 * 1024 })
  const a = await Agent.connect(first.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'vm-p', 1, [seedPlan(0, 'vm-p.vmdk', imgA, 'a1'.repeat(8))])
  a.close()
  const b = await Agent.connect(first.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(b, 'vm-p', 2, [incPlan(0, 'vm-p.vmdk', imgB, 1, 'b2'.repeat(8), ranges, 'vm-p-000001.vmdk', 'vm-p-000002.vmdk', 256 * 1024)], { stopAfter: 5 })
  for (;;) {
    const m = await b.next()
    if (m?.kind === MessageKind.ExtentAck && m.seq >= 3) break
    if (m === undefined) throw new Error('closed early')
  }
  await first.receiver.close()
  t.equal((await storeStatus(env.store)).vms[0]?.inflightCycle, 2, 'left in flight')
  t.notOk(readFileSync(join(env.store, 'vm-p', 'vm-p-flat.vmdk')).equals(imgA), 'flat partly overwritten in place')
  // a receiver without the policy keeps it for resume
  const keep = await startReceiver(env)
  await keep.receiver.close()
  t.equal((await storeStatus(env.store)).vms[0]?.inflightCycle, 2, 'kept by default')
  // with the policy it is rolled back
  const second = await startReceiver(env, { abandonAfterMs: 0 })
  t.teardown(() => second.receiver.close())
  t.ok(
    second.logs.lines.some((l) => l['msg'] === 'abandoned cycle rolled back'),
    'logged',
  )
  t.equal((await storeStatus(env.store)).vms[0]?.inflightCycle, 0)
  t.ok(readFileSync(join(env.store, 'vm-p', 'vm-p-flat.vmdk')).equals(imgA), 'mirror == committed image')
})
