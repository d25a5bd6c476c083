import t from 'tap'
import type { Test } from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { WebSocket } from 'ws'
import { cycleIdentity, digestOf, initDigests, MessageKind, type DiskOpenMessage } from '@grainline/protocol'
import { Agent, MiB, TOKEN, makeEnv, runCycle, source, startReceiver, type DiskPlan, type Env } from './helpers.ts'
import { ALG, LEN, open } from './resync-helpers.ts'
import { OUTBOUND_HIGH_WATER } from '../src/outbound-room.ts'

/*
 * A peer with a valid token that asks and never reads (SPEC §5.9 block maps):
 * the receiver answers only while at most OUTBOUND_HIGH_WATER bytes of its
 * messages wait in the socket, then stops taking requests (its inbox fills
 * and pauses the socket) — instead of reading its mirror and queueing
 * answers in memory as fast as its disks go. Nothing is lost: once the peer
 * reads, every answer comes, in order, and the map is right. A peer that
 * never reads is ended after the idle timeout (E_TIMEOUT).
 */

const VM = 'vm-h'
const NAME = 'vm-h.vmdk'
/**
 * 4 KiB blocks of an 8 GiB sparse disk: 2,097,152 blocks, 64 MiB of sha256
 * map — more than the limit plus what the kernel's socket buffers can take
 * on loopback (this machine's tcp_rmem allows 32 MiB), so a receiver without
 * the bound answers far past it
 */
const BS = 4096
const CAPACITY = 8 * 1024 * MiB
const BLOCKS = CAPACITY / BS
/** blocks per request: 512 KiB of digests, inside the 1 MiB frames negotiated below */
const PER = 16384
const REQUESTS = BLOCKS / PER
const FRAME = MiB

/** Seed a sparse 8 GiB disk: one data-less zero extent (the rest is a hole, as a fresh mirror). */
async function seeded(t: Test, extra: Parameters<typeof startReceiver>[1] = {}): Promise<{ env: Env; rx: Awaited<ReturnType<typeof startReceiver>> }> {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const rx = await startReceiver(env, extra)
  t.teardown(() => rx.receiver.close())
  const plan: DiskPlan = {
    handle: 0,
    name: NAME,
    capacity: CAPACITY,
    mode: 'seed',
    baseCycle: 0,
    source: source([NAME], 'vm-h-000001.vmdk'),
    cycleId: '01'.repeat(8),
    image: Buffer.alloc(0),
    extents: [{ offset: 0, length: MiB, zero: true }],
  }
  const a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, VM, 1, [plan], { alg: ALG })
  a.close()
  await a.whenClosed()
  return { env, rx }
}

function resyncOpen(cycle: number): DiskOpenMessage {
  const src = source([NAME], 'vm-h-000001.vmdk')
  const f = { vm: VM, name: NAME, cycle, mode: 'resync' as const, baseCycle: 0, baseGeneration: '', source: src, blockSize: BS }
  const { vm: _vm, ...fields } = f
  return { kind: MessageKind.DiskOpen, disk: 0, ...fields, capacity: CAPACITY, cycleId: cycleIdentity(f), ddb: {}, totalBytes: CAPACITY, totalExtents: 0 }
}

/**
 * Count the BlockMap frames the receiver sends, and how many bytes already
 * waited in its socket when each was sent (in-process: ws's own send).
 */
function watchAnswers(t: Test): { sent: () => number; mostWaiting: () => number } {
  const proto = WebSocket.prototype as unknown as { send: (this: WebSocket, data: unknown, ...rest: unknown[]) => void }
  const original = proto.send
  let sent = 0
  let most = 0
  proto.send = function (this: WebSocket, data: unknown, ...rest: unknown[]) {
    if (data instanceof Uint8Array && data[0] === MessageKind.BlockMap) {
      sent++
      most = Math.max(most, this.bufferedAmount)
    }
    original.call(this, data, ...rest)
  }
  t.teardown(() => {
    proto.send = original
  })
  return { sent: () => sent, mostWaiting: () => most }
}

const WAITING = 'the agent is not reading our answers: the next request waits'

/**
 * Ask for the whole map like an agent (at most 4 requests unanswered, SPEC
 * §5.9: the next when an answer has gone out) while reading nothing, until
 * the receiver says it waits for us to read, or every request was answered.
 */
async function askWithoutReading(a: Agent, rx: Awaited<ReturnType<typeof startReceiver>>, watch: ReturnType<typeof watchAnswers>): Promise<number> {
  let asked = 0
  const waits = (): boolean => rx.logs.lines.some((l) => l.msg === WAITING)
  const deadline = Date.now() + 120_000
  while (!waits() && watch.sent() < REQUESTS && Date.now() < deadline) {
    while (asked < REQUESTS && asked - watch.sent() < 4) {
      a.send({ kind: MessageKind.BlockMapRequest, disk: 0, first: asked * PER, count: PER })
      asked++
    }
    await new Promise((r) => setTimeout(r, 10))
  }
  return asked
}

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) return false
    await new Promise((r) => setTimeout(r, 20))
  }
  return true
}

t.test('a peer that asks for block maps and reads nothing gets no more answers than the socket may hold; nothing is lost once it reads', async (t) => {
  const { env, rx } = await seeded(t)
  const watch = watchAnswers(t)
  const a = await open(env, rx.url, 2, { maxMessageBytes: FRAME, vm: VM })
  a.send(resyncOpen(2))
  t.match(await a.expect(MessageKind.DiskState), { accepted: true })
  // from here the peer reads nothing (ws.pause: ws's own socket reads stop, and stay stopped)
  a.ws.pause()
  let asked = await askWithoutReading(a, rx, watch)
  t.ok(
    rx.logs.lines.some((l) => l.msg === WAITING),
    'the receiver stopped taking requests while the peer read nothing, and said why',
  )
  // a moment more: nothing else is answered while the peer still reads nothing
  const answeredWhilePaused = watch.sent()
  await new Promise((r) => setTimeout(r, 500))
  t.equal(watch.sent(), answeredWhilePaused, 'no further answer while it waits')
  t.ok(answeredWhilePaused < REQUESTS / 2, `${answeredWhilePaused} of ${REQUESTS} requests answered while the peer read nothing`)
  const limit = OUTBOUND_HIGH_WATER
  t.ok(watch.mostWaiting() <= limit, `at most ${watch.mostWaiting()} bytes already waited in the socket when an answer was sent (limit ${limit})`)

  // the peer reads again: every answer comes, in order, and the map is the sparse mirror's
  a.ws.resume()
  const zero = Buffer.from(digestOf(ALG, Buffer.alloc(BS)))
  let got = 0
  let wrong = 0
  for (let i = 0; i < REQUESTS; i++) {
    if (asked < REQUESTS && asked - i < 4) {
      a.send({ kind: MessageKind.BlockMapRequest, disk: 0, first: asked * PER, count: PER })
      asked++
    }
    const m = await a.expect(MessageKind.BlockMap)
    if (m.first !== i * PER || m.digests.length !== PER * LEN) wrong++
    for (let b = 0; b < PER; b += 4093) if (!Buffer.from(m.digests.subarray(b * LEN, (b + 1) * LEN)).equals(zero)) wrong++
    got++
  }
  t.equal(got, REQUESTS, 'every request answered once the peer reads')
  t.equal(wrong, 0, 'each answer in order, of the right size, the digests of the sparse mirror')
  a.close()
  await a.whenClosed()
})

t.test('a peer that never reads is ended after the idle timeout (E_TIMEOUT)', async (t) => {
  const { env, rx } = await seeded(t, { idleTimeoutMs: 2000 })
  const watch = watchAnswers(t)
  const a = await open(env, rx.url, 2, { maxMessageBytes: FRAME, vm: VM })
  a.send(resyncOpen(2))
  await a.expect(MessageKind.DiskState)
  a.ws.pause()
  await askWithoutReading(a, rx, watch)
  const ended = await until(() => rx.logs.lines.some((l) => l.msg === 'the agent read none of our answers: session ended'), 20_000)
  t.ok(ended, 'the session ended: the agent read none of its answers for the idle timeout')
  t.ok(
    rx.logs.lines.some((l) => l.msg === 'connection refused' && l.reason === 'unread-answers'),
    'counted as a refusal (unread-answers)',
  )
  // terminated, not closed: the close handshake would wait 30 s behind the unread bytes
  t.ok(await until(() => rx.receiver.sessions === 0, 5_000), 'no session is left, at once')
  a.terminate()
})
