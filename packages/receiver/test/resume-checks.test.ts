import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { readFileSync, writeFileSync, truncateSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { MessageKind } from '@grainline/protocol'
import { Agent, MiB, TOKEN, evolve, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver } from './helpers.ts'

/*
 * A resume of an interrupted in-place cycle is refused when its cycle
 * identity differs (E_CYCLE_MISMATCH) or when the committed mirror was
 * modified meanwhile (E_MIRROR_MODIFIED); a Rollback then lets the agent go on.
 */

const EXT = 64 * 1024
const img1 = Buffer.concat([pattern(MiB, 1), pattern(MiB, 2)])
const ranges = [
  { offset: 0, length: 8 * EXT },
  { offset: MiB, length: 8 * EXT },
]
const img2 = evolve(img1, 5, ranges)
// another successor: the same cycle of the same disk from another frozen source, so another identity
const inc = (successor = 'web-r-000002.vmdk') => incPlan(0, 'web-r.vmdk', img2, 1, successor, ranges, 'web-r-000001.vmdk', successor, EXT)

async function interrupted(dir: string): Promise<{ env: ReturnType<typeof makeEnv>; url: string; close: () => Promise<void> }> {
  const env = makeEnv(dir)
  const { receiver, url } = await startReceiver(env)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-r', 1, [seedPlan(0, 'web-r.vmdk', img1, '01'.repeat(8), EXT)])
  a.close()
  await a.whenClosed()
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(b, 'web-r', 2, [inc()], { stopAfter: 10 })
  // wait until the first batch is durable (its ack), then drop the connection
  for (;;) {
    const m = await b.next()
    if (m === undefined) throw new Error('closed early')
    if (m.kind === MessageKind.ExtentAck) break
  }
  b.terminate()
  await b.whenClosed()
  return {
    env,
    url,
    close: async () => {
      await receiver.close()
    },
  }
}

async function refusal(p: Promise<unknown>): Promise<string> {
  try {
    await p
    return 'accepted'
  } catch (err) {
    return String((err as { reason?: unknown }).reason)
  }
}

t.test('a resume with another cycle identity is refused with E_CYCLE_MISMATCH', async (t) => {
  const r = await interrupted(scratchDir(t))
  t.teardown(r.close)
  const a = await Agent.connect(r.url, { token: TOKEN, ca: r.env.tls.ca })
  t.equal(await refusal(runCycle(a, 'web-r', 2, [inc('web-r-000003.vmdk')])), 'E_CYCLE_MISMATCH')
  a.close()
  await a.whenClosed()
  // the right identity resumes; a rollback first lets another identity start afresh
  const b = await Agent.connect(r.url, { token: TOKEN, ca: r.env.tls.ca })
  const res = await runCycle(b, 'web-r', 2, [inc('web-r-000003.vmdk')], { rollbackFirst: true })
  b.close()
  t.equal(res.resume[0], 0)
  t.ok(readFileSync(join(r.env.store, 'web-r', 'web-r-flat.vmdk')).equals(img2))
})

t.test('a resume over a mirror modified meanwhile is refused with E_MIRROR_MODIFIED', async (t) => {
  for (const how of ['cid', 'size'] as const) {
    await t.test(how, async (t) => {
      const r = await interrupted(scratchDir(t))
      t.teardown(r.close)
      const desc = join(r.env.store, 'web-r', 'web-r.vmdk')
      const flat = join(r.env.store, 'web-r', 'web-r-flat.vmdk')
      if (how === 'cid') writeFileSync(desc, readFileSync(desc, 'latin1').replace(/^CID=[0-9a-f]{8}$/m, 'CID=0badc0de'), 'latin1')
      else truncateSync(flat, statSync(flat).size - 512)
      const a = await Agent.connect(r.url, { token: TOKEN, ca: r.env.tls.ca })
      t.equal(await refusal(runCycle(a, 'web-r', 2, [inc()])), 'E_MIRROR_MODIFIED', 'same identity, but the mirror changed')
      a.close()
      await a.whenClosed()
    })
  }
})
