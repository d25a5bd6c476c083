/**
 * write-runs.ts: how a batch reaches its file. A seed's runs (its fresh
 * file's unwritten ranges are holes) leave the whole zero granules of data
 * extents unwritten: applied to a zeroed file they give exactly the bytes of
 * every extent written whole; no whole aligned zero granule is written; each
 * extent is credited to exactly one run, in order (the `extent-written`
 * fault point). A batch out of order is left to the ordered path.
 */
import t from 'tap'
import fc from 'fast-check'
import { type RunExtent, SEED_ZERO_GRANULE, scatteredRuns, seedRuns } from '../src/write-runs.ts'

const G = SEED_ZERO_GRANULE

/** Apply runs to a zeroed image; returns the image and the bytes written. */
function applyRuns(size: number, runs: NonNullable<ReturnType<typeof seedRuns>>): { image: Buffer; written: number; ranges: Array<[number, number]> } {
  const image = Buffer.alloc(size)
  let written = 0
  const ranges: Array<[number, number]> = []
  for (const r of runs) {
    let at = r.offset
    for (const d of r.data) {
      image.set(d, at)
      at += d.length
      written += d.length
    }
    if (at > r.offset) ranges.push([r.offset, at])
  }
  return { image, written, ranges }
}

t.test('seedRuns: the bytes of every extent, without the zero granules; each extent counted once', async (t) => {
  const SIZE = 64 * G
  // an extent: start sector, sectors, zero flag, and its contents as granule-sized patterns (0 = zeros)
  const extentArb = fc.record({
    gap: fc.integer({ min: 0, max: 300 }),
    sectors: fc.integer({ min: 1, max: 700 }),
    zero: fc.boolean(),
    pattern: fc.array(fc.constantFrom(0, 0, 1, 2, 3), { minLength: 1, maxLength: 8 }),
    sparks: fc.array(fc.integer({ min: 0, max: 700 * 512 - 1 }), { maxLength: 3 }),
  })
  await fc.assert(
    fc.asyncProperty(fc.array(extentArb, { minLength: 1, maxLength: 12 }), async (specs) => {
      const batch: RunExtent[] = []
      let at = 0
      for (const s of specs) {
        const offset = at + s.gap * 512
        const length = s.sectors * 512
        if (offset + length > SIZE) break
        at = offset + length
        if (s.zero) {
          batch.push({ offset, length, zero: true })
          continue
        }
        const data = Buffer.alloc(length)
        // granule-sized stretches of the file: zeros or a pattern; a few single non-zero bytes inside zero stretches
        for (let p = 0; p < length; p++) {
          const g = Math.floor((offset + p) / G) % s.pattern.length
          const v = s.pattern[g] as number
          if (v !== 0) data[p] = (v * 37 + p) & 0xff || 1
        }
        for (const k of s.sparks) if (k < length) data[k] = 0x5a
        batch.push({ offset, length, zero: false, data })
      }
      if (batch.length === 0) return
      const runs = seedRuns(batch)
      if (runs === undefined) throw new Error('an ascending batch gave no runs')
      // the reference: every extent written whole into a zeroed file
      const want = Buffer.alloc(SIZE)
      for (const e of batch) if (!e.zero) want.set(e.data as Uint8Array, e.offset)
      const got = applyRuns(SIZE, runs)
      if (!got.image.equals(want)) throw new Error('the runs give other bytes than the extents')
      // every extent once
      const credited = runs.reduce((n, r) => n + r.extents, 0)
      if (credited !== batch.length) throw new Error(`${credited} extents credited for ${batch.length}`)
      // no byte is written of an aligned granule of zeros that lies inside one data extent (the rule: a piece of one extent; a zero granule split between two extents is written, found by seed 698816409: 123 + 5 sectors of zeros)
      for (const e of batch) {
        if (e.zero) continue
        for (let g = Math.ceil(e.offset / G) * G; g + G <= e.offset + e.length; g += G) {
          if (!want.subarray(g, g + G).every((x) => x === 0)) continue
          if (got.ranges.some(([a, b]) => a < g + G && b > g)) throw new Error(`a zero granule at ${g} was written`)
        }
      }
      // runs do not overlap and ascend
      let end = -1
      for (const r of runs) {
        if (r.offset < end) throw new Error('runs overlap')
        end = r.offset + r.data.reduce((n, d) => n + d.length, 0)
      }
    }),
    { numRuns: 400 },
  )
  t.pass('400 random seed batches')
})

t.test('seedRuns: examples', async (t) => {
  const data = Buffer.alloc(4 * G)
  data.fill(7, G, 2 * G)
  data[3 * G + 5] = 1
  const runs = seedRuns([
    { offset: 0, length: 4 * G, zero: false, data },
    { offset: 4 * G, length: G, zero: true },
    { offset: 5 * G, length: G, zero: false, data: Buffer.alloc(G) },
    { offset: 6 * G + 512, length: 1024, zero: false, data: Buffer.alloc(1024) },
  ])
  t.same(
    runs?.map((r) => ({ offset: r.offset, bytes: r.data.reduce((n, d) => n + d.length, 0), extents: r.extents })),
    [
      { offset: G, bytes: G, extents: 0 },
      { offset: 3 * G, bytes: G, extents: 1 },
      { offset: 4 * G, bytes: 0, extents: 2 },
      // a piece shorter than a granule is written even when zero (it cannot become a whole hole)
      { offset: 6 * G + 512, bytes: 1024, extents: 1 },
    ],
    'granules 1 and 3 written; the zero extent and the all-zero one credited to a run of no bytes',
  )
  t.equal(
    seedRuns([
      { offset: 2 * G, length: G, zero: true },
      { offset: G, length: G, zero: true },
    ]),
    undefined,
    'out of order: the ordered path',
  )
  t.equal(scatteredRuns([{ offset: 0, length: G, zero: true }]), undefined, 'scatteredRuns takes data extents only')
})

t.test('seedRuns: a data extent without its bytes fails the batch, never taken for zeros', async (t) => {
  t.throws(() => seedRuns([{ offset: 0, length: G, zero: false }]), TypeError)
  t.throws(() => seedRuns([{ offset: 0, length: G, zero: false, data: Buffer.alloc(G - 512) }]), /has 65024 bytes for 65536/)
})
