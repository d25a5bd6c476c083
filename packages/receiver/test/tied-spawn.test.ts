/**
 * A helper the receiver spawns for store work dies with it (tied-spawn.ts):
 * a receiver process killed with SIGKILL leaves no `cp` running on; a child
 * spawned the plain way (the control) does outlive it.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { pdeathsigAvailable } from '../src/tied-spawn.ts'

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

/** A parent process that spawns `sleep 300` (tied or plain), prints its pid, and waits; killed with SIGKILL, it returns the sleep's pid. */
async function orphanOf(how: 'tied' | 'plain'): Promise<number> {
  const code =
    how === 'tied'
      ? `import(${JSON.stringify(tied)}).then((m) => { const c = m.spawnTied('sleep', ['300'], { stdio: 'ignore' }); console.log(c.pid); setInterval(() => {}, 1000) })`
      : `const c = require('node:child_process').spawn('sleep', ['300'], { stdio: 'ignore' }); console.log(c.pid); setInterval(() => {}, 1000)`
  const parent = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] })
  const [line] = (await once(parent.stdout, 'data')) as [Buffer]
  const pid = Number(line.toString().trim())
  // setpriv runs first, then execs sleep in place: the same pid
  await until(() => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith('sleep')
    } catch {
      return false
    }
  }, 5000)
  parent.kill('SIGKILL')
  await once(parent, 'exit')
  return pid
}

t.test('setpriv --pdeathsig runs on this machine (util-linux)', async (t) => {
  t.ok(pdeathsigAvailable(), 'setpriv --pdeathsig KILL -- true ran: without it a killed receiver leaves its cp running')
})

t.test("a tied child dies with its parent's SIGKILL; a plain one lives on (the control)", async (t) => {
  const plain = await orphanOf('plain')
  t.teardown(() => {
    try {
      process.kill(plain, 'SIGKILL')
    } catch {}
  })
  t.ok(running(plain), 'the plain child outlives its killed parent')
  const child = await orphanOf('tied')
  t.teardown(() => {
    try {
      process.kill(child, 'SIGKILL')
    } catch {}
  })
  t.ok(await until(() => !running(child), 5000), 'the tied child is gone once its parent is killed')
  t.ok(running(plain), 'the plain one still runs')
})
