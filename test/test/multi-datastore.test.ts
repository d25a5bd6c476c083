// A VM whose disks are on three datastores, end to end through real receiver
// and agent processes over TLS: the .vmx on ds1, its second disk on ds2
// (/vmfs/volumes/ds2/<vm>/, named by its absolute path as ESXi writes it), its
// third on an NFS export reached through a mount alias (a symbolic link). The
// local driver reads only below the folder that holds the VM's folder unless
// told more: without `--datastore-root` the VM is refused (E_VMX naming the
// flag) before any snapshot; with the flags the seed ships every disk, and the
// next cycle — its roots from the job file's `datastoreRoots` — ships the
// guest's writes, each disk's delta made on its own datastore. After each
// cycle every mirror disk equals the frozen source view (`qemu-img compare`).
import t, { type Test } from 'tap'
import { existsSync, symlinkSync } from 'node:fs'
import { mkdir, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { failIfLingering, qemuCompare, scratchDir } from '@grainline/test-utils'
import { frozenView, replicateCli, startSite } from '@grainline/e2e'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const MiB = 1024 * 1024

t.test('a VM with disks on three datastores: refused without its roots, replicated with --datastore-root and then datastoreRoots; the mirror matches', async (t) => {
  const dir = scratchDir(t, 'grainline-datastores-')
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const ds1 = join(dir, 'vmfs', 'volumes', 'ds1')
  const ds2 = join(dir, 'vmfs', 'volumes', 'ds2')
  // an NFS export mounted on the proxy, and the name the operator knows it by
  const nfs = join(dir, 'nfs', 'export3')
  const ds3 = join(dir, 'mnt', 'ds3')
  await mkdir(nfs, { recursive: true })
  await mkdir(join(dir, 'mnt'))
  symlinkSync(nfs, ds3)
  const name = 'web two ds'
  const vm = await createSampleVm(ds1, {
    name,
    disks: [{ sizeBytes: 8 * MiB }, { sizeBytes: 4 * MiB, folder: join(ds2, name) }, { sizeBytes: 3 * MiB, node: 'sata0:0', folder: join(ds3, name) }],
    seed: 9,
  })
  const names = [name, `${name}_1`, `${name}_2`]
  const mirrorMatches = async (t: Test, views: string[], what: string): Promise<void> => {
    for (const [i, n] of names.entries()) {
      const c = await qemuCompare(join(site.store, name, `${n}.vmdk`), views[i] as string)
      t.ok(c.identical, `${what}: mirror ${n}.vmdk == the frozen source (${c.message})`)
    }
  }

  const refused = await replicateCli(site, vm.vmxPath)
  t.equal(refused.code, 1)
  t.equal(refused.report?.vms[0]?.error?.code, 'E_VMX')
  t.match(refused.report?.vms[0]?.error?.message, /disk scsi0:1 .*add the folder it is mounted at with --datastore-root DIR/)
  t.notOk(existsSync(vm.vmxPath.replace(/\.vmx$/, '.vmsd')), 'refused before any snapshot')

  const seedViews = await frozenView(vm.vmxPath, join(dir, 'seed'))
  const seed = await replicateCli(site, vm.vmxPath, ['--datastore-root', ds2, '--datastore-root', ds3])
  t.equal(seed.code, 0, seed.stderr.slice(-2000))
  t.same(
    seed.report?.vms[0]?.disks.map((d) => [d.name, d.mode]),
    names.map((n) => [`${n}.vmdk`, 'seed']),
  )
  await mirrorMatches(t, seedViews, 'seed')

  await simulateGuestWrites(vm.vmxPath, { bytes: MiB, writeSize: 32 * 1024, seed: 2, roots: [ds2, ds3] })
  const incViews = await frozenView(vm.vmxPath, join(dir, 'inc'))
  const job = join(dir, 'job.json')
  await writeFile(job, JSON.stringify({ datastoreRoots: [ds2, ds3], certify: 'sha256', vms: [vm.vmxPath] }))
  const inc = await replicateCli(site, '', ['--job', job])
  t.equal(inc.code, 0, inc.stderr.slice(-2000))
  t.same(
    inc.report?.vms[0]?.disks.map((d) => [d.name, d.mode, d.certify?.ok]),
    names.map((n) => [`${n}.vmdk`, 'incremental', true]),
  )
  await mirrorMatches(t, incViews, 'incremental')
  // each disk's delta is made on its own datastore (the local driver's snapshot, as ESXi's)
  const deltas = async (folder: string, stem: string): Promise<string[]> => (await readdir(folder)).filter((f) => new RegExp(`^${stem}-\\d{6}\\.vmdk$`).test(f))
  t.equal((await deltas(join(ds2, name), `${name}_1`)).length, 1, "the second disk's delta is on ds2")
  t.equal((await deltas(join(nfs, name), `${name}_2`)).length, 1, "the third disk's delta is on the NFS export")
  t.same(await deltas(vm.dir, `${name}_[12]`), [], 'none of theirs in the VM folder')
})
