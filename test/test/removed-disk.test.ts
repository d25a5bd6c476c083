// A disk removed from a protected VM, end to end through real receiver and
// agent processes: the operator takes the second disk out of the .vmx while
// grainline's snapshot is on the VM. The next cycles succeed (the snapshot's
// removal merges only the disks the VM still has), the mirror's .vmx attaches
// only the remaining disk, certify proves it, and `grainline status` says
// which disk the cycles no longer carry — its mirror kept as of its last
// cycle — without raising the mirror's health. The points before the removal
// keep the disk; the points after it and the mirror's cycle leave it out. A
// new, larger disk then reusing the removed disk's name lands on its mirror
// and keeps the points: the older ones still restore the old disk.
import t from 'tap'
import { existsSync } from 'node:fs'
import { copyFile, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { failIfLingering, firstDifference, qemuRaw, scratchDir } from '@grainline/test-utils'
import { replicateCli, runCli, startSite } from '@grainline/e2e'

failIfLingering(t)

const MiB = 1024 * 1024

t.test('a disk removed from the VM: the cycles go on with the others, status names it, its mirror stays', async (t) => {
  const dir = scratchDir(t, 'grainline-removed-disk-')
  const config = join(dir, 'receiver.json')
  await mkdir(join(dir, 'dr'), { recursive: true })
  await writeFile(config, JSON.stringify({ store: join(dir, 'dr', 'store'), retention: { keep: 5 } }))
  const site = await startSite(join(dir, 'dr'), ['*'], [], ['--config', config])
  t.teardown(() => site.receiver.stop())
  const name = 'app two disks'
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes: 8 * MiB }, { sizeBytes: 4 * MiB, node: 'sata0:1' }], seed: 6 })
  for (let cycle = 1; cycle <= 2; cycle++) {
    if (cycle > 1) await simulateGuestWrites(vm.vmxPath, { bytes: MiB, writeSize: 32 * 1024, seed: cycle })
    const r = await replicateCli(site, vm.vmxPath)
    t.equal(r.code, 0, `cycle ${cycle}: ${r.stderr.slice(-1500)}`)
  }
  const mirror = join(site.store, name)
  const second = join(mirror, `${name}_1.vmdk`)
  t.ok(existsSync(join(mirror, `${name}_1-flat.vmdk`)), 'the second disk is mirrored')
  const secondBefore = join(dir, 'second-at-2.raw')
  await qemuRaw(second, secondBefore)

  // the operator removes the second disk from the VM: its lines leave the .vmx, grainline's snapshot is still on the VM
  const vmx = await readFile(vm.vmxPath, 'utf8')
  await writeFile(
    vm.vmxPath,
    `${vmx
      .split('\n')
      .filter((l) => !l.startsWith('sata0:1.'))
      .join('\n')}`,
  )
  for (let cycle = 3; cycle <= 4; cycle++) {
    await simulateGuestWrites(vm.vmxPath, { bytes: MiB, writeSize: 32 * 1024, seed: cycle })
    const r = await replicateCli(site, vm.vmxPath, cycle === 4 ? ['--certify', 'sha256'] : [])
    t.equal(r.code, 0, `cycle ${cycle} after the removal: ${r.stderr.slice(-1500)}`)
    t.equal(r.report?.vms[0]?.cycle, cycle)
  }
  const mirrorVmx = await readFile(join(mirror, `${name}.vmx`), 'utf8')
  t.notMatch(mirrorVmx, /^sata0:1\.fileName/m, "the mirror's .vmx attaches the remaining disk only")
  t.match(mirrorVmx, /^scsi0:0\.fileName = "app two disks\.vmdk"/m)
  t.equal(await firstDifference(secondBefore, await rawOf(second, join(dir, 'second-at-4.raw'))), -1, "the removed disk's mirror is kept as of its last cycle")

  const st = await runCli(['status', '--store', site.store])
  t.equal(st.code, 0, `the mirror stays OK: ${st.stdout}${st.stderr}`)
  t.match(
    st.stdout,
    /app two disks: app two disks_1\.vmdk removed from the VM in cycle 3 \(its \.vmx no longer names it; the VM is at cycle 4\): its mirror stays as of cycle 2 for the restore points before cycle 3/,
    'status names the disk removed and the cycle its .vmx stopped naming it',
  )
  t.notMatch(st.stdout, /app two disks: app two disks\.vmdk (removed|last replicated)/, 'not the disk the VM still has')
  const json = JSON.parse((await runCli(['status', '--store', site.store, '--output', 'json'])).stdout) as {
    vms: { vm: string; committedCycle: number; disks: { name: string; committedCycle: number; removed?: number }[] }[]
  }
  t.same(
    json.vms.map((v) => [v.vm, v.committedCycle, v.disks.map((d) => [d.name, d.committedCycle, d.removed ?? null])]),
    [
      [
        name,
        4,
        [
          ['app two disks.vmdk', 4, null],
          ['app two disks_1.vmdk', 2, 3],
        ],
      ],
    ],
    'the JSON carries each disk its last cycle, and the removed one the cycle of its removal',
  )

  // the points: those before the removal hold both disks; the point of cycle 3 and the mirror only the one the VM has
  const pts = await runCli(['points', '--store', site.store, '--vm', name, '--output', 'json'])
  t.equal(pts.code, 0, pts.stderr)
  const list = JSON.parse(pts.stdout) as { points: { cycle: number; current: boolean; disks: { name: string }[] }[] }
  t.same(
    list.points.map((p) => [p.cycle, p.current, p.disks.map((d) => d.name)]),
    [
      [1, false, ['app two disks.vmdk', 'app two disks_1.vmdk']],
      [2, false, ['app two disks.vmdk', 'app two disks_1.vmdk']],
      [3, false, ['app two disks.vmdk']],
      [4, true, ['app two disks.vmdk']],
    ],
    'a point after the removal leaves the removed disk out',
  )
  // a restore of point 2 brings the removed disk back as it was; one of point 3 does not copy it
  const at2 = join(dir, 'restored-2')
  const r2 = await runCli(['restore', '--store', site.store, '--vm', name, '--point', '2', '--to', at2, '--output', 'json'])
  t.equal(r2.code, 0, r2.stderr)
  t.equal(await firstDifference(secondBefore, await rawOf(join(at2, `${name}_1.vmdk`), join(dir, 'second-restored-2.raw'))), -1, 'point 2 restores the removed disk as of cycle 2')
  t.match(await readFile(join(at2, `${name}.vmx`), 'utf8'), /^sata0:1\.fileName = "app two disks_1\.vmdk"$/m, "point 2's .vmx attaches it")
  const at3 = join(dir, 'restored-3')
  const r3 = await runCli(['restore', '--store', site.store, '--vm', name, '--point', '3', '--to', at3, '--output', 'json'])
  t.equal(r3.code, 0, r3.stderr)
  t.notOk(existsSync(join(at3, `${name}_1-flat.vmdk`)), 'point 3 does not copy the removed disk')
  t.ok(existsSync(join(at3, `${name}-flat.vmdk`)), 'point 3 restores the disk the VM has')

  // the operator deletes the old disk's files and adds a new, larger disk on the same device: ESXi gives it the
  // same file name, so it lands on the removed disk's mirror record, and the agent resyncs it onto that mirror in
  // place (cycle 5). The capacity changes, so no reverse increment can hold the old data: the receiver copies the
  // old mirror into a base point first, and the points before the removal still restore the old disk (they were
  // all dropped before).
  for (const f of await readdir(vm.dir)) if (f.startsWith(`${name}_1`)) await rm(join(vm.dir, f))
  const fresh = await createSampleVm(join(dir, 'new-disk'), { name: `${name}_1`, disks: [{ sizeBytes: 6 * MiB }], seed: 9 })
  for (const f of await readdir(fresh.dir)) if (f.endsWith('.vmdk')) await copyFile(join(fresh.dir, f), join(vm.dir, f))
  const added = vmx
    .split('\n')
    .filter((l) => l.startsWith('sata0:1.'))
    .map((l) => (l.startsWith('sata0:1.fileName') ? `sata0:1.fileName = "${name}_1.vmdk"` : l))
  await writeFile(vm.vmxPath, `${(await readFile(vm.vmxPath, 'utf8')).trimEnd()}\n${added.join('\n')}\n`)
  const r5 = await replicateCli(site, vm.vmxPath, ['--certify', 'sha256'], { logLevel: 'info' })
  t.equal(r5.code, 0, `cycle 5 with the new disk: ${r5.stderr.slice(-1500)}`)
  t.equal(r5.report?.vms[0]?.cycle, 5)
  // SPEC §5.1 (v3): the receiver told the agent of the copy before it answered the DiskOpen, and the agent showed it
  const copyLines = r5.stderr
    .split('\n')
    .filter((l) => l.includes('the receiver copies the mirror of the disk into a restore point'))
    .map((l) => JSON.parse(l) as { disk: string; doneBytes: number; totalBytes: number; msg: string })
  t.match(copyLines[0], { disk: `${name}_1.vmdk`, doneBytes: 0, totalBytes: 4 * MiB }, 'the agent logs the base copy as it starts, with its size')
  t.match(copyLines.at(-1), { disk: `${name}_1.vmdk`, doneBytes: 4 * MiB, totalBytes: 4 * MiB, msg: /: done$/ }, '… and as it ends')
  const newDisk = join(dir, 'new-disk.raw')
  await qemuRaw(fresh.disks[0] as string, newDisk)
  t.equal(await firstDifference(newDisk, await rawOf(second, join(dir, 'second-at-5.raw'))), -1, 'the mirror holds the new disk')
  const pts5 = JSON.parse((await runCli(['points', '--store', site.store, '--vm', name, '--output', 'json'])).stdout) as { points: { cycle: number; current: boolean; disks: { name: string }[] }[] }
  t.same(
    pts5.points.map((p) => [p.cycle, p.current, p.disks.map((d) => d.name)]),
    [
      [1, false, ['app two disks.vmdk', 'app two disks_1.vmdk']],
      [2, false, ['app two disks.vmdk', 'app two disks_1.vmdk']],
      [3, false, ['app two disks.vmdk']],
      [4, false, ['app two disks.vmdk']],
      [5, true, ['app two disks.vmdk', 'app two disks_1.vmdk']],
    ],
    'the new disk does not drop the points',
  )
  const at2b = join(dir, 'restored-2b')
  const r2b = await runCli(['restore', '--store', site.store, '--vm', name, '--point', '2', '--to', at2b, '--output', 'json'])
  t.equal(r2b.code, 0, r2b.stderr)
  t.equal(await firstDifference(secondBefore, await rawOf(join(at2b, `${name}_1.vmdk`), join(dir, 'second-restored-2b.raw'))), -1, 'point 2 still restores the old disk as of cycle 2, at its own size')
  t.match(
    JSON.parse(r2b.stdout.trim().split('\n').at(-1) ?? ''),
    { disks: [{}, { name: `${name}_1.vmdk`, capacity: 4 * MiB, verified: 'trivial' }] },
    'verified against the trivial check of its cycle',
  )
})

async function rawOf(src: string, out: string): Promise<string> {
  await qemuRaw(src, out)
  return out
}
