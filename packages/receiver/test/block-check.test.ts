/**
 * BlockCheck on the receiver (SPEC §5.6, `--verify changed` / `--scrub`):
 * the listed blocks are read back from the committed mirror and compared with
 * the agent's digests; only the blocks that differ come back; a block beyond
 * the disk is E_RANGE; a mismatch is recorded and marks the disk diverged.
 * A long run of blocks (a scrub slice) does not read the flat's holes, and
 * finds the same mismatches as reading every block; a slice sent as several
 * runs asks the holes once. A clean verdict may be deferred (written by the
 * next save), a mismatch never is.
 */
import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { pino } from 'pino'
import { createDigest, initDigests, MessageKind } from '@grainline/protocol'
import { open } from 'node:fs/promises'
import { seekHelper } from '@grainline/vmdk'
import { CHECK_RUNS_AHEAD, type CheckHoleWindows, checkBlocks, HOLE_ASK_MIN_BYTES } from '../src/block-check.ts'
import { readVmState } from '../src/state-file.ts'
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
  await t.rejects(checkBlocks(vm, 'web-01.vmdk', { blockSize, blocks: u64([0]), digests: digestOf(0), algorithm: 'xxh64' }, { signal: ac.signal }), 'an aborted session stops reading')
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

t.test('a scrub slice sent as several runs asks the holes once and finds the same differences', async (t) => {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const part = HOLE_ASK_MIN_BYTES / MiB / CHECK_RUNS_AHEAD + 4
  const blocks = part * CHECK_RUNS_AHEAD
  // the source: data in blocks 3 and the first block of the last part only
  const img = Buffer.alloc(blocks * MiB)
  pattern(MiB, 31).copy(img, 3 * MiB)
  pattern(MiB, 32).copy(img, 3 * part * MiB)
  const { receiver, url } = await startReceiver(env)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-03', 1, [seedPlan(0, 'web-03.vmdk', img, 'ef01ef01ef01ef01')])
  a.ws.close()
  await receiver.close()
  const vm = await VmMirror.acquire(env.store, 'web-03', pino({ level: 'silent' }))
  t.teardown(() => vm.release())
  // the mirror made sparse: block 3 right, a block of the third part written (a hole at the source), the last part's data punched
  const rec = vm.state.disks['web-03.vmdk'] as { stem: string }
  const fh = await open(vm.paths.flat(rec.stem), 'r+')
  await fh.truncate(0)
  await fh.truncate(img.length)
  await fh.write(img, 3 * MiB, MiB, 3 * MiB)
  await fh.write(pattern(MiB, 33), 0, MiB, (2 * part + 1) * MiB)
  await fh.close()
  const digestOf = (b: number): Uint8Array =>
    createDigest('xxh64')
      .update(img.subarray(b * MiB, (b + 1) * MiB))
      .digest()
  const windows: CheckHoleWindows = new Map()
  const check = (k: number) =>
    checkBlocks(
      vm,
      'web-03.vmdk',
      {
        blockSize: MiB,
        blocks: u64(Array.from({ length: part }, (_, i) => k * part + i)),
        digests: Buffer.concat(Array.from({ length: part }, (_, i) => digestOf(k * part + i))),
        algorithm: 'xxh64',
      },
      { windows, defer: true },
    )
  const first = await check(0)
  t.same(list(first.mismatched), [], 'the first part matches')
  t.ok(first.holeBytes >= (part - 1) * MiB, `a part shorter than HOLE_ASK_MIN_BYTES skips its holes (${first.holeBytes / MiB} MiB): the window asked covers the slice`)
  t.equal(windows.get('web-03.vmdk')?.end, blocks * MiB, 'the holes asked once for the whole slice')
  // no helper from here on: the next parts use the window asked for the first
  const saved = seekHelper.command
  seekHelper.command = `${env.store}/no-python3-here`
  t.teardown(() => {
    seekHelper.command = saved
    seekHelper.missing = false
  })
  const rest = [await check(1), await check(2), await check(3)]
  t.same(
    rest.map((r) => list(r.mismatched)),
    [[], [2 * part + 1], [3 * part]],
    'the block written into a hole and the punched data block are found in their parts',
  )
  t.ok(rest[0] !== undefined && rest[0].holeBytes === part * MiB, 'the second part (all holes) read nothing')
  t.match(vm.state.disks['web-03.vmdk'], { diverged: { reason: /block check/ } }, 'the mismatch marks the disk diverged')
})

t.test('a clean verdict can be deferred to the next save; a mismatch is written before the answer', async (t) => {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const img = pattern(4 * MiB, 41)
  const { receiver, url } = await startReceiver(env)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-04', 1, [seedPlan(0, 'web-04.vmdk', img, 'ab02ab02ab02ab02')])
  a.ws.close()
  await receiver.close()
  const vm = await VmMirror.acquire(env.store, 'web-04', pino({ level: 'silent' }))
  t.teardown(() => vm.release())
  const digestOf = (b: number): Uint8Array =>
    createDigest('xxh64')
      .update(img.subarray(b * MiB, (b + 1) * MiB))
      .digest()
  const run = (from: number, to: number, wrong = -1) => ({
    blockSize: MiB,
    blocks: u64(Array.from({ length: to - from }, (_, i) => from + i)),
    digests: Buffer.concat(Array.from({ length: to - from }, (_, i) => (from + i === wrong ? new Uint8Array(8).fill(0xee) : digestOf(from + i)))),
    algorithm: 'xxh64' as const,
  })
  const onDisk = async () => (await readVmState(vm.paths))?.disks['web-04.vmdk']
  // the first half of a rotation, clean, deferred: in memory, not written
  t.equal((await checkBlocks(vm, 'web-04.vmdk', run(0, 2), { defer: true })).ok, true)
  t.equal(vm.hasUnsaved, true, 'a clean deferred verdict waits for the next save')
  t.match(vm.state.disks['web-04.vmdk'], { scrubRun: { next: 2 }, blocks: { ok: true } }, 'recorded in memory')
  t.equal((await onDisk())?.blocks, undefined, 'not written yet')
  // the second half completes the rotation; written by saveUnsaved
  t.equal((await checkBlocks(vm, 'web-04.vmdk', run(2, 4), { defer: true })).ok, true)
  t.equal((await onDisk())?.blocks, undefined, 'still not written')
  await vm.saveUnsaved()
  t.equal(vm.hasUnsaved, false)
  t.match(await onDisk(), { proven: { kind: 'scrub', cycle: 1 }, blocks: { ok: true, bytes: 2 * MiB } }, 'one write records the whole rotation: the disk is proven')
  await vm.saveUnsaved()
  // a mismatch is never deferred
  t.equal((await checkBlocks(vm, 'web-04.vmdk', run(0, 4, 1), { defer: true })).ok, false)
  t.equal(vm.hasUnsaved, false, 'nothing left unsaved')
  t.match(await onDisk(), { diverged: { reason: /block check \(xxh64\) of cycle 1 failed/ }, blocks: { ok: false } }, 'the mismatch is on disk at once')
  // runs out of order (a hostile or confused agent) are each answered, but never chain into a rotation past a gap
  const provenAt = vm.state.disks['web-04.vmdk']?.proven?.at
  for (const b of [0, 2, 1, 3]) t.equal((await checkBlocks(vm, 'web-04.vmdk', run(b, b + 1), { defer: true })).ok, true, `block ${b} alone`)
  t.match(vm.state.disks['web-04.vmdk'], { scrubRun: { next: 2 } }, 'the rotation follows 0, 1 only')
  t.equal(vm.state.disks['web-04.vmdk']?.proven?.at, provenAt, 'no new proof claimed')
})

t.test('a session answers BlockChecks in flight in order; its clean verdicts are on disk once it has ended', async (t) => {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const img = pattern(4 * MiB, 51)
  const { receiver, url } = await startReceiver(env)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-05', 1, [seedPlan(0, 'web-05.vmdk', img, 'ab03ab03ab03ab03')])
  // a rotation sent as 4 runs of one block, all before any answer (the agent's scrub of a 4-block slice)
  for (let b = 0; b < 4; b++) {
    a.send({
      kind: MessageKind.BlockCheck,
      disk: 0,
      blockSize: MiB,
      blocks: u64([b]),
      digests: createDigest('sha256')
        .update(img.subarray(b * MiB, (b + 1) * MiB))
        .digest(),
    })
  }
  const answers = []
  for (let b = 0; b < 4; b++) answers.push(await a.expect(MessageKind.BlockCheckResult))
  t.same(
    answers.map((r) => [r.disk, r.ok, r.mismatched.length]),
    [
      [0, true, 0],
      [0, true, 0],
      [0, true, 0],
      [0, true, 0],
    ],
    'four answers, in order',
  )
  a.ws.close()
  await receiver.close()
  const vm = await VmMirror.acquire(env.store, 'web-05', pino({ level: 'silent' }))
  t.teardown(() => vm.release())
  t.match(vm.state.disks['web-05.vmdk'], { proven: { kind: 'scrub', cycle: 1 }, blocks: { ok: true, bytes: MiB } }, 'the runs chained into a rotation: the disk is proven, on disk')
})
