// Resync on the Ceph store (issues #13 and #18): blocks changed behind the
// store's back in a committed snapshot are found by `--verify changed` and
// repaired by a resync (`--resync`, or the next cycle) that sends only the
// differing blocks; real cluster, receivers and agents.
import t from 'tap'
import { join } from 'node:path'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { failIfLingering, haveCeph, scratchDir, startCephCluster } from '@grainline/test-utils'
import { CEPH_POOL, cephSite, cephStatus, frozenView, pointMatches, qemuHasRbd, qemuReadsSnapshots, replicateCli, rotSnapshot } from '@grainline/e2e'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const MiB = 1024 * 1024
const POOL = CEPH_POOL
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-mgr ceph-common)'

t.test('Ceph store: --resync sends only the blocks that differ; --verify changed finds a rotten block and the next cycle resyncs exactly it', { skip }, async (t) => {
  const dir = scratchDir(t, 'grainline-ceph-resync-')
  const ceph = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const site = await cephSite(join(dir, 'dr'), ceph)
  t.teardown(() => site.receiver.stop())
  const name = 'rbd resync'
  const BLOCK = MiB
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes: 32 * MiB, fill: 'random' }], seed: 41 })
  const qemuRbd = await qemuHasRbd()
  const snapshot = async (): Promise<string> => (await cephStatus(ceph)).vms.find((v) => v.vm === name)?.disks[0]?.snapshot ?? ''
  const mirrorEquals = async (expected: string[], what: string): Promise<void> => {
    const cycle = (await cephStatus(ceph)).vms.find((v) => v.vm === name)?.committedCycle ?? 0
    await pointMatches(t, ceph, name, cycle, join(dir, `m-${what.replace(/\W+/g, '-')}`), expected, what)
    if (qemuRbd) await qemuReadsSnapshots(t, ceph, name, join(dir, `m-${what.replace(/\W+/g, '-')}`), expected, what)
  }
  const seed = await replicateCli(site, vm.vmxPath, ['--compress', 'none'])
  t.equal(seed.code, 0, `seed: ${seed.stderr.slice(-1500)}`)
  // two blocks rot in the committed snapshot (beyond the trivial prefix); the source is unchanged
  await rotSnapshot(ceph, await snapshot(), 9 * BLOCK + 4096, Buffer.alloc(4096, 0xee))
  await rotSnapshot(ceph, await snapshot(), 21 * BLOCK, Buffer.alloc(512, 0x11))
  const e2 = await frozenView(vm.vmxPath, join(dir, 'exp-2'))
  const r2 = await replicateCli(site, vm.vmxPath, ['--resync', '--trivial-mb', '4', '--compress', 'none'])
  const d2 = r2.report?.vms[0]?.disks[0]
  t.equal(r2.code, 0, `--resync: ${r2.stderr.slice(-1500)}`)
  t.equal(d2?.mode, 'resync', '--resync compared the mirror block by block')
  t.same(d2?.resync, { blockSize: BLOCK, blocks: 32, differing: 2, mapBytes: 32 * 8 }, 'the map of the committed snapshot differs in the 2 rotten blocks')
  t.equal(d2?.wireBytes, 2 * BLOCK, 'only those 2 blocks travelled (raw payload)')
  t.equal(d2?.trivial?.ok, true, 'trivial check')
  await mirrorEquals(e2, 'after --resync')
  // bit rot in a block the next cycle writes only in part: --verify changed finds it
  const writes = await simulateGuestWrites(vm.vmxPath, { bytes: 512 * 1024, writeSize: 64 * 1024, seed: 6, zeroFraction: 0 })
  const written = new Set(writes.flatMap((w) => [Math.floor(w.offset / BLOCK), Math.floor((w.offset + 64 * 1024 - 1) / BLOCK)]))
  const victim = writes.find((w) => w.offset >= 4 * MiB) as { offset: number }
  const block = Math.floor(victim.offset / BLOCK)
  const clear = (o: number): boolean => writes.every((w) => o + 4096 <= w.offset || o >= w.offset + 64 * 1024)
  let rot = block * BLOCK
  while (!clear(rot)) rot += 4096
  t.ok(rot < (block + 1) * BLOCK, `a 4 KiB range of block ${block} the guest did not write: ${rot}`)
  await rotSnapshot(ceph, await snapshot(), rot, Buffer.alloc(4096, 0xee))
  const r3 = await replicateCli(site, vm.vmxPath, ['--trivial-mb', '4', '--compress', 'none', '--verify', 'changed'])
  const d3 = r3.report?.vms[0]?.disks[0]
  t.equal(r3.code, 1, 'the run reports the failed check')
  t.equal(d3?.mode, 'incremental')
  t.same(d3?.blockCheck, { ok: false, blockSize: BLOCK, blocks: written.size, mismatched: 1 }, `every block the cycle wrote (${written.size}) read back from the snapshot; the rotten one differs`)
  const e4 = await frozenView(vm.vmxPath, join(dir, 'exp-4'))
  const r4 = await replicateCli(site, vm.vmxPath, ['--trivial-mb', '4', '--compress', 'none', '--verify', 'changed'])
  const d4 = r4.report?.vms[0]?.disks[0]
  t.equal(r4.code, 0, `the next cycle: ${r4.stderr.slice(-1500)}`)
  t.equal(d4?.mode, 'resync', `the next cycle resyncs (${d4?.fallbackReason ?? ''})`)
  t.equal(d4?.resync?.differing, 1, 'exactly the rotten block travelled')
  t.equal(d4?.wireBytes, BLOCK, 'one block of payload')
  t.same(d4?.blockCheck, { ok: true, blockSize: BLOCK, blocks: 1, mismatched: 0 }, 'the block the resync wrote checks out')
  await mirrorEquals(e4, 'after the repair')
})
