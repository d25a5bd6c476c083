import t from 'tap'
import fc from 'fast-check'
import { arraySource, buildPlan, planExtents, unionSource, type PlanRange, type RangeSource } from '../src/extent-plan.ts'

/** The union of array layers, collected (the cycle streams `unionSource` over grain tables instead). */
async function unionRanges(layers: ReadonlyArray<readonly PlanRange[]>): Promise<PlanRange[]> {
  const out: PlanRange[] = []
  for await (const r of unionSource(layers.map(arraySource))()) out.push(r)
  return out
}

// reference: per-512-byte-sector model
function model(layers: PlanRange[][], sectors: number): Array<boolean | undefined> {
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

t.test('union: newest layer decides, coalesced, disjoint, sorted', async (_t) => {
  await fc.assert(
    fc.asyncProperty(fc.array(layerArb, { minLength: 1, maxLength: 4 }), async (layers) => {
      const u = await unionRanges(layers)
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
    }),
    { numRuns: 500 },
  )
})

t.test('plan: chunks cover every range, seqs are stable when skipping', async (t) => {
  const ranges: PlanRange[] = [
    { offset: 0, length: 5 * 1024, zero: false },
    { offset: 8192, length: 3 * 1024 * 1024, zero: true },
    { offset: 4 * 1024 * 1024, length: 2048, zero: false },
  ]
  const plan = await buildPlan(arraySource(ranges), { chunkBytes: 2048, zeroChunkBytes: 1024 * 1024 })
  const collect = async (from: number): Promise<unknown[]> => {
    const out = []
    for await (const e of planExtents(plan, from)) out.push(e)
    return out
  }
  const all = (await collect(0)) as Array<{ seq: number; length: number }>
  t.equal(all.length, plan.totalExtents)
  t.equal(plan.totalExtents, 3 + 3 + 1)
  t.equal(
    all.reduce((s, e) => s + e.length, 0),
    plan.totalBytes,
  )
  t.same(
    all.map((e) => e.seq),
    [0, 1, 2, 3, 4, 5, 6],
  )
  t.same(await collect(4), all.slice(4), 'skipping yields the same extents')
  t.equal(plan.firstOffset, 0)
  t.same(all[2], { seq: 2, offset: 4096, length: 1024, zero: false })
  await t.rejects(buildPlan(arraySource(ranges), { chunkBytes: 1000 }))
})

t.test("plan: a small plan's ranges are kept from the counting pass, a large one streams again (issue #17)", async (t) => {
  const ranges: PlanRange[] = Array.from({ length: 40 }, (_, i) => ({ offset: i * 1024 * 1024, length: 64 * 1024, zero: i % 7 === 3 }))
  // a source that counts its passes, like the chain's grain-table walk of an incremental
  const counted = (): { source: RangeSource; passes: () => number } => {
    let passes = 0
    return {
      source: async function* () {
        passes++
        yield* ranges
      },
      passes: () => passes,
    }
  }
  const extentsOf = async (plan: Awaited<ReturnType<typeof buildPlan>>): Promise<unknown[]> => {
    const out = []
    for await (const e of planExtents(plan, 0)) out.push(e)
    return out
  }
  const small = counted()
  const kept = await buildPlan(small.source, { chunkBytes: 32 * 1024, keptRanges: 40 })
  const first = await extentsOf(kept)
  t.same(await extentsOf(kept), first, 'every pass yields the same extents')
  t.equal(first.length, kept.totalExtents)
  t.equal(small.passes(), 1, 'the source walked once: by the counting pass')
  const large = counted()
  const streamed = await buildPlan(large.source, { chunkBytes: 32 * 1024, keptRanges: 39 })
  t.same(await extentsOf(streamed), first, 'same extents when streamed')
  await extentsOf(streamed)
  t.equal(large.passes(), 3, 'above the bound: the source walked on every pass')
  t.same([streamed.totalExtents, streamed.totalBytes, streamed.dataBytes, streamed.firstOffset], [kept.totalExtents, kept.totalBytes, kept.dataBytes, kept.firstOffset])
})

t.test('digest log: compact, in order only, bounded', async (t) => {
  const { DigestLog } = await import('../src/digest-log.ts')
  const log = new DigestLog(8, 8 * 100 + 13)
  for (let seq = 0; seq < 200; seq++) log.record(seq, seq % 3 === 0, new Uint8Array(8).fill(seq & 0xff))
  t.equal(log.length, 100, 'stops at its bound')
  t.ok(log.isZero(3))
  t.same(log.digest(3), new Uint8Array(0))
  t.same(log.digest(4), new Uint8Array(8).fill(4))
  log.record(150, false, new Uint8Array(8))
  t.equal(log.length, 100, 'out-of-order records are ignored')
  t.throws(() => new DigestLog(8).record(0, false, new Uint8Array(4)))
  log.clear()
  t.equal(log.length, 0)
  t.notOk(log.isZero(3))
})
