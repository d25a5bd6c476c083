import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { MessageKind, createDigest, type Message } from '@grainline/protocol'
import { storeStatus } from '../src/index.ts'
import { Agent, MiB, TOKEN, diskEnd, diskOpen, evolve, extentMessage, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen, type DiskPlan, type Env } from './helpers.ts'

/*
 * A mirror that is never silently wrong: an incompatible VM (SPEC §4.2) gets
 * no incremental (E_INCOMPATIBLE) and its compat record changes only at a
 * commit; a failed trivial check or certify marks the disk diverged, which
 * refuses incrementals (E_DIVERGED) until a seed is committed. Before, both
 * incrementals were accepted and the compat record was replaced at VmOpen.
 */

const img1 = pattern(2 * MiB, 1)
const ranges = [{ offset: 0, length: 64 * 1024 }]
const img2 = evolve(img1, 2, ranges)
const inc = (vm: string, handle = 0): DiskPlan => incPlan(handle, `${vm}.vmdk`, img2, 1, 'x', ranges, `${vm}-000001.vmdk`, `${vm}-000002.vmdk`)

function stateOf(env: Env, vm: string): { compat: { hwVersion: number } | null; disks: Record<string, { diverged?: { reason: string } }> } {
  return JSON.parse(readFileSync(join(env.store, vm, '.grainline', 'state.json'), 'utf8')) as never
}

async function ship(a: Agent, d: DiskPlan): Promise<void> {
  for (let seq = 0; seq < d.extents.length; seq++) a.send(extentMessage(d, seq, 'sha256'))
  a.send(diskEnd(d, 'sha256'))
  for (;;) {
    const m = await a.next()
    if (m?.kind === MessageKind.DiskEnded) return
    if (m?.kind !== MessageKind.ExtentAck) throw new Error(`unexpected ${String(m?.kind)}`)
  }
}

async function open(env: Env, url: string, vm: string, hwVersion = 14): Promise<{ a: Agent; compatible: boolean; generation: string }> {
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  a.send(hello())
  await a.expect(MessageKind.Welcome)
  const m = vmOpen(vm, 2, [`${vm}-000001.vmdk`]) as Extract<Message, { kind: typeof MessageKind.VmOpen }>
  a.send({ ...m, compat: { ...m.compat, hwVersion } })
  const vs = await a.expect(MessageKind.VmState)
  return { a, compatible: vs.compatible, generation: vs.generation }
}

t.test('compatibility: an incompatible VM gets no incremental; the record changes at a commit only', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const s = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(s, 'vm-c', 1, [seedPlan(0, 'vm-c.vmdk', img1, '01'.repeat(8))])
  s.close()
  await s.whenClosed()
  t.equal(stateOf(env, 'vm-c').compat?.hwVersion, 14)

  const { a, compatible, generation } = await open(env, url, 'vm-c', 19)
  t.equal(compatible, false, 'VmState: not compatible')
  a.send(diskOpen(inc('vm-c'), 2, 'vm-c', generation))
  const ds = await a.expect(MessageKind.DiskState)
  t.same({ accepted: ds.accepted, reason: ds.reason }, { accepted: false, reason: 'E_INCOMPATIBLE' }, 'the incremental is refused')
  a.close()
  await a.whenClosed()
  t.equal(stateOf(env, 'vm-c').compat?.hwVersion, 14, 'the record is unchanged by a VmOpen')
  t.notOk(existsSync(join(env.store, 'vm-c', '.grainline', 'compat.json')), 'nothing staged for it either')
  t.equal(
    (
      await open(env, url, 'vm-c', 14).then(async (o) => {
        o.a.close()
        await o.a.whenClosed()
        return o
      })
    ).compatible,
    true,
    'the old hardware is still compatible',
  )

  // a seed (after operator action) is accepted and its commit records the new hardware
  const b = await open(env, url, 'vm-c', 19)
  const sd = seedPlan(0, 'vm-c.vmdk', img2, '02'.repeat(8))
  b.a.send(diskOpen(sd, 2, 'vm-c'))
  t.equal((await b.a.expect(MessageKind.DiskState)).accepted, true)
  await ship(b.a, sd)
  b.a.send({ kind: MessageKind.Commit, vm: 'vm-c', cycle: 2, retention: null })
  await b.a.expect(MessageKind.Committed)
  b.a.close()
  await b.a.whenClosed()
  t.equal(stateOf(env, 'vm-c').compat?.hwVersion, 19, 'recorded at the commit')
})

t.test('divergence: a failed check refuses incrementals until a seed commits', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const s = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(s, 'vm-d', 1, [seedPlan(0, 'vm-d.vmdk', img1, '01'.repeat(8))])
  // the agent's frozen source differs from what was shipped (a wrong prefix digest)
  s.send({ kind: MessageKind.TrivialCheck, disk: 0, prefixBytes: MiB, algorithm: 'sha256', size: img1.length, digest: createDigest('sha256').update(img2.subarray(0, MiB)).digest() })
  t.equal((await s.expect(MessageKind.TrivialResult)).ok, false)
  s.close()
  await s.whenClosed()
  t.match(stateOf(env, 'vm-d').disks['vm-d.vmdk']?.diverged, { reason: /trivial check/ }, 'state.json marks the disk diverged')
  t.match((await storeStatus(env.store)).vms[0]?.disks[0]?.diverged, { reason: /trivial check \(sha256\) of cycle 1 failed/ }, 'status shows it')
  t.ok(
    logs.lines.some((l) => l['msg'] === 'mirror differs from its source: marked diverged, the next cycle must seed it'),
    'logged',
  )

  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  t.equal(
    await runCycle(a, 'vm-d', 2, [inc('vm-d')]).then(
      () => 'accepted',
      (err: { reason?: string }) => err.reason,
    ),
    'E_DIVERGED',
    'the incremental is refused',
  )
  // the same connection seeds it under a new handle
  const sd = seedPlan(1, 'vm-d.vmdk', img2, '02'.repeat(8))
  a.send(diskOpen(sd, 2, 'vm-d'))
  t.equal((await a.expect(MessageKind.DiskState)).accepted, true)
  await ship(a, sd)
  a.send({ kind: MessageKind.Commit, vm: 'vm-d', cycle: 2, retention: null })
  await a.expect(MessageKind.Committed)
  a.send({ kind: MessageKind.Certify, disk: 1, algorithm: 'sha256', digest: createDigest('sha256').update(img2).digest() })
  t.equal((await a.expect(MessageKind.CertifyResult)).ok, true)
  a.close()
  await a.whenClosed()
  t.equal(stateOf(env, 'vm-d').disks['vm-d.vmdk']?.diverged, undefined, 'the seed cleared it')
  t.equal((await storeStatus(env.store)).vms[0]?.disks[0]?.diverged, null)

  const ranges3 = [{ offset: MiB, length: 64 * 1024 }]
  const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(c, 'vm-d', 3, [incPlan(0, 'vm-d.vmdk', evolve(img2, 3, ranges3), 2, 'y', ranges3, 'vm-d-000001.vmdk', 'vm-d-000002.vmdk')])
  c.close()
  t.equal(r.committed?.cycle, 3, 'incrementals are accepted again')
})
