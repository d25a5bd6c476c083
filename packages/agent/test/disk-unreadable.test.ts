/**
 * A disk whose chain does not open fails its VM before the snapshot, and the
 * error an operator reads (the report's line, the e-mail, the log) names the
 * VM, the disk's node and file, and what to do. Before, vmdk's own words came
 * through alone — `E_FORMAT SPARSE extent is neither KDMV nor COWD (….vmdk)` —
 * naming a file, not which disk of which VM, nor that nothing was snapshotted.
 * A real receiver process; the VM folder is the local driver's.
 */
import t from 'tap'
import { readdir, readFile, truncate, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { replicate } from '../src/replicate.ts'
import { formatReport } from '../src/report.ts'
import { createSampleVm } from '../src/sample-vm.ts'
import { haveReceiver, memoryLogger, MiB, scratch, startReceiver, TOKEN } from './helpers.ts'

if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')

t.test('a disk grainline cannot read, or one that names a file off its folders: the VM fails before its snapshot, the error names the VM, the disk and what to do', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const make = async (name: string) =>
    await createSampleVm(join(dir, 'vms'), {
      name,
      disks: [
        { sizeBytes: 2 * MiB, fill: 'random' },
        { sizeBytes: MiB, fill: 'random' },
      ],
    })
  const run = async (vmxPath: string) => {
    const { logger } = memoryLogger('silent')
    return await replicate({ logger }, { vm: vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'agent-state'), progress: 'none', trivialMiB: 1 })
  }

  // disk 1 says it is a hosted sparse disk, its extent is a flat file: a format vmdk refuses (E_FORMAT)
  const odd = await make('oddvm')
  const desc = odd.disks[1] as string
  await writeFile(desc, (await readFile(desc, 'utf8')).replace('createType="vmfs"', 'createType="monolithicSparse"').replace(/ VMFS "oddvm_1-flat\.vmdk"/, ' SPARSE "oddvm_1-flat.vmdk"'))
  const before = (await readdir(odd.dir)).sort()
  const r = await run(odd.vmxPath)
  const v = r.vms[0]
  t.equal(r.ok, false)
  t.equal(v?.error?.code, 'E_FORMAT', 'the vmdk code kept')
  t.equal(
    v?.error?.message,
    `VM oddvm, disk scsi0:1 (oddvm_1.vmdk) not replicated, no snapshot taken: SPARSE extent is neither KDMV nor COWD; grainline cannot read this disk's format: convert it to one it reads (a flat VMFS disk, thin or thick: vmkfstools -i SOURCE.vmdk -d thin COPY.vmdk, then attach the copy) (${join(odd.dir, 'oddvm_1-flat.vmdk')})`,
    'the VM, the disk, what happened, what to do, and the file read',
  )
  t.match(formatReport(r), /FAIL oddvm.*: E_FORMAT VM oddvm, disk scsi0:1 \(oddvm_1\.vmdk\) not replicated/, "the terminal's summary line says it")
  t.same((await readdir(odd.dir)).sort(), before, 'no snapshot: the folder as it was (no delta, no .vmsd)')
  t.notOk(existsSync(join(rx.store, 'oddvm')), 'nothing reached the receiver')

  // disk 0's extent climbs out of the VM's folders: refused as before (E_OUTSIDE_ROOT, the file), now naming the disk
  const out = await make('outvm')
  const desc0 = out.disks[0] as string
  await writeFile(join(dir, 'secret.txt'), 'not a disk\n')
  await writeFile(desc0, (await readFile(desc0, 'utf8')).replace('"outvm-flat.vmdk"', '"../../../secret.txt"'))
  const o = (await run(out.vmxPath)).vms[0]
  t.equal(o?.error?.code, 'E_OUTSIDE_ROOT')
  t.match(o?.error?.message, /^VM outvm, disk scsi0:0 \(outvm\.vmdk\) not replicated, no snapshot taken: .*secret\.txt.*outside the folders.*; fix the disk, or the reference to it/)
  t.notOk(existsSync(join(out.dir, 'outvm.vmsd')), 'no snapshot')

  // the delta the VM writes is cut short (a damaged or half-copied file of a format grainline reads): damage, not a format to convert
  const cut = await make('cutvm')
  t.equal((await run(cut.vmxPath)).vms[0]?.ok, true, 'seeded')
  const delta = (await readdir(cut.dir)).find((f) => f.startsWith('cutvm-') && f.endsWith('-sesparse.vmdk'))
  t.ok(delta, `the VM runs on a SEsparse delta (${delta})`)
  await truncate(join(cut.dir, delta as string), 4096)
  const c = (await run(cut.vmxPath)).vms[0]
  t.equal(c?.error?.code, 'E_TRUNCATED', 'the vmdk code kept')
  t.match(
    c?.error?.message,
    /^VM cutvm, disk scsi0:0 \(cutvm-000001\.vmdk\) not replicated, no snapshot taken: .*past the end of the file.*; the file is shorter than its own tables say .*restore it from a backup/,
  )
  t.notMatch(c?.error?.message, /cannot read this disk's format|convert it/, 'no advice to convert a disk of a format grainline reads')
})
