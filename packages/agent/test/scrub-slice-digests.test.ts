/**
 * The digests of a scrub slice kept for `--scrub N` (scrub-slice-digests.ts):
 * every block of the slice in order, copied, ready only once all are there,
 * serving only the slice, block size and algorithm they were taken for; a
 * slice past the cap is not kept, a block out of order or a digest of another
 * length refused, a slice left incomplete let go (the scrub then reads it
 * after the commit).
 */
import t from 'tap'
import { ScrubSliceDigests, SLICE_DIGESTS_MAX_BLOCKS } from '../src/scrub-slice-digests.ts'

const d = (n: number): Uint8Array => new Uint8Array(8).fill(n)

t.test('every block of the slice in order, copied; ready once complete; serves its slice only', async (t) => {
  const s = new ScrubSliceDigests(100, 164, 1024 * 1024, 'xxh64')
  const given = d(1)
  s.set(100, given)
  given.fill(0)
  for (let b = 101; b < 164; b++) s.set(b, d(b % 256))
  t.equal(s.ready, false, 'not ready before complete')
  t.equal(s.serves(100, 164, 1024 * 1024, 'xxh64'), false, 'serves nothing while filling')
  s.complete()
  t.equal(s.ready, true)
  t.equal(s.count, 64)
  const got = [...s.entries()]
  t.same([got[0]?.[0], Buffer.from(got[0]?.[1] ?? []).toString('hex')], [100, Buffer.from(d(1)).toString('hex')], 'the digest was copied when set')
  t.same(got[63]?.[0], 163, 'the last block')
  t.equal(s.serves(100, 164, 1024 * 1024, 'xxh64'), true, 'serves its own slice')
  t.equal(s.serves(0, 64, 1024 * 1024, 'xxh64'), false, 'not another slice (a resync starts a new rotation)')
  t.equal(s.serves(100, 164, 256 * 1024, 'xxh64'), false, 'not another block size')
  t.equal(s.serves(100, 164, 1024 * 1024, 'sha256'), false, 'not another algorithm')
  s.set(164, d(2))
  t.equal(s.count, 64, 'nothing is set once complete')
})

t.test('the cap, out-of-order blocks, wrong lengths, an incomplete slice', async (t) => {
  t.equal(ScrubSliceDigests.fits(0, SLICE_DIGESTS_MAX_BLOCKS), true, 'a slice of the cap fits')
  t.equal(ScrubSliceDigests.fits(0, SLICE_DIGESTS_MAX_BLOCKS + 1), false, 'one more block does not')
  t.equal(ScrubSliceDigests.fits(5, 5), false, 'an empty slice is not kept')
  t.throws(() => new ScrubSliceDigests(0, 5, 4096, 'xxh64', 4), { name: 'RangeError' }, 'a slice past the cap is refused')
  const s = new ScrubSliceDigests(10, 13, 4096, 'xxh64')
  t.throws(() => s.set(11, d(1)), { name: 'RangeError' }, 'the first block must be the slice start')
  s.set(10, d(1))
  t.throws(() => s.set(10, d(1)), { name: 'RangeError' }, 'a block twice')
  t.throws(() => s.set(11, new Uint8Array(32)), { name: 'RangeError' }, 'a digest of another length')
  s.set(11, d(2))
  s.complete()
  t.equal(s.ready, false, 'a slice with a block missing is never ready')
  t.match(s.dropped, /2 of the 3 blocks/, 'and says why')
  t.same([...s.entries()], [], 'its digests are let go')
  s.drop('again')
  t.match(s.dropped, /2 of the 3 blocks/, 'the first reason stays')
  const r = new ScrubSliceDigests(0, 2, 4096, 'sha256')
  r.drop('a read failed')
  r.set(0, new Uint8Array(32))
  r.complete()
  t.equal(r.ready, false, 'let go: never ready')
})
