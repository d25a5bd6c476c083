/**
 * A store copied while a receiver ran on it is told by a copy of its marker
 * `.grainline-receiver` (store-marker.ts), a VM copied while a process held
 * it by a copy of its lock (vm-lock.ts lockIsCopy): every VM concerned is
 * marked diverged, so the next cycle resyncs it. The fact must outlive a
 * crash between finding the copy and marking the VMs, and a VM whose
 * recovery failed before its mark: the receiver that replaced the copied
 * marker (or lock) by its own at once, before marking anything, left a store
 * the next start trusted — the mirror continued incrementally, silently
 * differing from its source.
 */
import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import pino from 'pino'
import { join } from 'node:path'
import { Agent, MiB, TOKEN, makeEnv, pattern, runCycle, seedPlan, startChild, startReceiver, type Env } from './helpers.ts'
import { createReceiver, rollbackMirror } from '../src/index.ts'
import { lockIsCopy } from '../src/vm-lock.ts'
import { scratchDir } from '@grainline/test-utils'

const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()

/** A store with VM `vm` seeded (cycle 1 committed), its receiver closed. */
async function seeded(t: Test, vms: readonly string[]): Promise<Env> {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  for (const vm of vms) {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', pattern(2 * MiB, 4), 'cd01cd01cd01cd01')])
    a.close()
  }
  await receiver.close()
  return env
}

function diverged(env: Env, vm: string): unknown {
  const st = JSON.parse(readFileSync(join(env.store, vm, '.grainline', 'state.json'), 'utf8')) as { disks: Record<string, { diverged?: { reason: string } }> }
  return st.disks['d.vmdk']?.diverged?.reason
}

/** The text of a marker or lock another receiver wrote, copied: it records an inode the copy does not have. */
const COPY = `999999999\n${bootId}\n\n1\n`

t.test('a crash between finding a copied store marker and marking the VMs: the next start finds the copy again', async (t) => {
  const env = await seeded(t, ['vm-a'])
  const marker = join(env.store, '.grainline-receiver')
  writeFileSync(marker, COPY)
  t.not(statSync(marker, { bigint: true }).ino, 1n)
  // killed by the fault as its recovery reaches the VM, before marking it
  await t.rejects(startChild(env, { fault: 'recovery-vm:1' }), /exited early .*SIGKILL/)
  t.equal(diverged(env, 'vm-a'), undefined, 'not marked yet')
  t.equal(readFileSync(marker, 'utf8'), COPY, 'the copied marker is still there')
  const { receiver } = await startReceiver(env)
  t.match(diverged(env, 'vm-a'), /store marker \.grainline-receiver is a copy/, 'the restarted receiver marks the VM diverged')
  const ours = readFileSync(marker, 'utf8')
  t.equal(lockIsCopy(ours, statSync(marker, { bigint: true }).ino), false, 'the marker is now ours')
  t.equal(ours.split('\n')[0], String(process.pid))
  await receiver.close()
  t.notOk(existsSync(marker), 'removed at the clean close')
})

t.test('a VM whose recovery fails before its mark keeps the copied store marker, until its recovery works', async (t) => {
  const env = await seeded(t, ['vm-a', 'vm-b'])
  const marker = join(env.store, '.grainline-receiver')
  writeFileSync(marker, COPY)
  const stateB = join(env.store, 'vm-b', '.grainline', 'state.json')
  const good = readFileSync(stateB)
  writeFileSync(stateB, '{ not json')
  const first = await startReceiver(env)
  t.match(diverged(env, 'vm-a'), /store marker \.grainline-receiver is a copy/, 'vm-a is marked')
  t.equal(readFileSync(marker, 'utf8'), COPY, 'the copied marker is kept: vm-b is not marked')
  t.ok(
    first.logs.lines.some((l) => /that is a copy is kept: the recovery of VM vm-b failed/.test(String(l['msg']))),
    first.logs.text().slice(-2000),
  )
  await first.receiver.close()
  t.equal(readFileSync(marker, 'utf8'), COPY, 'and not removed at the close')
  // the state put back: the next start marks vm-b (vm-a again) and writes its own marker
  writeFileSync(stateB, good)
  const second = await startReceiver(env)
  t.match(diverged(env, 'vm-b'), /store marker \.grainline-receiver is a copy/, 'vm-b is marked once its recovery works')
  t.equal(lockIsCopy(readFileSync(marker, 'utf8'), statSync(marker, { bigint: true }).ino), false, 'the marker is now ours')
  await second.receiver.close()
  t.notOk(existsSync(marker))
})

t.test('a crash between taking over a copied VM lock and marking the VM: the next taker marks it', async (t) => {
  const env = await seeded(t, ['vm-a'])
  const lock = join(env.store, 'vm-a', '.grainline', 'lock')
  mkdirSync(join(env.store, 'vm-a', '.grainline'), { recursive: true })
  writeFileSync(lock, COPY)
  // killed once the copied lock is taken over (its own lock in place), before the VM is marked
  await t.rejects(startChild(env, { fault: 'copied-lock-taken:1' }), /exited early .*SIGKILL/)
  t.equal(diverged(env, 'vm-a'), undefined, 'not marked yet')
  t.ok(existsSync(lock), 'the killed receiver left its lock')
  const { receiver } = await startReceiver(env)
  t.match(diverged(env, 'vm-a'), /its lock file is a copy/, 'the restarted receiver marks the VM diverged')
  await receiver.close()
  t.notOk(existsSync(lock), 'and released its lock')
})

t.test("a receiver's clean close leaves the marker of another receiver started on the store since", async (t) => {
  const env = await seeded(t, ['vm-a'])
  const marker = join(env.store, '.grainline-receiver')
  const a = await startChild(env)
  t.equal(readFileSync(marker, 'utf8').split('\n')[0], String(a.child.pid), "the first receiver's marker")
  const b = await startReceiver(env)
  t.equal(readFileSync(marker, 'utf8').split('\n')[0], String(process.pid), "the second receiver's replaces it")
  a.child.kill('SIGTERM')
  t.same(await a.exited, { code: 0, signal: null }, 'the first one closed cleanly')
  t.equal(existsSync(marker) ? readFileSync(marker, 'utf8').split('\n')[0] : 'gone', String(process.pid), 'the running receiver keeps its marker')
  await b.receiver.close()
  t.notOk(existsSync(marker), 'removed at its own close')
})

t.test('a copied VM lock on a full store stays until the VM can be marked diverged', async (t) => {
  // outside the test dir: tap removes it before the teardown unmounts
  const mnt = mkdtempSync(join(tmpdir(), 'grainline-full-store-'))
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', mnt])
  t.teardown(() => {
    execFileSync('umount', ['-l', mnt])
    rmSync(mnt, { recursive: true, force: true })
  })
  const env = makeEnv(mnt)
  const { receiver, url } = await startReceiver(env)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'vm-a', 1, [seedPlan(0, 'd.vmdk', pattern(2 * MiB, 4), 'cd01cd01cd01cd01')])
  a.close()
  await receiver.close()
  const lock = join(env.store, 'vm-a', '.grainline', 'lock')
  writeFileSync(lock, COPY)
  // the store full to the last byte
  const ballast = join(mnt, 'ballast')
  const avail = Number(execFileSync('df', ['-B1', '--output=avail', mnt], { encoding: 'utf8' }).trim().split('\n').at(-1))
  writeFileSync(ballast, Buffer.alloc(avail))
  for (let i = 0; ; i++) {
    try {
      writeFileSync(join(mnt, `fill-${i}`), Buffer.alloc(4096))
    } catch {
      break
    }
  }
  const full = await rollbackMirror(env.store, 'vm-a').then(
    () => undefined,
    (err: unknown) => (err as { code?: string }).code,
  )
  t.match(full, /^(ENOSPC|E_NO_SPACE)$/, 'the VM cannot be marked on a full store')
  t.equal(existsSync(lock) ? readFileSync(lock, 'utf8') : 'gone', COPY, 'the copied lock is still there')
  t.equal(diverged(env, 'vm-a'), undefined)
  rmSync(ballast)
  await t.resolves(rollbackMirror(env.store, 'vm-a'), 'with room again')
  t.match(diverged(env, 'vm-a'), /its lock file is a copy/, 'the copy found again: the VM is marked diverged')
  t.notOk(existsSync(lock), 'and the lock released')
})

t.test('a receiver that fails to start after marking the store removes its marker', async (t) => {
  const env = await seeded(t, ['vm-a'])
  // its port taken by something else: the start fails once it has recovered and marked the store
  const blocker = createServer()
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve))
  t.teardown(() => blocker.close())
  const { port } = blocker.address() as AddressInfo
  const receiver = createReceiver({ logger: pino({ level: 'silent' }) }, { host: '127.0.0.1', port, store: env.store, tokensFile: env.tokensFile, tlsCert: env.tls.cert, tlsKey: env.tls.key })
  await t.rejects(receiver.listen(), { code: 'EADDRINUSE' })
  t.notOk(existsSync(join(env.store, '.grainline-receiver')), 'no marker left by the failed start')
})
