import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import type { Test } from 'tap'
import { cpSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { JOURNAL_PIECE, MAX_JOURNAL_RECORD, readJournal } from '../src/journal.ts'
import { rollbackMirror, storeStatus } from '../src/index.ts'
import { MessageKind } from '@grainline/protocol'
import { Agent, MiB, TOKEN, diskOpen, extentMessage, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startChild, startReceiver, vmOpen, type Env } from './helpers.ts'

/*
 * A large in-place zero extent (bigger than one journal piece) followed by a
 * data extent, killed (SIGKILL) at points before, inside and after it: the
 * old contents are journaled in bounded pieces, so a rollback restores the
 * committed image exactly and a resume reaches the new image exactly.
 */

// 16 receiver processes, each writing and killed around a 40 MiB zero extent: more than tap's 10 minutes on a loaded machine
t.setTimeout(40 * 60_000)

const VM = 'vm1'
const ZERO = 5 * JOURNAL_PIECE // 40 MiB
const CAP = ZERO + 2 * MiB
const imgA = Buffer.alloc(CAP, 7)
const imgB = Buffer.from(imgA)
imgB.fill(0, MiB, MiB + ZERO)
pattern(MiB, 3).copy(imgB, MiB + ZERO)
const ranges = [
  { offset: MiB, length: ZERO },
  { offset: MiB + ZERO, length: MiB },
]
const planA = () => seedPlan(0, 'vm1.vmdk', imgA, 'a1'.repeat(8))
const incB = incPlan(0, 'vm1.vmdk', imgB, 1, 'b2'.repeat(8), ranges, 'vm1-000001.vmdk', 'vm1-000002.vmdk', ZERO)
const planB = () => incB
const flatPath = (env: Env): string => join(env.store, VM, 'vm1-flat.vmdk')
const ARGS = ['--batch-bytes', String(MiB), '--log-level', 'warn']

t.equal(planB().extents.length, 2, 'the plan is one zero extent and one data extent')
t.equal(planB().extents[0]?.zero, true)

const base = scratchDir(t)
let seededStore: string | undefined

/** A store holding the committed seed (seeded once, then copied). */
async function seeded(dir: string): Promise<Env> {
  const env = makeEnv(dir)
  if (seededStore !== undefined) {
    cpSync(seededStore, env.store, { recursive: true })
    return env
  }
  seededStore = join(base, 'seeded')
  const c = await startChild(env, { args: ARGS })
  const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, VM, 1, [planA()])
  a.close()
  await a.whenClosed()
  c.child.kill('SIGTERM')
  await c.exited
  cpSync(env.store, seededStore, { recursive: true })
  return env
}

async function crashRun(t: Test, env: Env, fault: string): Promise<void> {
  const c = await startChild(env, { fault, args: ARGS })
  await (async () => {
    const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, VM, 2, [planB()])
  })().catch(() => {})
  const e = await Promise.race([c.exited, new Promise<{ code: null; signal: 'timeout' }>((resolve) => setTimeout(() => resolve({ code: null, signal: 'timeout' }), 20000).unref())])
  if (e.signal === 'timeout') c.child.kill('SIGKILL')
  t.equal(e.signal, 'SIGKILL', `killed at ${fault}`)
}

t.test('the old contents of a large zero extent are journaled in bounded pieces', async (t) => {
  const env = await seeded(scratchDir(t))
  await crashRun(t, env, 'journal-synced:1')
  const c = await readJournal(join(env.store, VM, '.grainline', 'vm1.journal'))
  const recs = (c?.extents ?? []).filter((e) => e.seq === 0)
  t.equal(recs.length, ZERO / JOURNAL_PIECE, 'one record per piece')
  t.ok(
    recs.every((e) => e.oldLength <= JOURNAL_PIECE && e.oldLength < MAX_JOURNAL_RECORD),
    'no record larger than a piece',
  )
  t.same(
    recs.map((e) => e.oldOffset),
    recs.map((_e, i) => MiB + i * JOURNAL_PIECE),
    'each piece carries its own offset',
  )
  t.equal(
    recs.reduce((s, e) => s + e.oldLength, 0),
    ZERO,
    'the pieces cover the range',
  )
  t.ok(
    recs.every((e) => e.offset === MiB && e.length === ZERO && e.zero),
    'each piece names its extent',
  )
})

const faults = ['journal-piece:2', 'journal-synced:1', 'zero-piece:3', 'extent-written:1', 'target-synced:1', 'extent-written:2', 'target-synced:2']

t.test('kill -9 around a zero extent larger than a journal piece', async (t) => {
  for (const fault of faults) {
    await t.test(fault, async (t) => {
      const env = await seeded(scratchDir(t))
      await crashRun(t, env, fault)
      t.equal((await storeStatus(env.store)).vms[0]?.committedCycle, 1, 'nothing committed')
      // a copy of the interrupted store for the resume; it stands for the store itself, found in place after the
      // crash: the killed receiver's lock and store marker go from it (a copy of them, of another inode than they
      // record, says the store was copied while a receiver held it: vm-lock.ts lockIsCopy, and no resume on it)
      const env2 = makeEnv(join(env.dir, 'resume'))
      cpSync(env.store, env2.store, { recursive: true })
      rmSync(join(env2.store, VM, '.grainline', 'lock'), { force: true })
      rmSync(join(env2.store, '.grainline-receiver'), { force: true })

      const r = await rollbackMirror(env.store, VM)
      t.equal(r.committedCycle, 1)
      t.equal(r.rolledBack, true)
      t.ok(readFileSync(flatPath(env)).equals(imgA), 'rolled back: mirror == committed image')

      const c = await startChild(env2, { args: ARGS })
      t.teardown(() => {
        c.child.kill('SIGKILL')
      })
      const a = await Agent.connect(c.url, { token: TOKEN, ca: env2.tls.ca })
      const res = await runCycle(a, VM, 2, [planB()])
      a.close()
      t.ok(res.resume[0] === 0 || res.resume[0] === 1, `resumed at seq ${String(res.resume[0])}`)
      t.ok(readFileSync(flatPath(env2)).equals(imgB), 'resumed: mirror == new image')
    })
  }
})

t.test('in-place zero extents count at their full length towards batchBytes', async (t) => {
  // 16 zero extents of 256 KiB over a seeded mirror, batches of 1 MiB, a long
  // idle wait so that only the byte count ends a batch: at most 4 per batch
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { batchBytes: MiB, batchIdleMs: 2000 })
  t.teardown(() => receiver.close())
  const img1 = Buffer.alloc(4 * MiB, 7)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'vm-z', 1, [seedPlan(0, 'vm-z.vmdk', img1, '01'.repeat(8))])
  a.close()
  await a.whenClosed()
  const img2 = Buffer.alloc(4 * MiB)
  const plan = incPlan(0, 'vm-z.vmdk', img2, 1, 'z', [{ offset: 0, length: 4 * MiB }], 'vm-z-000001.vmdk', 'vm-z-000002.vmdk', MiB / 4)
  t.equal(plan.extents.length, 16)
  t.ok(plan.extents.every((e) => e.zero))
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  b.send(hello())
  await b.expect(MessageKind.Welcome)
  b.send(vmOpen('vm-z', 2, []))
  const vs = await b.expect(MessageKind.VmState)
  b.send(diskOpen(plan, 2, 'vm-z', vs.generation))
  t.equal((await b.expect(MessageKind.DiskState)).accepted, true)
  for (let seq = 0; seq < 16; seq++) b.send(extentMessage(plan, seq, 'sha256'))
  const acks: number[] = []
  while (acks.length === 0 || acks[acks.length - 1] !== 15) acks.push((await b.expect(MessageKind.ExtentAck)).seq)
  t.same(acks, [3, 7, 11, 15], 'a batch ends at 1 MiB of zero extents (was: all 16 in one batch)')
  b.close()
  await b.whenClosed()
})
