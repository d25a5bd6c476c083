/**
 * RDM extents: a virtual-compatibility RDM's mapping file (`VMFSRDM`) is read
 * flat — VMFS presents it as the LUN, and ESXi snapshots such a disk like any
 * other; raw (`VMFSRAW`) and vSAN (`VSANSPARSE`) extents stay E_UNSUPPORTED.
 */
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { openChain } from '../src/index.ts'

function descriptor(createType: string, line: string): string {
  return ['# Disk DescriptorFile', 'version=1', 'encoding="UTF-8"', 'CID=12345678', 'parentCID=ffffffff', `createType="${createType}"`, '', line, '', 'ddb.adapterType = "lsilogic"', ''].join('\n')
}

t.test('a VMFSRDM extent reads as the LUN it maps', async (t) => {
  const dir = t.testdir()
  const lun = randomBytes(64 * 1024)
  await writeFile(join(dir, 'd-rdm.vmdk'), lun)
  await writeFile(join(dir, 'd.vmdk'), descriptor('vmfsRawDeviceMap', 'RW 128 VMFSRDM "d-rdm.vmdk"'))
  const chain = await openChain(join(dir, 'd.vmdk'))
  try {
    t.equal(chain.capacity, lun.length)
    t.same(Buffer.from(await chain.read(0, lun.length)), lun)
  } finally {
    await chain.close()
  }
})

for (const [type, file] of [
  ['VMFSRAW', 'd-raw.vmdk'],
  ['VSANSPARSE', 'vsan://52a1/0a1b'],
] as const) {
  t.test(`a ${type} extent is E_UNSUPPORTED`, async (t) => {
    const dir = t.testdir()
    await writeFile(join(dir, 'd.vmdk'), descriptor('vmfs', `RW 128 ${type} "${file}"`))
    await t.rejects(openChain(join(dir, 'd.vmdk')), { code: 'E_UNSUPPORTED' })
  })
}
