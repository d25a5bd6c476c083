/**
 * The mirror's lineage (issue #10, SPEC §5.8) against real receiver
 * processes: a mirror that cannot be proven to continue the agent's last
 * commit is resynced, never patched; a failed check resyncs instead of
 * failing forever; a first seed interrupted into a new store resumes.
 * After every cycle the mirror equals `qemu-img convert` of the frozen view.
 *
 * Each case fails on the code before issue #10: restored store and the
 * A,B,B,A receiver sequence give an incremental onto the wrong point (the
 * mirror differs from the source), a lost agent state gives an incremental,
 * a failed trivial check fails again on the next cycle, and the interrupted
 * seed is sent again in full beside a second `grainline-1` snapshot.
 */
import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import { open, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { openChain } from '@grainline/vmdk'
import { createLocalDriver } from '../src/local-driver.ts'
import { replicate, type ReplicateInit } from '../src/replicate.ts'
import type { VmReport } from '../src/report.ts'
import { createSampleVm, simulateGuestWrites, type SampleVm } from '../src/sample-vm.ts'
import { firstDifference, haveReceiver, memoryLogger, MiB, qemuRaw, scratch, startReceiver, TOKEN, type ReceiverEnv } from './helpers.ts'

if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')

const flat = (rx: ReceiverEnv, vm: string): string => join(rx.store, vm, `${vm}-flat.vmdk`)

/** The VM's grainline snapshot names. */
async function snapshotNames(vm: SampleVm): Promise<string[]> {
  const d = createLocalDriver()
  return (await d.listSnapshots(await d.openVm(vm.vmxPath))).map((s) => s.name)
}

/**
 * One cycle to `rx`: the frozen view is recorded (qemu-img) right after the
 * snapshot, then the guest writes into the new running delta (shipped by the
 * next cycle). Returns the VM report and the frozen raw image.
 */
async function cycle(ctx: { dir: string; vm: SampleVm; stateDir: string; tag: string; writes?: boolean }, rx: ReceiverEnv, over: Partial<ReplicateInit> = {}): Promise<{ v: VmReport; raw: string }> {
  const raw = join(ctx.dir, `frozen-${ctx.tag}.raw`)
  const { logger } = memoryLogger()
  const r = await replicate(
    { logger },
    {
      vm: ctx.vm.vmxPath,
      to: rx.url,
      token: TOKEN,
      ca: rx.ca,
      stateDir: ctx.stateDir,
      progress: 'none',
      trivialMiB: 1,
      compress: 'none',
      afterSnapshot: async (h) => {
        const chain = await openChain(h.disks[0]?.path as string)
        const frozen = chain.layers[1]?.path as string
        await chain.close()
        await qemuRaw(frozen, raw)
        if (ctx.writes !== false)
          await simulateGuestWrites(h.vmxPath, { bytes: 256 * 1024, writeSize: 64 * 1024, seed: ctx.tag.length * 7 + ctx.tag.charCodeAt(ctx.tag.length - 1), zeroFraction: 0.1 })
      },
      ...over,
    },
  )
  const v = r.vms[0] as VmReport
  return { v, raw }
}

/** Assert an OK cycle of `mode` whose mirror equals the frozen view. */
async function assertCycle(t: Test, rx: ReceiverEnv, vm: string, c: { v: VmReport; raw: string }, mode: 'seed' | 'incremental' | 'resync', label: string): Promise<void> {
  t.ok(c.v.ok, `${label}: ok ${JSON.stringify(c.v.error ?? c.v.disks.map((d) => d.error))}`)
  t.equal(c.v.disks[0]?.mode, mode, `${label}: ${mode}${c.v.disks[0]?.fallbackReason !== undefined ? ` (${c.v.disks[0]?.fallbackReason})` : ''}`)
  t.equal(await firstDifference(flat(rx, vm), c.raw), -1, `${label}: mirror == qemu-img convert of the frozen view`)
}

t.test('a store restored from a backup is resynced, never patched', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'restored', disks: [{ sizeBytes: 4 * MiB }], seed: 3 })
  const ctx = { dir, vm, stateDir: join(dir, 'agent-state'), tag: '' }
  await assertCycle(t, rx, 'restored', await cycle({ ...ctx, tag: 'c1' }, rx), 'seed', 'cycle 1')
  await assertCycle(t, rx, 'restored', await cycle({ ...ctx, tag: 'c2' }, rx), 'incremental', 'cycle 2')
  await rx.stop()
  execFileSync('cp', ['-a', rx.store, join(dir, 'store-backup')])
  await rx.restart()
  await assertCycle(t, rx, 'restored', await cycle({ ...ctx, tag: 'c3' }, rx), 'incremental', 'cycle 3')
  await assertCycle(t, rx, 'restored', await cycle({ ...ctx, tag: 'c4' }, rx), 'incremental', 'cycle 4')
  // the DR host's store is restored from the backup taken after cycle 2
  await rx.stop()
  await rm(rx.store, { recursive: true })
  execFileSync('cp', ['-a', join(dir, 'store-backup'), rx.store])
  await rx.restart()
  const c = await cycle({ ...ctx, tag: 'c5' }, rx)
  await assertCycle(t, rx, 'restored', c, 'resync', 'after the restore')
  t.equal(c.v.cycle, 3, 'the receiver numbers the cycle after its own committed point')
  t.match(c.v.disks[0]?.fallbackReason, /receiver is at committed cycle 2, generation [0-9a-f]{8}…, but the agent recorded cycle 4/)
  t.same(await snapshotNames(vm), ['grainline-3'], 'one grainline snapshot left')
  await assertCycle(t, rx, 'restored', await cycle({ ...ctx, tag: 'c6' }, rx), 'incremental', 'the next cycle continues the new lineage')
})

t.test("a store restored from a backup one cycle back: the agent's committed snapshot (this cycle's name) stays until the new cycle commits", async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'oneback', disks: [{ sizeBytes: 4 * MiB }], seed: 4 })
  const ctx = { dir, vm, stateDir: join(dir, 'agent-state'), tag: '' }
  await assertCycle(t, rx, 'oneback', await cycle({ ...ctx, tag: 'c1' }, rx), 'seed', 'cycle 1')
  await rx.stop()
  execFileSync('cp', ['-a', rx.store, join(dir, 'store-backup')])
  await rx.restart()
  await assertCycle(t, rx, 'oneback', await cycle({ ...ctx, tag: 'c2' }, rx), 'incremental', 'cycle 2')
  const d = createLocalDriver()
  const committed2 = (await d.listSnapshots(await d.openVm(vm.vmxPath))).map((s) => s.id)
  t.equal(committed2.length, 1, 'grainline-2, the snapshot of the commit the agent records')
  // the store is restored from the backup taken after cycle 1: the receiver numbers the next cycle 2 again
  await rx.stop()
  await rm(rx.store, { recursive: true })
  execFileSync('cp', ['-a', join(dir, 'store-backup'), rx.store])
  await rx.restart()
  // the cycle fails right after its snapshot (a crash, a lost receiver): the committed snapshot must still be there
  let during: Array<{ name: string; id: string }> = []
  const failed = await cycle({ ...ctx, tag: 'c3' }, rx, {
    afterSnapshot: async () => {
      during = (await d.listSnapshots(await d.openVm(vm.vmxPath))).map((s) => ({ name: s.name, id: s.id }))
      throw new Error('the agent host lost power')
    },
  })
  t.notOk(failed.v.ok, 'the cycle failed after its snapshot')
  t.equal(failed.v.cycle, 2)
  t.ok(
    during.some((s) => s.id === committed2[0]),
    `the snapshot of the recorded commit is still on the VM beside the new one: ${JSON.stringify(during)}`,
  )
  t.same(
    during.map((s) => s.name),
    ['grainline-2', 'grainline-2'],
  )
  // the next run resumes the cycle with its own snapshot, resyncs, commits, and only then removes the old one
  const c = await cycle({ ...ctx, tag: 'c4' }, rx)
  await assertCycle(t, rx, 'oneback', c, 'resync', 'after the restore')
  t.equal(c.v.cycle, 2)
  const after = await d.listSnapshots(await d.openVm(vm.vmxPath))
  t.same(
    after.map((s) => s.name),
    ['grainline-2'],
    'one grainline snapshot left',
  )
  t.not(after[0]?.id, committed2[0], 'the new one: the old was removed after the commit')
  await assertCycle(t, rx, 'oneback', await cycle({ ...ctx, tag: 'c5' }, rx), 'incremental', 'the next cycle continues the new lineage')
})

t.test('agent state lost: the next cycle resyncs', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'lost', disks: [{ sizeBytes: 2 * MiB }], seed: 4 })
  const ctx = { dir, vm, stateDir: join(dir, 'agent-state'), tag: '' }
  await assertCycle(t, rx, 'lost', await cycle({ ...ctx, tag: 'l1' }, rx), 'seed', 'cycle 1')
  await assertCycle(t, rx, 'lost', await cycle({ ...ctx, tag: 'l2' }, rx), 'incremental', 'cycle 2')
  await rm(ctx.stateDir, { recursive: true, force: true })
  const c = await cycle({ ...ctx, tag: 'l3' }, rx)
  await assertCycle(t, rx, 'lost', c, 'resync', 'cycle 3 without the agent state')
  t.match(c.v.disks[0]?.fallbackReason, /no record of the mirror's committed point/)
})

t.test('one VM to two receivers, A B B A B: every switch resyncs, both mirrors exact', async (t) => {
  const dir = scratch(t)
  const a = await startReceiver(join(dir, 'rx-a'))
  t.teardown(() => a.stop())
  const b = await startReceiver(join(dir, 'rx-b'))
  t.teardown(() => b.stop())
  const vm = await createSampleVm(dir, { name: 'twice', disks: [{ sizeBytes: 2 * MiB }], seed: 5 })
  const ctx = { dir, vm, stateDir: join(dir, 'agent-state'), tag: '' }
  const plan: Array<[ReceiverEnv, 'seed' | 'incremental' | 'resync', string]> = [
    [a, 'seed', 'A first'],
    [b, 'seed', 'B first'],
    [b, 'incremental', 'B again'],
    [a, 'resync', 'back to A'],
    [b, 'resync', 'back to B'],
  ]
  for (const [i, [rx, mode, label]] of plan.entries()) {
    const c = await cycle({ ...ctx, tag: `ab${i}` }, rx)
    await assertCycle(t, rx, 'twice', c, mode, label)
    if (i >= 3) t.match(c.v.disks[0]?.fallbackReason, /generation/, `${label}: the generation gave the switch away`)
    t.equal((await snapshotNames(vm)).length, 1, `${label}: one grainline snapshot`)
  }
})

t.test('a failed trivial check marks the disk diverged; the next cycle resyncs instead of failing forever', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'rot', disks: [{ sizeBytes: 2 * MiB, fill: 'random' }], seed: 6 })
  const ctx = { dir, vm, stateDir: join(dir, 'agent-state'), tag: '' }
  // no guest writes in this test until cycle 4: the tampered bytes stay tampered
  const quiet = { ...ctx, writes: false }
  await assertCycle(t, rx, 'rot', await cycle({ ...quiet, tag: 'r1' }, rx), 'seed', 'cycle 1')
  // bit rot / tampering inside the mirror's flat file: its CID and size stay as committed
  const fh = await open(flat(rx, 'rot'), 'r+')
  await fh.write(Buffer.alloc(4096, 0x5a), 0, 4096, 0)
  await fh.close()
  const bad = await cycle({ ...quiet, tag: 'r2' }, rx)
  t.notOk(bad.v.ok, 'cycle 2 is not ok')
  t.equal(bad.v.disks[0]?.trivial?.ok, false, 'cycle 2: trivial check mismatch')
  t.equal(bad.v.disks[0]?.error?.code, 'E_CHECK')
  const next = await cycle({ ...quiet, tag: 'r3' }, rx)
  t.ok(next.v.ok, 'cycle 3 is ok')
  t.equal(next.v.disks[0]?.mode, 'resync')
  t.match(next.v.disks[0]?.fallbackReason, /failed its check after cycle 2/)
  t.equal(next.v.disks[0]?.resync?.differing, 1, 'exactly the tampered block was sent again')
  t.equal(next.v.disks[0]?.trivial?.ok, true)
  t.equal(await firstDifference(flat(rx, 'rot'), next.raw), -1, 'the mirror is whole again')
  await assertCycle(t, rx, 'rot', await cycle({ ...ctx, tag: 'r4' }, rx), 'incremental', 'cycle 4: incrementals again')
})

t.test('a first seed into a new store, interrupted at 90 %, resumes at ~90 % with one grainline snapshot at the end', async (t) => {
  const dir = scratch(t)
  const old = await startReceiver(join(dir, 'rx-old'))
  t.teardown(() => old.stop())
  const vm = await createSampleVm(dir, { name: 'moved', disks: [{ sizeBytes: 16 * MiB, fill: 'random' }], seed: 7 })
  const ctx = { dir, vm, stateDir: join(dir, 'agent-state'), tag: '' }
  // the VM holds grainline-2 from an older target
  await assertCycle(t, old, 'moved', await cycle({ ...ctx, tag: 'o1' }, old), 'seed', 'old target cycle 1')
  await assertCycle(t, old, 'moved', await cycle({ ...ctx, tag: 'o2' }, old), 'incremental', 'old target cycle 2')
  t.same(await snapshotNames(vm), ['grainline-2'])
  await old.stop()
  const rx = await startReceiver(join(dir, 'rx-new'))
  t.teardown(() => rx.stop())
  const small = { maxExtentBytes: 64 * 1024, windowBytes: 512 * 1024, maxBackoffMs: 100 }
  let sent = 0
  let killed = false
  const first = await cycle({ ...ctx, tag: 'n1' }, rx, {
    ...small,
    giveUpMs: 1000,
    onExtentSent: ({ wireBytes }) => {
      sent += wireBytes
      if (!killed && sent >= 0.9 * 16 * MiB) {
        killed = true
        void rx.kill9()
      }
    },
  })
  t.equal(first.v.error?.code, 'E_GAVE_UP', 'the first seed was interrupted')
  t.same((await snapshotNames(vm)).sort(), ['grainline-1', 'grainline-2'], 'the interrupted run leaves the old base and its in-flight snapshot, no two of one name')
  await rx.restart()
  let resent = 0
  const again = await cycle({ ...ctx, tag: 'n1-rerun', writes: false }, rx, {
    ...small,
    onExtentSent: ({ wireBytes }) => {
      resent += wireBytes
    },
  })
  t.ok(again.v.ok, JSON.stringify(again.v.error))
  t.equal(again.v.reusedSnapshot, true, 'the recorded in-flight snapshot was reused')
  t.equal(again.v.disks[0]?.mode, 'seed')
  t.ok((again.v.disks[0]?.resumedFrom[0] ?? 0) > 0, `resumed at seq ${again.v.disks[0]?.resumedFrom[0]} of ${again.v.disks[0]?.extents}`)
  t.ok(resent < 0.3 * 16 * MiB, `the rerun sent ${resent} bytes, < 30 % of the 16 MiB seed`)
  t.equal(await firstDifference(flat(rx, 'moved'), first.raw), -1, 'mirror == the frozen view of the interrupted seed')
  t.same(await snapshotNames(vm), ['grainline-1'], 'exactly one grainline snapshot after the run')
})
