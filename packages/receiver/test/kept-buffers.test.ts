/**
 * Memory the receiver keeps from one agent connection to the next (issue
 * #17): every cycle of an agent is a new session, and the frames its
 * payloads arrive in come from one pool for the whole receiver — the second
 * incremental takes no new buffer for its frames; a compressed extent's
 * frame goes back to the pool as soon as its payload is decompressed
 * (nothing forgotten); and the old contents of in-place ranges are read for
 * the journal into kept buffers (disk-apply.ts OLD_CONTENTS). Every mirror is
 * checked byte for byte.
 */
import t from 'tap'
import { scratchDir, prng } from '@grainline/test-utils'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { MessageKind } from '@grainline/protocol'
import { Agent, MiB, TOKEN, evolve, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, type DiskPlan, type Env, type LogLine } from './helpers.ts'
import { OLD_CONTENTS } from '../src/disk-apply.ts'
import { rollbackMirror } from '../src/index.ts'

const KiB = 1024
const EXTENT = 64 * KiB

/** The session's 'session buffers' debug line (at its end), the n-th one logged. */
async function sessionBuffers(
  logs: { waitFor: (m: (l: LogLine) => boolean) => Promise<LogLine>; lines: LogLine[] },
  n: number,
): Promise<{ frames: Record<string, number>; payloads: Record<string, number> }> {
  await logs.waitFor((l) => l['msg'] === 'session buffers' && logs.lines.filter((x) => x['msg'] === 'session buffers').length >= n)
  const l = logs.lines.filter((x) => x['msg'] === 'session buffers')[n - 1] as LogLine
  return { frames: l['frames'] as Record<string, number>, payloads: l['payloads'] as Record<string, number> }
}

/** `count` scattered 64 KiB ranges of a disk of `cap` bytes, ascending. */
function scattered(cap: number, count: number, seed: number): Array<{ offset: number; length: number }> {
  const rnd = prng(seed)
  const slots = new Set<number>()
  while (slots.size < count) slots.add(Math.floor(rnd() * (cap / EXTENT)))
  return [...slots].sort((a, b) => a - b).map((s) => ({ offset: s * EXTENT, length: EXTENT }))
}

/** One agent connection running one cycle (runCycle's options), closed once it is done. */
async function cycleOn(url: string, env: Env, vm: string, cycle: number, disks: DiskPlan[], opts: Parameters<typeof runCycle>[4] = {}): ReturnType<typeof runCycle> {
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(a, vm, cycle, disks, opts)
  a.close()
  await a.whenClosed()
  return r
}

/** `img` with each range overwritten by a pattern whose every other KiB is zero (lz4 about halves it). */
function halfZeroChange(img: Buffer, ranges: ReadonlyArray<{ offset: number; length: number }>, seed: number): Buffer {
  const next = Buffer.from(img)
  for (const r of ranges) {
    const p = pattern(r.length, seed + r.offset)
    for (let k = 0; k < r.length; k += 2 * KiB) p.fill(0, k, k + KiB)
    p.copy(next, r.offset)
  }
  return next
}

t.test('sessions share the frame pool: the second incremental takes no new buffer for its frames; compressed frames go back at once', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const cap = 8 * MiB
  const name = 'kb.vmdk'
  const flat = join(env.store, 'vm-kb', 'kb-flat.vmdk')
  const img1 = pattern(cap, 1)
  await cycleOn(url, env, 'vm-kb', 1, [seedPlan(0, name, img1, 'aa01aa01aa01aa01', EXTENT)])
  t.ok(readFileSync(flat).equals(img1), 'seed exact')
  let img = img1
  const news: number[] = []
  for (let cycle = 2; cycle <= 3; cycle++) {
    const ranges = scattered(cap, 24, cycle)
    img = evolve(img, cycle, ranges)
    await cycleOn(url, env, 'vm-kb', cycle, [incPlan(0, name, img, cycle - 1, `cc0${cycle}cc0${cycle}cc0${cycle}cc0${cycle}`, ranges, `kb-00000${cycle - 1}.vmdk`, `kb-00000${cycle}.vmdk`, EXTENT)], {
      alg: 'xxh64',
    })
    t.ok(readFileSync(flat).equals(img), `cycle ${cycle}: mirror exact`)
    const b = await sessionBuffers(logs, cycle)
    t.equal(b.frames['taken'], 24, `cycle ${cycle}: every 64 KiB payload read into a pooled frame`)
    t.equal(b.frames['forgotten'], 0, 'none forgotten')
    t.equal(b.frames['released'], 0, 'none still held at the end')
    news.push(b.frames['created'] as number)
  }
  t.equal(news[1], 0, `the second incremental took no new frame buffer (the first: ${news[0]})`)

  // compressed payloads (half zeros: lz4 halves them, still pooled frames): decompressed into memory of their
  // own, their frames go back to the pool at once
  const ranges = scattered(cap, 24, 4)
  const next = halfZeroChange(img, ranges, 40)
  await cycleOn(url, env, 'vm-kb', 4, [incPlan(0, name, next, 3, 'dd04dd04dd04dd04', ranges, 'kb-000003.vmdk', 'kb-000004.vmdk', EXTENT)], { alg: 'xxh64', compression: 'lz4' })
  t.ok(readFileSync(flat).equals(next), 'compressed cycle: mirror exact')
  const b4 = await sessionBuffers(logs, 4)
  t.equal(b4.frames['taken'], 24, 'the compressed payloads arrived in pooled frames')
  t.equal(b4.frames['forgotten'], 0, 'and every frame went back to the pool, none was dropped')
  t.equal(b4.payloads['copied'], 24, 'the decompressed payloads were written from the payload pool')
})

t.test('the old contents for the journal are read into kept buffers: reused across batches and cycles', async (t) => {
  const env = makeEnv(scratchDir(t))
  // small batches: several journal writes per cycle
  const { receiver, url } = await startReceiver(env, { batchBytes: 256 * KiB })
  t.teardown(() => receiver.close())
  const cap = 8 * MiB
  const name = 'oc.vmdk'
  const flat = join(env.store, 'vm-oc', 'oc-flat.vmdk')
  let img = pattern(cap, 7)
  await cycleOn(url, env, 'vm-oc', 1, [seedPlan(0, name, img, 'ee01ee01ee01ee01', EXTENT)])
  const created0 = OLD_CONTENTS.created
  const taken0 = OLD_CONTENTS.taken
  for (let cycle = 2; cycle <= 3; cycle++) {
    const ranges = scattered(cap, 32, 10 + cycle)
    img = evolve(img, cycle, ranges)
    await cycleOn(url, env, 'vm-oc', cycle, [incPlan(0, name, img, cycle - 1, `ff0${cycle}ff0${cycle}ff0${cycle}ff0${cycle}`, ranges, `oc-00000${cycle - 1}.vmdk`, `oc-00000${cycle}.vmdk`, EXTENT)])
    t.ok(readFileSync(flat).equals(img), `cycle ${cycle}: mirror exact`)
  }
  const created = OLD_CONTENTS.created - created0
  const taken = OLD_CONTENTS.taken - taken0
  t.equal(taken, 64, 'every range of old contents read into a buffer of the pool')
  t.ok(created <= 8, `64 ranges of old contents read into ${created} new buffers: the others reused between batches and cycles`)
})

t.test('an old-contents buffer goes back only once its journal record is written: scribbled over on its return, the undo still restores the committed image', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { batchBytes: 256 * KiB })
  t.teardown(() => receiver.close())
  const give = OLD_CONTENTS.give.bind(OLD_CONTENTS)
  let scribbled = 0
  OLD_CONTENTS.give = (b: Uint8Array | undefined): void => {
    if (b !== undefined) {
      b.fill(0xee)
      scribbled++
    }
    give(b)
  }
  t.teardown(() => {
    OLD_CONTENTS.give = give
  })
  const cap = 8 * MiB
  const name = 'sc.vmdk'
  const flat = join(env.store, 'vm-sc', 'sc-flat.vmdk')
  const img1 = pattern(cap, 3)
  await cycleOn(url, env, 'vm-sc', 1, [seedPlan(0, name, img1, 'ab01ab01ab01ab01', EXTENT)])
  const ranges = scattered(cap, 48, 21)
  const img2 = evolve(img1, 2, ranges)
  // applied, not committed: the journal holds the old contents
  await cycleOn(url, env, 'vm-sc', 2, [incPlan(0, name, img2, 1, 'ab02ab02ab02ab02', ranges, 'sc-000001.vmdk', 'sc-000002.vmdk', EXTENT)], { commit: false })
  t.ok(readFileSync(flat).equals(img2), 'the cycle was applied')
  t.ok(scribbled >= 48, `${scribbled} buffers scribbled over as they came back`)
  // the offline rollback, as an operator runs it: with the receiver stopped (its session may still hold the VM's lock
  // for a moment after the agent's side closed)
  await receiver.close()
  const r = await rollbackMirror(env.store, 'vm-sc')
  t.equal(r.rolledBack, true)
  t.ok(readFileSync(flat).equals(img1), 'rolled back from the journal: mirror == committed image')
})

t.test('a compressed extent whose frame went back at once: its digest is journaled as received, and a resumed cycle ends with the same cycle digest', async (t) => {
  const env = makeEnv(scratchDir(t))
  // small batches: a batch is journaled after its later extents' frames reused the buffers of the earlier ones
  const { receiver, url } = await startReceiver(env, { batchBytes: 256 * KiB })
  t.teardown(() => receiver.close())
  const cap = 8 * MiB
  const name = 'rz.vmdk'
  const flat = join(env.store, 'vm-rz', 'rz-flat.vmdk')
  const img1 = pattern(cap, 11)
  await cycleOn(url, env, 'vm-rz', 1, [seedPlan(0, name, img1, 'ab01ab01ab01ab01', EXTENT)])
  // half-zero payloads: lz4 halves them, so each frame goes back to the pool as soon as it is decompressed
  const ranges = scattered(cap, 48, 21)
  const next = halfZeroChange(img1, ranges, 70)
  const plan = () => incPlan(0, name, next, 1, 'ab02ab02ab02ab02', ranges, 'rz-000001.vmdk', 'rz-000002.vmdk', EXTENT)
  const a2 = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a2, 'vm-rz', 2, [plan()], { alg: 'xxh64', compression: 'lz4', stopAfter: 32 })
  // the first batches durable (their records, digests included, in the journal), then the link drops
  for (;;) if ((await a2.expect(MessageKind.ExtentAck)).seq >= 15) break
  a2.close()
  await a2.whenClosed()
  const r = await cycleOn(url, env, 'vm-rz', 2, [plan()], { alg: 'xxh64', compression: 'lz4' })
  t.ok((r.resume[0] as number) >= 16, `resumed at ${String(r.resume[0])}: the replayed extents' digests came from the journal`)
  t.ok(r.committed !== undefined, 'DiskEnd accepted (the cycle digest matched) and the cycle committed')
  t.ok(readFileSync(flat).equals(next), 'mirror exact')
})
