/**
 * When a disk was last fully proven (proof.ts, `grainline status`): a clean
 * certify, a scrub rotation of contiguous clean BlockChecks covering the disk
 * from block 0, carried over by later commits; never claimed for a rotation
 * that skipped blocks or failed.
 */
import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { pino } from 'pino'
import { createDigest, initDigests } from '@grainline/protocol'
import { blockRun, scrubStep } from '../src/proof.ts'
import { checkBlocks } from '../src/block-check.ts'
import { VmMirror } from '../src/vm-mirror.ts'
import { Agent, MiB, TOKEN, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver } from './helpers.ts'

const u64 = (xs: readonly number[]): Uint8Array => {
  const b = new Uint8Array(xs.length * 8)
  const v = new DataView(b.buffer)
  for (const [i, x] of xs.entries()) v.setBigUint64(i * 8, BigInt(x), true)
  return b
}
const range = (a: number, b: number): number[] => Array.from({ length: b - a }, (_, i) => a + i)

t.test('blockRun and scrubStep (pure)', async (t) => {
  t.same(blockRun(u64([4, 5, 6])), { from: 4, to: 7 })
  t.equal(blockRun(u64([4, 6])), undefined, 'not consecutive')
  t.equal(blockRun(u64([])), undefined, 'empty')
  const at = '2026-01-01T00:00:00.000Z'
  const cap = 10 * 4096
  let s = scrubStep({}, { run: { from: 0, to: 4 }, blockSize: 4096, ok: true, at }, cap, 3)
  t.same(s, { scrubRun: { blockSize: 4096, next: 4, since: at }, proven: undefined }, 'a rotation starts at block 0')
  s = scrubStep({ scrubRun: s.scrubRun as NonNullable<typeof s.scrubRun> }, { run: { from: 2, to: 3 }, blockSize: 4096, ok: true, at }, cap, 3)
  t.same(s.scrubRun?.next, 4, 'a check elsewhere (verify changed) leaves it')
  s = scrubStep({ scrubRun: s.scrubRun as NonNullable<typeof s.scrubRun> }, { run: undefined, blockSize: 4096, ok: true, at }, cap, 3)
  t.same(s.scrubRun?.next, 4, 'scattered blocks leave it')
  s = scrubStep({ scrubRun: s.scrubRun as NonNullable<typeof s.scrubRun> }, { run: { from: 4, to: 8 }, blockSize: 8192, ok: true, at }, cap, 3)
  t.same(s.scrubRun?.next, 4, 'another block size does not continue it')
  const mid = s.scrubRun as NonNullable<typeof s.scrubRun>
  t.same(scrubStep({ scrubRun: mid }, { run: { from: 4, to: 8 }, blockSize: 4096, ok: false, at }, cap, 3), { scrubRun: undefined, proven: undefined }, 'a mismatch ends it')
  s = scrubStep({ scrubRun: mid }, { run: { from: 4, to: 10 }, blockSize: 4096, ok: true, at: 'end' }, cap, 4)
  t.same(s, { scrubRun: undefined, proven: { kind: 'scrub', at: 'end', cycle: 4 } }, 'covering the last block proves the disk')
})

t.test('a receiver records the proof of a certify and of a scrub rotation; commits carry it', async (t) => {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const rx = await startReceiver(env)
  const img = pattern(4 * MiB, 5)
  const a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'vm-p', 1, [seedPlan(0, 'vm-p.vmdk', img, '01'.repeat(8))])
  a.close()
  await a.whenClosed()
  await rx.receiver.close()
  let vm = await VmMirror.acquire(env.store, 'vm-p', pino({ level: 'silent' }))
  const bs = 256 * 1024
  const digests = (blocks: number[]): Buffer =>
    Buffer.concat(
      blocks.map((b) =>
        createDigest('xxh64')
          .update(img.subarray(b * bs, (b + 1) * bs))
          .digest(),
      ),
    )
  const check = async (blocks: number[]): Promise<boolean> => (await checkBlocks(vm, 'vm-p.vmdk', { blockSize: bs, blocks: u64(blocks), digests: digests(blocks), algorithm: 'xxh64' })).ok
  const rec = (): NonNullable<(typeof vm.state.disks)[string]> => vm.state.disks['vm-p.vmdk'] as NonNullable<(typeof vm.state.disks)[string]>
  t.equal(rec().proven, undefined, 'a seed proves nothing')
  t.ok(await check(range(0, 8)))
  t.ok(await check([3, 9]), 'a verify-changed check in between')
  t.match(rec(), { scrubRun: { next: 8 }, proven: undefined }, 'half the disk checked')
  t.ok(await check(range(8, 16)))
  t.match(rec(), { proven: { kind: 'scrub', cycle: 1 } }, 'the rotation covered the disk')
  t.equal(rec().scrubRun, undefined)
  await vm.recordVerify('vm-p.vmdk', 'certify', { ok: true, at: '2030-01-01T00:00:00.000Z', algorithm: 'xxh64', digest: '00', bytes: img.length })
  t.match(rec().proven, { kind: 'certify', at: '2030-01-01T00:00:00.000Z', cycle: 1 })
  t.ok(await check(range(0, 4)), 'a new rotation starts')
  vm.release()
  const rx2 = await startReceiver(env)
  const b = await Agent.connect(rx2.url, { token: TOKEN, ca: env.tls.ca })
  const next = Buffer.from(img)
  await runCycle(b, 'vm-p', 2, [incPlan(0, 'vm-p.vmdk', next, 1, 'i2', [], 'vm-p-000001.vmdk', 'vm-p-000002.vmdk')])
  b.close()
  await b.whenClosed()
  await rx2.receiver.close()
  vm = await VmMirror.acquire(env.store, 'vm-p', pino({ level: 'silent' }))
  t.teardown(() => vm.release())
  t.match(rec(), { cycle: 2, proven: { kind: 'certify', cycle: 1 }, scrubRun: { next: 4 } }, 'an incremental carries the proof and the rotation over')
})
