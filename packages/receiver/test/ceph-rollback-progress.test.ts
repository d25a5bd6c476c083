// A Rollback on a Ceph store is heard (SPEC §4.3): its image undo (`rbd snap
// rollback`) rewrites every object of the image — minutes for a TiB — so it
// reports VmProgress (step 'undo', version 5 and later) at the start, while
// it runs (a heartbeat that moves forward: the agent's wait restarts) and at
// the end, and logs its start and end with the totals (ceph-mirror.ts
// rollback). It runs under its own deadline scaled to the image's capacity
// (cephRollbackDeadlineMs), not the session client's command deadline: on a
// real one-node cluster, the session helper stalled (SIGSTOP) during the undo
// for longer than the command deadline, the rollback still ends, the image
// back at cycle 1, where it used to kill the client (E_IO, lease given up,
// cycle left in flight).
import t from 'tap'
import { join } from 'node:path'
import { haveCeph, scratchDir, startCephCluster } from '@grainline/test-utils'
import { MessageKind, PROTOCOL_VERSIONS, type Message, type VmProgressMessage } from '@grainline/protocol'
import { CephLock } from '../src/store/ceph/ceph-lock.ts'
import { cephRollbackDeadlineMs, cephRollbackTimes } from '../src/store/ceph/ceph-mirror.ts'
import { CephNames, readCephState } from '../src/store/ceph/ceph-state.ts'
import { cephTimeouts } from '../src/store/ceph/rbd-cli.ts'
import { Agent, MiB, TOKEN, evolve, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen } from './helpers.ts'

const POOL = 'glrbprog'
const cid = (n: number): string => n.toString(16).padStart(32, '0')
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-common)'

t.test('cephRollbackDeadlineMs: the command deadline plus 20 ms per 4 MiB object', async (t) => {
  t.equal(cephRollbackDeadlineMs(0), cephTimeouts.commandMs)
  t.equal(cephRollbackDeadlineMs(4 * MiB + 1), cephTimeouts.commandMs + 2 * 20)
  t.equal(cephRollbackDeadlineMs(2 ** 40), cephTimeouts.commandMs + 262_144 * 20, '1 TiB: 10 min + 87 min')
})

t.test('a slow Ceph rollback is heard as VmProgress while it runs and outlives the command deadline', { skip }, async (t) => {
  const ceph = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const target = { pool: POOL, conf: ceph.conf }
  const env = makeEnv(join(scratchDir(t, 'grainline-ceph-rbprog-'), 'env'))
  const { receiver, url, logs } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10 })
  t.teardown(() => receiver.close())
  const vm = 'vm-rb-progress'
  const CAP = 8 * MiB
  const img1 = pattern(CAP, 71)
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'p.vmdk', img1, cid(71))])
  a.close()
  const ranges = [{ offset: MiB, length: 3 * MiB }]
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 2, [incPlan(0, 'p.vmdk', evolve(img1, 72, ranges), 1, cid(72), ranges, 'p-000001.vmdk', 'p-000002.vmdk')], { commit: false })
  a.close()
  t.equal((await readCephState(target, new CephNames(vm).state, vm))?.inflight?.cycle, 2, 'cycle 2 is in flight')

  // the undo made slow: the session helper stalls (SIGSTOP) for STALL_MS as the rollback request goes to it, longer
  // than the command deadline; the heartbeat every 100 ms
  const STALL_MS = 4000
  const saved = { commandMs: cephTimeouts.commandMs, times: { ...cephRollbackTimes } }
  const snap = CephLock.prototype.snap
  const deadlines: Array<number | undefined> = []
  t.teardown(() => {
    CephLock.prototype.snap = snap
    cephTimeouts.commandMs = saved.commandMs
    Object.assign(cephRollbackTimes, saved.times)
  })
  CephLock.prototype.snap = async function (this: CephLock, op, image, name, timeoutMs) {
    if (op !== 'rollback') return await snap.call(this, op, image, name, timeoutMs)
    deadlines.push(timeoutMs)
    const pid = this.helperPid as number
    process.kill(pid, 'SIGSTOP')
    const resume = setTimeout(() => process.kill(pid, 'SIGCONT'), STALL_MS)
    try {
      return await snap.call(this, op, image, name, timeoutMs)
    } finally {
      clearTimeout(resume)
      process.kill(pid, 'SIGCONT')
    }
  }

  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  t.teardown(() => a.close())
  a.send(hello('sha256', 'none', PROTOCOL_VERSIONS))
  await a.expect(MessageKind.Welcome)
  a.send(vmOpen(vm, 2, ['p-000002.vmdk']))
  t.equal((await a.expect(MessageKind.VmState)).inflightCycle, 2)
  // from here the command deadline is 2 s (the undo's own: 2 s + 2 objects × 5 s: margin for a loaded CI machine), the heartbeat 100 ms
  cephTimeouts.commandMs = 2000
  cephRollbackTimes.heartbeatMs = 100
  cephRollbackTimes.deadlineMsPerObject = 5000
  const t0 = performance.now()
  a.send({ kind: MessageKind.Rollback, vm })
  const progress: Array<VmProgressMessage & { atMs: number }> = []
  let answer: Message | undefined
  for (;;) {
    answer = await a.next()
    if (answer?.kind !== MessageKind.VmProgress) break
    progress.push({ ...answer, atMs: performance.now() - t0 })
  }
  cephTimeouts.commandMs = saved.commandMs
  t.match(answer, { kind: MessageKind.RolledBack, vm, committedCycle: 1 }, `RolledBack after the stall (got ${JSON.stringify(answer)}, errors ${a.errors.join(',')})`)
  t.ok(performance.now() - t0 >= STALL_MS, 'the answer came after the stall')
  t.same(deadlines, [2000 + 2 * 5000], 'the undo ran under its deadline scaled to the capacity')
  t.ok(progress.length >= 10, `VmProgress while the undo ran (${progress.length} frames)`)
  t.ok(
    progress.every((p) => p.vm === vm && p.step === 'undo' && p.totalBytes === CAP),
    'each one of the VM, step undo, the disks capacity as the total',
  )
  t.equal(progress[0]?.doneBytes, 0, 'the first one as the undo starts')
  t.equal(progress.at(-1)?.doneBytes, CAP, 'the last one as it ends')
  const during = progress.slice(1, -1)
  t.ok(
    during.every((p, i) => p.doneBytes > (progress[i]?.doneBytes ?? 0) && p.doneBytes < CAP),
    'the heartbeats move forward (the agent restarts its wait only on progress), below the total',
  )
  // the stall fed: no gap between frames near the stall's length
  const gaps = progress.slice(1).map((p, i) => p.atMs - (progress[i]?.atMs ?? 0))
  t.ok(Math.max(...gaps) < STALL_MS / 2, `no long silence (longest gap ${Math.round(Math.max(...gaps))} ms)`)

  const lines = logs.lines.filter((l) => l['vm'] === vm && l['step'] === 'undo')
  t.match(lines[0], { cycle: 2, doneBytes: 0, totalBytes: CAP, disks: 1, msg: /^rolling back the in-flight cycle/ }, 'logged as it starts, with the totals')
  t.match(lines.at(-1), { cycle: 2, doneBytes: CAP, totalBytes: CAP, msg: 'in-flight cycle undone' }, '… and as it ends')
  t.equal((await readCephState(target, new CephNames(vm).state, vm))?.inflight, null, 'nothing in flight')

  // the mirror is at cycle 1 again: cycle 2 ships again and commits
  a.close()
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(a, vm, 2, [incPlan(0, 'p.vmdk', evolve(img1, 72, ranges), 1, cid(72), ranges, 'p-000001.vmdk', 'p-000002.vmdk')])
  t.equal(r.resume[0], 0, 'the cycle starts over')
  t.equal(r.committed?.cycle, 2, 'and commits')
  a.close()
  await receiver.close()
})
