/**
 * The payload pool (payload-pool.ts): a payload is copied into a reused
 * buffer of its length, a buffer given back is reused, the pool never owns
 * more than its bound (free buffers of other lengths are dropped to make
 * room; at the bound a payload passes through uncopied), and a buffer it did
 * not lend is never taken in.
 */
import t from 'tap'
import { PayloadPool } from '../src/payload-pool.ts'

const bytes = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v)

t.test('copies into a reused buffer of the same length', async (t) => {
  const pool = new PayloadPool(() => 1024)
  const a = bytes(256, 1)
  const c1 = pool.copy(a)
  t.not(c1, a, 'a copy, not the payload')
  t.ok(Buffer.from(c1).equals(a), 'same bytes')
  a.fill(9)
  t.equal(c1[0], 1, 'the copy does not follow later changes of the payload')
  pool.give(c1)
  const c2 = pool.copy(bytes(256, 2))
  t.equal(c2, c1, 'the buffer given back is reused')
  t.equal(c2[0], 2)
  t.equal(pool.ownedBytes, 256)
  t.equal(pool.copied, 2)
})

t.test('bounded: at the bound a payload passes through; free buffers of other lengths make room', async (t) => {
  const pool = new PayloadPool(() => 512)
  const x = pool.copy(bytes(256, 1))
  const y = pool.copy(bytes(256, 2))
  t.equal(pool.ownedBytes, 512)
  const z = bytes(256, 3)
  t.equal(pool.copy(z), z, 'nothing free and at the bound: the payload itself')
  t.equal(pool.passed, 1)
  pool.give(x)
  pool.give(y)
  // a longer payload: the two free 256-byte buffers are dropped to make room
  const big = pool.copy(bytes(512, 4))
  t.not(big.length, 256)
  t.equal(pool.ownedBytes, 512, 'still within the bound')
  t.equal(pool.passed, 1)
  pool.give(big)
  // a shorter one than any free buffer: one 512-byte buffer is dropped first
  const small = pool.copy(bytes(128, 5))
  t.equal(small.length, 128)
  t.equal(pool.ownedBytes, 128)
})

t.test('a buffer the pool did not lend, or given twice, is not taken in', async (t) => {
  const pool = new PayloadPool(() => 1024)
  const foreign = bytes(256, 1)
  pool.give(foreign)
  pool.give(undefined)
  const c = pool.copy(bytes(256, 2))
  t.not(c, foreign, 'a foreign buffer is never handed out')
  pool.give(c)
  pool.give(c)
  const d1 = pool.copy(bytes(256, 3))
  const d2 = pool.copy(bytes(256, 4))
  t.not(d1, d2, 'a buffer given twice is lent once')
})
