/**
 * `snapshot.remove` guards, over a real sshd with the vim-cmd stand-in:
 * the host's usage text is probed once and the pre-5.1 argument order
 * (snapshot id read as removeChildren) refused before any snapshot; a removal
 * that takes the newest grainline snapshot with it is detected; with
 * `consolidate` a removal ESXi did not merge is consolidated and verified.
 */
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { pino } from 'pino'
import { openChain, openWriter } from '@grainline/vmdk'
import { createEsxiDriver, type EsxiDriverInit } from '../src/esxi/esxi-driver.ts'
import { parseRemoveUsage } from '../src/esxi/vim-cmd-output.ts'
import type { VmHandle } from '../src/driver.ts'
import { startSshHarness, qemuRaw as harnessQemuRaw } from './esxi-harness.ts'
import { buildVm } from './esxi-vm-builder.ts'

const h = await startSshHarness()
t.teardown(() => h.stop())
const uuid = '5f1a2b3c-4d5e6f70-8192-a1b2c3d4e5f6'
const dsPathMap = { [`/vmfs/volumes/${uuid}`]: h.datastore, '/vmfs/volumes/datastore1': h.datastore }
const init = (over: Partial<EsxiDriverInit> = {}): EsxiDriverInit => ({
  ssh: { host: '127.0.0.1', port: h.port, username: h.user, privateKey: h.userKey, hostKeyFingerprint: h.hostKeyFingerprint },
  datastores: { datastore1: { localPath: h.datastore, uuid } },
  verifyTimeoutMs: 2000,
  pollIntervalMs: 50,
  commandTimeoutMs: 600_000,
  ...over,
})

for (const [id, folder, stem, extra] of [
  ['71', 'old host', 'oldh', {}],
  ['72', 'too much', 'much', { removeTooMuch: true }],
  ['73', 'consol', 'cons', { skipConsolidation: true }],
] as const) {
  await buildVm(h.datastore, uuid, folder, stem, { sizes: [1024 * 1024] })
  const s = await h.readState()
  s.vms.push({ id, name: folder, vmx: `[datastore1] ${folder}/${stem}.vmx`, ...extra })
  await h.writeState(s)
}

async function guestWrites(vm: VmHandle, seed: number): Promise<void> {
  for (const d of vm.disks) {
    const w = await openWriter(d.path, { pathMap: dsPathMap })
    await w.write(65536 * (seed % 16), randomBytes(16384))
    await w.close()
  }
}

t.test('snapshot.remove usage texts', async (t) => {
  t.equal(parseRemoveUsage('Insufficient arguments.\nUsage: snapshot.remove vmid snapId\n'), 'snapshot-id')
  t.equal(parseRemoveUsage('Usage: snapshot.remove vmid snapshotId [removeChildren]'), 'snapshot-id')
  t.equal(parseRemoveUsage('Usage: snapshot.remove vmid [removeChildren] [snapshotLevel] [snapshotIndex]'), 'pre-5.1')
  t.equal(parseRemoveUsage('Usage: snapshot.remove vmid [snapshotName]'), 'unknown')
  t.equal(parseRemoveUsage(''), 'unknown')
})

t.test('a host whose snapshot.remove takes the pre-5.1 argument order is refused before any snapshot', async (t) => {
  const s = (await h.readState()) as Awaited<ReturnType<typeof h.readState>> & { removeUsage?: string }
  s.removeUsage = 'pre-5.1'
  await h.writeState(s)
  t.teardown(async () => {
    const r = (await h.readState()) as typeof s
    delete r.removeUsage
    await h.writeState(r)
  })
  const driver = createEsxiDriver({ logger: pino({ level: 'silent' }) }, init())
  t.teardown(() => driver.close())
  const vm = await driver.openVm('old host')
  await t.rejects(driver.createSnapshot(vm, 'grainline-1'), {
    code: 'E_HOST_VERSION',
    message: /\[removeChildren\] \[snapshotLevel\] \[snapshotIndex\] \(ESXi before 5\.1\).*ESXi said: Insufficient arguments/s,
  })
  t.same(await driver.listSnapshots(vm), [], 'no snapshot taken')
  await t.rejects(driver.removeSnapshot(vm, { id: '1', name: 'grainline-1', grainline: true, cycle: 1, disks: [] }), { code: 'E_HOST_VERSION' })
})

t.test('a removal that also takes the newest grainline snapshot is detected', async (t) => {
  const driver = createEsxiDriver({ logger: pino({ level: 'silent' }) }, init())
  t.teardown(() => driver.close())
  let vm = await driver.openVm('too much')
  const s1 = await driver.createSnapshot(vm, 'grainline-1')
  vm = await driver.openVm('too much')
  await guestWrites(vm, 1)
  await driver.createSnapshot(vm, 'grainline-2')
  vm = await driver.openVm('too much')
  await t.rejects(driver.removeSnapshot(vm, s1), {
    code: 'E_SNAPSHOT',
    message: /removing snapshot \d+ \("grainline-1"\) removed more than asked: the newest grainline snapshot "grainline-2" \(id \d+\) is gone too/,
  })
})

t.test('consolidate: a removal ESXi did not merge is consolidated and the chain verified', async (t) => {
  const driver = createEsxiDriver({ logger: pino({ level: 'silent' }) }, init({ consolidate: true, verifyTimeoutMs: 500 }))
  t.teardown(() => driver.close())
  let vm = await driver.openVm('consol')
  const base = vm.disks.map((d) => d.path)
  const s1 = await driver.createSnapshot(vm, 'grainline-1')
  vm = await driver.openVm('consol')
  await guestWrites(vm, 2)
  await driver.createSnapshot(vm, 'grainline-2')
  vm = await driver.openVm('consol')
  await guestWrites(vm, 3)
  const before = vm.disks.map((d) => harnessQemuRaw(d.path, dsPathMap, h.dir))
  await driver.removeSnapshot(vm, s1)
  vm = await driver.openVm('consol')
  t.same(
    (await driver.listSnapshots(vm)).map((s) => s.name),
    ['grainline-2'],
  )
  t.equal(await driver.consolidationNeeded(vm), false)
  const chain = await openChain(vm.disks[0]?.path as string, { pathMap: dsPathMap })
  t.same(
    chain.layers.map((l) => l.path),
    [vm.disks[0]?.path, base[0]],
    'running delta on the base: the orphaned delta was merged',
  )
  await chain.close()
  t.same(
    vm.disks.map((d) => harnessQemuRaw(d.path, dsPathMap, h.dir)),
    before,
    'contents unchanged',
  )
})
