/**
 * Snapshot life cycle through the esxi driver, over a real sshd, against the
 * vim-cmd stand-in that makes ESXi's file-level changes with @grainline/vmdk.
 * qemu-img (an independent VMDK implementation) checks the disk contents.
 */
import t from 'tap'
import { existsSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import path from 'node:path'
import { pino } from 'pino'
import { createEsxiDriver, type EsxiDriver, type EsxiDriverInit } from '../src/esxi/esxi-driver.ts'
import type { VmHandle } from '../src/driver.ts'
import { openChain, openWriter } from '@grainline/vmdk'
import { startSshHarness, qemuRaw as harnessQemuRaw } from './esxi-harness.ts'
import { buildVm } from './esxi-vm-builder.ts'

const h = await startSshHarness()
t.teardown(() => h.stop())
const uuid = '5f1a2b3c-4d5e6f70-8192-a1b2c3d4e5f6'

/** The disk as qemu-img sees it, flattened. */
/** what an NFS mount of the datastore gives the agent */
const dsPathMap = { [`/vmfs/volumes/${uuid}`]: h.datastore, '/vmfs/volumes/datastore1': h.datastore }

function qemuRaw(descriptor: string): Buffer {
  return harnessQemuRaw(descriptor, dsPathMap, h.dir)
}

/** Guest writes into the running top of every disk (what the VM would do). */
async function guestWrites(vm: VmHandle, seed: number): Promise<void> {
  for (const d of vm.disks) {
    const w = await openWriter(d.path, { pathMap: dsPathMap })
    try {
      for (let i = 0; i < 6; i++) {
        const off = ((seed * 7919 + i * 104729) % 1800) * 512
        await w.write(off, randomBytes(4096 + 512 * i))
      }
      await w.writeZeroes(64 * 1024 * (seed % 4), 8192)
    } finally {
      await w.close()
    }
  }
}

const init = (over: Partial<EsxiDriverInit> = {}): EsxiDriverInit => ({
  ssh: { host: '127.0.0.1', port: h.port, username: h.user, privateKey: h.userKey, hostKeyFingerprint: h.hostKeyFingerprint },
  datastores: { datastore1: { localPath: h.datastore, uuid } },
  verifyTimeoutMs: 5000,
  pollIntervalMs: 50,
  ...over,
})

async function register(id: string, folder: string, stem: string, extra: Record<string, unknown> = {}): Promise<void> {
  await buildVm(h.datastore, uuid, folder, stem)
  const s = await h.readState()
  s.vms.push({ id, name: folder, vmx: `[datastore1] ${folder}/${stem}.vmx`, ...extra })
  await h.writeState(s)
}

for (const format of ['sesparse', 'vmfssparse'] as const) {
  t.test(`snapshot create / remove with ${format} deltas`, async (t) => {
    const folder = `vm ${format}`
    const stem = `vm-${format}`
    // the vmfsSparse VM gets parent hints as ESXi writes them across folders: /vmfs/volumes/<uuid>/...
    await register(format === 'sesparse' ? '21' : '22', folder, stem, { deltaFormat: format, absoluteHints: format === 'vmfssparse' })
    const driver: EsxiDriver = createEsxiDriver({ logger: pino({ level: 'silent' }) }, init())
    t.teardown(() => driver.close())
    const ext = format === 'sesparse' ? 'sesparse' : 'delta'
    const dir = path.join(h.datastore, folder)

    let vm = await driver.openVm(folder)
    const base = vm.disks.map((d) => d.path)
    const raw0 = base.map(qemuRaw)
    t.same(
      raw0.map((b) => b.length),
      [2 * 1024 * 1024, 1024 * 1024],
    )

    // snapshot 1: the base disks freeze, each disk gets -000001
    const s1 = await driver.createSnapshot(vm, 'grainline-1')
    t.match(s1, { name: 'grainline-1', grainline: true, cycle: 1 })
    t.same(s1.disks, [
      { node: 'scsi0:0', fileName: `${stem}.vmdk` },
      { node: 'scsi0:1', fileName: `/vmfs/volumes/${uuid}/${folder}/${stem}_1.vmdk` },
    ])
    vm = await driver.openVm(folder)
    t.same(
      vm.disks.map((d) => path.basename(d.path)),
      [`${stem}-000001.vmdk`, `${stem}_1-000001.vmdk`],
    )
    for (const d of vm.disks) t.ok(existsSync(d.path.replace(/\.vmdk$/, `-${ext}.vmdk`)), `${path.basename(d.path)} has its -${ext}.vmdk extent`)
    t.match(await readFile(path.join(dir, `${stem}.vmsd`), 'utf8'), /snapshot0\.displayName = "grainline-1"/)
    const hint = /parentFileNameHint="([^"]*)"/.exec(await readFile(vm.disks[0]?.path as string, 'utf8'))?.[1]
    t.equal(hint, format === 'vmfssparse' ? `/vmfs/volumes/${uuid}/${folder}/${stem}.vmdk` : `${stem}.vmdk`)
    t.same(
      vm.disks.map((d) => qemuRaw(d.path)),
      raw0,
      'a fresh delta reads as its parent',
    )

    await guestWrites(vm, 1)
    const raw1 = vm.disks.map((d) => qemuRaw(d.path))
    t.not(raw1[0]?.equals(raw0[0] as Buffer), true, 'the guest writes changed the disk')

    // snapshot 2: -000001 freezes, -000002 on top
    const s2 = await driver.createSnapshot(vm, 'grainline-2')
    vm = await driver.openVm(folder)
    t.same(
      vm.disks.map((d) => path.basename(d.path)),
      [`${stem}-000002.vmdk`, `${stem}_1-000002.vmdk`],
    )
    t.same([path.join(dir, `${stem}-000001.vmdk`), path.join(dir, `${stem}_1-000001.vmdk`)].map(qemuRaw), raw1, 'frozen delta view')
    const listed = await driver.listSnapshots(vm)
    t.same(
      listed.map((s) => [s.id, s.name, s.cycle]),
      [
        [s1.id, 'grainline-1', 1],
        [s2.id, 'grainline-2', 2],
      ],
    )
    t.same(
      listed[1]?.disks.map((d) => d.fileName),
      [`${stem}-000001.vmdk`, `${stem}_1-000001.vmdk`],
    )

    await guestWrites(vm, 2)
    const raw2 = vm.disks.map((d) => qemuRaw(d.path))

    // remove snapshot 1: -000001 merges into the base; -000002 now sits on the base
    await driver.removeSnapshot(vm, s1)
    t.notOk(existsSync(path.join(dir, `${stem}-000001.vmdk`)), 'merged delta deleted')
    t.notOk(existsSync(path.join(dir, `${stem}-000001-${ext}.vmdk`)))
    vm = await driver.openVm(folder)
    t.same(
      vm.disks.map((d) => qemuRaw(d.path)),
      raw2,
      'running view unchanged by the merge',
    )
    t.same(base.map(qemuRaw), raw1, 'the base now holds the frozen point of snapshot 2')
    const chain = await openChain(vm.disks[0]?.path as string, { pathMap: { ...driver.pathMap } })
    t.same(
      chain.layers.map((l) => l.file),
      [`${stem}-000002.vmdk`, `${stem}.vmdk`],
    )
    await chain.close()
    const left = await driver.listSnapshots(vm)
    t.same(
      left.map((s) => s.id),
      [s2.id],
    )
    t.same(
      left[0]?.disks.map((d) => d.fileName),
      [`${stem}.vmdk`, `/vmfs/volumes/${uuid}/${folder}/${stem}_1.vmdk`],
      '.vmsd re-pointed at the surviving parent',
    )

    // remove snapshot 2: the running delta merges, the VM runs on the base again
    await driver.removeSnapshot(vm, left[0] as typeof s2)
    vm = await driver.openVm(folder)
    t.same(
      vm.disks.map((d) => d.path),
      base,
    )
    t.same(base.map(qemuRaw), raw2)
    t.same(await driver.listSnapshots(vm), [])
  })
}

t.test('a failing snapshot.remove leaves the snapshot and a usable chain', async (t) => {
  await register('23', 'vm fail', 'vmf')
  const driver = createEsxiDriver({ logger: pino({ level: 'silent' }) }, init())
  t.teardown(() => driver.close())
  let vm = await driver.openVm('vm fail')
  const s1 = await driver.createSnapshot(vm, 'grainline-1')
  vm = await driver.openVm('vm fail')
  await guestWrites(vm, 3)
  const before = vm.disks.map((d) => qemuRaw(d.path))
  const s = await h.readState()
  const rec = s.vms.find((v) => v.id === '23')
  if (rec !== undefined) rec.fail = { 'snapshot.remove': 'InvalidState' }
  await h.writeState(s)
  await t.rejects(driver.removeSnapshot(vm, s1), { code: 'E_VIM_FAULT', fault: 'vim.fault.InvalidState', vm: 'vm fail', command: `vim-cmd vmsvc/snapshot.remove 23 ${s1.id}` })
  t.same(
    (await driver.listSnapshots(vm)).map((x) => x.id),
    [s1.id],
  )
  t.same(
    vm.disks.map((d) => qemuRaw(d.path)),
    before,
  )
})

t.test('ESXi removes the snapshot but does not merge: consolidation needed', async (t) => {
  await register('24', 'vm cons', 'vmc', { skipConsolidation: true })
  const driver = createEsxiDriver({ logger: pino({ level: 'silent' }) }, init({ verifyTimeoutMs: 500 }))
  t.teardown(() => driver.close())
  let vm = await driver.openVm('vm cons')
  const s1 = await driver.createSnapshot(vm, 'grainline-1')
  vm = await driver.openVm('vm cons')
  await guestWrites(vm, 4)
  const before = vm.disks.map((d) => qemuRaw(d.path))
  const err = (await driver.removeSnapshot(vm, s1).then(
    () => undefined,
    (e: unknown) => e,
  )) as Error
  t.match(err, { code: 'E_CONSOLIDATION_NEEDED', vm: 'vm cons', message: /consolidationNeeded=true/ })
  t.match(err.message, /vmc-000001\.vmdk is still in the chain/)
  t.same(
    vm.disks.map((d) => qemuRaw(d.path)),
    before,
    'the VM keeps a usable chain',
  )
})

t.test('a snapshot.remove that hangs times out; snapshot and chain stay usable; a retry succeeds', async (t) => {
  await register('25', 'vm hang', 'vmh')
  const driver = createEsxiDriver({ logger: pino({ level: 'silent' }) }, init())
  t.teardown(() => driver.close())
  const impatient = createEsxiDriver({ logger: pino({ level: 'silent' }) }, init({ snapshotTimeoutMs: 1500 }))
  t.teardown(() => impatient.close())
  let vm = await driver.openVm('vm hang')
  const s1 = await driver.createSnapshot(vm, 'grainline-1')
  vm = await driver.openVm('vm hang')
  await guestWrites(vm, 5)
  const before = vm.disks.map((d) => qemuRaw(d.path))
  const s = await h.readState()
  const rec = s.vms.find((v) => v.id === '25')
  if (rec !== undefined) rec.hang = { 'snapshot.remove': 60 }
  await h.writeState(s)
  await t.rejects(impatient.removeSnapshot(vm, s1), { code: 'E_TIMEOUT', vm: 'vm hang', command: `vim-cmd vmsvc/snapshot.remove 25 ${s1.id}` })
  t.same(
    (await driver.listSnapshots(vm)).map((x) => x.id),
    [s1.id],
  )
  t.same(
    vm.disks.map((d) => qemuRaw(d.path)),
    before,
  )
  if (rec !== undefined) delete rec.hang
  await h.writeState(s)
  await driver.removeSnapshot(vm, s1)
  vm = await driver.openVm('vm hang')
  t.same(
    vm.disks.map((d) => qemuRaw(d.path)),
    before,
  )
  t.same(await driver.listSnapshots(vm), [])
})

t.test('unknown success output is logged, and the result is verified on disk instead', async (t) => {
  await register('26', 'vm quiet', 'vmq', { quietOutput: true })
  const lines: Array<Record<string, unknown>> = []
  const logger = pino(
    { level: 'debug' },
    {
      write(l: string) {
        lines.push(JSON.parse(l) as Record<string, unknown>)
      },
    },
  )
  const driver = createEsxiDriver({ logger }, init())
  t.teardown(() => driver.close())
  let vm = await driver.openVm('vm quiet')
  const s1 = await driver.createSnapshot(vm, 'grainline-1')
  vm = await driver.openVm('vm quiet')
  t.same(
    vm.disks.map((d) => path.basename(d.path)),
    ['vmq-000001.vmdk', 'vmq_1-000001.vmdk'],
  )
  await driver.removeSnapshot(vm, s1)
  const warned = lines.filter((l) => l.level === 40).map((l) => l.msg)
  t.same(warned, ['unexpected snapshot.create output; verifying the result on disk', 'unexpected snapshot.remove output; verifying the result on disk'])
  t.ok(lines.some((l) => l.msg === 'esxi snapshot removed and consolidation verified'))
})

/** Wait until `cond()` holds (a condition, not a deadline: the cap only turns a hang into a failure). */
async function until(cond: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; !(await cond()); i++) {
    if (i > 6000) throw new Error(`gave up waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** How many snapshot.get polls the stand-in saw while `gate` was closed. */
async function polls(gate: string): Promise<number> {
  try {
    return (await readFile(`${gate}.polls`, 'utf8')).split('\n').filter((l) => l !== '').length
  } catch {
    return 0
  }
}

t.test('changes that reach the mount late: the driver polls; too short a wait is E_SNAPSHOT', async (t) => {
  // the host reports success at once and changes the files only when the test opens a gate:
  // no clock decides who wins
  const gate1 = path.join(h.dir, 'lag-gate-1')
  await register('27', 'vm lag', 'vml', { applyGate: gate1 })
  const driver = createEsxiDriver({ logger: pino({ level: 'silent' }) }, init({ verifyTimeoutMs: 120_000 }))
  t.teardown(() => driver.close())
  let vm = await driver.openVm('vm lag')
  const base = vm.disks.map((d) => d.path)
  const raw0 = base.map(qemuRaw)
  let returned = false
  const creating = driver.createSnapshot(vm, 'grainline-1').finally(() => {
    returned = true
  })
  // success was printed and the driver is polling snapshot.get while the files are unchanged
  await until(async () => (await polls(gate1)) >= 2, 'the driver to poll twice')
  t.notOk(returned, 'createSnapshot has not returned while the change is not visible')
  await writeFile(gate1, '')
  const s1 = await creating
  t.match(s1, { name: 'grainline-1', grainline: true })
  vm = await driver.openVm('vm lag')
  t.same(
    vm.disks.map((d) => path.basename(d.path)),
    ['vml-000001.vmdk', 'vml_1-000001.vmdk'],
  )
  await guestWrites(vm, 6)
  const raw1 = vm.disks.map((d) => qemuRaw(d.path))
  await driver.removeSnapshot(vm, s1)
  vm = await driver.openVm('vm lag')
  t.same(
    vm.disks.map((d) => d.path),
    base,
  )
  t.same(base.map(qemuRaw), raw1)
  t.not(raw1[0]?.equals(raw0[0] as Buffer), true)

  // a closed gate again, and a driver that waits only 100 ms for the change to show
  const gate2 = path.join(h.dir, 'lag-gate-2')
  const s = await h.readState()
  const rec = s.vms.find((v) => v.id === '27')
  if (rec !== undefined) rec.applyGate = gate2
  await h.writeState(s)
  const impatient = createEsxiDriver({ logger: pino({ level: 'silent' }) }, init({ verifyTimeoutMs: 100 }))
  t.teardown(() => impatient.close())
  await t.rejects(impatient.createSnapshot(vm, 'grainline-2'), { code: 'E_SNAPSHOT', vm: 'vm lag', message: /within 100 ms no new snapshot named "grainline-2"/ })
  // the host finishes later; the next look finds a complete chain
  await writeFile(gate2, '')
  await until(async () => (await driver.listSnapshots(vm)).length > 0, 'the late snapshot to show')
  t.same(
    (await driver.listSnapshots(vm)).map((x) => x.name),
    ['grainline-2'],
  )
  await until(async () => (await driver.openVm('vm lag')).disks.every((d) => /-000001\.vmdk$/.test(d.path)), 'the .vmx to run on the new deltas')
  vm = await driver.openVm('vm lag')
  t.same(
    vm.disks.map((d) => qemuRaw(d.path)),
    raw1,
  )
})
