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

/** A step that fails `ms` of fake time after it starts, every time, with a retryable loss; counts its calls. */
function failing(clock: { t: number }, ms: number, message = 'down', code = 1006): { step: () => Promise<never>; calls: () => number } {
  let calls = 0
  return {
    step: async () => {
      calls++
      clock.t += ms
      throw new ConnectionLost(message, code)
    },
    calls: () => calls,
  }
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
  const down = failing(clock, 400)
  await t.rejects(r.run('connect', down.step), { code: 'E_GAVE_UP', message: /connect: receiver unreachable or acknowledging nothing for 1 s/ })
  t.equal(down.calls(), 4, 'failures at +0.4, +0.8, +1.2 s (outage 0.8 s at the last retry), the fourth gives up')
  // the link keeps coming back and data gets through each time: every acknowledged extent ends the outage
  let calls = 0
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
  const timedOut = failing(clock, 300, 'connection closed (4408 E_TIMEOUT)', 4408)
  await t.rejects(r.run('cycle', timedOut.step), { code: 'E_GAVE_UP', message: /cycle: receiver unreachable or acknowledging nothing for 1 s/ })
  t.equal(timedOut.calls(), 5, 'sessions that never make progress are an outage: given up after giveUpMs')
  // attempts that each ran longer than giveUpMs before failing, without progress: a receiver answering each
  // step slowly and then dropping the session holds nothing either
  const long = failing(clock, 1500, 'cut after a long session')
  await t.rejects(r.run('cycle', long.step), { code: 'E_GAVE_UP' })
  t.equal(long.calls(), 2, 'long attempts without progress are an outage too')
})

t.test('giveUpMs 0: one retry, then E_GAVE_UP', async (t) => {
  const { r, clock } = fake({ giveUpMs: 0, maxBackoffMs: 0 })
  const down = failing(clock, 50)
  await t.rejects(r.run('connect', down.step), { code: 'E_GAVE_UP' })
  t.equal(down.calls(), 2)
})

t.test('sleep honours the abort signal', async (t) => {
  const ac = new AbortController()
  const p = sleep(60_000, ac.signal)
  ac.abort()
  await t.rejects(p, { code: 'E_ABORTED' })
  await t.rejects(sleep(1, ac.signal), { code: 'E_ABORTED' }, 'already aborted')
})
