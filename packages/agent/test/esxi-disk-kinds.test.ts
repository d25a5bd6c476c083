/**
 * Disks ESXi treats differently, classified before the first snapshot
 * (src/esxi/disk-kind.ts), over a real sshd with the vim-cmd stand-in (which,
 * like ESXi, gives independent disks and physical RDMs no delta):
 * independent disks and physical RDMs are skipped with a warning in the report
 * (or the VM refused with `independentDisks: "refuse"`), virtual RDMs are
 * replicated like disks, vSAN/vVol disks are refused naming the disk and the
 * reason — and in no case is a snapshot left on the VM.
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import path from 'node:path'
import { pino } from 'pino'
import { openChain, openWriter } from '@grainline/vmdk'
import { startReceiverProcess, tokensFixture, TEST_TOKEN } from '@grainline/test-utils'
import { replicate } from '../src/replicate.ts'
import { createEsxiDriver, type EsxiDriverInit } from '../src/esxi/esxi-driver.ts'
import { classifyDisk } from '../src/esxi/disk-kind.ts'
import type { VmHandle } from '../src/driver.ts'
import { startSshHarness, qemuRaw as harnessQemuRaw, mirrorFlat } from './esxi-harness.ts'

const h = await startSshHarness()
t.teardown(() => h.stop())
const uuid = '5f1a2b3c-4d5e6f70-8192-a1b2c3d4e5f6'
const localMap = { [`/vmfs/volumes/${uuid}`]: h.datastore, '/vmfs/volumes/datastore1': h.datastore }
const rx = await startReceiverProcess({ store: path.join(h.dir, 'store'), tokens: tokensFixture(h.dir).file })
t.teardown(() => rx.stop())

function descriptor(createType: string, extent: string, sectors: number): string {
  return [
    '# Disk DescriptorFile',
    'version=1',
    'encoding="UTF-8"',
    `CID=${randomBytes(4).toString('hex')}`,
    'parentCID=ffffffff',
    `createType="${createType}"`,
    '',
    '# Extent description',
    `RW ${sectors} ${extent}`,
    '',
    '#DDB',
    'ddb.adapterType = "lsilogic"',
    'ddb.virtualHWVersion = "19"',
    '',
  ].join('\n')
}

interface Spec {
  name: string
  createType: string
  /** extent type and file name as written */
  type: string
  file: string
  mode?: string
}

/** A VM folder with one disk per spec (1 MiB each; a file per extent unless it is an object URL). */
async function buildKindsVm(folder: string, specs: Spec[]): Promise<string> {
  const dir = path.join(h.datastore, folder)
  await mkdir(dir, { recursive: true })
  const vmx = ['.encoding = "UTF-8"', 'config.version = "8"', 'virtualHW.version = "19"', `displayName = "${folder}"`, 'scsi0.present = "TRUE"']
  specs.forEach((s, i) => {
    vmx.push(`scsi0:${i}.present = "TRUE"`, `scsi0:${i}.fileName = "${s.name}"`, `scsi0:${i}.deviceType = "scsi-hardDisk"`)
    if (s.mode !== undefined) vmx.push(`scsi0:${i}.mode = "${s.mode}"`)
  })
  await writeFile(path.join(dir, `${folder}.vmx`), `${vmx.join('\n')}\n`)
  for (const s of specs) {
    if (!/^(vsan|vvol):/.test(s.file)) await writeFile(path.join(dir, s.file), randomBytes(1024 * 1024))
    await writeFile(path.join(dir, s.name), descriptor(s.createType, `${s.type} "${s.file}"`, 2048))
  }
  return dir
}

const KINDS: Spec[] = [
  { name: 'kinds.vmdk', createType: 'vmfs', type: 'VMFS', file: 'kinds-flat.vmdk' },
  { name: 'kinds_ind.vmdk', createType: 'vmfs', type: 'VMFS', file: 'kinds_ind-flat.vmdk', mode: 'independent-persistent' },
  { name: 'kinds_prdm.vmdk', createType: 'vmfsPassthroughRawDeviceMap', type: 'VMFSRDM', file: 'kinds_prdm-rdmp.vmdk' },
  { name: 'kinds_vrdm.vmdk', createType: 'vmfsRawDeviceMap', type: 'VMFSRDM', file: 'kinds_vrdm-rdm.vmdk' },
  { name: 'kinds_np.vmdk', createType: 'vmfs', type: 'VMFS', file: 'kinds_np-flat.vmdk', mode: 'Independent-NonPersistent' },
]
const dirs = {
  kinds: await buildKindsVm('kinds', KINDS),
  refuse: await buildKindsVm('refuse', [KINDS[0] as Spec, KINDS[1] as Spec]),
  vsan: await buildKindsVm('vsan', [KINDS[0] as Spec, { name: 'vsan_1.vmdk', createType: 'vsanSparse', type: 'VSANSPARSE', file: 'vsan://52a1b2c3-d4e5-f607-1829-3a4b5c6d7e8f/0a1b2c3d-4e5f' }]),
  vvol: await buildKindsVm('vvol', [{ name: 'vvol.vmdk', createType: 'vmfs', type: 'VMFS', file: 'vvol://rfc4122.9a8b7c6d-5e4f-3a2b-1c0d-9e8f7a6b5c4d/rfc4122.00112233-4455-6677-8899-aabbccddeeff' }]),
}
const st = await h.readState()
st.vms.push(
  { id: '51', name: 'kinds', vmx: '[datastore1] kinds/kinds.vmx', deltaFormat: 'sesparse' },
  { id: '52', name: 'refuse', vmx: '[datastore1] refuse/refuse.vmx' },
  { id: '53', name: 'vsan', vmx: '[datastore1] vsan/vsan.vmx' },
  { id: '54', name: 'vvol', vmx: '[datastore1] vvol/vvol.vmx' },
)
await h.writeState(st)

const esxi: EsxiDriverInit = {
  ssh: { host: '127.0.0.1', port: h.port, username: h.user, privateKey: h.userKey, hostKeyFingerprint: h.hostKeyFingerprint },
  datastores: { datastore1: { localPath: h.datastore, uuid } },
  verifyTimeoutMs: 5000,
  pollIntervalMs: 50,
  // a loaded test machine runs the stand-in slowly; not a timing assertion
  commandTimeoutMs: 600_000,
}

/**
 * The frozen content of a layer: qemu-img for ordinary disks; a virtual RDM
 * (which qemu does not read) is the LUN image its mapping file presents plus
 * the guest writes the test made since (bookkeeping).
 */
const vrdmWrites: Array<{ offset: number; data: Buffer }> = []
function oracle(layer: string): Buffer {
  if (path.basename(layer).startsWith('kinds_vrdm')) {
    const lun = Buffer.from(execFileSync('cat', [path.join(path.dirname(layer), 'kinds_vrdm-rdm.vmdk')]))
    for (const w of vrdmWrites) w.data.copy(lun, w.offset)
    return lun
  }
  return harnessQemuRaw(layer, localMap, h.dir)
}

async function snapshotsOf(folder: string): Promise<number> {
  const p = path.join(h.datastore, folder, `${folder}.vmsd`)
  if (!existsSync(p)) return 0
  return Number(/snapshot\.numSnapshots = "(\d+)"/.exec(await readFile(p, 'utf8'))?.[1] ?? '0')
}

t.test('classification is pure and reads mode and descriptors', async (t) => {
  const layer = (createType: string, extentNames: string[] = ['x-flat.vmdk']) => ({ path: '/d/x.vmdk', createType, cid: '1', parentCid: 'ffffffff', extents: [], extentTypes: [], extentNames })
  t.equal(classifyDisk(undefined, [layer('vmfs')]).kind, 'disk')
  t.equal(classifyDisk('persistent', [layer('vmfs')]).kind, 'disk')
  t.equal(classifyDisk('independent-persistent', [layer('vmfs')]).kind, 'independent')
  t.equal(classifyDisk('INDEPENDENT-NONPERSISTENT', [layer('vmfs')]).kind, 'independent')
  t.equal(classifyDisk(undefined, [layer('vmfsPassthroughRawDeviceMap')]).kind, 'physical-rdm')
  t.same(classifyDisk(undefined, [layer('seSparse'), layer('vmfsRawDeviceMap')]), { kind: 'virtual-rdm', replicated: true })
  t.match(classifyDisk(undefined, [layer('vsanSparse', ['vsan://52a1/0a1b'])]), { kind: 'object', replicated: false, reason: /vSAN object/ })
  t.match(classifyDisk('independent-persistent', [layer('vmfs', ['vvol://x/y'])]), { kind: 'object', reason: /vVol/ })
})

t.test('independent disks and physical RDMs are skipped with a warning, virtual RDMs replicated; no snapshot left behind', async (t) => {
  for (const n of [1, 2]) {
    let frozen: Buffer[] = []
    const report = await replicate(
      { logger: pino({ level: 'silent' }) },
      {
        vm: 'kinds',
        driver: 'esxi',
        esxi,
        to: `ws://127.0.0.1:${rx.port}`,
        token: TEST_TOKEN,
        stateDir: path.join(h.dir, 'agent-state'),
        progress: 'none',
        trivialMiB: 1,
        certify: 'sha256',
        afterSnapshot: async (vm: VmHandle) => {
          frozen = []
          for (const d of vm.disks) {
            const chain = await openChain(d.path, { pathMap: localMap })
            const parent = chain.layers[1]?.path as string
            await chain.close()
            frozen.push(oracle(parent))
            const data = randomBytes(8192)
            const w = await openWriter(d.path, { pathMap: localMap })
            await w.write(65536 * n, data)
            await w.close()
            if (d.node === 'scsi0:3') vrdmWrites.push({ offset: 65536 * n, data })
          }
        },
      },
    )
    const vr = report.vms[0]
    t.equal(report.ok, true, `cycle ${n}: ${JSON.stringify(vr?.error)}`)
    t.same(
      vr?.disks.map((d) => [d.node, d.mode]),
      [
        ['scsi0:0', n === 1 ? 'seed' : 'incremental'],
        ['scsi0:3', n === 1 ? 'seed' : 'incremental'],
      ],
    )
    t.match(vr?.skippedDisks, [
      { node: 'scsi0:1', fileName: 'kinds_ind.vmdk', kind: 'independent', reason: /independent disk \(mode "independent-persistent"\)/ },
      { node: 'scsi0:2', fileName: 'kinds_prdm.vmdk', kind: 'physical-rdm', reason: /physical-compatibility RDM/ },
      { node: 'scsi0:4', kind: 'independent' },
    ])
    t.same(await readFile(await mirrorFlat(h, 'kinds')), frozen[0], `cycle ${n}: disk mirror = frozen source`)
    t.same(await readFile(await mirrorFlat(h, 'kinds_vrdm')), frozen[1], `cycle ${n}: virtual RDM mirror = frozen source`)
    t.equal(await snapshotsOf('kinds'), 1, 'the VM runs on exactly one grainline snapshot')
    // the skipped disks are untouched: still on their base file, no delta
    const vmx = await readFile(path.join(dirs.kinds, 'kinds.vmx'), 'utf8')
    t.match(vmx, /scsi0:1\.fileName = "kinds_ind\.vmdk"/)
    t.match(vmx, /scsi0:2\.fileName = "kinds_prdm\.vmdk"/)
    t.notMatch(vmx, /scsi0:0\.fileName = "kinds\.vmdk"/, 'the replicated disk runs on a delta')
  }
})

t.test('independentDisks "refuse" refuses the VM before any snapshot', async (t) => {
  const report = await replicate(
    { logger: pino({ level: 'silent' }) },
    { vm: 'refuse', driver: 'esxi', esxi: { ...esxi, independentDisks: 'refuse' }, to: `ws://127.0.0.1:${rx.port}`, token: TEST_TOKEN, stateDir: path.join(h.dir, 'agent-state'), progress: 'none' },
  )
  t.equal(report.ok, false)
  t.match(report.vms[0]?.error, { code: 'E_UNSUPPORTED_DISK', message: /disk scsi0:1 \(kinds_ind\.vmdk\) cannot be replicated: it is an independent disk.*independentDisks is "refuse"/ })
  t.equal(await snapshotsOf('refuse'), 0, 'no snapshot taken')
})

t.test('vSAN and vVol disks are refused naming the disk and the reason, before any snapshot', async (t) => {
  const driver = createEsxiDriver({ logger: pino({ level: 'silent' }) }, esxi)
  t.teardown(() => driver.close())
  await t.rejects(driver.openVm('vsan'), { code: 'E_UNSUPPORTED_DISK', message: /disk scsi0:1 \(vsan_1\.vmdk\) cannot be replicated: its extent "vsan:\/\/52a1b2c3.*is a vSAN object/ })
  await t.rejects(driver.openVm('vvol'), { code: 'E_UNSUPPORTED_DISK', message: /disk scsi0:0 \(vvol\.vmdk\) cannot be replicated: .*is a vVol/ })
  const report = await replicate(
    { logger: pino({ level: 'silent' }) },
    { vm: 'vsan', driver: 'esxi', esxi, to: `ws://127.0.0.1:${rx.port}`, token: TEST_TOKEN, stateDir: path.join(h.dir, 'agent-state'), progress: 'none' },
  )
  t.match(report.vms[0]?.error, { code: 'E_UNSUPPORTED_DISK' })
  t.equal(await snapshotsOf('vsan'), 0, 'no snapshot taken')
})
