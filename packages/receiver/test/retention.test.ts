import t from 'tap'
import type { RetentionSpec } from '@grainline/protocol'
import { ReceiverError, keepsPoints, parseGfs, parseRetention, pointsToDrop, type RetainedPoint, type RetentionPolicy } from '../src/index.ts'
import { effectiveRetention, parseRetentionLimits, policyFromSpec, specFromPolicy } from '../src/retention.ts'
import { DIVERGED_REASON_MAX, divergedResyncUnder, dropPoints, planCommitPoints, type PointRecord } from '../src/points.ts'
import { emptyState, type VmStateFile } from '../src/state-file.ts'

const H = 3_600_000
const D = 24 * H
// a fake clock: 2026-03-15T12:00:00Z
const NOW = Date.parse('2026-03-15T12:00:00Z')

/** Points every `stepMs` back from NOW, oldest first, `bytes` each. */
function series(n: number, stepMs: number, bytes = 100): RetainedPoint[] {
  return Array.from({ length: n }, (_, i) => ({ cycle: i + 1, committedAt: new Date(NOW - (n - i) * stepMs).toISOString(), bytes }))
}

const cases: Array<{ name: string; points: RetainedPoint[]; policy: RetentionPolicy; drop: number[] }> = [
  { name: 'keep 3 of 5', points: series(5, H), policy: { keep: 3 }, drop: [1, 2] },
  { name: 'keep more than there are', points: series(2, H), policy: { keep: 5 }, drop: [] },
  { name: 'keep 0 drops all', points: series(3, H), policy: { keep: 0 }, drop: [1, 2, 3] },
  { name: 'younger than 2.5 h', points: series(5, H), policy: { maxAgeMs: 2.5 * H }, drop: [1, 2, 3] },
  { name: 'age exactly at the limit is kept', points: series(3, H), policy: { maxAgeMs: 2 * H }, drop: [1] },
  { name: 'count and age: both must hold', points: series(6, H), policy: { keep: 4, maxAgeMs: 3.5 * H }, drop: [1, 2, 3] },
  { name: 'space: oldest go until the cap holds', points: series(5, H, 100), policy: { maxBytes: 250 }, drop: [1, 2, 3] },
  { name: 'space with unequal sizes', points: [...series(3, H, 10), { cycle: 4, committedAt: new Date(NOW - 1000).toISOString(), bytes: 500 }], policy: { maxBytes: 505 }, drop: [1, 2, 3] },
  // the newest point is the last restore point before the mirror: space and age rules never take it
  { name: 'space cap below the newest point keeps the newest alone', points: series(2, H, 100), policy: { maxBytes: 50 }, drop: [1] },
  {
    name: 'an increment larger than the cap (a disk rewritten, e.g. by ransomware) is kept, the older ones go',
    points: [...series(4, H, 10), { cycle: 5, committedAt: new Date(NOW - 1000).toISOString(), bytes: 500 }],
    policy: { keep: 7, maxBytes: 200 },
    drop: [1, 2, 3, 4],
  },
  { name: 'a pause longer than maxAge keeps the newest point', points: series(4, 36 * D), policy: { keep: 7, maxAgeMs: 30 * D }, drop: [1, 2, 3] },
  { name: 'keep 0 with age and space rules still drops all', points: series(3, H), policy: { keep: 0, maxAgeMs: 1, maxBytes: 1 }, drop: [1, 2, 3] },
  { name: 'no limits keeps all', points: series(4, H), policy: {}, drop: [] },
  // hourly points over 3 days; GFS keeps the newest of each of the last 5 hours and each of the last 2 days
  {
    name: 'GFS hourly=5,daily=2',
    points: series(72, H),
    policy: { gfs: { hourly: 5, daily: 2 } },
    // newest = cycle 72 at 11:00 on the 15th; hours 07..11 → cycles 68..72; day 15 → 72, day 14 → cycle 60 (23:00 on the 14th)
    drop: Array.from({ length: 72 }, (_, i) => i + 1).filter((c) => ![60, 68, 69, 70, 71, 72].includes(c)),
  },
  {
    name: 'GFS weekly=2 over daily points (weeks start on Monday)',
    points: series(14, D),
    policy: { gfs: { weekly: 2 } },
    // daily points at 12:00 from Sun 1 Mar to Sat 14 Mar; the 15th is a Sunday: newest of week 9–15 Mar (Sat 14 = cycle 14) and of 2–8 Mar (Sun 8 = cycle 8)
    drop: Array.from({ length: 14 }, (_, i) => i + 1).filter((c) => ![8, 14].includes(c)),
  },
  {
    name: 'GFS monthly=2',
    points: [
      { cycle: 1, committedAt: '2026-01-10T00:00:00Z', bytes: 1 },
      { cycle: 2, committedAt: '2026-01-20T00:00:00Z', bytes: 1 },
      { cycle: 3, committedAt: '2026-02-05T00:00:00Z', bytes: 1 },
      { cycle: 4, committedAt: '2026-03-01T00:00:00Z', bytes: 1 },
      { cycle: 5, committedAt: '2026-03-10T00:00:00Z', bytes: 1 },
    ],
    policy: { gfs: { monthly: 2 } },
    drop: [1, 2, 4],
  },
  { name: 'GFS plus keep: union', points: series(10, H), policy: { keep: 2, gfs: { daily: 1 } }, drop: [1, 2, 3, 4, 5, 6, 7, 8] },
  { name: 'GFS then a space cap', points: series(5, D, 100), policy: { gfs: { daily: 4 }, maxBytes: 200 }, drop: [1, 2, 3] },
  { name: 'a minKeep floor beats age, count and space', points: series(6, H, 100), policy: { keep: 1, maxAgeMs: 1, maxBytes: 10, minKeep: 3 }, drop: [1, 2, 3] },
  { name: 'a minKeep floor above the number of points keeps all', points: series(2, H), policy: { keep: 0, minKeep: 5 }, drop: [] },
]

for (const c of cases) {
  t.test(c.name, async (t) => {
    t.same(pointsToDrop(c.points, c.policy, NOW), c.drop)
  })
}

t.test('parseRetention and parseGfs', async (t) => {
  t.same(parseRetention({ keep: 7, maxAge: '30d', maxBytes: '2G', gfs: 'hourly=24,daily=7,weekly=4,monthly=12' }, 'x'), {
    keep: 7,
    maxAgeMs: 30 * D,
    maxBytes: 2 * 1024 ** 3,
    gfs: { hourly: 24, daily: 7, weekly: 4, monthly: 12 },
  })
  t.same(parseGfs('daily=3'), { daily: 3 })
  for (const bad of [{ keep: -1 }, { keep: 1.5 }, { maxAge: 'soon' }, { maxBytes: 'lots' }, { gfs: 'yearly=3' }, { gfs: 3 }, { other: 1 }, [], null]) {
    t.throws(() => parseRetention(bad, 'cfg'), { code: 'E_CONFIG' }, JSON.stringify(bad))
  }
  t.ok(parseRetention({}, 'x') instanceof Object)
  t.equal(keepsPoints(undefined), false)
  t.equal(keepsPoints({ keep: 0 }), false)
  t.equal(keepsPoints({ keep: 0, gfs: { daily: 1 } }), true)
  t.equal(keepsPoints({ maxAgeMs: 1 }), true)
  t.ok(new ReceiverError('E_VERIFY', 'x').fatal)
})

t.test('dropPoints: the oldest are removed, a middle one merged, a file of an unchanged disk passes to the older point', async (t) => {
  const dd = (f: string) => ({ file: f, stem: 'd', capacity: 1, bytes: 1, ddb: {} })
  const p = (cycle: number, disks: string[]) => ({ cycle, committedAt: '', generation: '', disks: Object.fromEntries(disks.map((d) => [d, dd(`${d}.p${cycle}`)])) })
  const r = dropPoints([p(1, ['a']), p(2, ['a']), p(3, ['a']), p(4, ['a'])], [1, 3])
  t.same(
    r.points.map((x) => [x.cycle, x.disks['a']?.file]),
    [
      [2, 'a.p3'],
      [4, 'a.p4'],
    ],
    'point 2 now lives in the merged file of point 3',
  )
  t.same(r.merges, [{ child: 'a.p2', parent: 'a.p3' }])
  t.same(r.removePoints, ['a.p1', 'a.p2'])
  // disk b did not change in cycle 2 (point 1 holds no b): dropping point 2 hands its b file to point 1
  const r2 = dropPoints([p(1, ['a']), p(2, ['a', 'b']), p(3, ['a', 'b'])], [2])
  t.same(r2.points[0]?.disks['b']?.file, 'b.p2')
  t.same(r2.merges, [{ child: 'a.p1', parent: 'a.p2' }])
  t.same(dropPoints([p(1, ['a'])], [7]).points.length, 1, 'an unknown cycle changes nothing')
  // disk a did not change in cycle 2: point 2 reads a from point 3's file; dropping point 3 hands that file to
  // point 2 (point 1 still reads through it) — a merge of a.p1 into it left point 2 reading a as of cycle 4
  const r3 = dropPoints([p(1, ['a', 'b']), p(2, ['b']), p(3, ['a', 'b']), p(4, ['a', 'b'])], [3])
  t.same(
    r3.points.map((x) => [x.cycle, x.disks['a']?.file ?? null]),
    [
      [1, 'a.p1'],
      [2, 'a.p3'],
      [4, 'a.p4'],
    ],
    'point 2 keeps reading a as of cycle 3',
  )
  t.same(r3.merges, [{ child: 'b.p2', parent: 'b.p3' }], 'b: the next older point is just before: merged')
  t.same(r3.removePoints, ['b.p2'])
})

t.test("dropPoints with base points (a re-seeded disk's old mirror kept whole): never merged into a newer point; an older increment merges into a dropped base", async (t) => {
  const dd = (f: string, base = false) => ({ file: f, stem: 'd', capacity: 1, bytes: 1, ddb: {}, ...(base ? { base: true as const } : {}) })
  const p = (cycle: number, a?: 'inc' | 'base'): PointRecord => ({ cycle, committedAt: '', generation: '', disks: a === undefined ? {} : { a: dd(`a.p${cycle}`, a === 'base') } })
  const pts = [p(1, 'inc'), p(2, 'base'), p(3, 'inc'), p(4), p(5, 'inc')]
  const r1 = dropPoints(pts, [3])
  t.same(r1.merges, [], 'the base before it is not merged into point 3')
  t.same(r1.removePoints, ['a.p3'], 'nothing older reads point 3')
  const r2 = dropPoints(pts, [5])
  t.same(r2.points.find((x) => x.cycle === 4)?.disks['a']?.file, 'a.p5', 'point 4 (no a of its own) takes the file it read')
  const r3 = dropPoints(pts, [2])
  t.same(r3.merges, [{ child: 'a.p1', parent: 'a.p2' }], 'the older increment merges into the base')
  t.match(r3.points[0]?.disks['a'], { file: 'a.p2', base: true }, 'which holds point 1 and stays whole')
  const r4 = dropPoints([p(1, 'base'), p(2), p(3, 'base')], [3])
  t.same(r4.points[1]?.disks['a']?.file, 'a.p3', 'a base passes to the point between')
  t.same(r4.merges, [])
})

/** A committed disk record of 1 byte (what point planning reads of it). */
function diskRecord(name: string, cycle: number) {
  return {
    name,
    stem: 'd',
    capacity: 1,
    size: 1,
    cycle,
    committedAt: 'x',
    source: { layers: [], successor: '' },
    cycleId: '',
    mirrorCid: 'aaaaaaaa',
    ddb: {},
    cycleDigest: { algorithm: 'sha256' as const, digest: '' },
  }
}

t.test('planCommitPoints: links the new point onto the mirror and the previous newest onto it', async (t) => {
  const rec = diskRecord('d.vmdk', 3)
  const st: VmStateFile = {
    ...emptyState('v'),
    committedCycle: 3,
    committedAt: '2026-01-01T00:00:00Z',
    generation: 'g3',
    disks: { 'd.vmdk': rec },
    points: [{ cycle: 2, committedAt: 'y', generation: 'g2', disks: { 'd.vmdk': { file: 'd.p2.vmdk', stem: 'd', capacity: 1, bytes: 1, ddb: {} } } }],
  }
  const plan = planCommitPoints(st, [{ disk: 'd.vmdk', file: 'd.p3.vmdk', bytes: 7 }])
  t.same(
    plan.points.map((p) => [p.cycle, p.generation]),
    [
      [2, 'g2'],
      [3, 'g3'],
    ],
  )
  t.same(plan.links, [
    { disk: 'd.vmdk', file: 'd.p3.vmdk', parent: null },
    { disk: 'd.vmdk', file: 'd.p2.vmdk', parent: 'd.p3.vmdk' },
  ])
  const seeded = planCommitPoints(st, [{ disk: 'd.vmdk', file: undefined, bytes: 0 }])
  t.same(seeded.points, [])
  t.same(seeded.removePoints, ['d.p2.vmdk'])
  t.match(seeded.droppedAll, /without a reverse increment/)
  const fresh = planCommitPoints({ ...st, points: [] }, [{ disk: 'new.vmdk', file: undefined, bytes: 0 }])
  t.same(fresh, { points: [], links: [], removePoints: [] }, 'a new disk without points changes nothing')
})

t.test('a resync of a diverged mirror: recorded with its increment, kept through merges and hand-overs, found under every older point up to a base', async (t) => {
  const rs = (cycle: number) => ({ cycle, reason: `check ${cycle} failed` })
  const dd = (f: string, o: { base?: boolean; resync?: number } = {}) => ({
    file: f,
    stem: 'd',
    capacity: 1,
    bytes: 1,
    ddb: {},
    ...(o.base === true ? { base: true as const } : {}),
    ...(o.resync === undefined ? {} : { divergedResync: rs(o.resync) }),
  })
  const p = (cycle: number, a?: { base?: boolean; resync?: number }): PointRecord => ({ cycle, committedAt: '', generation: '', disks: a === undefined ? {} : { a: dd(`a.p${cycle}`, a) } })
  const st = (points: PointRecord[]): VmStateFile => ({ ...emptyState('v'), committedCycle: 9, points })
  // points 1..5; the resync at cycle 4 left its increment as point 3; point 2 holds a base (a re-seed's old mirror)
  const pts = [p(1, {}), p(2, { base: true }), p(3, { resync: 4 }), p(4), p(5, {})]
  const under = (ps: PointRecord[], c: number) => divergedResyncUnder(st(ps), 'a', c)?.cycle ?? null
  t.same(
    [1, 2, 3, 4, 5, 9].map((c) => under(pts, c)),
    [null, null, 4, null, null, null],
    'point 3 reads its own increment (the resync): flagged; points 1–2 end at the base; 4, 5 and the mirror are newer',
  )
  const noBase = [p(1, {}), p(2, {}), p(3, { resync: 4 }), p(4), p(5, {})]
  t.same(
    [1, 2, 3, 4].map((c) => under(noBase, c)),
    [4, 4, 4, null],
    'without a base every older point reads through it',
  )
  t.equal(divergedResyncUnder(st(noBase), 'b', 1), undefined, 'another disk: nothing')
  // dropping point 3: point 2's increment merges into the resync's file, which keeps the mark
  const m = dropPoints(noBase, [3])
  t.same(m.merges, [{ child: 'a.p2', parent: 'a.p3' }])
  t.same(m.points.find((x) => x.cycle === 2)?.disks['a']?.divergedResync, rs(4), 'the merged file keeps the mark')
  t.same(
    [1, 2].map((c) => under(m.points, c)),
    [4, 4],
    'the older points still read through it',
  )
  // dropping point 3 whose disk point 4 does not hold: the file passes to point 4 with its mark
  const h = dropPoints([p(1, {}), p(2), p(3, { resync: 5 })], [3])
  t.same(h.points.find((x) => x.cycle === 2)?.disks['a']?.divergedResync, rs(5), 'the handed-over file keeps the mark')
  // two resyncs merged: the newer is named
  const two = dropPoints([p(1, { resync: 2 }), p(2, { resync: 3 })], [2])
  t.same(two.points[0]?.disks['a']?.divergedResync, rs(3), 'the newer of two marks')
  // planCommitPoints carries the mark of a resync's increment into the new point
  const rec = diskRecord('a', 9)
  const plan = planCommitPoints({ ...st([]), disks: { a: rec } }, [{ disk: 'a', file: 'a.p9', bytes: 1, divergedResync: rs(10) }])
  t.same(plan.points[0]?.disks['a']?.divergedResync, rs(10))
  // a hand-edited or hostile state.json: a record that is not one is none, a huge reason is cut
  const hostile = (v: unknown): PointRecord[] => [{ cycle: 1, committedAt: '', generation: '', disks: { a: { ...dd('a.p1'), divergedResync: v as never } } }]
  for (const bad of ['x', 7, null, { cycle: 0, reason: 'r' }, { cycle: 1.5, reason: 'r' }, { cycle: '2', reason: 'r' }, { cycle: 2 }, { cycle: 2, reason: {} }]) {
    t.equal(divergedResyncUnder(st(hostile(bad)), 'a', 1), undefined, `not a record: ${JSON.stringify(bad)}`)
  }
  t.equal(divergedResyncUnder(st(hostile({ cycle: 2, reason: 'x'.repeat(2 ** 20) })), 'a', 1)?.reason.length, DIVERGED_REASON_MAX, 'a reason of 1 MiB is cut')
})

const NONE: RetentionSpec = { keep: 0, maxAgeSeconds: 0, maxBytes: 0, hourly: 0, daily: 0, weekly: 0, monthly: 0 }

t.test('parseRetentionLimits: keys, bounds, minKeep ≤ maxKeep', async (t) => {
  t.same(parseRetentionLimits({ minKeep: 3, maxKeep: 48, maxAge: '90d', maxBytes: '1G' }, 'cfg'), { minKeep: 3, maxKeep: 48, maxAgeMs: 90 * D, maxBytes: 1024 ** 3 })
  t.same(parseRetentionLimits({}, 'cfg'), {})
  t.throws(() => parseRetentionLimits([], 'cfg'), { code: 'E_CONFIG' })
  t.throws(() => parseRetentionLimits({ minkeep: 1 }, 'cfg'), { code: 'E_CONFIG', message: /unknown key minkeep/ })
  t.throws(() => parseRetentionLimits({ maxKeep: -1 }, 'cfg'), { code: 'E_CONFIG', message: /maxKeep/ })
  t.throws(() => parseRetentionLimits({ maxKeep: 1.5 }, 'cfg'), { code: 'E_CONFIG' })
  t.throws(() => parseRetentionLimits({ maxAge: 'soon' }, 'cfg'), { code: 'E_CONFIG', message: /cfg/ })
  t.throws(() => parseRetentionLimits({ minKeep: 5, maxKeep: 2 }, 'cfg'), { code: 'E_CONFIG', message: /minKeep 5 is above maxKeep 2/ })
})

t.test('policyFromSpec / specFromPolicy: 0 leaves a rule out; no points is null', async (t) => {
  const spec: RetentionSpec = { keep: 14, maxAgeSeconds: 86_400, maxBytes: 1000, hourly: 0, daily: 7, weekly: 4, monthly: 0 }
  t.same(policyFromSpec(spec), { keep: 14, maxAgeMs: D, maxBytes: 1000, gfs: { daily: 7, weekly: 4 } })
  t.same(specFromPolicy(policyFromSpec(spec)), spec)
  t.same(policyFromSpec(NONE), {})
  t.equal(specFromPolicy(undefined), null)
  t.equal(specFromPolicy({ keep: 0 }), null)
  t.equal(specFromPolicy({ maxAgeMs: 1500 })?.maxAgeSeconds, 2, 'ages round up to whole seconds')
})

t.test('effectiveRetention: the receiver decides; a request is clamped to its limits', async (t) => {
  const own: RetentionPolicy = { keep: 7 }
  const ask: RetentionSpec = { ...NONE, keep: 100, maxAgeSeconds: 365 * 86_400, maxBytes: 10 * 1024 ** 4, daily: 500 }
  t.equal(effectiveRetention(own, null, { maxKeep: 48 }), own, 'no request: the receiver policy')
  t.equal(effectiveRetention(own, ask, undefined), own, 'no limits: requests are ignored')
  t.equal(effectiveRetention(undefined, ask, { maxKeep: 48 }), undefined, 'a VM without points does not get them from an agent')
  t.same(effectiveRetention({ keep: 0 }, ask, { maxKeep: 48 }), { keep: 0 }, 'points off stays off')
  t.same(
    effectiveRetention(own, ask, { maxKeep: 48, maxAgeMs: 90 * D, maxBytes: 1024 ** 3 }),
    { keep: 48, maxAgeMs: 90 * D, maxBytes: 1024 ** 3, gfs: { daily: 48 } },
    'every rule lowered to its ceiling',
  )
  t.same(
    effectiveRetention(own, { ...NONE, keep: 1, maxAgeSeconds: 1 }, { minKeep: 3, maxKeep: 48 }),
    { keep: 3, maxAgeMs: 1000, minKeep: 3 },
    'keep raised to the floor, which also beats the age rule',
  )
  t.same(effectiveRetention(own, { ...NONE, daily: 7 }, { maxKeep: 48 }), { keep: 48, gfs: { daily: 7 } }, 'a request without a count rule gets the ceiling as its count')
  t.same(effectiveRetention(own, { ...NONE, keep: 5 }, {}), { keep: 5 }, 'empty limits: any request holds')
  // what a hostile agent asking to erase the history gets: the newest minKeep points survive
  const hostile = effectiveRetention(own, { ...NONE, keep: 1, maxAgeSeconds: 1, maxBytes: 1 }, { minKeep: 3 }) as RetentionPolicy
  t.same(pointsToDrop(series(6, H), hostile, NOW), [1, 2, 3])
})
