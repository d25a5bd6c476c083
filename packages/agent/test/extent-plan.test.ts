import t from 'tap'
import fc from 'fast-check'
import { buildPlan, planExtents, unionRanges, type PlanRange } from '../src/extent-plan.ts'

// reference: per-512-byte-sector model
function model (layers: PlanRange[][], sectors: number): Array<boolean | undefined> {
  const out: Array<boolean | undefined> = new Array(sectors).fill(undefined)
  for (const ranges of layers) for (const r of ranges) for (let s = r.offset / 512; s < (r.offset + r.length) / 512; s++) out[s] = r.zero
  return out
}

const layerArb = fc.array(fc.tuple(fc.nat(63), fc.integer({ min: 1, max: 8 }), fc.boolean()), { maxLength: 10 }).map((xs) => {
  // disjoint sorted ranges
  const used = new Set<number>()
  const out: PlanRange[] = []
  for (const [s, n, z] of xs.sort((a, b) => a[0] - b[0])) {
    let ok = true
    for (let k = s; k < s + n; k++) if (used.has(k) || k >= 64) ok = false
    if (!ok) continue
    for (let k = s; k < s + n; k++) used.add(k)
    out.push({ offset: s * 512, length: n * 512, zero: z })
  }
  return out.sort((a, b) => a.offset - b.offset)
})

t.test('union: newest layer decides, coalesced, disjoint, sorted', async (t) => {
  fc.assert(fc.property(fc.array(layerArb, { minLength: 1, maxLength: 4 }), (layers) => {
    const u = unionRanges(layers)
    const got = model([u], 64)
    const want = model(layers, 64)
    if (JSON.stringify(got) !== JSON.stringify(want)) return false
    for (let i = 1; i < u.length; i++) {
      const a = u[i - 1] as PlanRange
      const b = u[i] as PlanRange
      if (a.offset + a.length > b.offset) return false
      if (a.offset + a.length === b.offset && a.zero === b.zero) return false
    }
    return true
  }), { numRuns: 500 })
})

t.test('plan: chunks cover every range, seqs are stable when skipping', async (t) => {
  const ranges: PlanRange[] = [{ offset: 0, length: 5 * 1024, zero: false }, { offset: 8192, length: 3 * 1024 * 1024, zero: true }, { offset: 4 * 1024 * 1024, length: 2048, zero: false }]
  const plan = buildPlan(ranges, { chunkBytes: 2048, zeroChunkBytes: 1024 * 1024 })
  const all = [...planExtents(plan)]
  t.equal(all.length, plan.totalExtents)
  t.equal(plan.totalExtents, 3 + 3 + 1)
  t.equal(all.reduce((s, e) => s + e.length, 0), plan.totalBytes)
  t.same(all.map((e) => e.seq), [0, 1, 2, 3, 4, 5, 6])
  t.same([...planExtents(plan, 4)], all.slice(4), 'skipping yields the same extents')
  t.same(all[2], { seq: 2, offset: 4096, length: 1024, zero: false })
  t.throws(() => buildPlan(ranges, { chunkBytes: 1000 }))
})
