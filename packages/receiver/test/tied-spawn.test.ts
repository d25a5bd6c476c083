/**
 * A helper the receiver spawns for store work dies with it (tied-spawn.ts):
 * a receiver process killed with SIGKILL leaves no `cp` running on; a child
 * spawned the plain way (the control) does outlive it. The orphans go to a
 * subreaper of the test's own (python3, below), not to the machine's PID 1
 * (here a firecracker init that never reaps them). The node parents print
 * their child's pid with `process.stdout.write`, not `console.log`, which
 * colours a number under the runner's FORCE_COLOR (a CI run read NaN).
 */
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { pdeathsigAvailable } from '../src/tied-spawn.ts'
import { scratchDir } from '@grainline/test-utils'
import { makeEnv, startChild } from './helpers.ts'

const tied = fileURLToPath(new URL('../src/tied-spawn.js', import.meta.url))

/** Whether `pid` runs (a zombie left to a PID 1 that does not reap counts as ended). */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

async function until(ok: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (ok()) return true
    await new Promise((r) => setTimeout(r, 50))
  }
  return ok()
}

/** What `/proc` says of `pid`, for a failing assertion's message. */
function describe(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return `pid ${pid} state ${state} ppid ${ppid}: ${readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim()}`
  } catch (err) {
    return `pid ${pid}: ${(err as Error).message}`
  }
}

/**
 * The grandparent: python3 makes itself the child subreaper
 * (PR_SET_CHILD_SUBREAPER), so that the orphaned sleep is reparented to it
 * — not to this machine's PID 1, which may kill or never reap orphans — and
 * reaps what ends. It starts a node parent that spawns `sleep 300` (tied or
 * plain) and prints its pid, prints that pid, and waits for stdin to close.
 */
const GRANDPARENT = `
import ctypes, os, subprocess, sys, threading
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
env = {k: v for k, v in os.environ.items() if k not in ("NODE_OPTIONS", "NODE_V8_COVERAGE", "FORCE_COLOR")}
parent = subprocess.Popen([sys.argv[1], "-e", sys.argv[2]], stdout=subprocess.PIPE, env=env)
print(parent.pid, parent.stdout.readline().decode().strip(), flush=True)
def reap():
    while True:
        try:
            os.wait()
        except ChildProcessError:
            threading.Event().wait(0.05)
threading.Thread(target=reap, daemon=True).start()
sys.stdin.read()
`

/**
 * Start a node parent that spawns `sleep 300` (tied or plain) under the
 * subreaper grandparent, wait until the sleep runs, kill the parent with
 * SIGKILL, and return the sleep's pid.
 */
async function orphanOf(t: Test, how: 'tied' | 'plain'): Promise<number> {
  const code =
    how === 'tied'
      ? `import(${JSON.stringify(tied)}).then((m) => { const c = m.spawnTied('sleep', ['300'], { stdio: 'ignore' }); process.stdout.write(String(c.pid) + '\\n'); setInterval(() => {}, 1000) })`
      : `const c = require('node:child_process').spawn('sleep', ['300'], { stdio: 'ignore' }); process.stdout.write(String(c.pid) + '\\n'); setInterval(() => {}, 1000)`
  const gp = spawn('python3', ['-I', '-c', GRANDPARENT, process.execPath, code], { stdio: ['pipe', 'pipe', 'inherit'] })
  t.teardown(() => {
    gp.stdin.end()
    gp.kill('SIGKILL')
  })
  let out = ''
  for await (const chunk of gp.stdout) {
    out += String(chunk)
    if (out.includes('\n')) break
  }
  const [parent, pid] = (out.split('\n')[0] ?? '').trim().split(' ').map(Number) as [number, number]
  t.ok(Number.isSafeInteger(pid) && pid > 0 && Number.isSafeInteger(parent), `${how}: the parent ${parent} printed its child's pid ${pid} (${JSON.stringify(out)})`)
  // setpriv runs first, then execs sleep in place: the same pid
  const started = await until(() => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith('sleep')
    } catch {
      return false
    }
  }, 15_000)
  t.ok(started, `${how}: the child runs sleep (${describe(pid)})`)
  process.kill(parent, 'SIGKILL')
  t.ok(await until(() => !running(parent), 15_000), `${how}: the parent is gone`)
  return pid
}

t.test('setpriv --pdeathsig runs on this machine (util-linux)', async (t) => {
  t.ok(pdeathsigAvailable(), 'setpriv --pdeathsig KILL -- true ran: without it a killed receiver leaves its cp running')
})

t.test("a tied child dies with its parent's SIGKILL; a plain one lives on (the control)", async (t) => {
  const plain = await orphanOf(t, 'plain')
  t.teardown(() => {
    try {
      process.kill(plain, 'SIGKILL')
    } catch {}
  })
  t.ok(running(plain), `the plain child outlives its killed parent (${describe(plain)})`)
  const child = await orphanOf(t, 'tied')
  t.teardown(() => {
    try {
      process.kill(child, 'SIGKILL')
    } catch {}
  })
  t.ok(await until(() => !running(child), 15_000), `the tied child is gone once its parent is killed (${describe(child)})`)
  t.ok(running(plain), `the plain one still runs (${describe(plain)})`)
})

t.test('without setpriv the command runs untied: pdeathsigAvailable says so, spawnTied still runs it', async (t) => {
  // a process whose PATH finds no setpriv (node itself by its full path)
  const script = [
    `import { pdeathsigAvailable, spawnTied } from ${JSON.stringify(tied)}`,
    'const available = pdeathsigAvailable()',
    `const c = spawnTied(process.execPath, ['-e', 'process.stdout.write("ran")'], { stdio: ['ignore', 'pipe', 'inherit'] })`,
    `let out = ''`,
    `c.stdout.on('data', (d) => (out += d))`,
    `c.on('close', (code) => process.stdout.write(JSON.stringify({ available, out, code })))`,
  ].join('\n')
  const env: NodeJS.ProcessEnv = { PATH: '/nonexistent' }
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.on('data', (d: Buffer) => (out += d.toString()))
  child.stderr.on('data', (d: Buffer) => (err += d.toString()))
  const code = await new Promise<number | null>((r) => child.on('close', r))
  t.equal(code, 0, err)
  t.same(JSON.parse(out), { available: false, out: 'ran', code: 0 }, 'not available, and the command ran the plain way')
})

t.test('a receiver started where setpriv is missing says so at start-up; where it runs, it says nothing', async (t) => {
  const run = async (env: NodeJS.ProcessEnv | undefined): Promise<string> => {
    const e = makeEnv(scratchDir(t))
    const r = await startChild(e, env === undefined ? {} : { env })
    r.child.stdin?.end()
    await r.exited
    return r.stderr()
  }
  const missing = await run({ PATH: '/nonexistent' })
  t.match(missing, /setpriv is missing or too old here: a base point's cp does not die with a receiver killed with SIGKILL/, 'warned, with what it means')
  t.notMatch(await run(undefined), /setpriv is missing/, 'no warning where setpriv --pdeathsig runs')
})
