/**
 * The text of the receiver's Error frames (SPEC §7) never carries the
 * store's folder: a store failure (a state file that is a FIFO, a staging
 * folder that is a file, a commit whose rename fails) names the file by its
 * VM-relative path (`<vm>/…`), so that the agent's operator still learns
 * which VM and file, while the DR site's layout stays there — whether the
 * store was given absolute, through a link or relative. A lock held by
 * another process is told without that process's pid, a VM folder that
 * resolves outside the store by the VM's name (not where it leads). The
 * receiver's own log keeps the full text. Real receiver on loopback, a scripted agent.
 * Each assertion on a frame's text failed on the old code (it sent the
 * logged text as it was).
 */
import t, { type Test } from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { execFileSync } from 'node:child_process'
import { mkdirSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { MessageKind, type Message } from '@grainline/protocol'
import { lockText } from '../src/vm-lock.ts'
import { Agent, MiB, TOKEN, hello, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen, type Env, type LogLine } from './helpers.ts'

const img = pattern(MiB, 1)

async function seed(env: Env, url: string, vm: string): Promise<void> {
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, `${vm}.vmdk`, img, '01'.repeat(8))])
  a.close()
  await a.whenClosed()
}

/** The Error frame a session ends with (every message up to the close read). */
async function errorOf(a: Agent): Promise<{ code: string; message: string }> {
  let last: Extract<Message, { kind: typeof MessageKind.Error }> | undefined
  const timer = setTimeout(() => a.terminate(), 60_000)
  for (let m = await a.next(); m !== undefined; m = await a.next()) if (m.kind === MessageKind.Error) last = m
  clearTimeout(timer)
  return last === undefined ? { code: '(none)', message: '' } : { code: last.code, message: last.message }
}

/** VmOpen of `vm` at `cycle`; the Error the session ends with. */
async function openVmError(env: Env, url: string, vm: string, cycle: number): Promise<{ code: string; message: string }> {
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  a.send(hello())
  await a.expect(MessageKind.Welcome)
  a.send(vmOpen(vm, cycle, []))
  return await errorOf(a)
}

/** The frame names `file` (VM-relative) and no folder above it: not the scratch folder, no absolute path at all. */
function namesOnly(t: Test, e: { code: string; message: string }, code: string, file: string | RegExp, what: string): void {
  t.equal(e.code, code, `${what}: ${code}`)
  t.match(e.message, file, `${what}: the frame names the file by its VM-relative path`)
  t.notOk(e.message.includes('grainline-test-'), `${what}: nothing of the folders above the store (${JSON.stringify(e.message)})`)
  t.notMatch(e.message, /(^|[\s'"(=,])\.{0,2}\//, `${what}: no path from the root or the receiver's folder`)
}

/** The receiver's log line for the abort whose text has `piece`. */
const logged = (lines: LogLine[], piece: string): boolean => lines.some((l) => l['msg'] === 'session aborted' && String(l['why']).includes(piece))

t.test("a store failure's Error names the VM's file, not the store's folder; the log keeps the full path", async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env)
  t.teardown(() => receiver.close())

  // a state file that is a FIFO (read at VmOpen)
  await seed(env, url, 'vm-f')
  const state = join(env.store, 'vm-f', '.grainline', 'state.json')
  unlinkSync(state)
  execFileSync('mkfifo', [state])
  namesOnly(t, await openVmError(env, url, 'vm-f', 2), 'E_IO', /^vm-f\/\.grainline\/state\.json is a FIFO/, 'a FIFO state file')
  t.ok(logged(logs.lines, `${state} is a FIFO`), 'the log names the full path')

  // the staging folder is a file (the VmOpen's configuration files go there)
  await seed(env, url, 'vm-i')
  const incoming = join(env.store, 'vm-i', '.grainline', 'incoming')
  rmSync(incoming, { recursive: true })
  writeFileSync(incoming, 'x')
  namesOnly(t, await openVmError(env, url, 'vm-i', 2), 'E_IO', / vm-i\/\.grainline\/incoming is not a regular file/, 'a staging folder that is a file')
  t.ok(logged(logs.lines, incoming), 'the log names the full path')

  // a commit whose rename fails: Node's own message quotes both paths
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'vm-c', 1, [seedPlan(0, 'vm-c.vmdk', img, '01'.repeat(8))], { commit: false })
  const flat = join(env.store, 'vm-c', 'vm-c-flat.vmdk')
  mkdirSync(flat)
  writeFileSync(join(flat, 'x'), 'x')
  a.send({ kind: MessageKind.Commit, vm: 'vm-c', cycle: 1, retention: null })
  namesOnly(t, await errorOf(a), 'E_IO', /rename 'vm-c\/vm-c-flat\.vmdk\.seed' -> 'vm-c\/vm-c-flat\.vmdk'/, 'a commit that cannot rename the seed')
  t.ok(logged(logs.lines, `'${flat}'`), 'the log names the full path')
})

t.test('a store given through a link or as a relative path: neither form reaches the agent', async (t) => {
  const env = makeEnv(scratchDir(t))
  const link = join(env.dir, 'store-link')
  symlinkSync(env.store, link)
  for (const [what, store] of [
    ['through a link', link],
    ['relative', relative(process.cwd(), env.store)],
  ] as const) {
    const vm = what === 'relative' ? 'vm-rel' : 'vm-link'
    const { receiver, url, logs } = await startReceiver({ ...env, store })
    await seed(env, url, vm)
    const state = join(env.store, vm, '.grainline', 'state.json')
    unlinkSync(state)
    execFileSync('mkfifo', [state])
    namesOnly(t, await openVmError(env, url, vm, 2), 'E_IO', new RegExp(`^${vm}/\\.grainline/state\\.json is a FIFO`), `a store ${what}`)
    t.ok(logged(logs.lines, `${join(store, vm, '.grainline', 'state.json')} is a FIFO`), `${what}: the log names the path as the receiver was given it`)
    await receiver.close()
  }
})

t.test("a VM locked by another process: the agent hears it is busy, not that process's pid; the log names it", async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env, { lockWaitMs: 100 })
  t.teardown(() => receiver.close())
  // a live holder: this very process (no session of the receiver ever took that lock)
  mkdirSync(join(env.store, 'vm-lock', '.grainline'), { recursive: true })
  writeFileSync(join(env.store, 'vm-lock', '.grainline', 'lock'), lockText())
  const e = await openVmError(env, url, 'vm-lock', 1)
  t.equal(e.code, 'E_BUSY')
  t.match(e.message, /^VM vm-lock is being written by another process/)
  t.notMatch(e.message, /process \d/, `no pid (${JSON.stringify(e.message)})`)
  t.ok(logged(logs.lines, `VM vm-lock is being written by process ${process.pid}`), 'the log names the pid')
})

t.test('a VM folder that resolves outside the store: the agent hears the VM, not where its folder leads; the log names it', async (t) => {
  const env = makeEnv(scratchDir(t))
  // the store given through a link and `..` (the in-process API takes the path as it is; a configured one is resolved
  // first): its VM folders are named lexically, its real path physically, so a VM folder resolves where no form of
  // the store names it — what a VM folder swapped for a link between checkVmDir's lstat and its realpath does too
  const other = join(env.dir, 'other')
  mkdirSync(join(env.dir, 'far', 'away'), { recursive: true })
  mkdirSync(other)
  symlinkSync(other, join(env.dir, 's1'))
  symlinkSync(join(env.dir, 'far', 'away'), join(other, 'lnk'))
  const store = `${join(env.dir, 's1', 'lnk')}/..`
  const { receiver, url, logs } = await startReceiver({ ...env, store })
  t.teardown(() => receiver.close())
  // the old code sent "vm-out is outside the store (it resolves to vm-out)" here only because Node's real path of
  // this store is the link's folder; a VM folder swapped for a link to /etc would have been told as "/etc"
  const e = await openVmError(env, url, 'vm-out', 1)
  t.equal(e.code, 'E_IO')
  t.match(e.message, /^VM folder vm-out resolves outside the store/, `the VM named (${JSON.stringify(e.message)})`)
  t.notOk(e.message.includes(env.dir), 'not the folder it resolves to, nothing above the store')
  t.notMatch(e.message, /(^|[\s'"(=,])\.{0,2}\//, "no path from the root or the receiver's folder")
  t.ok(logged(logs.lines, `resolves to ${join(other, 'vm-out')}`), 'the log names where it leads')
})
