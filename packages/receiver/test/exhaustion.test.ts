import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { once } from 'node:events'
import { connect as tcpConnect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import { existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { MessageKind } from '@grainline/protocol'
import { SessionDeadlines, type Clock } from '../src/session-deadlines.ts'
import { Agent, MiB, TOKEN, TOKEN_B, hello, makeEnv, openVmOnly, pattern, runCycle, seedPlan, startReceiver, vmOpen, type Env, type LogLine } from './helpers.ts'

/*
 * Connection exhaustion: sockets that send nothing were never closed nor
 * counted, a token could take every session slot by never sending Hello, and
 * a session could hold a VM lock forever after VmOpen. Now sockets are
 * capped before TLS, the TLS handshake, the upgrade and Hello have
 * deadlines, an idle session is ended (releasing its lock), each token has a
 * session cap, and every refusal is logged, one line per reason per window.
 */

/** Turn a hang into a failure (a watchdog: the success path does not depend on it). */
async function noHang<T>(p: Promise<T>, what: string, ms = 60_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const hang = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} hung`)), ms)
  })
  try {
    return await Promise.race([p, hang])
  } finally {
    clearTimeout(timer)
  }
}

function tokensWithCap(env: Env): string {
  const file = join(env.dir, 'tokens-cap.json')
  writeFileSync(
    file,
    JSON.stringify({
      tokens: [
        { name: 'proxy-a', token: TOKEN, vms: ['vm*'], maxSessions: 2 },
        { name: 'proxy-b', token: TOKEN_B, vms: ['other-*'] },
      ],
    }),
  )
  return file
}

const refusals = (lines: LogLine[], reason: string): LogLine[] => lines.filter((l) => l['msg'] === 'connection refused' && l['reason'] === reason)

t.test('idle sockets are capped and closed; an agent gets through afterwards', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env, { maxSockets: 8, handshakeTimeoutMs: 300, upgradeTimeoutMs: 300 })
  t.teardown(() => receiver.close())
  const port = Number(new URL(url).port)
  // 40 raw TCP sockets that never start TLS, 4 that finish TLS and never send the upgrade request
  const raw: Socket[] = []
  for (let i = 0; i < 40; i++) raw.push(tcpConnect(port, '127.0.0.1'))
  const quiet = await Promise.all(
    Array.from({ length: 4 }, async () => {
      const s = tlsConnect({ port, host: '127.0.0.1', ca: env.tls.ca, servername: 'localhost' })
      await once(s, 'secureConnect').catch(() => {})
      return s
    }),
  )
  for (const s of [...raw, ...quiet]) s.on('error', () => {})
  await noHang(Promise.all([...raw, ...quiet].map((s) => (s.closed ? Promise.resolve() : once(s, 'close')))), 'closing the idle sockets')
  t.pass('the receiver closed every idle socket')
  t.ok(refusals(logs.lines, 'socket-cap').length >= 1, 'sockets above the cap were dropped, and logged')
  t.ok(refusals(logs.lines, 'tls-handshake-timeout').length >= 1, 'silent TLS handshakes timed out, and were logged')
  for (const reason of ['socket-cap', 'tls-handshake-timeout']) {
    t.equal(refusals(logs.lines, reason).length, 1, `${reason}: one line for the whole flood (rate-limited)`)
  }
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(a, 'vm-x', 1, [seedPlan(0, 'vm-x.vmdk', pattern(MiB, 1), '01'.repeat(8))])
  a.close()
  t.equal(r.committed?.cycle, 1, 'a legitimate agent still gets through')
})

t.test('a TLS connection that never sends its upgrade request is closed', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env, { upgradeTimeoutMs: 200 })
  t.teardown(() => receiver.close())
  const s = tlsConnect({ port: Number(new URL(url).port), host: '127.0.0.1', ca: env.tls.ca, servername: 'localhost' })
  s.on('error', () => {})
  await once(s, 'secureConnect')
  await noHang(once(s, 'close'), 'the silent TLS connection')
  t.equal(refusals(logs.lines, 'upgrade-timeout').length, 1)
})

t.test('no Hello in time: E_TIMEOUT; a token at its session cap cannot block another token', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver({ ...env, tokensFile: tokensWithCap(env) }, { helloTimeoutMs: 60_000 })
  t.teardown(() => receiver.close())
  const silent = [await Agent.connect(url, { token: TOKEN, ca: env.tls.ca }), await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })]
  const third = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca }).then(
    () => 'connected',
    (e: { status?: number }) => e.status,
  )
  t.equal(third, 503, "a third session of proxy-a's token (maxSessions 2) is refused before the upgrade")
  t.equal(refusals(logs.lines, 'token-session-cap').length, 1, 'and logged')
  const b = await Agent.connect(url, { token: TOKEN_B, ca: env.tls.ca })
  const r = await runCycle(b, 'other-1', 1, [seedPlan(0, 'other-1.vmdk', pattern(MiB, 2), '02'.repeat(8))])
  b.close()
  t.equal(r.committed?.cycle, 1, 'another token is not blocked')
  for (const s of silent) s.close()
  await Promise.all(silent.map((s) => s.whenClosed()))
})

t.test('Hello deadline', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env, { helloTimeoutMs: 200 })
  t.teardown(() => receiver.close())
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  t.same(await noHang(a.expectError(), 'a session without Hello'), { code: 'E_TIMEOUT', closeCode: 4408 })
  t.equal(refusals(logs.lines, 'hello-timeout').length, 1, 'logged')
})

t.test('an idle session after VmOpen is ended and its VM lock released', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env, { idleTimeoutMs: 300, lockWaitMs: 100 })
  t.teardown(() => receiver.close())
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  a.send(hello())
  await a.expect(MessageKind.Welcome)
  a.send(vmOpen('vm-i', 1, []))
  await a.expect(MessageKind.VmState)
  t.same(await noHang(a.expectError(), 'an idle session'), { code: 'E_TIMEOUT', closeCode: 4408 })
  t.match(refusals(logs.lines, 'idle-timeout')[0], { vm: 'vm-i' }, 'logged with the VM')
  // (Hello and VmOpen sent back to back: this receiver's 300 ms idle timeout must not depend on the test's speed)
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  b.send(hello())
  b.send(vmOpen('vm-i', 1, []))
  await b.expect(MessageKind.Welcome)
  t.equal((await b.expect(MessageKind.VmState)).vm, 'vm-i', 'the VM is free again')
  b.close()
  await b.whenClosed()
})

t.test('VMs per token: a VmOpen of one VM more than maxVms is E_QUOTA before its folder exists; its VMs and other tokens go on', async (t) => {
  const env = makeEnv(scratchDir(t))
  const file = join(env.dir, 'tokens-vms.json')
  writeFileSync(
    file,
    JSON.stringify({
      tokens: [
        { name: 'proxy-a', token: TOKEN, vms: ['vm*'], maxVms: 3 },
        { name: 'proxy-b', token: TOKEN_B, vms: ['other-*'] },
      ],
    }),
  )
  const { receiver, url } = await startReceiver(env, { tokensFile: file })
  t.teardown(() => receiver.close())
  // a folder of another token's VM, a file, a link and a folder grainline did not make (lost+found of a file system's root) count for nobody
  mkdirSync(join(env.store, 'other-1', '.grainline'), { recursive: true })
  writeFileSync(join(env.store, 'vm-file'), 'not a VM')
  symlinkSync(env.dir, join(env.store, 'vm-link'))
  mkdirSync(join(env.store, 'vm+found'))
  mkdirSync(join(env.store, 'vm-bare'))
  const open = (token: string, vm: string): Promise<string> => openVmOnly(url, token, env.tls.ca, vm)
  for (const vm of ['vm-1', 'vm-2', 'vm-3']) t.equal(await open(TOKEN, vm), 'ok', `${vm} created`)
  const refused = await open(TOKEN, 'vm-4')
  t.match(refused, /^E_QUOTA: token proxy-a keeps 3 VMs in this store, its limit \(maxVms 3\)/, 'a fourth VM: E_QUOTA naming the token and what to do')
  t.notOk(existsSync(join(env.store, 'vm-4')), 'and nothing of it was created')
  t.match(await open(TOKEN, 'vm-bare'), /^E_QUOTA: /, 'a folder without .grainline (a VmOpen that died between its two mkdirs) is counted as a new VM: E_QUOTA')
  t.notOk(existsSync(join(env.store, 'vm-bare', '.grainline')), 'and not made a VM')
  t.equal(await open(TOKEN, 'vm-2'), 'ok', 'a VM the token keeps still opens')
  t.equal(await open(TOKEN_B, 'other-2'), 'ok', "another token's VMs are not counted against it")
  rmSync(join(env.store, 'vm-3'), { recursive: true })
  t.equal(await open(TOKEN, 'vm-4'), 'ok', 'a removed mirror frees its place')
})

t.test('deadlines, by a hand-driven clock: pings and busy steps are not silence', async (t) => {
  let now = 0
  let pending: { fn: () => void; at: number } | undefined
  const clock: Clock = {
    now: () => now,
    setTimeout: (fn, ms) => {
      pending = { fn, at: now + ms }
      return {}
    },
    clearTimeout: () => {
      pending = undefined
    },
  }
  const advance = (ms: number): void => {
    now += ms
    while (pending !== undefined && pending.at <= now) {
      const p = pending
      pending = undefined
      p.fn()
    }
  }
  let busy = false
  const timeouts: string[] = []
  const d = new SessionDeadlines({ helloMs: 10_000, idleMs: 300_000, busy: () => busy, onTimeout: (r) => timeouts.push(r), clock })
  advance(9_999)
  d.hello()
  for (let i = 0; i < 20; i++) {
    advance(30_000)
    d.activity() // the agent's ping every 30 s
  }
  t.same(timeouts, [], '10 minutes of pings: not idle')
  busy = true
  advance(900_000)
  t.same(timeouts, [], 'a 15-minute step (a certify) is not silence')
  busy = false
  d.activity() // the step ended
  advance(299_999)
  t.same(timeouts, [], 'not yet')
  advance(300_000)
  t.same(timeouts, ['idle-timeout'], 'then idle')
  const h = new SessionDeadlines({ helloMs: 10_000, idleMs: 300_000, busy: () => false, onTimeout: (r) => timeouts.push(r), clock })
  advance(10_000)
  t.same(timeouts, ['idle-timeout', 'hello-timeout'], 'no Hello in 10 s')
  h.stop()
})
