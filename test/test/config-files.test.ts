// The VM's configuration files end to end, through real receiver and agent
// processes: the agent ships the .vmx and the nvram the .vmx names. When the
// VM's nvram is renamed, the mirror folder holds the new one only (the old
// name, installed by an earlier commit, is removed at the next commit); an
// nvram entry naming a file the receiver makes in the mirror folder (a
// set-aside journal) is refused at VmOpen and the receiver's file stays.
import t from 'tap'
import { existsSync } from 'node:fs'
import { readdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { failIfLingering, scratchDir } from '@grainline/test-utils'
import { replicateCli, startSite } from '@grainline/e2e'

failIfLingering(t)

const MiB = 1024 * 1024

t.test("a renamed nvram replaces the old one in the mirror folder; a receiver's own name is refused", async (t) => {
  const dir = scratchDir(t, 'grainline-config-files-')
  const site = await startSite(join(dir, 'dr'), ['*'])
  t.teardown(() => site.receiver.stop())
  const name = 'cfg'
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes: 4 * MiB }], seed: 3 })
  const r1 = await replicateCli(site, vm.vmxPath)
  t.equal(r1.code, 0, `cycle 1: ${r1.stderr.slice(-1500)}`)
  const mirror = join(site.store, name)
  t.ok(existsSync(join(mirror, `${name}.nvram`)), 'the nvram installed')

  // the operator renames the VM's nvram (the .vmx names the new file)
  const src = dirname(vm.vmxPath)
  const setNvram = async (to: string): Promise<void> => {
    const vmx = await readFile(vm.vmxPath, 'utf8')
    await writeFile(vm.vmxPath, vmx.replace(/^nvram = ".*"$/m, `nvram = "${to}"`))
  }
  await rename(join(src, `${name}.nvram`), join(src, 'renamed.nvram'))
  await setNvram('renamed.nvram')
  await simulateGuestWrites(vm.vmxPath, { bytes: MiB, writeSize: 32 * 1024, seed: 2 })
  const r2 = await replicateCli(site, vm.vmxPath)
  t.equal(r2.code, 0, `cycle 2: ${r2.stderr.slice(-1500)}`)
  t.same(
    (await readdir(mirror)).filter((f) => f.endsWith('.nvram')),
    ['renamed.nvram'],
    'the old nvram removed, the new one installed',
  )
  t.same(await readFile(join(mirror, 'renamed.nvram')), await readFile(join(src, 'renamed.nvram')))

  // a journal a seed's rollback set aside in the mirror folder, and a .vmx whose nvram entry names it
  const aside = join(mirror, `${name}.journal.set-aside-cycle-2`)
  await writeFile(aside, 'set aside\n')
  await rename(join(src, 'renamed.nvram'), join(src, `${name}.journal.set-aside-cycle-2`))
  await setNvram(`${name}.journal.set-aside-cycle-2`)
  const r3 = await replicateCli(site, vm.vmxPath)
  t.not(r3.code, 0, 'the cycle fails')
  t.match(r3.stderr, /E_BAD_NAME/, `refused as a bad name: ${r3.stderr.slice(-1500)}`)
  t.equal(await readFile(aside, 'utf8'), 'set aside\n', "the receiver's file stays")
  t.ok(existsSync(join(mirror, 'renamed.nvram')), 'the mirror keeps the last committed configuration')
})
