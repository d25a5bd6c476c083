import t from 'tap'
import { ReceiverError, keepsPoints, parseGfs, parseRetention, pointsToDrop, type RetainedPoint, type RetentionPolicy } from '../src/index.ts'
import { dropPoints, planCommitPoints } from '../src/points.ts'
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
  { name: 'space cap below the newest point drops every point (never the mirror)', points: series(2, H, 100), policy: { maxBytes: 50 }, drop: [1, 2] },
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
})

t.test('planCommitPoints: links the new point onto the mirror and the previous newest onto it', async (t) => {
  const rec = {
    name: 'd.vmdk',
    stem: 'd',
    capacity: 1,
    size: 1,
    cycle: 3,
    committedAt: 'x',
    source: { layers: [], successor: '' },
    cycleId: '',
    mirrorCid: 'aaaaaaaa',
    ddb: {},
    cycleDigest: { algorithm: 'sha256' as const, digest: '' },
  }
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
