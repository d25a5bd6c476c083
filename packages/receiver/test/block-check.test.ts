/**
 * BlockCheck on the receiver (SPEC §5.6, `--verify changed` / `--scrub`):
 * the listed blocks are read back from the committed mirror and compared with
 * the agent's digests; only the blocks that differ come back; a block beyond
 * the disk is E_RANGE; a mismatch is recorded and marks the disk diverged.
 */
import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { pino } from 'pino'
import { createDigest, initDigests } from '@grainline/protocol'
import { checkBlocks } from '../src/block-check.ts'
import { VmMirror } from '../src/vm-mirror.ts'
import { Agent, MiB, TOKEN, makeEnv, pattern, runCycle, seedPlan, startReceiver } from './helpers.ts'

const u64 = (xs: readonly number[]): Uint8Array => {
  const b = new Uint8Array(xs.length * 8)
  const v = new DataView(b.buffer)
  for (const [i, x] of xs.entries()) v.setBigUint64(i * 8, BigInt(x), true)
  return b
}
const list = (b: Uint8Array): number[] => {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength)
  return Array.from({ length: b.length / 8 }, (_, i) => Number(v.getBigUint64(i * 8, true)))
}

t.test('checkBlocks reads the listed blocks back and answers the ones that differ', async (t) => {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const img = Buffer.concat([pattern(3 * MiB, 7), Buffer.alloc(MiB - 4096)])
  const { receiver, url } = await startReceiver(env)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-01', 1, [seedPlan(0, 'web-01.vmdk', img, 'ab01ab01ab01ab01')])
  a.ws.close()
  await receiver.close()
  const vm = await VmMirror.acquire(env.store, 'web-01', pino({ level: 'silent' }))
  t.teardown(() => vm.release())
  const blockSize = MiB
  const digestOf = (b: number): Uint8Array =>
    createDigest('xxh64')
      .update(img.subarray(b * blockSize, Math.min(img.length, (b + 1) * blockSize)))
      .digest()
  // blocks 0..3 (the last one short: the capacity is not a multiple of the block), block 2's digest wrong
  const digests = Buffer.concat([digestOf(0), digestOf(1), new Uint8Array(8).fill(0xee), digestOf(3)])
  const r = await checkBlocks(vm, 'web-01.vmdk', { blockSize, blocks: u64([0, 1, 2, 3]), digests, algorithm: 'xxh64' })
  t.equal(r.ok, false)
  t.same(list(r.mismatched), [2], 'only the block whose digest differs')
  t.equal(r.bytes, img.length, 'read exactly the listed blocks (the short last one included)')
  t.match(vm.state.disks['web-01.vmdk'], { diverged: { reason: /block check \(xxh64\) of cycle 1 failed/ } }, 'a mismatch marks the disk diverged')
  const good = await checkBlocks(vm, 'web-01.vmdk', { blockSize, blocks: u64([1, 3]), digests: Buffer.concat([digestOf(1), digestOf(3)]), algorithm: 'xxh64' })
  t.same({ ok: good.ok, mismatched: list(good.mismatched), bytes: good.bytes }, { ok: true, mismatched: [], bytes: MiB + (MiB - 4096) })
  await t.rejects(checkBlocks(vm, 'web-01.vmdk', { blockSize, blocks: u64([4]), digests: Buffer.alloc(8), algorithm: 'xxh64' }), { code: 'E_RANGE' }, 'a block beyond the disk')
  await t.rejects(checkBlocks(vm, 'nope.vmdk', { blockSize, blocks: u64([0]), digests: Buffer.alloc(8), algorithm: 'xxh64' }), { code: 'E_INTERNAL' }, 'no such committed disk')
  const ac = new AbortController()
  ac.abort()
  await t.rejects(checkBlocks(vm, 'web-01.vmdk', { blockSize, blocks: u64([0]), digests: digestOf(0), algorithm: 'xxh64' }, ac.signal), 'an aborted session stops reading')
})
