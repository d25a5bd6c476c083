/** isAllZero (zero-bytes.ts), shared by the agent and the receiver: every byte counts, at any length and view. */
import t from 'tap'
import { isAllZero } from '../src/index.ts'

t.test('isAllZero: zeros at any length; one non-zero byte anywhere is seen', async (t) => {
  t.equal(isAllZero(Buffer.alloc(0)), true, 'empty')
  for (const n of [1, 511, 65535, 65536, 65537, 1024 * 1024 + 3]) {
    const b = Buffer.alloc(n)
    t.equal(isAllZero(b), true, `${n} zeros`)
    for (const at of [0, n - 1, Math.floor(n / 2), Math.min(n - 1, 65536)]) {
      b[at] = 1
      t.equal(isAllZero(b), false, `${n} bytes, non-zero at ${at}`)
      b[at] = 0
    }
  }
  // a Uint8Array view into a larger buffer: only its own bytes count
  const backing = new Uint8Array(200_000)
  backing[10] = 9
  backing[150_000] = 9
  t.equal(isAllZero(backing.subarray(11, 149_999)), true, 'a view between two non-zero bytes')
  t.equal(isAllZero(backing.subarray(11, 150_001)), false, 'a view that reaches one')
})
