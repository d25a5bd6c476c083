/** Table-driven tests of the pure planning decisions (cycle-plan.ts). */
import t from 'tap'
import { initialDiskPlan, planAfterRefusal, type DiskRefusal, type PlannedDisk } from '../src/cycle-plan.ts'

t.test('initialDiskPlan: seed, incremental from the base\'s successor, or resync with a reason', async (t) => {
  const cases = [
    { name: 'no mirror yet', mirror: { exists: false, committedCycle: 0, generation: '' }, layers: 2, want: { kind: 'seed' } },
    { name: 'mirror folder without a commit', mirror: { exists: true, committedCycle: 0, generation: '' }, layers: 3, want: { kind: 'seed' } },
    { name: 'committed mirror, one frozen delta above the base', mirror: { exists: true, committedCycle: 4, generation: 'g4' }, layers: 3, want: { kind: 'incremental', fromDepth: 1, baseCycle: 4, baseGeneration: 'g4' } },
    { name: 'committed mirror, two frozen deltas', mirror: { exists: true, committedCycle: 4, generation: 'g4' }, layers: 4, want: { kind: 'incremental', fromDepth: 2, baseCycle: 4, baseGeneration: 'g4' } },
    { name: 'committed mirror, base + running only (successor gone)', mirror: { exists: true, committedCycle: 4, generation: 'g4' }, layers: 2, want: { kind: 'seed', reason: 'no frozen delta above the base (the mirror\'s successor is gone)' } },
  ] as const
  for (const c of cases) t.same(initialDiskPlan(c.mirror, c.layers), c.want, c.name)
})

t.test('planAfterRefusal: every refusal has one answer', async (t) => {
  // chain after the snapshot: [0] running d3, [1] d2 (just frozen), [2] d1, [3] base
  const layerFiles = ['d3.vmdk', 'd2.vmdk', 'd1.vmdk', 'base.vmdk']
  const incr: PlannedDisk = { mode: 'incremental', fromDepth: 2, baseCycle: 7, baseGeneration: 'g7', layerFiles }
  const seed: PlannedDisk = { mode: 'seed', fromDepth: 3, baseCycle: 0, baseGeneration: '', layerFiles }
  const refusal = (over: Partial<DiskRefusal>): DiskRefusal => ({ code: 'E_CHAIN_MISMATCH', modified: false, committedCycle: 7, ...over })
  const cases: Array<{ name: string, disk: PlannedDisk, r: DiskRefusal, rolledBack?: boolean, want: unknown }> = [
    { name: 'cycle mismatch: roll back on a new connection', disk: incr, r: refusal({ code: 'E_CYCLE_MISMATCH' }), want: { kind: 'rollback' } },
    { name: 'cycle mismatch after a rollback: fail', disk: incr, r: refusal({ code: 'E_CYCLE_MISMATCH' }), rolledBack: true, want: { kind: 'fail', reason: 'E_CYCLE_MISMATCH after a rollback' } },
    { name: 'cycle mismatch of a seed: roll back too', disk: seed, r: refusal({ code: 'E_CYCLE_MISMATCH' }), want: { kind: 'rollback' } },
    { name: 'a refused seed: nothing left to try', disk: seed, r: refusal({ code: 'E_MIRROR_MODIFIED' }), want: { kind: 'fail', reason: 'E_MIRROR_MODIFIED' } },
    { name: 'chain mismatch, the mirror recorded a later successor in the chain: ship from it', disk: incr, r: refusal({ successor: 'd2.vmdk' }), want: { kind: 'replan', plan: { kind: 'incremental', fromDepth: 1, baseCycle: 7, baseGeneration: 'g7' } } },
    { name: 'chain mismatch, successor is what we shipped from: resync', disk: incr, r: refusal({ successor: 'd1.vmdk' }), want: { kind: 'replan', plan: { kind: 'seed', reason: 'E_CHAIN_MISMATCH (mirror successor d1.vmdk)' } } },
    { name: 'chain mismatch, successor not in the chain: resync', disk: incr, r: refusal({ successor: 'x.vmdk' }), want: { kind: 'replan', plan: { kind: 'seed', reason: 'E_CHAIN_MISMATCH (mirror successor x.vmdk)' } } },
    { name: 'chain mismatch, successor is the running delta: resync', disk: incr, r: refusal({ successor: 'd3.vmdk' }), want: { kind: 'replan', plan: { kind: 'seed', reason: 'E_CHAIN_MISMATCH (mirror successor d3.vmdk)' } } },
    { name: 'chain mismatch on a modified mirror: resync', disk: incr, r: refusal({ successor: 'd2.vmdk', modified: true }), want: { kind: 'replan', plan: { kind: 'seed', reason: 'E_CHAIN_MISMATCH (mirror modified) (mirror successor d2.vmdk)' } } },
    { name: 'chain mismatch, mirror at another cycle: resync', disk: incr, r: refusal({ successor: 'd2.vmdk', committedCycle: 6 }), want: { kind: 'replan', plan: { kind: 'seed', reason: 'E_CHAIN_MISMATCH (mirror successor d2.vmdk)' } } },
    { name: 'mirror modified: resync', disk: incr, r: refusal({ code: 'E_MIRROR_MODIFIED', modified: true }), want: { kind: 'replan', plan: { kind: 'seed', reason: 'E_MIRROR_MODIFIED (mirror modified)' } } },
    { name: 'an unknown refusal code of an incremental: resync', disk: incr, r: refusal({ code: 'E_SOMETHING_NEW' }), want: { kind: 'replan', plan: { kind: 'seed', reason: 'E_SOMETHING_NEW' } } },
  ]
  for (const c of cases) t.same(planAfterRefusal(c.disk, c.r, c.rolledBack ?? false), c.want, c.name)
})
