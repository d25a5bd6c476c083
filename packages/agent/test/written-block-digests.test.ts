/**
 * The digests of the written blocks kept for `--verify changed`
 * (written-block-digests.ts): kept in order and copied, ready only once
 * completed, let go past the cap (the check then reads the blocks after the
 * commit), blocks out of order refused.
 */
import t from 'tap'
import { WrittenBlockDigests } from '../src/written-block-digests.ts'

const d = (n: number): Uint8Array => new Uint8Array(8).fill(n)

t.test('blocks and digests kept in order, copied, ready once complete; more than the initial room', async (t) => {
  const w = new WrittenBlockDigests(1024 * 1024, 'xxh64')
  t.equal(w.ready, false, 'not ready while filling')
  const given = d(7)
  for (let b = 0; b < 200; b++) w.add(b * 3, b === 0 ? given : d(b % 256))
  given.fill(0)
  w.complete()
  t.equal(w.ready, true, 'ready once complete')
  t.equal(w.count, 200)
  const got = [...w.entries()].map(([b, x]) => [b, Buffer.from(x).toString('hex')])
  t.same(got[0], [0, Buffer.from(d(7)).toString('hex')], 'the digest was copied when added')
  t.same(got[199], [597, Buffer.from(d(199)).toString('hex')], 'the last block')
  w.add(1000, d(1))
  t.equal(w.count, 200, 'nothing is added once complete')
})

t.test('past the cap everything is let go; out of order and wrong lengths are refused', async (t) => {
  const w = new WrittenBlockDigests(4096, 'xxh64', 3)
  for (const b of [1, 2, 3]) w.add(b, d(b))
  t.equal(w.count, 3)
  w.add(4, d(4))
  t.equal(w.count, 0, 'the fourth block lets every digest go')
  t.match(w.dropped, /more than 3 blocks/)
  w.complete()
  t.equal(w.ready, false, 'never ready once let go')
  t.same([...w.entries()], [])
  const o = new WrittenBlockDigests(4096, 'sha256')
  o.add(5, new Uint8Array(32))
  t.throws(() => o.add(5, new Uint8Array(32)), { name: 'RangeError' }, 'a block not above the last one')
  t.throws(() => o.add(6, new Uint8Array(8)), { name: 'RangeError' }, 'a digest of another length')
  o.drop('a read failed')
  o.drop('twice')
  t.equal(o.dropped, 'a read failed', 'the first reason stays')
})
