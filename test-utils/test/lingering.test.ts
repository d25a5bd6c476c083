// failIfLingering: a test process whose tests ended but that a socket keeps
// alive names the socket (with its ports) and exits 1 after the grace time;
// a process that ends by itself exits 0 at once, the unreferenced timer unseen.
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import { describeHandle, lingeringHandles, repoRoot } from '../src/index.ts'

/** A process that registers failIfLingering on a fake root test, runs its teardown, and maybe leaves a server open. */
async function run(leaveServer: boolean): Promise<{ code: number | null; stderr: string; ms: number }> {
  const index = join(repoRoot, 'test-utils/dist/src/index.js')
  const script = `
    import { createServer } from 'node:net'
    import { failIfLingering } from ${JSON.stringify(index)}
    const teardowns = []
    failIfLingering({ teardown: (fn) => teardowns.push(fn) }, 300)
    ${leaveServer ? "createServer().listen(0, '127.0.0.1')" : ''}
    for (const fn of teardowns) fn()
  `
  const t0 = performance.now()
  const proc = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  proc.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d
  })
  const [code] = (await once(proc, 'close')) as [number | null]
  return { code, stderr, ms: performance.now() - t0 }
}

t.test('a process kept alive after its tests names what keeps it and exits 1', async (t) => {
  const r = await run(true)
  t.equal(r.code, 1)
  t.match(r.stderr, /the tests ended 300 ms ago but this process did not exit: 1 handle\(s\) keep it alive/)
  t.match(r.stderr, /Server listening=127\.0\.0\.1:\d+ fd=\d+/, 'the listening server is named, with its address')
})

t.test('a process that ends by itself exits 0 and says nothing', async (t) => {
  const r = await run(false)
  t.equal(r.code, 0)
  t.equal(r.stderr, '')
})

t.test('describeHandle: a connected socket with its ports; anything else by its kind', async (t) => {
  const { createServer, connect } = await import('node:net')
  const srv = createServer((s) => s.end())
  await once(srv.listen(0, '127.0.0.1'), 'listening')
  const port = (srv.address() as { port: number }).port
  const c = connect(port, '127.0.0.1')
  await once(c, 'connect')
  t.match(describeHandle(c), new RegExp(`^Socket local=127\\.0\\.0\\.1:\\d+ remote=127\\.0\\.0\\.1:${port} fd=\\d+ destroyed=false`))
  t.ok(
    lingeringHandles().some((h) => h.includes(`remote=127.0.0.1:${port}`)),
    'listed while open',
  )
  c.destroy()
  srv.close()
  t.equal(describeHandle(null), 'null')
  t.equal(describeHandle(7), '7')
  const timer = setTimeout(() => {}, 1000)
  t.match(describeHandle(timer), /^Timeout .*ms=1000/)
  clearTimeout(timer)
})
