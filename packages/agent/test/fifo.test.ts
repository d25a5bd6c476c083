/**
 * A FIFO where a VM's config file belongs (.vmx, .vmsd, nvram, an esxi disk
 * descriptor) must not hang `replicate`: the file type is checked on the
 * opened descriptor before any read. On the code before issue #10 the .vmsd
 * and the descriptor cases blocked forever in open() (no writer ever comes),
 * and a .vmx swapped for a FIFO between stat() and readFile() did too.
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import { readChainFiles } from '../src/esxi/chain-files.ts'
import { readRegularFile } from '../src/fs-util.ts'
import { createLocalDriver } from '../src/local-driver.ts'
import { replicate } from '../src/replicate.ts'
import { createSampleVm } from '../src/sample-vm.ts'
import { memoryLogger, MiB, scratch } from './helpers.ts'

const mkfifo = (p: string): void => {
  execFileSync('mkfifo', [p])
}

/** A dummy receiver URL: every case fails before any connection. */
const to = 'wss://127.0.0.1:1'

t.test('a FIFO as the .vmx, the .vmsd or the nvram: E_VMX, no hang, nothing done', async (t) => {
  const dir = scratch(t)
  const { logger } = memoryLogger()
  for (const which of ['vmx', 'vmsd', 'nvram'] as const) {
    const vm = await createSampleVm(dir, { name: `fifo-${which}`, disks: [{ sizeBytes: 1 * MiB }] })
    const file = join(vm.dir, `fifo-${which}.${which}`)
    await rm(file, { force: true })
    mkfifo(file)
    const r = await replicate({ logger }, { vm: vm.vmxPath, to, token: 't', progress: 'none', giveUpMs: 0, stateDir: join(dir, 'agent-state') })
    t.equal(r.vms[0]?.error?.code, 'E_VMX', `${which}: ${r.vms[0]?.error?.message}`)
    t.match(r.vms[0]?.error?.message, /is a FIFO, not a regular file/)
    if (which !== 'vmx') {
      t.same(
        (await createLocalDriver().openVm(vm.vmxPath)).disks.map((d) => d.fileName),
        [`fifo-${which}.vmdk`],
        'no snapshot was taken',
      )
    }
  }
})

t.test('readRegularFile: folders and oversized files refused, ENOENT passes through', async (t) => {
  const dir = scratch(t)
  await t.rejects(readRegularFile(dir, { maxBytes: 10, code: 'E_VMX', what: 'VM config' }), { code: 'E_VMX', message: /is a folder/ })
  const vm = await createSampleVm(dir, { name: 'big', disks: [{ sizeBytes: 1 * MiB }] })
  await t.rejects(readRegularFile(vm.vmxPath, { maxBytes: 10, code: 'E_VMX', what: 'VM config' }), { code: 'E_VMX', message: /more than the 10 allowed/ })
  t.equal(await readRegularFile(vm.vmxPath, { maxBytes: 10, code: 'E_VMX', what: 'VM config', tooLarge: 'skip' }), undefined)
  await t.rejects(readRegularFile(join(dir, 'nope'), { maxBytes: 10, code: 'E_VMX', what: 'VM config' }), { code: 'ENOENT' })
})

t.test('esxi: a FIFO in a descriptor chain is E_CHAIN, not a hang', async (t) => {
  const dir = scratch(t)
  const top = join(dir, 'vm-000001.vmdk')
  mkfifo(top)
  await t.rejects(
    readChainFiles(top, (base, name) => join(base, name)),
    { code: 'E_CHAIN', message: /not a regular file/ },
  )
})
