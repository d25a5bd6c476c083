// A seed of a thin disk reads only its data (issue #17), end to end with real
// receiver and agent processes over TLS: a 256 MiB disk holding 24 MiB of data
// in its flat base, the rest holes. The seed reports the bytes it did not read;
// the mirror equals `qemu-img convert` of the frozen source and is as thin as
// it (the receiver leaves a seed's zero granules unwritten); a
// certify in the next cycle proves it. An agent killed mid-seed and run again
// resumes at the durable point — the acknowledged prefix re-read around the
// holes gives the same cycle digest — and the mirror ends exact; so does a
// receiver killed mid-seed and restarted.
import t from 'tap'
import { open, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { createSampleVm, prng, simulateGuestWrites } from '@grainline/agent'
import { failIfLingering, firstDifference, pollUntil, scratchDir, startCuttingProxy } from '@grainline/test-utils'
import { frozenView, inflightResumeSeq, replicateCli, startSite } from '@grainline/e2e'

failIfLingering(t)

const MiB = 1024 * 1024
const SIZE = 256 * MiB

/** A VM whose one disk is a thin flat file: 24 pieces of 1 MiB of random bytes, 10 MiB apart, and holes. */
async function thinVm(dir: string, name: string, seed: number): Promise<{ vmxPath: string; flat: string }> {
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes: SIZE, fill: 'zero' }], seed })
  const flat = join(dir, 'src', name, `${name}-flat.vmdk`)
  const rnd = prng(seed)
  const fh = await open(flat, 'r+')
  try {
    const b = Buffer.alloc(MiB)
    for (let k = 0; k < 24; k++) {
      for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(Math.floor(rnd() * 2 ** 32), i)
      // the first piece straddles an extent boundary, the others start mid-extent
      await fh.write(b, 0, b.length, k * 10 * MiB + 3 * 4096)
    }
  } finally {
    await fh.close()
  }
  return { vmxPath: vm.vmxPath, flat }
}

/** The in-flight cycle's durable resume point once it is past seq 0 (polled through `grainline status`). */
async function durablePoint(store: string, vm: string): Promise<number> {
  return await pollUntil(
    async () => {
      const seq = await inflightResumeSeq(store, vm)
      return seq > 0 ? seq : undefined
    },
    { intervalMs: 100 },
  )
}

t.test('a seed without certify reads the data, not the holes; the mirror is exact and thin', async (t) => {
  const dir = scratchDir(t, 'grainline-e2e-')
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const vm = await thinVm(dir, 'thin', 71)
  const exp = await frozenView(vm.vmxPath, join(dir, 'exp-1'))
  const r = await replicateCli(site, vm.vmxPath)
  t.equal(r.code, 0, `the seed: ${r.stderr.slice(-1500)}`)
  const d = r.report?.vms[0]?.disks[0]
  t.equal(d?.mode, 'seed')
  t.equal(d?.trivial?.ok, true, 'trivial check')
  // 24 data pieces touch 48 extents of 1 MiB at most: every other extent is a hole, not read
  t.ok((d?.holesSkippedBytes ?? 0) >= SIZE - 48 * MiB, `holes not read: ${d?.holesSkippedBytes} bytes`)
  t.equal(d?.dataBytes, 48 * MiB, 'the extents holding data ship as data')
  const mirror = join(site.store, 'thin', 'thin-flat.vmdk')
  t.equal(await firstDifference(mirror, exp[0] as string), -1, 'the mirror equals the frozen source view')
  // 24 MiB of data in 48 extents of 1 MiB: the receiver leaves their zero granules (64 KiB) unwritten,
  // so the mirror holds the data and the granules it shares with zeros, not 48 MiB
  const st = await stat(mirror)
  t.ok(st.blocks * 512 <= 24 * MiB + 24 * 2 * 65536 + MiB, `the mirror is as thin as its source (${st.blocks * 512} bytes allocated of ${st.size})`)
  // the next cycle certifies the whole mirror against the source, every byte read
  await simulateGuestWrites(vm.vmxPath, { bytes: 4 * MiB, seed: 5, zeroFraction: 0.1 })
  const exp2 = await frozenView(vm.vmxPath, join(dir, 'exp-2'))
  const c = await replicateCli(site, vm.vmxPath, ['--certify', 'sha256'])
  t.equal(c.code, 0, `cycle 2: ${c.stderr.slice(-1500)}`)
  t.equal(c.report?.vms[0]?.disks[0]?.certify?.ok, true, 'certify of the mirror against the frozen source')
  t.equal(c.report?.vms[0]?.disks[0]?.holesSkippedBytes, undefined, 'an incremental reads its grains')
  t.equal(await firstDifference(mirror, exp2[0] as string), -1, 'cycle 2 exact')
})

t.test('a seed with certify reads every byte and proves it', async (t) => {
  const dir = scratchDir(t, 'grainline-e2e-')
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const vm = await thinVm(dir, 'proven', 72)
  const exp = await frozenView(vm.vmxPath, join(dir, 'exp-1'))
  const r = await replicateCli(site, vm.vmxPath, ['--certify', 'xxh64'])
  t.equal(r.code, 0, `the seed: ${r.stderr.slice(-1500)}`)
  const d = r.report?.vms[0]?.disks[0]
  t.equal(d?.certify?.ok, true, 'certified')
  t.equal(d?.holesSkippedBytes, undefined, 'nothing skipped under a certify')
  t.equal(await firstDifference(join(site.store, 'proven', 'proven-flat.vmdk'), exp[0] as string), -1, 'exact')
})

t.test('an agent killed mid-seed and run again resumes; the prefix re-read around the holes agrees', async (t) => {
  const dir = scratchDir(t, 'grainline-e2e-')
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const vm = await thinVm(dir, 'cut', 73)
  const exp = await frozenView(vm.vmxPath, join(dir, 'exp-1'))
  // held after 8 MiB of the 24 MiB of data: the agent is killed mid-seed
  const proxy = await startCuttingProxy(site.receiver.port)
  t.teardown(() => proxy.close())
  proxy.plan = [{ holdAfter: 8 * MiB }]
  let durable = 0
  const killed = await replicateCli(site, vm.vmxPath, ['--compress', 'none'], {
    port: proxy.port,
    onSpawn: (p) => {
      proxy
        .waitForHolds(1)
        .then(() => durablePoint(site.store, 'cut'))
        .then(
          (seq) => {
            durable = seq
            p.kill('SIGKILL')
          },
          () => p.kill('SIGKILL'),
        )
    },
  })
  t.equal(killed.signal, 'SIGKILL', 'the agent was killed mid-seed')
  // the held connection ends now (the receiver lets the VM go), not at the receiver's idle deadline
  proxy.cutAll()
  // the rerun's agent has no digest log of the first: it re-reads the acknowledged prefix from the frozen view
  const r = await replicateCli(site, vm.vmxPath)
  t.equal(r.code, 0, `the rerun completes: ${r.stderr.slice(-1500)}`)
  const d = r.report?.vms[0]?.disks[0]
  t.equal(r.report?.vms[0]?.cycle, 1, 'the rerun finishes the seed')
  t.ok((d?.resumedFrom[0] ?? 0) >= durable && durable > 0, `resumed at the durable point ${durable} (${JSON.stringify(d?.resumedFrom)})`)
  t.ok((d?.holesSkippedBytes ?? 0) > 0, `the rerun read around the holes (${d?.holesSkippedBytes} bytes)`)
  t.equal(await firstDifference(join(site.store, 'cut', 'cut-flat.vmdk'), exp[0] as string), -1, 'the mirror equals the frozen source view')
})

t.test('a receiver killed mid-seed and restarted: the seed resumes, its zero granules stay holes, the mirror is exact', async (t) => {
  const dir = scratchDir(t, 'grainline-e2e-')
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const vm = await thinVm(dir, 'rk', 74)
  const exp = await frozenView(vm.vmxPath, join(dir, 'exp-1'))
  // held after 8 MiB of data; the rate limit makes the receiver apply (and journal its resume point) in small batches first
  const proxy = await startCuttingProxy(site.receiver.port)
  t.teardown(() => proxy.close())
  proxy.plan = [{ holdAfter: 8 * MiB }]
  const run = replicateCli(site, vm.vmxPath, ['--bwlimit', '8M', '--give-up', '60', '--compress', 'none'], { port: proxy.port })
  await proxy.waitForHolds(1)
  const durable = await durablePoint(site.store, 'rk')
  await site.receiver.kill9()
  await site.restart()
  const r = await run
  t.equal(r.code, 0, `the seed completes after the receiver restart: ${r.stderr.slice(-1500)}`)
  const d = r.report?.vms[0]?.disks[0]
  t.ok((r.report?.vms[0]?.reconnects ?? 0) >= 1, 'the agent reconnected')
  t.ok((d?.resumedFrom.at(-1) ?? 0) >= durable, `resumed from the durable point (${durable}): ${JSON.stringify(d?.resumedFrom)}`)
  const mirror = join(site.store, 'rk', 'rk-flat.vmdk')
  t.equal(await firstDifference(mirror, exp[0] as string), -1, 'the mirror equals the frozen source view')
  const st = await stat(mirror)
  t.ok(st.blocks * 512 <= 24 * MiB + 24 * 2 * 65536 + MiB, `and is as thin as it (${st.blocks * 512} bytes allocated)`)
})
