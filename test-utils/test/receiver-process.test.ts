// The receiver process starter against the real receiver (main.js of
// @grainline/receiver, resolved by package name): TLS with the fixture
// certificate, stop / kill9 / restart on the same port, a start failure
// reported with the receiver's own words, and no orphan when the test
// process dies without running any exit hook.
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { realpathSync } from 'node:fs'
import { join } from 'node:path'
import { connect as tlsConnect } from 'node:tls'
import { createInterface } from 'node:readline'
import { pollUntil, receiverMain, repoRoot, scratchDir, startReceiverProcess, tlsFixture, tokensFixture } from '../src/index.ts'

/** A TLS handshake with the receiver, checked against the fixture's CA. */
async function handshake(port: number): Promise<boolean> {
  const s = tlsConnect({ host: '127.0.0.1', port, ca: tlsFixture().ca, servername: 'localhost' })
  try {
    await once(s, 'secureConnect')
    return s.authorized
  } finally {
    s.destroy()
  }
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

t.test('receiverMain() is main.js of the receiver workspace, found by package name', async (t) => {
  t.equal(realpathSync(receiverMain()), realpathSync(join(repoRoot, 'packages/receiver/dist/src/main.js')))
})

t.test('start over TLS, stop gracefully, restart on the same port, kill -9', async (t) => {
  const dir = scratchDir(t)
  const tls = tlsFixture()
  t.equal(tlsFixture(), tls, 'one certificate per process')
  const rx = await startReceiverProcess({ store: join(dir, 'store'), tokens: tokensFixture(dir).file, tls })
  t.teardown(() => rx.kill9())
  t.match(rx.url, /^wss:\/\/127\.0\.0\.1:\d+$/)
  t.ok(rx.port > 0)
  t.equal(await handshake(rx.port), true, 'the fixture CA verifies the receiver certificate')
  const st = await rx.stop()
  t.same(st, { code: 0, signal: null }, 'SIGTERM: a clean exit')
  t.ok(await rx.waitForLine((_l, j) => j?.['msg'] === 'shutting down'), 'its log lines were collected')
  t.match(rx.stderr(), /shutting down/)

  const again = await rx.restart()
  t.teardown(() => again.kill9())
  t.equal(again.port, rx.port, 'restarted on the same port')
  t.equal(await handshake(again.port), true)
  const killed = await again.kill9()
  t.same(killed, { code: null, signal: 'SIGKILL' })
  t.same(await again.stop(), killed, 'stopping an exited receiver only reports its exit')
})

t.test('a receiver that cannot start: the promise rejects with its output', async (t) => {
  const dir = scratchDir(t)
  await t.rejects(
    startReceiverProcess({ store: join(dir, 'store'), tokens: join(dir, 'no-such-tokens.json'), tls: tlsFixture() }),
    /receiver exited \(\{"code":2,"signal":null\}\) before the awaited line[\s\S]*no-such-tokens/,
  )
})

t.test('env and args reach the receiver; ws:// without TLS', async (t) => {
  const dir = scratchDir(t)
  const rx = await startReceiverProcess({ store: join(dir, 'store'), tokens: tokensFixture(dir).file, args: ['--insecure', '--log-level', 'debug'], env: { GRAINLINE_RECEIVER_FAULT: undefined } })
  t.teardown(() => rx.kill9())
  t.match(rx.url, /^ws:\/\//)
  await rx.stop()
})

t.test('the receiver dies with a test process killed by SIGKILL (no exit hook runs)', async (t) => {
  const dir = scratchDir(t)
  const index = join(repoRoot, 'test-utils/dist/src/index.js')
  const script = `
    import { startReceiverProcess, tlsFixture, tokensFixture } from ${JSON.stringify(index)}
    const rx = await startReceiverProcess({ store: ${JSON.stringify(join(dir, 'store'))}, tokens: tokensFixture(${JSON.stringify(dir)}).file, tls: tlsFixture() })
    process.stdout.write(String(rx.proc.pid) + '\\n')
    setInterval(() => {}, 1000)
  `
  const parent = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  const [line] = (await once(createInterface({ input: parent.stdout }), 'line')) as [string]
  const pid = Number(line)
  t.ok(alive(pid), `the receiver ${pid} runs`)
  parent.kill('SIGKILL')
  await once(parent, 'exit')
  // no event reaches us from a process that is not our child: poll its pid
  await pollUntil(() => (alive(pid) ? undefined : true))
  t.notOk(alive(pid), 'the receiver exited when its stdin closed')
})
