/**
 * BlockCheck on the receiver (SPEC §5.6, `--verify changed` / `--scrub`):
 * the listed blocks are read back from the committed mirror and compared with
 * the agent's digests; only the blocks that differ come back; a block beyond
 * the disk is E_RANGE; a mismatch is recorded and marks the disk diverged.
 * A long run of blocks (a scrub slice) does not read the flat's holes, and
 * finds the same mismatches as reading every block.
 */
import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { pino } from 'pino'
import { createDigest, initDigests } from '@grainline/protocol'
import { open } from 'node:fs/promises'
import { seekHelper } from '@grainline/vmdk'
import { checkBlocks, HOLE_ASK_MIN_BYTES } from '../src/block-check.ts'
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

t.test('a long run of blocks (a scrub slice) skips the holes of a sparse mirror and finds the same differences as a full read', async (t) => {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const blocks = HOLE_ASK_MIN_BYTES / MiB + 16
  // the source: data in blocks 3 and 70 only
  const img = Buffer.alloc(blocks * MiB)
  pattern(MiB, 21).copy(img, 3 * MiB)
  pattern(MiB, 22).copy(img, 70 * MiB)
  const { receiver, url } = await startReceiver(env)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-02', 1, [seedPlan(0, 'web-02.vmdk', img, 'cd01cd01cd01cd01')])
  a.ws.close()
  await receiver.close()
  const vm = await VmMirror.acquire(env.store, 'web-02', pino({ level: 'silent' }))
  t.teardown(() => vm.release())
  // the mirror made sparse behind the receiver's back: block 3 right, block 40 written (a hole at the source), block 70 a hole (data at the source)
  const rec = vm.state.disks['web-02.vmdk'] as { stem: string }
  const fh = await open(vm.paths.flat(rec.stem), 'r+')
  await fh.truncate(0)
  await fh.truncate(img.length)
  await fh.write(img, 3 * MiB, MiB, 3 * MiB)
  await fh.write(pattern(MiB, 23), 0, MiB, 40 * MiB)
  await fh.close()
  const digestOf = (b: number): Uint8Array =>
    createDigest('xxh64')
      .update(img.subarray(b * MiB, (b + 1) * MiB))
      .digest()
  const check = (from: number, to: number) =>
    checkBlocks(vm, 'web-02.vmdk', {
      blockSize: MiB,
      blocks: u64(Array.from({ length: to - from }, (_, i) => from + i)),
      digests: Buffer.concat(Array.from({ length: to - from }, (_, i) => digestOf(from + i))),
      algorithm: 'xxh64',
    })
  const whole = await check(0, blocks)
  t.same(list(whole.mismatched), [40, 70], 'the written hole and the punched data block are found')
  t.equal(whole.bytes, img.length, 'every block compared')
  t.ok(whole.holeBytes >= img.length - 8 * MiB, `the holes were not read (${whole.holeBytes / MiB} MiB)`)
  // a short run reads every block: the same answer
  const short = await check(36, 44)
  t.same({ mismatched: list(short.mismatched), holeBytes: short.holeBytes }, { mismatched: [40], holeBytes: 0 }, 'a run below HOLE_ASK_MIN_BYTES is read')
  // without SEEK_DATA (no python3 here): every block read, the same answer
  const saved = seekHelper.command
  seekHelper.command = `${env.store}/no-python3-here`
  t.teardown(() => {
    seekHelper.command = saved
    seekHelper.missing = false
  })
  const blind = await check(0, blocks)
  t.same({ mismatched: list(blind.mismatched), holeBytes: blind.holeBytes, bytes: blind.bytes }, { mismatched: [40, 70], holeBytes: 0, bytes: img.length }, 'unknown holes: read, same answer')
})
