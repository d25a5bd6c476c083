// The mirror's lineage end to end (issue #10, SPEC §5.8), real receiver and
// agent processes over TLS on loopback: a store restored from a backup, one VM
// replicated to two receivers, a first seed into a new store interrupted and
// resumed. After every cycle each mirror disk equals `qemu-img convert -O raw`
// of the frozen source view. On the code before issue #10 the restored store
// and the A B B A sequence were patched with an incremental onto the wrong
// point ("OK … incremental … trivial ok" with writes lost), and the
// interrupted seed was sent again in full beside a second `grainline-1`.
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createLocalDriver, createSampleVm, simulateGuestWrites, type SampleVm } from '@grainline/agent'
import { replicateCli, startSite, type RunReport, type Site, expectedView } from '@grainline/e2e'
import { cliBin, failIfLingering, firstDifference, scratchDir, startCuttingProxy } from '@grainline/test-utils'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const exec = promisify(execFile)
const MiB = 1024 * 1024

async function grainlineSnapshots(vm: SampleVm): Promise<string[]> {
  const d = createLocalDriver()
  return (await d.listSnapshots(await d.openVm(vm.vmxPath))).filter((s) => s.grainline).map((s) => s.name)
}

/** One `grainline replicate` process; asserts the disk mode and that the mirror equals `expected`. */
async function run(
  t: Test,
  site: Site,
  vm: SampleVm,
  stateDir: string,
  expected: string,
  mode: 'seed' | 'incremental' | 'resync',
  label: string,
  extra: string[] = [],
): Promise<RunReport['vms'][number] | undefined> {
  const r = await replicateCli(site, vm.vmxPath, ['--state-dir', stateDir, '--trivial-mb', '4', ...extra])
  const v = r.report?.vms[0]
  t.equal(r.code, 0, `${label}: exit 0 ${r.stderr.slice(-1500)}`)
  t.equal(v?.disks[0]?.mode, mode, `${label}: ${mode}${v?.disks[0]?.fallbackReason !== undefined ? ` (${v.disks[0].fallbackReason})` : ''}`)
  t.equal(v?.disks[0]?.trivial?.ok, true, `${label}: trivial check`)
  const mirror = join(site.store, vm.vmxPath.split('/').at(-2) as string)
  const name = (vm.vmxPath.split('/').at(-1) as string).replace(/\.vmx$/, '')
  t.equal(await firstDifference(join(mirror, `${name}-flat.vmdk`), expected), -1, `${label}: mirror == qemu-img convert of the frozen source view`)
  t.same(await grainlineSnapshots(vm), [`grainline-${v?.cycle ?? 0}`], `${label}: exactly one grainline snapshot`)
  return v
}

/**
 * One receiver site and a sample VM `name` of one disk, replicated twice (a
 * seed, then an incremental after guest writes); `write(seed)` makes the
 * guest writes of a later cycle.
 */
async function seededTwice(t: Test, name: string, sizeBytes: number, seed: number): Promise<{ dir: string; site: Site; vm: SampleVm; state: string; write: (seed: number) => Promise<void> }> {
  const dir = scratchDir(t)
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes }], seed })
  const state = join(dir, 'agent-state')
  const write = async (seed: number): Promise<void> => {
    await simulateGuestWrites(vm.vmxPath, { bytes: 2 * MiB, writeSize: 64 * 1024, seed, zeroFraction: 0.1 })
  }
  await run(t, site, vm, state, await expectedView(vm.vmxPath, join(dir, 'e1.raw')), 'seed', 'seed')
  await write(2)
  await run(t, site, vm, state, await expectedView(vm.vmxPath, join(dir, 'e2.raw')), 'incremental', 'cycle 2')
  return { dir, site, vm, state, write }
}

t.test('store restored from a backup: the next cycle resyncs by block digests (never an incremental), the mirror is exact', async (t) => {
  const { dir, site, vm, state, write } = await seededTwice(t, 'backup', 24 * MiB, 21)
  // copy the store aside (receiver stopped, as a backup job would see it)
  await site.receiver.stop()
  await exec('cp', ['-a', site.store, join(dir, 'store-copy')])
  await site.restart()
  for (const c of [3, 4]) {
    await write(c)
    await run(t, site, vm, state, await expectedView(vm.vmxPath, join(dir, `e${c}.raw`)), 'incremental', `cycle ${c}`)
  }
  // put the copy back: the mirror is at cycle 2 again
  await site.receiver.stop()
  await rm(site.store, { recursive: true })
  await exec('cp', ['-a', join(dir, 'store-copy'), site.store])
  await site.restart()
  await write(5)
  const v = await run(t, site, vm, state, await expectedView(vm.vmxPath, join(dir, 'e5.raw')), 'resync', 'after the restore')
  t.equal(v?.cycle, 3, "the cycle after the restored store's own committed point")
  t.match(v?.disks[0]?.fallbackReason, /receiver is at committed cycle 2, generation .*, but the agent recorded cycle 4/)
  await write(6)
  await run(t, site, vm, state, await expectedView(vm.vmxPath, join(dir, 'e6.raw')), 'incremental', 'the next cycle continues')
})

t.test('a mirror removed at the DR site (grainline mirror remove) while its agent still replicates: the next cycle seeds it, exact', async (t) => {
  const { dir, site, vm, state, write } = await seededTwice(t, 'gone', 16 * MiB, 23)
  const name = vm.vmxPath.split('/').at(-2) as string
  // the receiver keeps running: the operator removes the mirror beside it
  const removed = await exec(process.execPath, [cliBin(), 'mirror', 'remove', '--store', site.store, '--vm', name, '--yes', '--output', 'json'])
  t.match(JSON.parse(removed.stdout), { vm: name, committedCycle: 2 }, 'mirror remove: the VM at cycle 2 is gone')
  t.same(await readdir(site.store).then((n) => n.filter((x) => !x.startsWith('.'))), [], 'nothing of it is left in the store')
  await write(3)
  const v = await run(t, site, vm, state, await expectedView(vm.vmxPath, join(dir, 'e3.raw')), 'seed', 'after the removal')
  t.match(
    v?.disks[0]?.fallbackReason,
    /the receiver holds no committed mirror of this VM, but the agent recorded cycle 2, generation [0-9a-f]{8}… \(the mirror removed at the DR site/,
    'the agent says why it seeds',
  )
  await write(4)
  await run(t, site, vm, state, await expectedView(vm.vmxPath, join(dir, 'e4.raw')), 'incremental', 'the next cycle continues')
})

t.test('one VM replicated alternately to two receivers: every switch resyncs, both mirrors exact', async (t) => {
  const dir = scratchDir(t)
  const a = await startSite(join(dir, 'dr-a'))
  t.teardown(() => a.receiver.stop())
  const b = await startSite(join(dir, 'dr-b'))
  t.teardown(() => b.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'alt', disks: [{ sizeBytes: 16 * MiB }], seed: 22 })
  const state = join(dir, 'agent-state')
  // A B B A B: the second B continues B; A after B's and B after A's must resync (delta names repeat every two cycles)
  const plan: Array<[Site, 'seed' | 'incremental' | 'resync', string]> = [
    [a, 'seed', 'A'],
    [b, 'seed', 'B'],
    [b, 'incremental', 'B again'],
    [a, 'resync', 'back to A'],
    [b, 'resync', 'back to B'],
    [b, 'incremental', 'B once more'],
  ]
  for (const [i, [site, mode, label]] of plan.entries()) {
    if (i > 0) await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, writeSize: 64 * 1024, seed: 40 + i, zeroFraction: 0.1 })
    const v = await run(t, site, vm, state, await expectedView(vm.vmxPath, join(dir, `e${i}.raw`)), mode, label)
    if (label.startsWith('back to')) t.match(v?.disks[0]?.fallbackReason, /generation/, `${label}: resynced because the generation is not the recorded one`)
  }
})

t.test('first seed into a new store interrupted at ~90 %: the rerun resumes and ends with one grainline snapshot', async (t) => {
  const dir = scratchDir(t)
  const old = await startSite(join(dir, 'dr-old'))
  t.teardown(() => old.receiver.stop())
  const size = 48 * MiB
  const vm = await createSampleVm(join(dir, 'src'), { name: 'mover', disks: [{ sizeBytes: size, fill: 'random' }], seed: 23 })
  const state = join(dir, 'agent-state')
  // the VM holds grainline-2 from an older target
  await run(t, old, vm, state, await expectedView(vm.vmxPath, join(dir, 'o1.raw')), 'seed', 'old target, seed')
  await simulateGuestWrites(vm.vmxPath, { bytes: 2 * MiB, seed: 3 })
  await run(t, old, vm, state, await expectedView(vm.vmxPath, join(dir, 'o2.raw')), 'incremental', 'old target, cycle 2')
  await old.receiver.stop()

  const site = await startSite(join(dir, 'dr-new'))
  t.teardown(() => site.receiver.stop())
  await simulateGuestWrites(vm.vmxPath, { bytes: 2 * MiB, seed: 4 })
  const expected = await expectedView(vm.vmxPath, join(dir, 'n1.raw'))
  // the link dies once ~90 % of the seed went through, and stays dead: the agent gives up. A bandwidth
  // limit keeps the receiver's durable point close behind what was sent (it syncs whenever its inbox runs dry)
  const proxy = await startCuttingProxy(site.receiver.port)
  t.teardown(() => proxy.close())
  const small = ['--compress', 'none', '--state-dir', state]
  // the connection that ships the seed is cut after 90 % of its bytes (the short ones before it pass);
  // every connection after that cut dies at once, so the agent gives up
  proxy.cutAfter = Math.floor(0.9 * size)
  void proxy.waitForCuts(1).then(
    () => {
      proxy.cutAfter = 1
    },
    () => {},
  )
  const cut = await replicateCli(site, vm.vmxPath, [...small, '--give-up', '1', '--bwlimit', '16M'], { port: proxy.port })
  t.ok(proxy.cuts >= 1 && proxy.forwarded >= 0.9 * size, `the seed was cut at 90 % (${proxy.forwarded} of ${size} bytes forwarded)`)
  t.equal(cut.code, 1, 'the interrupted run fails')
  t.equal(cut.report?.vms[0]?.error?.code, 'E_GAVE_UP')
  t.same((await grainlineSnapshots(vm)).sort(), ['grainline-1', 'grainline-2'], "left: the old target's base and the in-flight snapshot (no two of one name)")
  const r = await replicateCli(site, vm.vmxPath, small)
  const v = r.report?.vms[0]
  t.equal(r.code, 0, `rerun exit 0 ${r.stderr.slice(-1500)}`)
  t.equal(v?.reusedSnapshot, true, 'the in-flight snapshot recorded by the interrupted run was reused')
  t.equal(v?.disks[0]?.mode, 'seed')
  const wire = v?.disks[0]?.wireBytes ?? Infinity
  t.ok((v?.disks[0]?.resumedFrom[0] ?? 0) > 0, `resumed at seq ${v?.disks[0]?.resumedFrom[0]}`)
  t.ok(wire < 0.3 * size, `the rerun sent ${wire} bytes, < 30 % of the ${size}-byte seed`)
  t.equal(await firstDifference(join(site.store, 'mover', 'mover-flat.vmdk'), expected), -1, 'mirror == qemu-img convert of the frozen source view')
  t.same(await grainlineSnapshots(vm), ['grainline-1'], 'exactly one grainline snapshot after the run')
})
