import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { MessageKind } from '@grainline/protocol'
import { rollbackMirror, storeStatus } from '../src/index.ts'
import { Agent, MiB, TOKEN, evolve, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startChild, vmOpen } from './helpers.ts'

t.test('SIGTERM parks an in-flight apply durably; the cycle resumes after restart', async (t) => {
  const env = makeEnv(t.testdir())
  const EXT = 64 * 1024
  const args = ['--batch-bytes', String(EXT)]
  const imgA = pattern(2 * MiB, 1)
  const ranges = [
    { offset: 0, length: MiB },
    { offset: MiB + EXT, length: 8 * EXT },
  ]
  const imgB = evolve(imgA, 5, ranges)
  const c1 = await startChild(env, { args })
  const a = await Agent.connect(c1.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'vm7', 1, [seedPlan(0, 'vm7.vmdk', imgA, '77'.repeat(8), EXT)])
  a.close()
  const b = await Agent.connect(c1.url, { token: TOKEN, ca: env.tls.ca })
  const plan = () => incPlan(0, 'vm7.vmdk', imgB, 1, '78'.repeat(8), ranges, 'vm7-000001.vmdk', 'vm7-000002.vmdk', EXT)
  await runCycle(b, 'vm7', 2, [plan()], { stopAfter: 10 })
  for (;;) {
    const m = await b.next()
    if (m?.kind === MessageKind.ExtentAck && m.seq >= 5) break
    if (m === undefined) throw new Error('closed early')
  }
  c1.child.kill('SIGTERM')
  const err = await b.expectError()
  t.same(err, { code: 'E_SHUTDOWN', closeCode: 1001 }, 'agent told why, close 1001')
  t.same(await c1.exited, { code: 0, signal: null }, 'clean exit')
  t.match(c1.stderr(), /"msg":"receiver closed"/)
  const st = (await storeStatus(env.store)).vms[0]
  t.equal(st?.inflightCycle, 2)
  t.ok((st?.disks[0]?.inflight?.resumeSeq ?? 0) >= 6, 'resume point persisted')
  const c2 = await startChild(env, { args })
  t.teardown(() => {
    c2.child.kill('SIGKILL')
  })
  t.match(c2.stderr(), /interrupted cycle kept for resume or rollback/, 'recovery logged')
  const c = await Agent.connect(c2.url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(c, 'vm7', 2, [plan()])
  t.ok((r.resume[0] ?? 0) >= 6, `resumed at ${String(r.resume[0])}`)
  t.ok(readFileSync(join(env.store, 'vm7', 'vm7-flat.vmdk')).equals(imgB))
  c.close()
})

// (start-up time is a figure for scripts/, not a timed assertion: tests must pass on a loaded machine)
t.test('start-up: a listening line, then a clean exit on SIGTERM', async (t) => {
  const env = makeEnv(t.testdir())
  const c = await startChild(env)
  t.ok(c.port > 0)
  c.child.kill('SIGTERM')
  t.same(await c.exited, { code: 0, signal: null })
})

t.test('a VM written by a receiver process is locked against rollbackMirror in another process', async (t) => {
  const env = makeEnv(t.testdir())
  const c = await startChild(env)
  t.teardown(() => {
    c.child.kill('SIGKILL')
  })
  const img = pattern(MiB, 3)
  const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'vm9', 1, [seedPlan(0, 'vm9.vmdk', img, '99'.repeat(8))])
  a.close()
  await a.whenClosed()
  const b = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
  b.send(hello())
  await b.expect(MessageKind.Welcome)
  b.send(vmOpen('vm9', 2, ['vm9-000001.vmdk']))
  await b.expect(MessageKind.VmState)
  await t.rejects(rollbackMirror(env.store, 'vm9'), { code: 'E_BUSY' }, 'held by the receiver process')
  b.close()
  await b.whenClosed()
  // released when the session ends; a kill -9 leaves a stale lock that is taken over
  let r: Awaited<ReturnType<typeof rollbackMirror>> | undefined
  // (E_BUSY until the receiver has run the session's clean-up: retry until it has)
  while (r === undefined) {
    r = await rollbackMirror(env.store, 'vm9').catch((err: { code?: string }) => {
      if (err.code !== 'E_BUSY') throw err
      return undefined
    })
    if (r === undefined) await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.equal(r?.committedCycle, 1)
  const d = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
  d.send(hello())
  await d.expect(MessageKind.Welcome)
  d.send(vmOpen('vm9', 2, ['vm9-000001.vmdk']))
  await d.expect(MessageKind.VmState)
  c.child.kill('SIGKILL')
  await c.exited
  const r2 = await rollbackMirror(env.store, 'vm9')
  t.equal(r2.committedCycle, 1, 'stale lock of a killed process taken over')
})
