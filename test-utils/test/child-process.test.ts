// reportOnTimeout: when tap announces a timeout (its `tapAbort` IPC message),
// a test process writes what its children still running were doing, so a CI
// log names what a hung test waited on; a test process that gets no such
// message exits as before (the IPC channel does not keep it alive).
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import { lastLines, repoRoot } from '../src/index.ts'

/** A test process (node with an IPC channel, as tap spawns it) that starts a child which prints and then sleeps. */
function testProcess(): { proc: ReturnType<typeof spawn>; stderr: () => string; ready: Promise<void> } {
  const index = join(repoRoot, 'test-utils/dist/src/index.js')
  const script = `
    import { spawn } from 'node:child_process'
    import { reportOnTimeout, killOnExit } from ${JSON.stringify(index)}
    const child = killOnExit(spawn('sh', ['-c', 'echo waiting for the thing; exec sleep 30'], { stdio: ['ignore', 'pipe', 'ignore'] }))
    let out = ''
    child.stdout.setEncoding('utf8').on('data', (d) => { out += d; if (out.includes('thing')) process.stdout.write('ready\\n') })
    reportOnTimeout(child, () => 'its output: ' + out.trim())
    setTimeout(() => { child.kill('SIGKILL'); process.exit(0) }, 4000)
  `
  const proc = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] })
  let stderr = ''
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => {
    stderr += d
  })
  const ready = new Promise<void>((resolve) => {
    proc.stdout?.setEncoding('utf8').on('data', (d: string) => {
      if (d.includes('ready')) resolve()
    })
  })
  return { proc, stderr: () => stderr, ready }
}

t.test('a tap timeout message makes the test process name its children still running and their output', async (t) => {
  const { proc, stderr, ready } = testProcess()
  await ready
  proc.send({ tapAbort: 'timeout', key: 'k', child: 'c' })
  const [code] = (await once(proc, 'exit')) as [number | null]
  t.equal(code, 0)
  t.match(stderr(), /still running at the timeout: pid \d+ sh -c echo waiting for the thing; exec sleep 30/)
  t.match(stderr(), /its output: waiting for the thing/)
})

t.test('without the message nothing is written', async (t) => {
  const { proc, stderr, ready } = testProcess()
  await ready
  proc.send({ tapAbort: 'something else' })
  const [code] = (await once(proc, 'exit')) as [number | null]
  t.equal(code, 0)
  t.equal(stderr(), '')
})

t.test('the IPC channel does not keep a test process alive', async (t) => {
  const index = join(repoRoot, 'test-utils/dist/src/index.js')
  const script = `
    import { spawn } from 'node:child_process'
    import { reportOnTimeout } from ${JSON.stringify(index)}
    const child = spawn('true')
    reportOnTimeout(child, () => '')
  `
  const proc = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
  // a process the channel kept alive would never exit: ended after a minute, and the test fails
  const guard = setTimeout(() => proc.kill('SIGKILL'), 60_000)
  const [code, signal] = (await once(proc, 'exit')) as [number | null, NodeJS.Signals | null]
  clearTimeout(guard)
  t.same({ code, signal }, { code: 0, signal: null }, 'it exits once its work is done, with the channel still open')
})

t.test('lastLines', async (t) => {
  t.equal(lastLines('a\nb\nc', 2), 'b\nc')
  t.equal(lastLines('a', 5), 'a')
})
