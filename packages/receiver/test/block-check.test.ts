/**
 * BlockCheck on the receiver (SPEC §5.6, `--verify changed` / `--scrub`):
 * the listed blocks are read back from the committed mirror and compared with
 * the agent's digests; only the blocks that differ come back; a block beyond
 * the disk is E_RANGE; a mismatch is recorded and marks the disk diverged.
 * A long run of blocks (a scrub slice) does not read the flat's holes, and
 * finds the same mismatches as reading every block; a slice sent as several
 * runs asks the holes once. A slice whose window is below
 * HOLE_ASK_MIN_BYTES starts no `SEEK_DATA` helper when processed; asked as it
 * arrives (askHolesEarly), one helper serves the whole slice. A clean verdict
 * (a BlockCheck's, or a trivial check's with BlockChecks behind it) may be
 * deferred (written by the next save), a mismatch never is.
 */
import t from 'tap'
import type { Test } from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { pino } from 'pino'
import { createDigest, initDigests, MessageKind } from '@grainline/protocol'
import { open } from 'node:fs/promises'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { seekHelper } from '@grainline/vmdk'
import { askHolesEarly, CHECK_RUNS_AHEAD, type CheckHoleWindows, checkBlocks, EARLY_HOLE_ASK_MIN_BYTES, HOLE_ASK_MIN_BYTES } from '../src/block-check.ts'
import { readVmState } from '../src/state-file.ts'
import { verifyDisk } from '../src/verification.ts'
import { VmMirror } from '../src/vm-mirror.ts'
import { VmPaths } from '../src/vm-paths.ts'
import { Agent, MiB, TOKEN, makeEnv, pattern, runCycle, seedPlan, startReceiver } from './helpers.ts'

const u64 = (xs: readonly number[]): Uint8Array => {
  const b = new Uint8Array(xs.length * 8)
  const v = new DataView(b.buffer)
  for (const [i, x] of xs.entries()) v.setBigUint64(i * 8, BigInt(x), true)
  return b
}
/** Point the `SEEK_DATA` helper at a wrapper that counts its starts and runs the real interpreter; returns the count so far. */
function countHelperStarts(t: Test, dir: string): () => number {
  const saved = seekHelper.command
  const log = join(dir, 'helper-starts.log')
  const wrapper = join(dir, 'python3-counted')
  writeFileSync(log, '')
  writeFileSync(wrapper, `#!/bin/sh\necho start >> '${log}'\nexec '${saved}' "$@"\n`, { mode: 0o755 })
  seekHelper.command = wrapper
  t.teardown(() => {
    seekHelper.command = saved
    seekHelper.missing = false
  })
  return () =>
    readFileSync(log, 'utf8')
      .split('\n')
      .filter((l) => l !== '').length
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
  t.teardown(() => receiver.close())
  // planned before connecting: the receiver waits only 10 s for the Hello, and scanning the image can take longer on a loaded machine
  const plan = seedPlan(0, 'web-01.vmdk', img, 'ab01ab01ab01ab01')
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-01', 1, [plan])
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
  // a failed step must not leave the listener open (the file would wait for tap's timeout)
  t.teardown(() => receiver.close())
  const plan = seedPlan(0, 'web-02.vmdk', img, 'cd01cd01cd01cd01')
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-02', 1, [plan])
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
  t.teardown(() => receiver.close())
  const plan = seedPlan(0, 'web-03.vmdk', img, 'ef01ef01ef01ef01')
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-03', 1, [plan])
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
  t.teardown(() => receiver.close())
  const plan = seedPlan(0, 'web-04.vmdk', img, 'ab02ab02ab02ab02')
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-04', 1, [plan])
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
  t.teardown(() => receiver.close())
  const plan = seedPlan(0, 'web-05.vmdk', img, 'ab03ab03ab03ab03')
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-05', 1, [plan])
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

t.test('a 128 MiB slice in 4 parts: no helper when processed (below HOLE_ASK_MIN_BYTES), one for the slice when asked as it arrives; the tampered block found both ways', async (t) => {
  await initDigests()
  const dir = scratchDir(t)
  const env = makeEnv(dir)
  const part = 32
  const blocks = part * CHECK_RUNS_AHEAD
  t.ok(blocks * MiB < HOLE_ASK_MIN_BYTES && blocks * MiB >= EARLY_HOLE_ASK_MIN_BYTES, 'the slice lies between the two bounds (a 4 GiB disk at --scrub 32)')
  // the source: data in blocks 3 and 100 only
  const img = Buffer.alloc(blocks * MiB)
  pattern(MiB, 61).copy(img, 3 * MiB)
  pattern(MiB, 62).copy(img, 100 * MiB)
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const plan = seedPlan(0, 'web-06.vmdk', img, 'ab06ab06ab06ab06')
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-06', 1, [plan])
  a.ws.close()
  await receiver.close()
  const vm = await VmMirror.acquire(env.store, 'web-06', pino({ level: 'silent' }))
  t.teardown(() => vm.release())
  // the mirror sparse as a seed leaves it (holes where the source is zero), then tampered behind the receiver's back
  // under an unchanged CID: block 50, a hole of the source, written
  const rec = vm.state.disks['web-06.vmdk'] as { stem: string }
  const fh = await open(vm.paths.flat(rec.stem), 'r+')
  await fh.truncate(0)
  await fh.truncate(img.length)
  for (const b of [3, 100]) await fh.write(img, b * MiB, MiB, b * MiB)
  await fh.write(pattern(MiB, 63), 0, MiB, 50 * MiB)
  await fh.close()
  const digestOf = (b: number): Uint8Array =>
    createDigest('xxh64')
      .update(img.subarray(b * MiB, (b + 1) * MiB))
      .digest()
  const req = (k: number, size = part) => ({
    blockSize: MiB,
    blocks: u64(Array.from({ length: size }, (_, i) => k * size + i)),
    digests: Buffer.concat(Array.from({ length: size }, (_, i) => digestOf(k * size + i))),
    algorithm: 'xxh64' as const,
  })
  const starts = countHelperStarts(t, dir)
  const slice = async (windows: CheckHoleWindows) => {
    const out = []
    for (let k = 0; k < CHECK_RUNS_AHEAD; k++) out.push(await checkBlocks(vm, 'web-06.vmdk', req(k), { windows, defer: true }))
    return out
  }
  const read = await slice(new Map())
  t.equal(starts(), 0, 'no helper started: the slice is read')
  t.same(
    read.map((r) => list(r.mismatched)),
    [[], [50], [], []],
    'the tampered block is found',
  )
  t.same(
    read.map((r) => r.holeBytes),
    [0, 0, 0, 0],
    'every block read',
  )
  // as it arrives (the agent sends a slice whose digests it took while shipping whole, behind the trivial check):
  // a run of 32 MiB is not asked for; the whole 128 MiB slice is, once, with one helper
  const small: CheckHoleWindows = new Map()
  t.equal(askHolesEarly(vm, 'web-06.vmdk', req(0), small), undefined, 'a 32 MiB run, below EARLY_HOLE_ASK_MIN_BYTES: nothing asked')
  t.equal(small.size, 0)
  const early: CheckHoleWindows = new Map()
  const whole = req(0, blocks)
  t.same(askHolesEarly(vm, 'web-06.vmdk', whole, early), { start: 0, end: blocks * MiB }, 'the window of the whole slice')
  t.equal(askHolesEarly(vm, 'web-06.vmdk', whole, early), undefined, 'asked once')
  t.equal(askHolesEarly(vm, 'web-06.vmdk', { blockSize: MiB, blocks: u64([1, 5]) }, new Map()), undefined, 'scattered blocks (--verify changed): nothing asked')
  const asked = await checkBlocks(vm, 'web-06.vmdk', whole, { windows: early, defer: true })
  t.equal(starts(), 1, 'one helper for the whole slice')
  t.same(list(asked.mismatched), [50], 'the tampered block (data in a hole) is found: the helper saw the mirror as it is')
  t.ok(asked.holeBytes >= (blocks - 3) * MiB, `the holes not read (${asked.holeBytes / MiB} MiB)`)
  t.equal(asked.bytes, blocks * MiB, 'every block compared')
  // processed without an early question: its window (as a slice's first part, within the disk) is below HOLE_ASK_MIN_BYTES
  const late = await checkBlocks(vm, 'web-06.vmdk', whole, { windows: new Map(), defer: true })
  t.same({ starts: starts(), mismatched: list(late.mismatched), holeBytes: late.holeBytes }, { starts: 1, mismatched: [50], holeBytes: 0 }, 'read, no helper, the same answer')
})

t.test('a clean trivial verdict can be deferred to the next save; a failed one is written before the answer', async (t) => {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const img = pattern(4 * MiB, 71)
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const plan = seedPlan(0, 'web-07.vmdk', img, 'ab07ab07ab07ab07')
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-07', 1, [plan])
  a.ws.close()
  await receiver.close()
  const vm = await VmMirror.acquire(env.store, 'web-07', pino({ level: 'silent' }))
  t.teardown(() => vm.release())
  const onDisk = async () => (await readVmState(vm.paths))?.disks['web-07.vmdk']
  const before = (await onDisk())?.trivial
  const prefix = createDigest('xxh64').update(img.subarray(0, MiB)).digest()
  const trivial = (digest: Uint8Array) => ({ kind: 'trivial' as const, prefixBytes: MiB, algorithm: 'xxh64' as const, size: img.length, digest })
  let asked = 0
  const clean = await verifyDisk(vm, 'web-07.vmdk', trivial(prefix), {
    trivialMaxBytes: 16 * MiB,
    defer: () => {
      asked++
      return true
    },
  })
  t.same({ ok: clean.ok, deferred: clean.deferred, asked }, { ok: true, deferred: true, asked: 1 }, 'clean, deferred')
  t.match(vm.state.disks['web-07.vmdk'], { trivial: { ok: true, algorithm: 'xxh64', bytes: MiB } }, 'recorded in memory')
  t.same((await onDisk())?.trivial, before, 'not written yet')
  await vm.saveUnsaved()
  t.match(await onDisk(), { trivial: { ok: true, algorithm: 'xxh64', bytes: MiB } }, 'written by the next save')
  const bad = await verifyDisk(vm, 'web-07.vmdk', trivial(new Uint8Array(8).fill(0xee)), { trivialMaxBytes: 16 * MiB, defer: () => true })
  t.same({ ok: bad.ok, deferred: bad.deferred }, { ok: false, deferred: false }, 'a failed check is never deferred')
  t.equal(vm.hasUnsaved, false)
  t.match(await onDisk(), { trivial: { ok: false }, diverged: { reason: /trivial check/ } }, 'the failure is on disk at once')
})

t.test('a session: a scrub slice sent behind its trivial check is answered right, and every verdict is on disk once it has ended', async (t) => {
  await initDigests()
  const dir = scratchDir(t)
  const env = makeEnv(dir)
  const blocks = 128
  const img = Buffer.alloc(blocks * MiB)
  pattern(MiB, 81).copy(img, 0)
  pattern(MiB, 82).copy(img, 90 * MiB)
  const { receiver, url, logs } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const plan = seedPlan(0, 'web-08.vmdk', img, 'ab08ab08ab08ab08')
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-08', 1, [plan], { alg: 'xxh64' })
  const digestOf = (b: number): Uint8Array =>
    createDigest('xxh64')
      .update(img.subarray(b * MiB, (b + 1) * MiB))
      .digest()
  const starts = countHelperStarts(t, dir)
  // as the agent sends them: the trivial check, then the slice whose digests it took while shipping, whole, without
  // waiting for the trivial check's answer (one block's digest wrong)
  a.send({
    kind: MessageKind.TrivialCheck,
    disk: 0,
    prefixBytes: 16 * MiB,
    algorithm: 'xxh64',
    size: img.length,
    digest: createDigest('xxh64')
      .update(img.subarray(0, 16 * MiB))
      .digest(),
  })
  a.send({
    kind: MessageKind.BlockCheck,
    disk: 0,
    blockSize: MiB,
    blocks: u64(Array.from({ length: blocks }, (_, i) => i)),
    digests: Buffer.concat(Array.from({ length: blocks }, (_, i) => (i === 91 ? new Uint8Array(8).fill(0xee) : digestOf(i)))),
  })
  const tr = await a.expect(MessageKind.TrivialResult)
  t.equal(tr.ok, true, 'the trivial check passes')
  const answer = await a.expect(MessageKind.BlockCheckResult)
  t.same(list(answer.mismatched), [91], 'the slice answered, the wrong digest found')
  t.ok(starts() <= 1, `at most one helper for the slice (${starts()})`)
  a.ws.close()
  await receiver.close()
  const st = await readVmState(new VmPaths(env.store, 'web-08'))
  t.match(
    st?.disks['web-08.vmdk'],
    { trivial: { ok: true, bytes: 16 * MiB }, blocks: { ok: false }, diverged: { reason: /block check/ } },
    'the trivial verdict and the mismatch (diverged) are on disk',
  )
  t.ok(
    logs.lines.some((l) => l.msg === 'trivial check'),
    'the trivial check logged',
  )
})

t.test('a BlockCheck whose blockSize is above the negotiated maxExtentBytes is refused before any block is read', async (t) => {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const img = pattern(4 * MiB, 61)
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  // the Hello offers 16 MiB extents: the negotiated maxExtentBytes
  await runCycle(a, 'web-09', 1, [seedPlan(0, 'web-09.vmdk', img, 'ab09ab09ab09ab09')])
  const digest = (b: Uint8Array): Uint8Array => createDigest('sha256').update(b).digest()
  // at the limit: answered (the last block of the disk ends at its capacity)
  a.send({ kind: MessageKind.BlockCheck, disk: 0, blockSize: 16 * MiB, blocks: u64([0]), digests: digest(img) })
  t.match(await a.expect(MessageKind.BlockCheckResult), { ok: true }, 'a 16 MiB block is read')
  // above it: a 64 MiB block (on a large disk, four of them in flight: 256 MiB a session) — and a wrong digest, which
  // would mark the disk diverged if it were read
  a.send({ kind: MessageKind.BlockCheck, disk: 0, blockSize: 64 * MiB, blocks: u64([0]), digests: new Uint8Array(32).fill(0xee) })
  t.same(await a.expectError(), { code: 'E_SCHEMA', closeCode: 1008 })
  await a.whenClosed()
  await receiver.close()
  const vm = await VmMirror.acquire(env.store, 'web-09', pino({ level: 'silent' }))
  t.teardown(() => vm.release())
  t.match(vm.state.disks['web-09.vmdk'], { blocks: { ok: true, bytes: 4 * MiB } }, 'the refused one recorded no verdict: the last is the 16 MiB block check')
  t.equal(vm.state.disks['web-09.vmdk']?.diverged, undefined, 'not diverged')
})
