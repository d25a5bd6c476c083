import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { committedCycleIdentity, MessageKind, type Message } from '@grainline/protocol'
import { Agent, MiB, TOKEN, diskOpen, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen, type DiskPlan, type Env } from './helpers.ts'

/**
 * SPEC §4.2, §5.10 (protocol v8): the receiver records the identity of every
 * commit (the cycle's disks by name and cycleId) in the VM's state and reports
 * it as VmState.committedCycleId on version 8, so that an agent whose
 * Committed was lost tells its own commit of a cycle from another writer's.
 * Before it, VmState named the committed cycle and its generation only.
 */

const V8 = [8, 7, 6, 5, 4, 3, 2]
const V7 = [7, 6, 5, 4, 3, 2]

/** Hello (offering `versions`), VmOpen of `cycle`: the VmState, as decoded (a field the receiver left out is absent). */
async function vmState(env: Env, url: string, vm: string, cycle: number, versions: readonly number[]): Promise<Extract<Message, { kind: typeof MessageKind.VmState }>> {
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  try {
    a.send(hello('sha256', 'none', versions))
    await a.expect(MessageKind.Welcome)
    a.send(vmOpen(vm, cycle, ['a-000001.vmdk', 'b-000001.vmdk']))
    for (;;) {
      const m = await a.next()
      if (m === undefined) throw new Error(`closed ${JSON.stringify(a.closed)}`)
      if (m.kind === MessageKind.VmState) return m
    }
  } finally {
    a.close()
    await a.whenClosed()
  }
}

/** SPEC §5.10 of a cycle's plans, by the cycleIds of the DiskOpens runCycle sends (helpers.ts diskOpen) */
function identityOf(vm: string, cycle: number, plans: readonly DiskPlan[], generation = ''): string {
  return committedCycleIdentity(plans.map((d) => ({ name: d.name, cycleId: diskOpen(d, cycle, vm, generation).cycleId })))
}

const stateFile = (env: Env, vm: string): string => join(env.store, vm, '.grainline', 'state.json')

t.test('VmState on version 8 carries the identity of the committed cycle the receiver recorded, after a restart too; version 7 gets no such field', async (t) => {
  const env = makeEnv(scratchDir(t))
  let rx = await startReceiver(env)
  t.teardown(() => rx.receiver.close())
  const vm = 'web-id'
  const imgA = pattern(MiB, 31)
  const imgB = pattern(MiB, 32)
  // nothing committed yet: ""
  t.equal((await vmState(env, rx.url, vm, 1, V8)).committedCycleId, '', 'no mirror: ""')
  const seed = [seedPlan(0, 'b.vmdk', imgB, 'b1'.repeat(32)), seedPlan(1, 'a.vmdk', imgA, 'a1'.repeat(32))]
  let a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, seed, { versions: V8 })
  a.close()
  const id1 = identityOf(vm, 1, seed)
  const s1 = await vmState(env, rx.url, vm, 1, V8)
  t.match(s1, { committedCycle: 1, committedCycleId: id1 }, "the reopening of the committed cycle hears that cycle's identity")
  t.match(JSON.parse(readFileSync(stateFile(env, vm), 'utf8')), { committedCycle: 1, committedIdentity: { cycle: 1, generation: s1.generation, id: id1 } }, 'recorded with the commit')
  // another writer's cycle 1 (another source: other cycleIds) would have another identity
  t.not(id1, identityOf(vm, 1, [seed[0] as DiskPlan, { ...(seed[1] as DiskPlan), source: { ...(seed[1] as DiskPlan).source, successor: 'a-000009.vmdk' } }]))
  // a version 7 connection: as before, no field (a v7 decoder refuses an unknown one)
  const old = await vmState(env, rx.url, vm, 1, V7)
  t.equal(old.committedCycle, 1)
  t.notOk('committedCycleId' in old, 'not sent on version 7')
  // the next commit, made on a version 7 connection, is recorded too (its disks' cycleIds are the same whatever the version)
  a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  const r = [{ offset: 0, length: 65536 }]
  const inc = [incPlan(0, 'a.vmdk', imgA, 1, 'a2'.repeat(32), r, 'a-000001.vmdk', 'a-000002.vmdk'), incPlan(1, 'b.vmdk', imgB, 1, 'b2'.repeat(32), r, 'b-000001.vmdk', 'b-000002.vmdk')]
  await runCycle(a, vm, 2, inc, { versions: V7 })
  a.close()
  const id2 = identityOf(vm, 2, inc, s1.generation)
  t.not(id2, id1)
  // a receiver restarted in between reports it from the VM's state
  await rx.receiver.close()
  rx = await startReceiver(env)
  t.match(await vmState(env, rx.url, vm, 2, V8), { committedCycle: 2, committedCycleId: id2 }, 'after a restart')
  t.match(await vmState(env, rx.url, vm, 3, V8), { committedCycle: 2, committedCycleId: id2 }, "the next cycle's VmOpen hears it as well")
})

t.test('a recorded identity of another commit (a state an older receiver wrote over, carrying the field along) is reported as "", never as this commit\'s', async (t) => {
  const env = makeEnv(scratchDir(t))
  const rx = await startReceiver(env)
  t.teardown(() => rx.receiver.close())
  const vm = 'web-stale'
  const a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'a.vmdk', pattern(MiB, 33), 'a3'.repeat(32))], { versions: V8 })
  a.close()
  const s = JSON.parse(readFileSync(stateFile(env, vm), 'utf8')) as { committedIdentity: { cycle: number; generation: string; id: string } }
  const rec = s.committedIdentity
  for (const [what, other] of [
    ['an older cycle', { ...rec, cycle: 0 + 7 }],
    ['another generation', { ...rec, generation: 'f'.repeat(32) }],
  ] as const) {
    writeFileSync(stateFile(env, vm), JSON.stringify({ ...s, committedIdentity: other }))
    t.match(await vmState(env, rx.url, vm, 1, V8), { committedCycle: 1, committedCycleId: '' }, what)
  }
  // a state without the record (a commit of a receiver before version 8): ""
  const { committedIdentity: _gone, ...older } = s
  writeFileSync(stateFile(env, vm), JSON.stringify(older))
  t.match(await vmState(env, rx.url, vm, 1, V8), { committedCycle: 1, committedCycleId: '' }, 'no record')
})

t.test('a hostile committedIdentity in state.json is refused (E_STATE) where the state is read, before it could be reported', async (t) => {
  const { checkStateNames } = await import('../src/state-names.ts')
  const { VmPaths } = await import('../src/vm-paths.ts')
  const paths = new VmPaths(scratchDir(t), 'web')
  const st = (committedIdentity: unknown): Record<string, unknown> => ({ vm: 'web', disks: {}, committedCycle: 3, committedIdentity })
  const good = { cycle: 3, generation: '0123456789abcdef'.repeat(2), id: 'ab'.repeat(32) }
  t.doesNotThrow(() => checkStateNames(paths, st(good)), 'the record the receiver writes')
  t.doesNotThrow(() => checkStateNames(paths, { vm: 'web', disks: {} }), 'none (a state older than it)')
  // a later receiver's record with a field this one does not know: a downgrade keeps the VM's state readable
  t.doesNotThrow(() => checkStateNames(paths, st({ ...good, extra: 'x' })), 'a record with a field of a later receiver')
  for (const bad of [
    { ...good, id: 'AB'.repeat(32) },
    { ...good, id: 'ab'.repeat(33) },
    { ...good, id: `${'ab'.repeat(31)}"\n` },
    { ...good, id: 7 },
    { ...good, generation: '' },
    { ...good, cycle: -1 },
    { ...good, cycle: 1.5 },
    { ...good, cycle: '3' },
    { cycle: 3, id: good.id },
    'ab'.repeat(32),
    [good],
    null,
  ]) {
    t.throws(
      () => checkStateNames(paths, st(bad)),
      { code: 'E_STATE', message: /VM web: .*state\.json has committedIdentity = .*Put back \.grainline\/state\.json from a backup/ },
      JSON.stringify(bad),
    )
  }
  // through a session: the VmOpen of such a VM is refused (E_STATE is no protocol code: it travels as E_IO with its words), nothing reported
  const env = makeEnv(scratchDir(t))
  const rx = await startReceiver(env)
  t.teardown(() => rx.receiver.close())
  const vm = 'web-hostile'
  const a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'a.vmdk', pattern(MiB, 34), 'a4'.repeat(32))], { versions: V8 })
  a.close()
  const s = JSON.parse(readFileSync(stateFile(env, vm), 'utf8')) as Record<string, unknown>
  writeFileSync(stateFile(env, vm), JSON.stringify({ ...s, committedIdentity: { ...(s['committedIdentity'] as object), id: 'not hex' } }))
  const b = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  b.send(hello('sha256', 'none', V8))
  await b.expect(MessageKind.Welcome)
  b.send(vmOpen(vm, 1, ['a-000001.vmdk']))
  const m = await b.next()
  t.match(m, { kind: MessageKind.Error, code: 'E_IO', message: /VM web-hostile: .*state\.json has committedIdentity = .*64 lowercase hex digits/ }, 'the VmOpen fails on the state (E_STATE)')
  b.close()
  await b.whenClosed()
})

t.test('a hostile committedIdentity in a Ceph state object is refused (E_STATE) where the object is read', async (t) => {
  const { chmodSync, mkdirSync } = await import('node:fs')
  const { readCephState } = await import('../src/store/ceph/ceph-state.ts')
  // a fake `rados` on PATH stands in for the cluster (as in store-hostile.test): `get` prints the state object
  const base = scratchDir(t)
  const bin = join(base, 'bin')
  mkdirSync(bin)
  writeFileSync(join(bin, 'rados'), `#!/bin/sh\ncat "${base}/state.json"\n`)
  chmodSync(join(bin, 'rados'), 0o755)
  const path = process.env['PATH']
  process.env['PATH'] = `${bin}:${path}`
  t.teardown(() => {
    process.env['PATH'] = path
  })
  const generation = '0123456789abcdef'.repeat(2)
  const state = (committedIdentity: unknown): Record<string, unknown> => ({
    format: 'grainline-ceph-vm-1',
    vm: 'web',
    committedCycle: 3,
    committedAt: '2026-01-01T00:00:00.000Z',
    generation,
    compat: null,
    disks: {},
    inflight: null,
    points: [],
    files: {},
    pending: null,
    ...(committedIdentity === undefined ? {} : { committedIdentity }),
  })
  const good = { cycle: 3, generation, id: 'cd'.repeat(32) }
  for (const ok of [good, undefined]) {
    writeFileSync(join(base, 'state.json'), JSON.stringify(state(ok)))
    t.match(await readCephState({ pool: 'p' }, 'grainline.vm.web', 'web'), { committedCycle: 3 }, `read: ${JSON.stringify(ok)}`)
  }
  for (const bad of [{ ...good, id: 'xyz' }, { ...good, cycle: 0 }, { ...good, generation: null }, 'cd'.repeat(32)]) {
    writeFileSync(join(base, 'state.json'), JSON.stringify(state(bad)))
    await t.rejects(
      readCephState({ pool: 'p' }, 'grainline.vm.web', 'web'),
      { code: 'E_STATE', message: /VM web: state object grainline\.vm\.web in pool p has committedIdentity = .*put it back from a backup of the pool/ },
      JSON.stringify(bad),
    )
  }
})
