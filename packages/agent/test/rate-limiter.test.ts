import t from 'tap'
import { createRateLimiter, parseRate } from '../src/rate-limiter.ts'

t.test('token bucket: measured rate within 5% of the limit, no initial burst', async (t) => {
  const rate = 4 * 1024 * 1024
  const rl = createRateLimiter({ rate })
  const msg = 64 * 1024
  const start = performance.now()
  let sent = 0
  let firstSecond = 0
  // 3 s of sending (generous: the bound checked is loose, not a tight timing assert)
  while (performance.now() - start < 3000) {
    await rl.take(msg)
    sent += msg
    if (performance.now() - start <= 1000) firstSecond += msg
  }
  const elapsed = (performance.now() - start) / 1000
  const measured = sent / elapsed
  t.ok(measured <= rate * 1.05, `measured ${Math.round(measured)} ≤ rate + 5%`)
  t.ok(measured >= rate * 0.85, `measured ${Math.round(measured)} not far below the rate`)
  t.ok(firstSecond <= rate * 1.05 + msg, `first second ${firstSecond} bytes: no burst above one second's worth`)
})

t.test('idle credit is capped (no burst after a pause)', async (t) => {
  let now = 0
  const rl = createRateLimiter({ rate: 1000, now: () => now })
  now = 100_000 // 100 s idle
  let resolved = false
  const p = rl.take(500).then(() => { resolved = true })
  await new Promise((r) => setTimeout(r, 20))
  t.notOk(resolved, 'credit after idling is at most a fifth of a second: 500 bytes must wait')
  now += 400
  await p
  t.ok(resolved)
})

t.test('unlimited and parsing', async (t) => {
  const rl = createRateLimiter({ rate: 0 })
  t.equal(rl.rate, Infinity)
  await rl.take(1e12)
  t.equal(parseRate('10M'), 10 * 1024 * 1024)
  t.equal(parseRate('512k'), 512 * 1024)
  t.equal(parseRate('1.5G'), 1.5 * 1024 ** 3)
  t.equal(parseRate('100000'), 100000)
  t.throws(() => parseRate('fast'))
})

t.test('abort while waiting', async (t) => {
  const rl = createRateLimiter({ rate: 1000 })
  const ac = new AbortController()
  const p = rl.take(100_000, { signal: ac.signal })
  ac.abort(new Error('stop'))
  await t.rejects(p)
})
