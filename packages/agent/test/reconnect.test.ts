/** Reconnect with backoff: the delay formula and the outage / give-up rule, on a fake clock. */
import t from 'tap'
import { pino } from 'pino'
import { ConnectionLost } from '../src/connection.ts'
import { AgentError } from '../src/errors.ts'
import { backoffDelay, Reconnector, sleep } from '../src/reconnect.ts'

t.test('backoffDelay: min(2^n × 100 ms, max) plus up to 50 % jitter', async (t) => {
  const cases: Array<[attempt: number, max: number, jitter: number, want: number]> = [
    [0, 30_000, 0, 100],
    [1, 30_000, 0, 200],
    [3, 30_000, 0, 800],
    [0, 30_000, 1, 150],
    [9, 30_000, 0, 30_000],
    [20, 30_000, 0.5, 37_500],
    [2, 250, 0, 250],
    [2, 250, 1, 375],
  ]
  for (const [attempt, max, jitter, want] of cases) t.equal(backoffDelay(attempt, max, jitter), want, `attempt ${attempt}, cap ${max}, jitter ${jitter}`)
})

/** A Reconnector on a fake clock that advances by each requested delay (no real waiting beyond 0 ms timers). */
function fake(init: { giveUpMs: number; maxBackoffMs: number }): { r: Reconnector; clock: { t: number }; retries: number[] } {
  const clock = { t: 1000 }
  const retries: number[] = []
  const r = new Reconnector({
    ...init,
    maxBackoffMs: init.maxBackoffMs,
    log: () => pino({ level: 'silent' }),
    onRetry: () => {
      retries.push(clock.t)
    },
    now: () => clock.t,
    random: () => 0,
  })
  return { r, clock, retries }
}

t.test('retries retryable losses, passes other errors through', async (t) => {
  const { r } = fake({ giveUpMs: 60_000, maxBackoffMs: 0 })
  let n = 0
  t.equal(
    await r.run('x', async () => {
      if (++n < 3) throw new ConnectionLost('cut', 1006)
      return 'done'
    }),
    'done',
  )
  t.equal(n, 3)
  await t.rejects(
    r.run('x', async () => {
      throw new AgentError('E_REFUSED', 'no')
    }),
    { code: 'E_REFUSED' },
  )
  await t.rejects(
    r.run('x', async () => {
      throw new ConnectionLost('policy', 1008)
    }),
    { name: 'ConnectionLost' },
    'a non-retryable close code is not retried',
  )
})

t.test('gives up after giveUpMs of outage; progress in between starts a new outage, a handshake does not', async (t) => {
  const { r, clock } = fake({ giveUpMs: 1000, maxBackoffMs: 0 })
  let calls = 0
  await t.rejects(
    r.run('connect', async () => {
      calls++
      clock.t += 400
      throw new ConnectionLost('down', 1006)
    }),
    { code: 'E_GAVE_UP', message: /connect: receiver unreachable or acknowledging nothing for 1 s/ },
  )
  t.equal(calls, 4, 'failures at +0.4, +0.8, +1.2 s (outage 0.8 s at the last retry), the fourth gives up')
  // the link keeps coming back and data gets through each time: every acknowledged extent ends the outage
  calls = 0
  const v = await r.run('cycle', async () => {
    calls++
    clock.t += 900
    if (calls < 6) {
      r.progressed()
      clock.t += 100
      throw new ConnectionLost('cut again', 1006)
    }
    return calls
  })
  t.equal(v, 6, 'five cuts spread over 5 s, each after the receiver acknowledged something: no give-up')
  // a receiver that accepts each connection (handshake, VmOpen) and then times it out, acknowledging nothing
  calls = 0
  await t.rejects(
    r.run('cycle', async () => {
      calls++
      clock.t += 300
      throw new ConnectionLost('connection closed (4408 E_TIMEOUT)', 4408)
    }),
    { code: 'E_GAVE_UP', message: /cycle: receiver unreachable or acknowledging nothing for 1 s/ },
  )
  t.equal(calls, 5, 'sessions that never make progress are an outage: given up after giveUpMs')
  // attempts that each ran longer than giveUpMs before failing, without progress: a receiver answering each
  // step slowly and then dropping the session holds nothing either
  calls = 0
  await t.rejects(
    r.run('cycle', async () => {
      calls++
      clock.t += 1500
      throw new ConnectionLost('cut after a long session', 1006)
    }),
    { code: 'E_GAVE_UP' },
  )
  t.equal(calls, 2, 'long attempts without progress are an outage too')
})

t.test('giveUpMs 0: one retry, then E_GAVE_UP', async (t) => {
  const { r, clock } = fake({ giveUpMs: 0, maxBackoffMs: 0 })
  let calls = 0
  await t.rejects(
    r.run('connect', async () => {
      calls++
      clock.t += 50
      throw new ConnectionLost('down', 1006)
    }),
    { code: 'E_GAVE_UP' },
  )
  t.equal(calls, 2)
})

t.test('sleep honours the abort signal', async (t) => {
  const ac = new AbortController()
  const p = sleep(60_000, ac.signal)
  ac.abort()
  await t.rejects(p, { code: 'E_ABORTED' })
  await t.rejects(sleep(1, ac.signal), { code: 'E_ABORTED' }, 'already aborted')
})
