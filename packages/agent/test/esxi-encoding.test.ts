/**
 * One VM on two datastores — one mounted locally, one reached only over SFTP —
 * whose second disk has a non-ASCII name in a windows-1252 descriptor
 * (`encoding="windows-1252"`, the extent name's é as byte 0xE9): seed and an
 * incremental through `replicate()` end with mirrors equal to the bytes the
 * test wrote (bookkeeping as the oracle: qemu-img does not decode descriptor
 * encodings). Before descriptors were decoded by their encoding= key, the
 * driver's chain walk failed with "extent … is missing".
 */
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { pino } from 'pino'
import { openWriter } from '@grainline/vmdk'
import { startReceiverProcess, tokensFixture, TEST_TOKEN } from '@grainline/test-utils'
import { replicate } from '../src/replicate.ts'
import { createEsxiDriver, type EsxiDriverInit } from '../src/esxi/esxi-driver.ts'
import { startSshHarness, mirrorFlat } from './esxi-harness.ts'

const h = await startSshHarness()
t.teardown(() => h.stop())
const rx = await startReceiverProcess({ store: path.join(h.dir, 'store'), tokens: tokensFixture(h.dir).file })
t.teardown(() => rx.stop())

const ds2 = path.join(h.dir, 'san-vmfs')
await mkdir(path.join(ds2, 'enc'), { recursive: true })
const dir1 = path.join(h.datastore, 'enc')
await mkdir(dir1, { recursive: true })
const SIZE = 1024 * 1024
const base0 = randomBytes(SIZE)
const base1 = randomBytes(SIZE)
const NAME = 'café disk' // é: 0xE9 in windows-1252, C3 A9 in the file system's UTF-8

function descriptor(extent: Buffer, encoding: string): Buffer {
  const head = Buffer.from(
    [
      '# Disk DescriptorFile',
      'version=1',
      `encoding="${encoding}"`,
      `CID=${randomBytes(4).toString('hex')}`,
      'parentCID=ffffffff',
      'createType="vmfs"',
      '',
      '# Extent description',
      `RW ${SIZE / 512} VMFS "`,
    ].join('\n'),
    'latin1',
  )
  return Buffer.concat([head, extent, Buffer.from('"\n\n#DDB\nddb.adapterType = "lsilogic"\nddb.virtualHWVersion = "19"\n', 'latin1')])
}
await writeFile(path.join(dir1, 'enc-flat.vmdk'), base0)
await writeFile(path.join(dir1, 'enc.vmdk'), descriptor(Buffer.from('enc-flat.vmdk'), 'UTF-8'))
await writeFile(path.join(ds2, 'enc', `${NAME}-flat.vmdk`), base1)
await writeFile(path.join(ds2, 'enc', `${NAME}.vmdk`), descriptor(Buffer.from(`${NAME}-flat.vmdk`, 'latin1'), 'windows-1252'))
await writeFile(
  path.join(dir1, 'enc.vmx'),
  [
    '.encoding = "UTF-8"',
    'displayName = "enc"',
    'scsi0:0.present = "TRUE"',
    'scsi0:0.fileName = "enc.vmdk"',
    'scsi0:1.present = "TRUE"',
    `scsi0:1.fileName = "/vmfs/volumes/san-vmfs/enc/${NAME}.vmdk"`,
    '',
  ].join('\n'),
)
const st = await h.readState()
st.datastores['san-vmfs'] = { path: ds2 }
// deltas go to the VM's folder on datastore1; the SFTP disk's delta names its parent /vmfs/volumes/san-vmfs/…
st.vms.push({ id: '81', name: 'enc', vmx: '[datastore1] enc/enc.vmx', deltaFormat: 'sesparse', absoluteHints: true })
await h.writeState(st)

const esxi: EsxiDriverInit = {
  ssh: { host: '127.0.0.1', port: h.port, username: h.user, privateKey: h.userKey, hostKeyFingerprint: h.hostKeyFingerprint },
  // one VM, two kinds of datastore
  datastores: { datastore1: { localPath: h.datastore, uuid: '5f1a2b3c-4d5e6f70-8192-a1b2c3d4e5f6' }, 'san-vmfs': { access: 'sftp', hostPath: ds2 } },
  verifyTimeoutMs: 5000,
  pollIntervalMs: 50,
  commandTimeoutMs: 600_000,
}

t.test('seed and incremental of a VM mixing a local and an SFTP datastore, with a windows-1252 disk name', async (t) => {
  const driver = createEsxiDriver({ logger: pino({ level: 'silent' }) }, esxi)
  t.teardown(() => driver.close())
  const expected = [Buffer.from(base0), Buffer.from(base1)]
  let pending: Array<{ disk: number; offset: number; data: Buffer }> = []
  for (const n of [1, 2]) {
    const report = await replicate(
      { logger: pino({ level: 'silent' }) },
      {
        vm: 'enc',
        driver,
        to: `ws://127.0.0.1:${rx.port}`,
        token: TEST_TOKEN,
        stateDir: path.join(h.dir, 'agent-state'),
        progress: 'none',
        trivialMiB: 1,
        certify: 'sha256',
        afterSnapshot: async (vm) => {
          // what the guest writes now reaches the mirror with the next cycle
          pending = []
          for (const [k, d] of vm.disks.entries()) {
            const data = randomBytes(8192)
            const offset = 65536 * (n + k)
            const w = await openWriter(d.path, {
              pathMap: { '/vmfs/volumes/san-vmfs': ds2, '/vmfs/volumes/datastore1': h.datastore, '/vmfs/volumes/5f1a2b3c-4d5e6f70-8192-a1b2c3d4e5f6': h.datastore },
            })
            await w.write(offset, data)
            await w.close()
            pending.push({ disk: k, offset, data })
          }
        },
      },
    )
    const vr = report.vms[0]
    t.equal(report.ok, true, `cycle ${n}: ${JSON.stringify(vr?.error)}`)
    t.same(
      vr?.disks.map((d) => [d.name, d.mode]),
      [
        ['enc.vmdk', n === 1 ? 'seed' : 'incremental'],
        [`${NAME}.vmdk`, n === 1 ? 'seed' : 'incremental'],
      ],
    )
    t.same(await readFile(await mirrorFlat(h, 'enc')), expected[0], `cycle ${n}: local-datastore disk mirror`)
    t.same(await readFile(await mirrorFlat(h, NAME)), expected[1], `cycle ${n}: SFTP disk with the windows-1252 name`)
    for (const p of pending) p.data.copy(expected[p.disk] as Buffer, p.offset)
  }
  t.ok((driver.sftpCounters?.bytes ?? 0) >= SIZE, 'the SFTP datastore was read over SFTP')
})
