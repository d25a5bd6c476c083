import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
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
  const w = vmWithLock(join(t.testdir(), 'copy'), `${other}\n`)
  await t.rejects(rollbackMirror(w.store, 'vm-l'), { code: 'E_BUSY' })
})

t.test('a lock of a gone pid is stale', async (t) => {
  const v = vmWithLock(t.testdir(), `${2 ** 22 + 12345}\n${bootId}\n1\n`)
  await t.resolves(rollbackMirror(v.store, 'vm-l'))
})

/** A process that takes the VM's lock, says so, and holds it until its stdin ends. */
function locker(
  store: string,
  env: Record<string, string> = {},
): { done: Promise<{ ok: boolean; code?: string }>; first: Promise<string>; taken: Promise<void>; stopped: Promise<void>; pid: number; end(): void } {
  const src = new URL('../src/', import.meta.url)
  const script = `
    import { VmLock } from ${JSON.stringify(new URL('vm-lock.js', src).href)}
    import { VmPaths } from ${JSON.stringify(new URL('vm-paths.js', src).href)}
    import { pino } from ${JSON.stringify(import.meta.resolve('pino'))}
    try {
      const l = await VmLock.take(new VmPaths(${JSON.stringify(store)}, 'vm-l'), 'vm-l', pino({ level: 'silent' }))
      process.stdout.write('taken\\n')
      process.stdin.resume()
      process.stdin.on('end', () => { l.release(); process.stdout.write(JSON.stringify({ ok: true }) + '\\n') })
    } catch (e) {
      process.stdout.write(JSON.stringify({ ok: false, code: e.code }) + '\\n')
      process.exit(0)
    }
  `
  const p = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } })
  let out = ''
  let err = ''
  let onTaken: () => void = () => {}
  let onStopped: () => void = () => {}
  let onFirst: (line: string) => void = () => {}
  const first = new Promise<string>((r) => {
    onFirst = r
  })
  const taken = new Promise<void>((r) => {
    onTaken = r
  })
  const stopped = new Promise<void>((r) => {
    onStopped = r
  })
  p.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d
    if (out.includes('\n')) onFirst(out.slice(0, out.indexOf('\n')))
    if (out.includes('taken')) onTaken()
  })
  p.stderr.setEncoding('utf8').on('data', (d: string) => {
    err += d
    if (err.includes('fault-stop')) onStopped()
  })
  const done = once(p, 'close').then(
    () =>
      JSON.parse(
        out
          .split('\n')
          .filter((l) => l.startsWith('{'))
          .at(-1) ?? '{"ok":false,"code":"no answer"}',
      ) as { ok: boolean; code?: string },
  )
  return { done, first, taken, stopped, pid: p.pid as number, end: () => p.stdin.end() }
}

t.test('two processes taking over one stale lock: the second to act finds the first one holding it (E_BUSY)', async (t) => {
  // a lock of a gone pid; A judges it stale and is frozen there (fault point), B takes it over and holds it
  const v = vmWithLock(t.testdir(), `${2 ** 22 + 12345}\n${bootId}\n1\n`)
  const a = locker(v.store, { GRAINLINE_RECEIVER_FAULT: 'lock-stale:1:stop' })
  await a.stopped
  const b = locker(v.store)
  await b.taken
  t.match(readFileSync(v.lock, 'utf8'), new RegExp(`^${b.pid}\n`), 'B holds the lock')
  process.kill(a.pid, 'SIGCONT')
  const answer = await a.first
  if (answer === 'taken') a.end()
  t.same(JSON.parse(answer === 'taken' ? '{"ok":true}' : answer), { ok: false, code: 'E_BUSY' }, 'A, resumed, does not take the lock B holds')
  await a.done
  t.match(readFileSync(v.lock, 'utf8'), new RegExp(`^${b.pid}\n`), 'B still holds it')
  b.end()
  t.same(await b.done, { ok: true })
  t.notOk(existsSync(v.lock), 'released')
  t.same(
    readdirSync(dirname(v.lock)).filter((f) => f.startsWith('lock')),
    [],
    'no claim or lock file left',
  )
})

t.test('an empty lock is not taken over while it may still be being written', async (t) => {
  // a fresh empty lock whose writer fills it in a second: its holder's, never taken over meanwhile
  const v = vmWithLock(t.testdir(), '')
  const taking = rollbackMirror(v.store, 'vm-l')
  await new Promise((r) => setTimeout(r, 1000))
  writeFileSync(v.lock, `${other}\n${bootId}\n${processStartTime(other)}\n`)
  await t.rejects(taking, { code: 'E_BUSY', message: new RegExp(`being written by process ${other}`) }, 'the writer filled it: E_BUSY')
  writeFileSync(v.lock, '')
  const old = new Date(Date.now() - 60_000)
  utimesSync(v.lock, old, old)
  await t.resolves(rollbackMirror(v.store, 'vm-l'), 'an empty lock older than the settle time is stale')
  t.notOk(existsSync(v.lock))
})

t.test("a lock file that is a copy (another inode than it records) is nobody's: taken over even when its pid is alive", async (t) => {
  const start = processStartTime(other) as string
  // a live holder's lock, copied with the store (cp -a, rsync, tar): the inode it records is the original's
  const v = vmWithLock(t.testdir(), `${other}\n${bootId}\n${start}\n1\n`)
  t.not(statSync(v.lock, { bigint: true }).ino, 1n)
  await t.resolves(rollbackMirror(v.store, 'vm-l'), 'no E_BUSY: the copied lock is taken over')
  t.notOk(existsSync(v.lock), 'and released')
  // the same holder's own lock, recording the inode it has: held, E_BUSY as before
  const w = vmWithLock(t.testdir(), '')
  writeFileSync(w.lock, `${other}\n${bootId}\n${start}\n${statSync(w.lock, { bigint: true }).ino}\n`)
  await t.rejects(rollbackMirror(w.store, 'vm-l'), { code: 'E_BUSY' })
  t.ok(existsSync(w.lock), 'the holder keeps its lock')
})

t.test("a live holder's lock where it wrote it is held though its inode changed (a file system of unstable inode numbers)", async (t) => {
  const start = processStartTime(other) as string
  // SMB mounted noserverino, sshfs without use_ino: the same file shows another inode number later
  const v = vmWithLock(join(t.testdir(), 'here'), '')
  const where = join(realpathSync(dirname(v.lock)), 'lock')
  writeFileSync(v.lock, `${other}\n${bootId}\n${start}\n1\n\n${where}\n`)
  await t.rejects(rollbackMirror(v.store, 'vm-l'), { code: 'E_BUSY' }, 'held: not taken over as a copy')
  t.ok(existsSync(v.lock), 'the holder keeps its lock')
  // the same lock carried to another folder (a copy of the store while its holder runs): nobody's
  const w = vmWithLock(t.testdir(), `${other}\n${bootId}\n${start}\n1\n\n${where}\n`)
  await t.resolves(rollbackMirror(w.store, 'vm-l'), 'the copy elsewhere is taken over')
  t.notOk(existsSync(w.lock))
})

t.test('a lock records where it lies', async (t) => {
  const v = vmWithLock(t.testdir(), '')
  rmSync(v.lock)
  const { VmLock } = await import('../src/vm-lock.ts')
  const { VmPaths } = await import('../src/vm-paths.ts')
  const { default: pino } = await import('pino')
  const lock = await VmLock.take(new VmPaths(v.store, 'vm-l'), 'vm-l', pino({ level: 'silent' }), { create: false })
  const lines = readFileSync(v.lock, 'utf8').split('\n')
  t.equal(lines[3], String(statSync(v.lock, { bigint: true }).ino))
  t.equal(lines[5], join(realpathSync(dirname(v.lock)), 'lock'))
  lock.release()
  t.notOk(existsSync(v.lock))
})

t.test('a lock this process writes records the inode of the lock file itself', async (t) => {
  t.same(lockText(123n).split('\n'), [String(process.pid), bootId, processStartTime(process.pid), '123', ''])
})

/*
 * A store the receiver's user may not write (copied by another user, or
 * with its source's owners and modes kept): the error is E_IO naming the VM
 * and the remedy (chown -R to the receiver's user), never a bare EACCES the
 * agent hears as E_INTERNAL "internal error". As root (who may write any
 * file) the mirror is opened by a node run as nobody (setpriv).
 */
t.test('a VM folder the receiver may not open or write: E_IO naming the VM and chown', async (t) => {
  const dir = t.testdir()
  const closed = vmWithLock(dir, '')
  rmSync(join(closed.store, 'vm-l', '.grainline', 'lock'))
  chmodSync(dirname(dirname(closed.lock)), 0o700) // vm-l: not even listed by another user
  const g2 = join(closed.store, 'vm-r', '.grainline')
  mkdirSync(g2, { recursive: true })
  writeFileSync(join(g2, 'state.json'), JSON.stringify({ format: 1, vm: 'vm-r', disks: {} }))
  chmodSync(g2, 0o755) // vm-r: readable, its lock not writable
  const root = process.getuid?.() === 0
  if (!root) chmodSync(g2, 0o555)
  const attempt = (vm: string): { code: string; message: string } => {
    const entry = new URL('../src/index.js', import.meta.url).href
    const script = `import { rollbackMirror } from ${JSON.stringify(entry)}; try { await rollbackMirror(${JSON.stringify(closed.store)}, ${JSON.stringify(vm)}); process.stdout.write('{}') } catch (e) { process.stdout.write(JSON.stringify({ code: e.code, message: e.message })) }`
    const args = ['--input-type=module', '-e', script]
    const r = root
      ? spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, ...args], { encoding: 'utf8' })
      : spawnSync(process.execPath, args, { encoding: 'utf8' })
    return JSON.parse(r.stdout || '{}') as { code: string; message: string }
  }
  if (root) for (const p of [dir, join(dir, 'store')]) chmodSync(p, 0o755)
  else chmodSync(dirname(dirname(closed.lock)), 0o000)
  const a = attempt('vm-l')
  t.equal(a.code, 'E_IO', `a folder it may not open (${a.message})`)
  t.match(a.message, /^permission denied while opening the folder of VM vm-l: .*must own its store: chown -R \S+ STORE/)
  const b = attempt('vm-r')
  t.equal(b.code, 'E_IO', `a folder it may not write (${b.message})`)
  t.match(b.message, /^permission denied while taking the VM lock: .*must own its store: chown -R \S+ STORE/)
  chmodSync(dirname(dirname(closed.lock)), 0o755)
  chmodSync(g2, 0o755)
})
