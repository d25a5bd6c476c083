// Resync by block digests end to end (issue #13, SPEC §5.9), real receiver and
// agent processes over TLS on loopback: a booted mirror (CID changed, a guest
// wrote through qemu-io into the mirror descriptor) and a store restored from
// an older backup are each repaired by a resync that sends exactly the blocks
// that differ — counted here independently by comparing the mirror's flat
// with `qemu-img convert` of the frozen source view block by block — and ends
// with a mirror equal to that view; a resync cut mid-way resumes and ends
// exact. On the code before issue #13 each of these cycles was a full seed
// (the whole disk on the wire).
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { open, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createSampleVm, simulateGuestWrites, type SampleVm } from '@grainline/agent'
import { replicateCli, startSite, type RunReport, type Site, expectedView } from '@grainline/e2e'
import { failIfLingering, firstDifference, scratchDir, startCuttingProxy } from '@grainline/test-utils'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const exec = promisify(execFile)
const MiB = 1024 * 1024
const BLOCK = MiB

/** The blocks of `mirror` (its bytes beyond the end read as zeros) that differ from `expected`, and how many of those read as zeros in `expected`. */
async function differingBlocks(mirror: string, expected: string, capacity: number): Promise<{ differing: number; zero: number; dataBytes: number }> {
  const a = await open(mirror, 'r')
  const b = await open(expected, 'r')
  let differing = 0
  let zero = 0
  let dataBytes = 0
  try {
    for (let off = 0; off < capacity; off += BLOCK) {
      const n = Math.min(BLOCK, capacity - off)
      const x = Buffer.alloc(n)
      const y = Buffer.alloc(n)
      await a.read(x, 0, n, off)
      await b.read(y, 0, n, off)
      if (x.equals(y)) continue
      differing++
      if (y.every((v) => v === 0)) zero++
      else dataBytes += n
    }
  } finally {
    await a.close()
    await b.close()
  }
  return { differing, zero, dataBytes }
}

const names = (vm: SampleVm): { folder: string; stem: string } => ({
  folder: vm.vmxPath.split('/').at(-2) as string,
  stem: (vm.vmxPath.split('/').at(-1) as string).replace(/\.vmx$/, ''),
})

/** One replicate run with the mode, the exit code and the mirror checked against the frozen view. */
async function cycle(t: Test, site: Site, vm: SampleVm, expected: string, mode: string, label: string, extra: string[] = []): Promise<RunReport['vms'][number] | undefined> {
  const r = await replicateCli(site, vm.vmxPath, ['--trivial-mb', '4', '--compress', 'none', ...extra])
  const v = r.report?.vms[0]
  t.equal(r.code, 0, `${label}: exit 0 ${r.stderr.slice(-1500)}`)
  t.equal(v?.disks[0]?.mode, mode, `${label}: ${mode}${v?.disks[0]?.fallbackReason !== undefined ? ` (${v.disks[0].fallbackReason})` : ''}`)
  t.equal(v?.disks[0]?.trivial?.ok, true, `${label}: trivial check`)
  const { folder, stem } = names(vm)
  t.equal(await firstDifference(join(site.store, folder, `${stem}-flat.vmdk`), expected), -1, `${label}: mirror == qemu-img convert of the frozen source view`)
  return v
}

/** The resync's report against the blocks counted independently: exactly those blocks travelled, as raw payload (no compression). */
function assertExactResync(t: Test, v: RunReport['vms'][number] | undefined, want: { differing: number; zero: number; dataBytes: number }, capacity: number, label: string): void {
  const d = v?.disks[0]
  t.ok(want.differing > 0, `${label}: the mirror differs in ${want.differing} blocks before the cycle`)
  t.same(
    d?.resync,
    { blockSize: BLOCK, blocks: Math.ceil(capacity / BLOCK), differing: want.differing, mapBytes: Math.ceil(capacity / BLOCK) * 8 },
    `${label}: compared every block, ${want.differing} differed`,
  )
  t.equal(d?.wireBytes, want.dataBytes, `${label}: wire payload = the differing data blocks (${want.dataBytes} bytes of a ${capacity}-byte disk)`)
  t.equal(d?.dataBytes, want.dataBytes, `${label}: data extents cover the differing data blocks`)
  t.equal(d?.zeroBytes, want.zero * BLOCK, `${label}: differing blocks that read as zeros travel as zero extents`)
}

t.test('a booted mirror (CID changed, a guest wrote into it): the next cycle resyncs only the differing blocks', async (t) => {
  const dir = scratchDir(t)
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const capacity = 64 * MiB
  const vm = await createSampleVm(join(dir, 'src'), { name: 'booted', disks: [{ sizeBytes: capacity, fill: 'random' }], seed: 31 })
  const { folder, stem } = names(vm)
  await cycle(t, site, vm, await expectedView(vm.vmxPath, join(dir, 'e1.raw')), 'seed', 'seed')
  await simulateGuestWrites(vm.vmxPath, { bytes: 2 * MiB, writeSize: 64 * 1024, seed: 2, zeroFraction: 0.1 })
  await cycle(t, site, vm, await expectedView(vm.vmxPath, join(dir, 'e2.raw')), 'incremental', 'cycle 2')
  // someone boots the mirror: QEMU writes a few MiB through its descriptor (and gives it a new CID)
  const descriptor = join(site.store, folder, `${stem}.vmdk`)
  const cidBefore = /CID=([0-9a-f]+)/.exec(await readFile(descriptor, 'latin1'))?.[1]
  await exec('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0xab 5M 3M', '-c', 'write -P 0 20M 1M', '-c', 'write -P 0x11 33M 4k', descriptor])
  const cidAfter = /CID=([0-9a-f]+)/.exec(await readFile(descriptor, 'latin1'))?.[1]
  t.not(cidAfter, cidBefore, 'booting the mirror changed its CID')
  await simulateGuestWrites(vm.vmxPath, { bytes: 512 * 1024, writeSize: 64 * 1024, seed: 3, zeroFraction: 0.2 })
  const expected = await expectedView(vm.vmxPath, join(dir, 'e3.raw'))
  const want = await differingBlocks(join(site.store, folder, `${stem}-flat.vmdk`), expected, capacity)
  const v = await cycle(t, site, vm, expected, 'resync', 'after the boot')
  t.match(v?.disks[0]?.fallbackReason, /E_MIRROR_MODIFIED/, 'the receiver refused the incremental: mirror modified')
  assertExactResync(t, v, want, capacity, 'after the boot')
  t.ok((v?.disks[0]?.wireBytes ?? Infinity) < capacity / 3, 'far less than a seed')
  await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, writeSize: 64 * 1024, seed: 4 })
  await cycle(t, site, vm, await expectedView(vm.vmxPath, join(dir, 'e4.raw')), 'incremental', 'the next cycle continues with an incremental')
})

t.test('a store restored from an older backup: resync, exactly the differing blocks, exact mirror', async (t) => {
  const dir = scratchDir(t)
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const capacity = 32 * MiB
  const vm = await createSampleVm(join(dir, 'src'), { name: 'restored', disks: [{ sizeBytes: capacity, fill: 'random' }], seed: 32 })
  const { folder, stem } = names(vm)
  await cycle(t, site, vm, await expectedView(vm.vmxPath, join(dir, 'e1.raw')), 'seed', 'seed')
  await site.receiver.stop()
  await exec('cp', ['-a', site.store, join(dir, 'store-copy')])
  await site.restart()
  for (const c of [2, 3]) {
    await simulateGuestWrites(vm.vmxPath, { bytes: 2 * MiB, writeSize: 64 * 1024, seed: 10 + c, zeroFraction: 0.1 })
    await cycle(t, site, vm, await expectedView(vm.vmxPath, join(dir, `e${c}.raw`)), 'incremental', `cycle ${c}`)
  }
  await site.receiver.stop()
  await rm(site.store, { recursive: true })
  await exec('cp', ['-a', join(dir, 'store-copy'), site.store])
  await site.restart()
  await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, writeSize: 64 * 1024, seed: 14 })
  const expected = await expectedView(vm.vmxPath, join(dir, 'e4.raw'))
  const want = await differingBlocks(join(site.store, folder, `${stem}-flat.vmdk`), expected, capacity)
  const v = await cycle(t, site, vm, expected, 'resync', 'after the restore')
  t.match(v?.disks[0]?.fallbackReason, /receiver is at committed cycle 1/, 'the lineage check chose the resync')
  assertExactResync(t, v, want, capacity, 'after the restore')
})

t.test('--resync on an intact mirror sends nothing but the maps; a resync cut mid-way resumes and ends exact', async (t) => {
  const dir = scratchDir(t)
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const capacity = 48 * MiB
  const vm = await createSampleVm(join(dir, 'src'), { name: 'cut', disks: [{ sizeBytes: capacity, fill: 'random' }], seed: 33 })
  const { folder, stem } = names(vm)
  await cycle(t, site, vm, await expectedView(vm.vmxPath, join(dir, 'e1.raw')), 'seed', 'seed')
  const same = await cycle(t, site, vm, await expectedView(vm.vmxPath, join(dir, 'e2.raw')), 'resync', '--resync, nothing changed', ['--resync'])
  t.equal(same?.disks[0]?.resync?.differing, 0, 'no block differs')
  t.equal(same?.disks[0]?.wireBytes, 0, 'no payload on the wire')
  // the mirror loses most of its contents behind the receiver's back (a block-level restore gone wrong)
  await exec('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x5a 0 40M', join(site.store, folder, `${stem}.vmdk`)])
  await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, writeSize: 64 * 1024, seed: 5 })
  const expected = await expectedView(vm.vmxPath, join(dir, 'e3.raw'))
  const want = await differingBlocks(join(site.store, folder, `${stem}-flat.vmdk`), expected, capacity)
  const proxy = await startCuttingProxy(site.receiver.port)
  t.teardown(() => proxy.close())
  // the one connection of the cycle is cut after ~half of the differing bytes; the reconnections pass
  proxy.plan = [Math.floor(want.dataBytes / 2)]
  const r = await replicateCli(site, vm.vmxPath, ['--trivial-mb', '4', '--compress', 'none', '--bwlimit', '16M'], { port: proxy.port })
  const v = r.report?.vms[0]
  t.equal(r.code, 0, `exit 0 ${r.stderr.slice(-1500)}`)
  t.ok(proxy.cuts >= 1, 'the link was cut during the resync')
  t.ok((v?.reconnects ?? 0) >= 1, 'the agent reconnected')
  t.equal(v?.disks[0]?.mode, 'resync')
  const resumed = v?.disks[0]?.resumedFrom ?? []
  t.ok(resumed.length >= 2 && (resumed.at(-1) ?? 0) > 0, `resumed from seq ${resumed.join(', ')}`)
  // the first connection sent at most every differing block (the agent counts what it handed to the socket, not what
  // got through the cut); the second only those from the resume point on, of which at least resumeSeq - zero blocks held data
  const bound = 2 * want.dataBytes - Math.max(0, (resumed.at(-1) ?? 0) - want.zero) * BLOCK
  t.ok((v?.disks[0]?.wireBytes ?? Infinity) <= bound, `the resumed run sent only what was not durable yet (${v?.disks[0]?.wireBytes} ≤ ${bound}, ${want.dataBytes} differing)`)
  t.equal(await firstDifference(join(site.store, folder, `${stem}-flat.vmdk`), expected), -1, 'mirror == qemu-img convert of the frozen source view')
  t.equal(v?.disks[0]?.trivial?.ok, true, 'trivial check')
})

t.test('--verify changed finds a block the cycle wrote that differs in the mirror; the next cycle resyncs exactly it', async (t) => {
  const dir = scratchDir(t)
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const capacity = 32 * MiB
  const vm = await createSampleVm(join(dir, 'src'), { name: 'verify', disks: [{ sizeBytes: capacity, fill: 'random' }], seed: 34 })
  const { folder, stem } = names(vm)
  await cycle(t, site, vm, await expectedView(vm.vmxPath, join(dir, 'e1.raw')), 'seed', 'seed')
  const writes = await simulateGuestWrites(vm.vmxPath, { bytes: 512 * 1024, writeSize: 64 * 1024, seed: 6, zeroFraction: 0 })
  const written = new Set(writes.flatMap((w) => [Math.floor(w.offset / BLOCK), Math.floor((w.offset + 64 * 1024 - 1) / BLOCK)]))
  // bit rot in the mirror, inside a block the next cycle writes only in part (beyond the 4 MiB trivial prefix), under an unchanged CID
  const victim = writes.find((w) => w.offset >= 4 * MiB) as { offset: number }
  const block = Math.floor(victim.offset / BLOCK)
  const inBlock = (o: number): boolean => writes.every((w) => o + 4096 <= w.offset || o >= w.offset + 64 * 1024)
  let rot = block * BLOCK
  while (!inBlock(rot)) rot += 4096
  t.ok(rot < (block + 1) * BLOCK, `a 4 KiB range of block ${block} the guest did not write: ${rot}`)
  const fh = await open(join(site.store, folder, `${stem}-flat.vmdk`), 'r+')
  await fh.write(Buffer.alloc(4096, 0xee), 0, 4096, rot)
  await fh.close()
  const r = await replicateCli(site, vm.vmxPath, ['--trivial-mb', '4', '--compress', 'none', '--verify', 'changed'])
  const v = r.report?.vms[0]
  t.equal(r.code, 1, 'the run reports the failed check')
  t.equal(v?.disks[0]?.mode, 'incremental')
  t.same(v?.disks[0]?.blockCheck, { ok: false, blockSize: BLOCK, blocks: written.size, mismatched: 1 }, `every block the cycle wrote (${written.size}) was compared; the rotten one differs`)
  t.equal(v?.disks[0]?.error?.code, 'E_CHECK')
  const expected = await expectedView(vm.vmxPath, join(dir, 'e2.raw'))
  const next = await cycle(t, site, vm, expected, 'resync', 'the next cycle', ['--verify', 'changed'])
  t.match(next?.disks[0]?.fallbackReason, /failed its check/, 'resynced because the block check failed')
  t.equal(next?.disks[0]?.resync?.differing, 1, 'exactly the rotten block travelled')
  t.same(next?.disks[0]?.blockCheck, { ok: true, blockSize: BLOCK, blocks: 1, mismatched: 0 }, 'the block the resync wrote checks out')
  await simulateGuestWrites(vm.vmxPath, { bytes: 256 * 1024, writeSize: 64 * 1024, seed: 7 })
  const last = await cycle(t, site, vm, await expectedView(vm.vmxPath, join(dir, 'e3.raw')), 'incremental', 'incrementals again', ['--verify', 'changed'])
  t.equal(last?.disks[0]?.blockCheck?.ok, true)
})

t.test('--scrub 4 finds a block tampered with under an unchanged CID within 4 cycles; the next cycle repairs exactly it', async (t) => {
  const dir = scratchDir(t)
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const capacity = 16 * MiB
  const vm = await createSampleVm(join(dir, 'src'), { name: 'scrub', disks: [{ sizeBytes: capacity, fill: 'random' }], seed: 35 })
  const { folder, stem } = names(vm)
  const scrub = ['--scrub', '4']
  const seed = await cycle(t, site, vm, await expectedView(vm.vmxPath, join(dir, 'e1.raw')), 'seed', 'seed', scrub)
  t.match(seed?.disks[0]?.scrub, { ok: true, from: 0, to: 4, blocks: 16, mismatched: 0, rotationComplete: false }, 'the seed proves the mirror and starts the rotation')
  t.type(seed?.disks[0]?.scrub?.provenAt, 'string', 'a seed proves the whole mirror')
  // bit rot in block 13 of the mirror: CID and size unchanged, no cycle writes there (no guest writes)
  const fh = await open(join(site.store, folder, `${stem}-flat.vmdk`), 'r+')
  await fh.write(Buffer.alloc(512, 0x42), 0, 512, 13 * MiB + 4096)
  await fh.close()
  const expected = await expectedView(vm.vmxPath, join(dir, 'e2.raw'))
  for (const [from, to] of [
    [4, 8],
    [8, 12],
  ] as const) {
    const r = await replicateCli(site, vm.vmxPath, ['--trivial-mb', '4', '--compress', 'none', ...scrub])
    const v = r.report?.vms[0]
    t.equal(r.code, 0, `scrub of blocks ${from}…${to - 1}: exit 0 ${r.stderr.slice(-1500)}`)
    t.equal(v?.disks[0]?.mode, 'incremental')
    t.match(v?.disks[0]?.scrub, { ok: true, from, to, mismatched: 0, rotationComplete: false }, `scrub of blocks ${from}…${to - 1}`)
    t.equal(await firstDifference(join(site.store, folder, `${stem}-flat.vmdk`), expected), 13 * MiB + 4096, 'the tampered bytes are still there, unseen')
  }
  const r = await replicateCli(site, vm.vmxPath, ['--trivial-mb', '4', '--compress', 'none', ...scrub])
  const v = r.report?.vms[0]
  t.equal(r.code, 1, 'the cycle whose slice holds block 13 fails its check')
  t.match(v?.disks[0]?.scrub, { ok: false, from: 12, to: 16, mismatched: 1, rotationComplete: true })
  t.match(v?.disks[0]?.error, { code: 'E_CHECK' })
  const fixed = await cycle(t, site, vm, expected, 'resync', 'the next cycle', scrub)
  t.equal(fixed?.disks[0]?.resync?.differing, 1, 'exactly the tampered block travelled')
  t.match(fixed?.disks[0]?.scrub, { ok: true, from: 0, to: 4 }, 'the resync proved the mirror: a new rotation')
})
