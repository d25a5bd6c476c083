import t from 'tap'
import { parseRate } from '@grainline/protocol'
import { createRateLimiter } from '../src/rate-limiter.ts'

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
  const p = rl.take(500).then(() => {
    resolved = true
  })
  await new Promise((r) => setTimeout(r, 20))
  t.notOk(resolved, 'credit after idling is at most a fifth of a second: 500 bytes must wait')
  now += 400
  await p
  t.ok(resolved)
})

t.test('unlimited: rate 0 or Infinity (the protocol\'s parseRate gives Infinity for "0")', async (t) => {
  for (const rate of [0, Infinity, parseRate('0')]) {
    const rl = createRateLimiter({ rate })
    t.equal(rl.rate, Infinity)
    await rl.take(1e12)
  }
  t.equal(createRateLimiter({ rate: parseRate('10M') }).rate, 10 * 1024 * 1024)
})

t.test('abort while waiting', async (t) => {
  const rl = createRateLimiter({ rate: 1000 })
  const ac = new AbortController()
  const p = rl.take(100_000, { signal: ac.signal })
  ac.abort(new Error('stop'))
  await t.rejects(p)
})
