import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import type { Test } from 'tap'
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { MessageKind } from '@grainline/protocol'
import { Agent, MiB, TOKEN, diskOpen, evolve, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen, type DiskPlan, type Env } from './helpers.ts'

/*
 * Lineage (SPEC §5.8): every commit draws a random 128-bit generation,
 * recorded per disk and per VM and returned in Committed and VmState; an
 * incremental must name the generation it was planned against. A store put
 * back from a backup is at another generation than the one the agent
 * planned against (E_GENERATION); a store carried whole to another receiver
 * keeps its generations (offline seeding); a point committed before
 * generations has none and takes no incremental. (The pre-v2 receiver had no
 * generations at all and applied the incremental onto the stale mirror.)
 */

const VM = 'vm-l'
const img1 = pattern(2 * MiB, 1)
const step = (img: Buffer, n: number): { img: Buffer; ranges: Array<{ offset: number; length: number }> } => {
  const ranges = [{ offset: (n % 2) * MiB, length: 64 * 1024 }]
  return { img: evolve(img, 10 + n, ranges), ranges }
}
/** cycle n (≥ 2) of the VM: deltas alternate -000001 / -000002 as on ESXi */
const inc = (n: number, img: Buffer, ranges: Array<{ offset: number; length: number }>): DiskPlan => {
  const layer = n % 2 === 0 ? 'vm-l-000001.vmdk' : 'vm-l-000002.vmdk'
  const next = n % 2 === 0 ? 'vm-l-000002.vmdk' : 'vm-l-000001.vmdk'
  return incPlan(0, 'vm-l.vmdk', img, n - 1, `c${n}`, ranges, layer, next)
}

async function committed(t: Test, env: Env, url: string, cycle: number, plan: DiskPlan): Promise<string> {
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(a, VM, cycle, [plan])
  a.close()
  await a.whenClosed()
  const g = r.committed?.generation ?? ''
  t.match(g, /^[0-9a-f]{32}$/, `cycle ${cycle}: Committed carries a generation`)
  return g
}

async function openAt(env: Env, url: string, cycle: number): Promise<{ a: Agent; generation: string; committedCycle: number }> {
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  a.send(hello())
  await a.expect(MessageKind.Welcome)
  a.send(vmOpen(VM, cycle, []))
  const vs = await a.expect(MessageKind.VmState)
  return { a, generation: vs.generation, committedCycle: vs.committedCycle }
}

t.test('a store put back from a backup refuses the incremental planned against the newer point', async (t) => {
  const env = makeEnv(scratchDir(t))
  let rx = await startReceiver(env)
  const g1 = await committed(t, env, rx.url, 1, seedPlan(0, 'vm-l.vmdk', img1, '01'.repeat(8)))
  const s2 = step(img1, 2)
  const g2 = await committed(t, env, rx.url, 2, inc(2, s2.img, s2.ranges))
  t.not(g2, g1, 'a new generation per commit')
  await rx.receiver.close()
  const backup = join(env.dir, 'backup')
  cpSync(env.store, backup, { recursive: true })
  rx = await startReceiver(env)
  const s3 = step(s2.img, 3)
  const g3 = await committed(t, env, rx.url, 3, inc(3, s3.img, s3.ranges))
  const s4 = step(s3.img, 4)
  const g4 = await committed(t, env, rx.url, 4, inc(4, s4.img, s4.ranges))
  await rx.receiver.close()
  // the store goes back to its copy of cycle 2
  rmSync(env.store, { recursive: true })
  cpSync(backup, env.store, { recursive: true })
  rx = await startReceiver(env)
  t.teardown(() => rx.receiver.close())
  const o = await openAt(env, rx.url, 3)
  t.same({ c: o.committedCycle, g: o.generation }, { c: 2, g: g2 }, 'VmState: back at cycle 2, generation of cycle 2')
  // an agent that kept its record of cycle 4 plans against g4; the delta it would ship next has the
  // name the mirror recorded (-000001 / -000002 alternate), so only the generation tells them apart
  const s5 = step(s4.img, 5)
  const stale = { ...inc(3, s5.img, s5.ranges), baseCycle: 2 }
  o.a.send(diskOpen(stale, 3, VM, g4))
  const ds = await o.a.expect(MessageKind.DiskState)
  t.same({ accepted: ds.accepted, reason: ds.reason }, { accepted: false, reason: 'E_GENERATION' }, 'refused: never an incremental onto the stale mirror')
  t.not(g3, g4)
  o.a.close()
  await o.a.whenClosed()
})

t.test('a store carried whole to another receiver keeps its generations (offline seeding)', async (t) => {
  const base = scratchDir(t)
  const local = makeEnv(join(base, 'local'))
  let rx = await startReceiver(local)
  const g1 = await committed(t, local, rx.url, 1, seedPlan(0, 'vm-l.vmdk', img1, '01'.repeat(8)))
  await rx.receiver.close()
  const dr = makeEnv(join(base, 'dr'))
  cpSync(local.store, dr.store, { recursive: true })
  rx = await startReceiver(dr)
  t.teardown(() => rx.receiver.close())
  const o = await openAt(dr, rx.url, 2)
  t.equal(o.generation, g1, 'the DR receiver reports the generation of the local seed')
  o.a.close()
  await o.a.whenClosed()
  const s2 = step(img1, 2)
  await committed(t, dr, rx.url, 2, inc(2, s2.img, s2.ranges))
  t.ok(readFileSync(join(dr.store, VM, 'vm-l-flat.vmdk')).equals(s2.img), 'the incremental continues the carried mirror')
})

t.test('a point committed before generations takes no incremental', async (t) => {
  const env = makeEnv(scratchDir(t))
  let rx = await startReceiver(env)
  await committed(t, env, rx.url, 1, seedPlan(0, 'vm-l.vmdk', img1, '01'.repeat(8)))
  await rx.receiver.close()
  // a state file from before generations
  const statePath = join(env.store, VM, '.grainline', 'state.json')
  const s = JSON.parse(readFileSync(statePath, 'utf8')) as { generation?: string; disks: Record<string, { generation?: string }> }
  delete s.generation
  for (const d of Object.values(s.disks)) delete d.generation
  writeFileSync(statePath, JSON.stringify(s))
  rx = await startReceiver(env)
  t.teardown(() => rx.receiver.close())
  const o = await openAt(env, rx.url, 2)
  t.equal(o.generation, '', 'VmState: no generation')
  const s2 = step(img1, 2)
  o.a.send(diskOpen(inc(2, s2.img, s2.ranges), 2, VM, 'ab'.repeat(16)))
  t.equal((await o.a.expect(MessageKind.DiskState)).reason, 'E_GENERATION', 'an incremental is refused: the agent resyncs')
  o.a.close()
  await o.a.whenClosed()
  const b = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(b, VM, 2, [seedPlan(0, 'vm-l.vmdk', s2.img, '02'.repeat(8))])
  b.close()
  t.match(r.committed?.generation, /^[0-9a-f]{32}$/, 'the resync commits a generation')
})
