/** Table-driven tests of the pure planning decisions (cycle-plan.ts). */
import t from 'tap'
import type { CommittedRecord, InflightRecord } from '../src/agent-state.ts'
import { decideLineage, decideSnapshot, needsRollback, planAfterRefusal, planDisk, type Lineage, type MirrorFacts } from '../src/cycle-plan.ts'
import { refusalError } from '../src/receiver-client.ts'
import type { SnapshotRef } from '../src/driver.ts'

const G1 = '0123456789abcdef0123456789abcdef'
const G2 = 'fedcba9876543210fedcba9876543210'
const snap = (name: string, id: string, disks: SnapshotRef['disks'] = []): SnapshotRef => ({
  id,
  name,
  grainline: /^grainline-\d+$/.test(name),
  cycle: Number(/^grainline-(\d+)$/.exec(name)?.[1] ?? 0),
  disks,
})
const mirror = (over: Partial<MirrorFacts> = {}): MirrorFacts => ({ exists: true, committedCycle: 4, inflightCycle: 0, generation: G1, ...over })
const committed = (over: Partial<CommittedRecord> = {}): CommittedRecord => ({
  cycle: 4,
  generation: G1,
  snapshot: { name: 'grainline-4', id: '40' },
  receiver: 'wss://dr',
  at: '2026-01-01T00:00:00Z',
  ...over,
})

t.test('decideLineage: an incremental only when record, receiver and VM agree', async (t) => {
  const base = snap('grainline-4', '40')
  const cases: Array<{ name: string; mirror: MirrorFacts; record: CommittedRecord | null; problem?: string; snaps: SnapshotRef[]; want: Lineage | RegExp }> = [
    { name: 'no mirror, no record: first seed', mirror: mirror({ exists: false, committedCycle: 0, generation: '' }), record: null, snaps: [], want: { kind: 'first-seed' } },
    {
      name: 'no mirror, though the agent recorded a commit (mirror removed at the DR site): a seed that says why',
      mirror: mirror({ exists: false, committedCycle: 0, generation: '' }),
      record: committed(),
      snaps: [base],
      want: {
        kind: 'first-seed',
        reason: 'the receiver holds no committed mirror of this VM, but the agent recorded cycle 4, generation 01234567… (the mirror removed at the DR site, or a new store): seeding it whole',
      },
    },
    { name: 'mirror folder, nothing committed: first seed', mirror: mirror({ committedCycle: 0, generation: '' }), record: null, snaps: [], want: { kind: 'first-seed' } },
    { name: 'all agree', mirror: mirror(), record: committed(), snaps: [base], want: { kind: 'incremental', base, baseCycle: 4, generation: G1 } },
    {
      name: 'all agree, an older snapshot still below (a failed removal)',
      mirror: mirror(),
      record: committed(),
      snaps: [snap('grainline-3', '30'), base],
      want: { kind: 'incremental', base, baseCycle: 4, generation: G1 },
    },
    { name: 'agent state lost', mirror: mirror(), record: null, snaps: [base], want: /no record of the mirror's committed point \(agent state lost/ },
    { name: 'agent state unreadable', mirror: mirror(), record: committed(), problem: 'does not parse', snaps: [base], want: /record is unusable: does not parse/ },
    {
      name: 'store restored from a backup: older cycle and generation',
      mirror: mirror({ committedCycle: 2, generation: G2 }),
      record: committed(),
      snaps: [base],
      want: /receiver is at committed cycle 2, generation fedcba98…, but the agent recorded cycle 4, generation 01234567… \(store restored from a backup/,
    },
    {
      name: 'another receiver at the same cycle number',
      mirror: mirror({ generation: G2 }),
      record: committed(),
      snaps: [base],
      want: /generation fedcba98…, but the agent recorded cycle 4, generation 01234567…/,
    },
    { name: 'same generation, other cycle (tampered)', mirror: mirror({ committedCycle: 5 }), record: committed(), snaps: [base], want: /committed cycle 5.*recorded cycle 4/ },
    { name: 'a mirror committed before generations', mirror: mirror({ generation: '' }), record: committed(), snaps: [base], want: /has no generation/ },
    {
      name: 'the recorded snapshot is gone',
      mirror: mirror(),
      record: committed(),
      snaps: [snap('grainline-4', '41')],
      want: /snapshot of committed cycle 4 \(grainline-4, id 40\) is no longer on the VM/,
    },
    { name: 'the recorded id carries another name', mirror: mirror(), record: committed(), snaps: [snap('grainline-5', '40')], want: /\(id 40\) is named "grainline-5", not grainline-4/ },
  ]
  for (const c of cases) {
    const got = decideLineage({ mirror: c.mirror, record: c.record, snapshots: c.snaps, ...(c.problem === undefined ? {} : { recordProblem: c.problem }) })
    if (c.want instanceof RegExp) {
      t.equal(got.kind, 'resync', c.name)
      t.match(got.kind === 'resync' ? got.reason : '', c.want, `${c.name}: reason`)
    } else {
      t.same(got, c.want, c.name)
    }
  }
})

t.test("planDisk: layers above the base snapshot's disk, else a resync with the reason", async (t) => {
  const inc: Lineage = { kind: 'incremental', base: snap('grainline-4', '40'), baseCycle: 4, generation: G1 }
  // after this cycle's snapshot: [0] running, [1] just frozen, …, [L-1] base
  const paths = ['/vm/d-000003.vmdk', '/vm/d-000002.vmdk', '/vm/d-000001.vmdk', '/vm/d.vmdk']
  const disk = { name: 'd.vmdk', node: 'scsi0:0', layerPaths: paths }
  const diverged = { cycle: 4, generation: G1, disks: ['d.vmdk'], reason: 'trivial check failed', at: '' }
  const cases: Array<{ name: string; lineage: Lineage; facts: Parameters<typeof planDisk>[1]; diverged?: typeof diverged; force?: boolean; want: unknown }> = [
    { name: 'first seed', lineage: { kind: 'first-seed' }, facts: disk, want: { kind: 'seed' } },
    { name: 'first seed with a reason: the seed carries it', lineage: { kind: 'first-seed', reason: 'gone' }, facts: disk, want: { kind: 'seed', reason: 'gone' } },
    { name: 'resync keeps the lineage reason', lineage: { kind: 'resync', reason: 'why' }, facts: disk, want: { kind: 'resync', reason: 'why' } },
    {
      name: 'base snapshot on the bottom layer: ship both deltas',
      lineage: inc,
      facts: { ...disk, baseSnapshotLayer: '/vm/d.vmdk' },
      want: { kind: 'incremental', fromDepth: 2, baseCycle: 4, baseGeneration: G1 },
    },
    { name: "driver does not know the snapshot's disk: the bottom layer", lineage: inc, facts: disk, want: { kind: 'incremental', fromDepth: 2, baseCycle: 4, baseGeneration: G1 } },
    {
      name: 'an older snapshot below (failed removal): only above the committed one',
      lineage: inc,
      facts: { ...disk, baseSnapshotLayer: '/vm/d-000001.vmdk' },
      want: { kind: 'incremental', fromDepth: 1, baseCycle: 4, baseGeneration: G1 },
    },
    {
      name: 'base snapshot disk not in the chain',
      lineage: inc,
      facts: { ...disk, baseSnapshotLayer: '/elsewhere/d.vmdk' },
      want: { kind: 'resync', reason: 'the disk of grainline-4 for scsi0:0 (/elsewhere/d.vmdk) is not in the chain' },
    },
    {
      name: 'nothing frozen above the base (running delta only)',
      lineage: inc,
      facts: { ...disk, layerPaths: ['/vm/d-000001.vmdk', '/vm/d.vmdk'] },
      want: { kind: 'resync', reason: "no frozen delta above the disk of grainline-4 (the mirror's successor is gone)" },
    },
    {
      name: "the base snapshot's disk is the layer just frozen",
      lineage: inc,
      facts: { ...disk, baseSnapshotLayer: '/vm/d-000002.vmdk' },
      want: { kind: 'resync', reason: "no frozen delta above the disk of grainline-4 (the mirror's successor is gone)" },
    },
    { name: '--resync on a provable lineage', lineage: inc, facts: disk, force: true, want: { kind: 'resync', reason: 'asked for (--resync)' } },
    { name: '--resync on a first seed: nothing to compare with', lineage: { kind: 'first-seed' }, facts: disk, force: true, want: { kind: 'seed' } },
    { name: 'diverged disk: resync', lineage: inc, facts: disk, diverged, want: { kind: 'resync', reason: 'the mirror disk failed its check after cycle 4 (trivial check failed); resyncing' } },
    {
      name: 'another disk diverged: this one stays incremental',
      lineage: inc,
      facts: { ...disk, name: 'e.vmdk' },
      diverged,
      want: { kind: 'incremental', fromDepth: 2, baseCycle: 4, baseGeneration: G1 },
    },
  ]
  for (const c of cases) t.same(planDisk(c.lineage, c.facts, c.diverged, c.force ?? false), c.want, c.name)
})

t.test("decideSnapshot / needsRollback: by recorded id, never two of one name but the recorded commit's", async (t) => {
  const inflight = (cycle: number, id: string): InflightRecord => ({ cycle, snapshot: { name: `grainline-${cycle}`, id }, at: '' })
  const s5 = snap('grainline-5', '5')
  const s1 = snap('grainline-1', '11')
  const s1other = snap('grainline-1', '12')
  const cases: Array<{ name: string; cycleNo: number; inflight: InflightRecord | null; committed?: CommittedRecord; snaps: SnapshotRef[]; want: unknown; rollback: Partial<Record<number, boolean>> }> =
    [
      { name: 'no record: a new snapshot', cycleNo: 1, inflight: null, snaps: [], want: { kind: 'take', remove: [] }, rollback: { 0: false, 1: true } },
      {
        name: 'recorded in-flight snapshot of this cycle: reuse (resume)',
        cycleNo: 1,
        inflight: inflight(1, '11'),
        snaps: [s5, s1],
        want: { kind: 'reuse', snapshot: s1 },
        rollback: { 0: false, 1: false, 2: true },
      },
      { name: 'the largest cycle number in a name does not matter', cycleNo: 1, inflight: inflight(1, '11'), snaps: [s1, s5], want: { kind: 'reuse', snapshot: s1 }, rollback: {} },
      { name: "record of another cycle (an older target's run): a new one", cycleNo: 1, inflight: inflight(5, '5'), snaps: [s5], want: { kind: 'take', remove: [] }, rollback: { 1: true } },
      { name: 'recorded snapshot gone: a new one', cycleNo: 1, inflight: inflight(1, '11'), snaps: [s5], want: { kind: 'take', remove: [] }, rollback: {} },
      {
        name: 'same name, other id (record lost or another target): removed first',
        cycleNo: 1,
        inflight: inflight(1, '11'),
        snaps: [s5, s1other],
        want: { kind: 'take', remove: [s1other] },
        rollback: {},
      },
      { name: 'same name, no record: removed first', cycleNo: 1, inflight: null, snaps: [s1other], want: { kind: 'take', remove: [s1other] }, rollback: {} },
      { name: 'recorded id renamed: not reused, not removed by name', cycleNo: 1, inflight: inflight(1, '5'), snaps: [s5], want: { kind: 'take', remove: [] }, rollback: {} },
      {
        // the receiver reports committed cycle 4 where the agent recorded 5 (a store restored from a backup, a hostile receiver)
        name: "the snapshot of the agent's recorded commit has this cycle's name: kept (removed only after this cycle commits)",
        cycleNo: 5,
        inflight: null,
        committed: committed({ cycle: 5, snapshot: { name: 'grainline-5', id: '5' } }),
        snaps: [s5],
        want: { kind: 'take', remove: [], keep: s5 },
        rollback: { 4: true },
      },
      {
        name: 'kept by id: another snapshot of that name is still removed',
        cycleNo: 5,
        inflight: inflight(5, '55'),
        committed: committed({ cycle: 5, snapshot: { name: 'grainline-5', id: '5' } }),
        snaps: [snap('grainline-5', '56'), s5],
        want: { kind: 'take', remove: [snap('grainline-5', '56')], keep: s5 },
        rollback: {},
      },
      {
        name: 'the recorded commit of another cycle does not keep a snapshot of this name',
        cycleNo: 1,
        inflight: null,
        committed: committed({ cycle: 5, snapshot: { name: 'grainline-5', id: '5' } }),
        snaps: [s5, s1other],
        want: { kind: 'take', remove: [s1other] },
        rollback: {},
      },
    ]
  for (const c of cases) {
    const d = decideSnapshot({ cycleNo: c.cycleNo, inflight: c.inflight, committed: c.committed ?? null, snapshots: c.snaps })
    t.same(d, c.want, c.name)
    for (const [inflightCycle, want] of Object.entries(c.rollback)) {
      t.equal(needsRollback(mirror({ inflightCycle: Number(inflightCycle) }), c.cycleNo, d), want, `${c.name}: receiver in flight ${inflightCycle} → rollback ${String(want)}`)
    }
  }
})

t.test('planAfterRefusal: every refusal has one answer', async (t) => {
  const cases: Array<[mode: 'seed' | 'incremental' | 'resync', code: string, modified: boolean, rolledBack: boolean, want: unknown]> = [
    ['incremental', 'E_CYCLE_MISMATCH', false, false, { kind: 'rollback' }],
    ['seed', 'E_CYCLE_MISMATCH', false, false, { kind: 'rollback' }],
    ['incremental', 'E_CYCLE_MISMATCH', false, true, { kind: 'fail', reason: 'E_CYCLE_MISMATCH after a rollback' }],
    ['incremental', 'E_GENERATION', false, false, { kind: 'resync', reason: 'E_GENERATION' }],
    ['incremental', 'E_DIVERGED', false, false, { kind: 'resync', reason: 'E_DIVERGED' }],
    ['incremental', 'E_CHAIN_MISMATCH', false, false, { kind: 'resync', reason: 'E_CHAIN_MISMATCH' }],
    ['incremental', 'E_MIRROR_MODIFIED', true, false, { kind: 'resync', reason: 'E_MIRROR_MODIFIED (mirror modified)' }],
    ['incremental', 'E_HELD', false, false, { kind: 'fail', reason: 'E_HELD' }],
    ['incremental', 'E_INCOMPATIBLE', false, false, { kind: 'fail', reason: 'E_INCOMPATIBLE' }],
    ['incremental', 'E_SOMETHING_NEW', false, false, { kind: 'fail', reason: 'E_SOMETHING_NEW' }],
    ['seed', 'E_MIRROR_MODIFIED', false, false, { kind: 'fail', reason: 'E_MIRROR_MODIFIED' }],
    ['seed', 'E_GENERATION', false, false, { kind: 'fail', reason: 'E_GENERATION' }],
    ['resync', 'E_CHAIN_MISMATCH', false, false, { kind: 'seed', reason: 'E_CHAIN_MISMATCH: no mirror to compare with' }],
    ['resync', 'E_CYCLE_MISMATCH', false, false, { kind: 'rollback' }],
    ['resync', 'E_INCOMPATIBLE', false, false, { kind: 'fail', reason: 'E_INCOMPATIBLE' }],
    ['resync', 'E_MIRROR_MODIFIED', true, false, { kind: 'fail', reason: 'E_MIRROR_MODIFIED' }],
  ]
  for (const [mode, code, modified, rolledBack, want] of cases)
    t.same(planAfterRefusal(mode, { code, modified }, rolledBack), want, `${mode} refused with ${code}${rolledBack ? ' after a rollback' : ''}`)
})

t.test('a resync refused E_MIRROR_MODIFIED fails the VM with what the operator does (a Ceph snapshot gone behind the store)', async (t) => {
  t.same(planAfterRefusal('resync', { code: 'E_MIRROR_MODIFIED', modified: true }, false), { kind: 'fail', reason: 'E_MIRROR_MODIFIED' }, 'no seed over the mirror, no retry')
  const err = refusalError('d.vmdk', { code: 'E_MIRROR_MODIFIED', message: 'disk d.vmdk refused: E_MIRROR_MODIFIED', fatal: false }, { disk: true })
  t.match(err, { code: 'E_REFUSED', remoteCode: 'E_MIRROR_MODIFIED' })
  t.match(
    err.message,
    /^receiver refused disk d\.vmdk: E_MIRROR_MODIFIED: the receiver's mirror of the disk changed or is damaged behind its store and a resync cannot build on it either: the receiver's log \('disk open refused'\) and grainline status there say what to do .*grainline mirror remove; the next run seeds the VM anew\)$/,
    'the advice: where to read why, and the remedy',
  )
})
