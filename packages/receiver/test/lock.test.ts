import t from 'tap'
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs'
import { join } from 'node:path'
import { rollbackMirror } from '../src/index.ts'
import { lockHolderAlive, lockText, processStartTime } from '../src/vm-lock.ts'

/*
 * The VM lock file records pid, boot id and the process start time (field 22
 * of /proc/<pid>/stat): a lock left by a power loss whose pid now belongs to
 * an unrelated live process is stale, not E_BUSY forever.
 */

const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
const other = process.ppid // alive, and not the lock's writer

function vmWithLock(dir: string, lock: string): { store: string; lock: string } {
  const store = join(dir, 'store')
  const g = join(store, 'vm-l', '.grainline')
  mkdirSync(g, { recursive: true })
  writeFileSync(join(g, 'state.json'), JSON.stringify({ format: 1, vm: 'vm-l', disks: {} }))
  writeFileSync(join(g, 'lock'), lock)
  return { store, lock: join(g, 'lock') }
}

t.test('start time of a live process; undefined for a gone one', async (t) => {
  t.match(processStartTime(process.pid), /^\d+$/)
  t.match(processStartTime(other), /^\d+$/)
  t.equal(processStartTime(2 ** 22 + 12345), undefined)
  const text = lockText()
  t.same(text.split('\n'), [String(process.pid), bootId, processStartTime(process.pid), ''])
})

t.test('a forged lock of a live unrelated pid with a wrong start time is stale', async (t) => {
  const start = processStartTime(other) as string
  const wrong = String(Number(start) + 1)
  t.equal(lockHolderAlive(`${other}\n${bootId}\n${wrong}\n`), false)
  const v = vmWithLock(t.testdir(), `${other}\n${bootId}\n${wrong}\n`)
  const r = await rollbackMirror(v.store, 'vm-l')
  t.equal(r.committedCycle, 0, 'lock taken over, no E_BUSY')
  t.notOk(existsSync(v.lock), 'and released')
})

t.test('a lock from another boot is stale even if pid and start time match', async (t) => {
  const start = processStartTime(other) as string
  const v = vmWithLock(t.testdir(), `${other}\n00000000-1111-2222-3333-444444444444\n${start}\n`)
  await t.resolves(rollbackMirror(v.store, 'vm-l'))
})

t.test('a live holder (same boot, same start time) still means E_BUSY', async (t) => {
  const start = processStartTime(other) as string
  t.equal(lockHolderAlive(`${other}\n${bootId}\n${start}\n`), true)
  const v = vmWithLock(t.testdir(), `${other}\n${bootId}\n${start}\n`)
  await t.rejects(rollbackMirror(v.store, 'vm-l'), { code: 'E_BUSY' })
  t.ok(existsSync(v.lock), 'the holder keeps its lock')
  // an older pid-only lock of a live process: E_BUSY as before
  const w = vmWithLock(t.testdir(), `${other}\n`)
  await t.rejects(rollbackMirror(w.store, 'vm-l'), { code: 'E_BUSY' })
})

t.test('a lock of a gone pid is stale', async (t) => {
  const v = vmWithLock(t.testdir(), `${2 ** 22 + 12345}\n${bootId}\n1\n`)
  await t.resolves(rollbackMirror(v.store, 'vm-l'))
})
