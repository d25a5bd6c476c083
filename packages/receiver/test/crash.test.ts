import t from 'tap'
import type { Test } from 'tap'
import { readFileSync, existsSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { MessageKind } from '@grainline/protocol'
import { pino } from 'pino'
import { recoverStore, rollbackMirror, storeStatus } from '../src/index.ts'
import { Agent, MiB, TOKEN, evolve, incPlan, makeEnv, pattern, runCycle, seedPlan, startChild, hello, vmOpen, type Env } from './helpers.ts'

/*
 * kill -9 (self-inflicted SIGKILL at a named point, see src/fault.ts) of a
 * receiver child process during an apply or a commit; restart; then resume,
 * roll back by message, or roll back with rollbackMirror() — and compare the
 * mirror byte for byte with the image of the cycle the store says is committed.
 */

// dozens of receiver processes are started and killed: on a loaded 2-core machine that takes more than tap's 10 minutes
t.setTimeout(40 * 60_000)

const VM = 'vm1'
const CAP = 2 * MiB
const EXT = 64 * 1024
const imgA = Buffer.concat([pattern(MiB, 1), Buffer.alloc(MiB / 2), pattern(MiB / 2, 2)])
const ranges = [
  { offset: 0, length: 4 * EXT },
  { offset: 8 * EXT, length: 3 * EXT },
  { offset: 20 * EXT, length: 2 * EXT, zero: true },
  { offset: MiB, length: 4 * EXT },
  { offset: CAP - 2 * EXT, length: 2 * EXT },
]
const imgB = evolve(imgA, 77, ranges)
const planA = (id = 'a1'.repeat(8)) => seedPlan(0, 'vm1.vmdk', imgA, id, EXT)
const planB = (id = 'b2'.repeat(8)) => incPlan(0, 'vm1.vmdk', imgB, 1, id, ranges, 'vm1-000001.vmdk', 'vm1-000002.vmdk', EXT)
const flatPath = (env: Env): string => join(env.store, VM, 'vm1-flat.vmdk')
const ARGS = ['--batch-bytes', String(EXT), '--log-level', 'warn']

async function stopChild(c: Awaited<ReturnType<typeof startChild>>): Promise<void> {
  c.child.kill('SIGTERM')
  const e = await c.exited
  if (e.code !== 0) throw new Error(`receiver exit ${JSON.stringify(e)}: ${c.stderr()}`)
}

async function seeded(dir: string): Promise<Env> {
  const env = makeEnv(dir)
  const c = await startChild(env, { args: ARGS })
  const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, VM, 1, [planA()])
  a.close()
  await a.whenClosed()
  await stopChild(c)
  return env
}

async function crashRun(t: Test, env: Env, fault: string, run: (url: string) => Promise<unknown>): Promise<void> {
  const c = await startChild(env, { fault, args: ARGS })
  await run(c.url).catch(() => {})
  const e = await Promise.race([c.exited, new Promise<{ code: null; signal: 'timeout' }>((resolve) => setTimeout(() => resolve({ code: null, signal: 'timeout' }), 10000))])
  if (e.signal === 'timeout') c.child.kill('SIGKILL')
  t.equal(e.signal, 'SIGKILL', `killed at ${fault}`)
}

async function incRun(env: Env, url: string): Promise<void> {
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, VM, 2, [planB()])
}

const incFaults = [
  'journal-synced:1',
  'journal-synced:2',
  'journal-synced:5',
  'journal-synced:9',
  'journal-synced:12',
  'extent-written:1',
  'extent-written:3',
  'extent-written:8',
  'extent-written:12',
  'extent-written:15',
  'target-synced:1',
  'target-synced:4',
  'target-synced:10',
  'target-synced:12',
  'commit-before-state:1',
  'commit-after-state:1',
  'commit-descriptors:1',
]

t.test('a rollback whose state write never happens (kill -9 standing in for a full disk): the cycle restarts at 0', async (t) => {
  const env = await seeded(t.testdir())
  await crashRun(t, env, 'target-synced:6', (url) => incRun(env, url))
  const c = await startChild(env, { args: ARGS, fault: 'rollback-reset:1' })
  const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
  a.send(hello())
  await a.expect(MessageKind.Welcome)
  a.send(vmOpen(VM, 2, ['vm1-000002.vmdk']))
  await a.expect(MessageKind.VmState)
  a.send({ kind: MessageKind.Rollback, vm: VM })
  await a.whenClosed()
  t.equal((await c.exited).signal, 'SIGKILL', 'killed after the undo, before the state write')
  t.ok(readFileSync(flatPath(env)).equals(imgA), 'flat already at the committed image')
  const st = (await storeStatus(env.store)).vms[0]
  t.equal(st?.inflightCycle, 2, 'the cycle is still in flight')
  t.equal(st?.disks[0]?.inflight?.resumeSeq, 0, 'with its resume point reset')
  const c2 = await startChild(env, { args: ARGS })
  t.teardown(() => {
    c2.child.kill('SIGKILL')
  })
  const b = await Agent.connect(c2.url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(b, VM, 2, [planB()])
  b.close()
  t.equal(r.resume[0], 0, 'resumed from 0, not from the stale marker')
  t.ok(readFileSync(flatPath(env)).equals(imgB))
})

t.test('kill -9 in the middle of a rollback: start-up recovery finishes it, never resumes a half-undone flat', async (t) => {
  const env = await seeded(t.testdir())
  // an interrupted cycle 2 (killed after 6 durable batches)
  await crashRun(t, env, 'target-synced:6', (url) => incRun(env, url))
  // a rollback killed right after the undo, before the journal is reset
  const c = await startChild(env, { args: ARGS, fault: 'rollback-undone:1' })
  const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
  a.send(hello())
  await a.expect(MessageKind.Welcome)
  a.send(vmOpen(VM, 2, ['vm1-000002.vmdk']))
  await a.expect(MessageKind.VmState)
  a.send({ kind: MessageKind.Rollback, vm: VM })
  await a.whenClosed()
  t.equal((await c.exited).signal, 'SIGKILL', 'killed mid-rollback')
  const c2 = await startChild(env, { args: ARGS })
  t.teardown(() => {
    c2.child.kill('SIGKILL')
  })
  const st = (await storeStatus(env.store)).vms[0]
  t.equal(st?.inflightCycle, 0)
  t.ok(readFileSync(flatPath(env)).equals(imgA), 'mirror == committed image')
  const b = await Agent.connect(c2.url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(b, VM, 2, [planB()])
  b.close()
  t.equal(r.resume[0], 0, 'the cycle starts over')
  t.ok(readFileSync(flatPath(env)).equals(imgB))
})
const thens = ['resume', 'rollback-msg', 'rollback-cli'] as const

t.test('kill -9 during an incremental apply or its commit', async (t) => {
  let i = 0
  for (const fault of incFaults) {
    const then = thens[i++ % thens.length] as (typeof thens)[number]
    await t.test(`${fault} then ${then}`, async (t) => {
      const env = await seeded(t.testdir())
      await crashRun(t, env, fault, (url) => incRun(env, url))
      const c = await startChild(env, { args: ARGS })
      t.teardown(() => {
        c.child.kill('SIGKILL')
      })
      const st = (await storeStatus(env.store)).vms[0]
      const committed = st?.committedCycle
      t.ok(committed === 1 || committed === 2, `committed cycle ${String(committed)}`)
      if (fault.startsWith('commit-after') || fault.startsWith('commit-desc')) t.equal(committed, 2, 'past the commit point the commit holds')
      if (then === 'resume') {
        if (committed === 1) {
          const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
          const r = await runCycle(a, VM, 2, [planB()])
          a.close()
          t.ok((r.resume[0] ?? 0) >= 0, `resumed at seq ${String(r.resume[0])}`)
          if (fault.startsWith('target-synced')) t.ok((r.resume[0] ?? 0) > 0, 'resume point after a durable batch is not 0')
        }
        t.ok(readFileSync(flatPath(env)).equals(imgB), 'mirror == new image after resume')
      } else if (then === 'rollback-msg') {
        const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
        a.send(hello())
        await a.expect(MessageKind.Welcome)
        a.send(vmOpen(VM, 3, ['vm1-000002.vmdk']))
        const vs = await a.expect(MessageKind.VmState)
        a.send({ kind: MessageKind.Rollback, vm: VM })
        const rb = await a.expect(MessageKind.RolledBack)
        t.equal(rb.committedCycle, vs.committedCycle)
        a.close()
        await a.whenClosed()
        t.ok(readFileSync(flatPath(env)).equals(committed === 2 ? imgB : imgA), 'mirror == last committed image after rollback')
        if (committed === 1) {
          // the cycle can then be shipped afresh
          const b = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
          const r = await runCycle(b, VM, 2, [planB('c3'.repeat(8))])
          b.close()
          t.equal(r.resume[0], 0)
          t.ok(readFileSync(flatPath(env)).equals(imgB), 'fresh cycle after rollback == new image')
        }
      } else {
        await stopChild(c)
        const r = await rollbackMirror(env.store, VM)
        t.equal(r.committedCycle, committed)
        t.ok(readFileSync(flatPath(env)).equals(committed === 2 ? imgB : imgA), 'mirror == last committed image after rollbackMirror')
        const st2 = (await storeStatus(env.store)).vms[0]
        t.equal(st2?.needsRecovery, false)
        t.equal(st2?.disks[0]?.modified, false, 'descriptor CID and size match the state')
      }
    })
  }
})

t.test('kill -9 during a seed and a re-seed', async (t) => {
  const seedFaults = ['extent-written:2', 'target-synced:3', 'commit-before-state:1', 'commit-after-state:1', 'commit-renamed:1', 'commit-descriptors:1']
  for (const fault of seedFaults) {
    await t.test(`first seed, ${fault}`, async (t) => {
      const env = makeEnv(t.testdir())
      await crashRun(t, env, fault, async (url) => {
        const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
        await runCycle(a, VM, 1, [planA()])
      })
      const c = await startChild(env, { args: ARGS })
      t.teardown(() => {
        c.child.kill('SIGKILL')
      })
      const committed = (await storeStatus(env.store)).vms[0]?.committedCycle ?? 0
      if (fault.startsWith('commit-after') || fault.startsWith('commit-renamed') || fault.startsWith('commit-desc')) t.equal(committed, 1)
      if (committed === 0) {
        t.notOk(existsSync(flatPath(env)), 'no flat exposed before the commit')
        const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
        await runCycle(a, VM, 1, [planA()])
        a.close()
      }
      t.ok(readFileSync(flatPath(env)).equals(imgA), 'mirror == seed image')
    })
    await t.test(`re-seed over a mirror, ${fault}`, async (t) => {
      const env = await seeded(t.testdir())
      const imgC = pattern(CAP, 99)
      await crashRun(t, env, fault, async (url) => {
        const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
        await runCycle(a, VM, 2, [seedPlan(0, 'vm1.vmdk', imgC, 'cc'.repeat(8), EXT)])
      })
      const committed = (await storeStatus(env.store)).vms[0]?.committedCycle
      // while the receiver is down, before any recovery: the flat is a committed image
      const early = readFileSync(flatPath(env))
      if (committed === 1) t.ok(early.equals(imgA), 'a re-seed never touches the committed flat before its commit point')
      const r = await rollbackMirror(env.store, VM)
      t.ok(readFileSync(flatPath(env)).equals(r.committedCycle === 2 ? imgC : imgA), 'mirror == last committed image')
    })
  }
})

t.test('kill -9 during a seed whose data extents hold zero granules: resumed exact, the granules left holes', async (t) => {
  // extents of 256 KiB: data in the first 64 KiB granule, one byte in the last, zeros between; one extent all zeros
  const SEG = 4 * EXT
  const img = Buffer.alloc(CAP)
  for (let k = 0; k < CAP / SEG; k++) {
    if (k === 3) continue
    img.set(pattern(EXT, 40 + k), k * SEG)
    img[k * SEG + 3 * EXT + 17 * k] = 0xa0 + k
  }
  const plan = () => seedPlan(0, 'vm1.vmdk', img, 'e5'.repeat(8), SEG)
  for (const fault of ['extent-written:2', 'extent-written:5', 'target-synced:2', 'target-synced:4']) {
    await t.test(fault, async (t) => {
      const env = makeEnv(t.testdir())
      await crashRun(t, env, fault, async (url) => {
        const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
        await runCycle(a, VM, 1, [plan()])
      })
      const c = await startChild(env, { args: ARGS })
      t.teardown(() => {
        c.child.kill('SIGKILL')
      })
      if (((await storeStatus(env.store)).vms[0]?.committedCycle ?? 0) === 0) {
        const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
        await runCycle(a, VM, 1, [plan()])
        a.close()
      }
      t.ok(readFileSync(flatPath(env)).equals(img), 'mirror == seed image')
      // 7 data extents write 2 granules each; their 2 zero granules and the zero extent stay holes
      const allocated = statSync(flatPath(env)).blocks * 512
      t.ok(allocated <= 7 * 2 * EXT + EXT, `the flat holds the data granules only (${allocated} bytes allocated)`)
    })
  }
})

t.test('kill -9 during a two-disk cycle: both disks commit together or not at all', async (t) => {
  const imgD2 = pattern(MiB, 55)
  const planD2 = () => seedPlan(1, 'vm1_1.vmdk', imgD2, 'd2'.repeat(8), EXT)
  for (const fault of ['journal-synced:3', 'extent-written:20', 'commit-before-state:1', 'commit-after-state:1', 'commit-renamed:1', 'commit-descriptors:1']) {
    await t.test(fault, async (t) => {
      const env = await seeded(t.testdir())
      await crashRun(t, env, fault, async (url) => {
        const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
        await runCycle(a, VM, 2, [planB(), planD2()])
      })
      let st = (await storeStatus(env.store)).vms[0]
      const committed = st?.committedCycle
      const d2flat = join(env.store, VM, 'vm1_1-flat.vmdk')
      if (committed === 2) {
        // past the commit point: start-up recovery rolls the commit forward
        t.equal(st?.needsRecovery, true, 'status shows the pending roll-forward')
        await recoverStore(env.store, pino({ level: 'silent' }))
        st = (await storeStatus(env.store)).vms[0]
        t.equal(st?.needsRecovery, false)
        t.ok(readFileSync(flatPath(env)).equals(imgB), 'disk 1 at cycle 2')
        t.ok(readFileSync(d2flat).equals(imgD2), 'disk 2 at cycle 2')
        t.same(
          st?.disks.map((d) => d.committedCycle),
          [2, 2],
        )
      } else {
        t.equal(committed, 1)
        t.notOk(existsSync(d2flat), 'disk 2 not exposed')
        const r = await rollbackMirror(env.store, VM)
        t.equal(r.committedCycle, 1)
        t.ok(readFileSync(flatPath(env)).equals(imgA), 'disk 1 back at cycle 1')
        t.notOk(existsSync(d2flat))
        t.notOk(existsSync(d2flat + '.seed'), 'seed file of disk 2 removed')
      }
      // a restarted receiver finishes the job either way
      const c = await startChild(env, { args: ARGS })
      t.teardown(() => {
        c.child.kill('SIGKILL')
      })
      if (committed !== 2) {
        const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
        await runCycle(a, VM, 2, [planB('e5'.repeat(8)), planD2()])
        a.close()
      }
      t.ok(readFileSync(flatPath(env)).equals(imgB))
      t.ok(readFileSync(d2flat).equals(imgD2))
      const vmx = readFileSync(join(env.store, VM, 'vm1.vmx'), 'utf8')
      t.match(vmx, /scsi0:0.fileName = "vm1.vmdk"/)
      t.match(vmx, /scsi0:1.fileName = "vm1_1.vmdk"/)
    })
  }
})
