import t from 'tap'
import { readFile, readdir, stat } from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import path from 'node:path'
import { pino } from 'pino'
import { createEsxiDriver, type EsxiDriverInit } from '../src/esxi/esxi-driver.ts'
import { startSshHarness } from './esxi-harness.ts'
import { buildVm } from './esxi-vm-builder.ts'

const h = await startSshHarness()
t.teardown(() => h.stop())
const uuid = '5f1a2b3c-4d5e6f70-8192-a1b2c3d4e5f6'
const vmA = await buildVm(h.datastore, uuid, 'web 01', 'web 01')
const vmB = await buildVm(h.datastore, uuid, "db (prod) it's", 'db')
const state = await h.readState()
state.vms.push(
  { id: '7', name: 'web 01', vmx: '[datastore1] web 01/web 01.vmx', annotation: 'front end\nowner: ops\n\n  ticket 42' },
  { id: '12', name: "db (prod) it's/2", vmx: "[datastore1] db (prod) it's/db.vmx" },
  { id: '13', name: 'dup', vmx: '[datastore1] web 01/web 01.vmx' },
  { id: '14', name: 'dup', vmx: '[datastore1] web 01/web 01.vmx' },
  { id: '15', name: 'elsewhere', vmx: '[datastore9] x/x.vmx' },
  // a name that looks like a File column (ESXi escapes only % / \ in names): the row's file cannot be told
  { id: '16', name: 'evil [datastore1] victim.vmx g vmx-1', vmx: '[datastore1] web 01/web 01.vmx' },
)
await h.writeState(state)

const init = (over: Partial<EsxiDriverInit> = {}): EsxiDriverInit => ({
  ssh: { host: '127.0.0.1', port: h.port, username: h.user, privateKey: h.userKey, hostKeyFingerprint: h.hostKeyFingerprint },
  datastores: { datastore1: { localPath: h.datastore, uuid } },
  verifyTimeoutMs: 3000,
  pollIntervalMs: 50,
  ...over,
})
const silent = { logger: pino({ level: 'silent' }) }

t.test('finds VMs by name (spaces, quotes, escaped /) and by id; reads the .vmx through the map', async (t) => {
  const d = createEsxiDriver(silent, init())
  t.teardown(() => d.close())
  const a = await d.openVm('web 01')
  t.equal(a.id, '7')
  t.equal(a.name, 'web 01')
  t.equal(a.vmxPath, vmA.vmxPath)
  t.equal(a.dir, path.dirname(vmA.vmxPath))
  t.same(
    a.disks.map((x) => [x.node, x.path]),
    [
      ['scsi0:0', vmA.disks[0]],
      ['scsi0:1', vmA.disks[1]],
    ],
  )
  t.equal(a.disks[1]?.fileName, `/vmfs/volumes/${uuid}/web 01/web 01_1.vmdk`)
  t.equal(a.datastoreType, 'vmfs')
  const byId = await d.openVm('7')
  t.equal(byId.vmxPath, vmA.vmxPath)
  const b = await d.openVm("db (prod) it's/2")
  t.equal(b.id, '12')
  t.equal(b.vmxPath, vmB.vmxPath)
  t.equal(d.resolvePath(b, `[datastore1] iso/boot.iso`), path.join(h.datastore, 'iso/boot.iso'))
  t.same(d.pathMap, { '/vmfs/volumes/datastore1': h.datastore, [`/vmfs/volumes/${uuid}`]: h.datastore })
  const vms = await d.listVms()
  t.equal(vms.find((v) => v.id === '7')?.annotation, 'front end\nowner: ops\n\n  ticket 42', 'a multi-line annotation survives the trip')
  t.same(
    vms.map((v) => v.id),
    ['7', '12', '13', '14', '15', '16'],
  )
  t.same(await d.listSnapshots(a), [])
})

/** path → size, mtime and sha1 of every file under a folder */
async function fingerprintTree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {}
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue
    const p = path.join(e.parentPath, e.name)
    const st = await stat(p)
    out[p] = `${st.size}:${st.mtimeMs}:${createHash('sha1')
      .update(await readFile(p))
      .digest('hex')}`
  }
  return out
}

t.test('reading a VM writes nothing on the datastore', async (t) => {
  const before = await fingerprintTree(h.datastore)
  const d = createEsxiDriver(silent, init())
  t.teardown(() => d.close())
  const a = await d.openVm('web 01')
  await d.listVms()
  await d.listSnapshots(a)
  await d.snapshotTree(a)
  t.equal(await d.consolidationNeeded(a), false)
  t.same(await fingerprintTree(h.datastore), before)
  t.ok(Object.keys(before).length >= 8)
})

t.test('unknown VM, ambiguous name, unmapped datastore, stale id', async (t) => {
  const d = createEsxiDriver(silent, init())
  t.teardown(() => d.close())
  await t.rejects(d.openVm('nope'), { code: 'E_VM_NOT_FOUND', host: '127.0.0.1', vm: 'nope', message: /no VM named or numbered "nope".*7:"web 01"/ })
  await t.rejects(d.openVm('999'), { code: 'E_VM_NOT_FOUND' })
  await t.rejects(d.openVm('dup'), { code: 'E_VM_AMBIGUOUS', message: /13, 14/ })
  await t.rejects(d.openVm('elsewhere'), { code: 'E_DATASTORE', vm: 'elsewhere', message: /"datastore9".*not in the datastore map/ })
  await t.rejects(d.openVm('16'), {
    code: 'E_VM_AMBIGUOUS',
    vm: '16',
    message: /the getallvms row of VM 16 \("evil"\) cannot be read safely: its line holds 2 .*rename the VM/,
  })
  // the VM disappears from the inventory after it was opened: vim-cmd prints a NotFound fault
  const a = await d.openVm('web 01')
  await t.rejects(d.listSnapshots({ ...a, id: '4242' }), {
    code: 'E_VM_NOT_FOUND',
    fault: 'vim.fault.NotFound',
    command: 'vim-cmd vmsvc/snapshot.get 4242',
    esxiMessage: 'Unable to find a VM corresponding to "4242"',
  })
})

t.test('a failing snapshot.create is a typed error naming host, VM, command and ESXi message; nothing changes', async (t) => {
  const s = await h.readState()
  const vm = s.vms.find((v) => v.id === '12')
  if (vm !== undefined) vm.fail = { 'snapshot.create': 'InvalidState' }
  await h.writeState(s)
  const d = createEsxiDriver(silent, init())
  t.teardown(() => d.close())
  const b = await d.openVm('12')
  const vmxBefore = await readFile(vmB.vmxPath, 'utf8')
  const err = (await d.createSnapshot(b, 'grainline-1').then(
    () => undefined,
    (e: unknown) => e,
  )) as Error & Record<string, unknown>
  t.match(err, { name: 'EsxiError', code: 'E_VIM_FAULT', fault: 'vim.fault.InvalidState', host: '127.0.0.1', vm: '12' })
  t.match(err.message, /host 127\.0\.0\.1/)
  t.match(err.message, /VM "12"/)
  t.match(err.message, /command: vim-cmd vmsvc\/snapshot\.create 12 grainline-1 'grainline replication snapshot' 0 0/)
  t.match(err.message, /ESXi said: An error occurred while taking a snapshot/)
  t.equal(await readFile(vmB.vmxPath, 'utf8'), vmxBefore)
  t.same(await d.listSnapshots(b), [])
})

t.test('a snapshot.create that hangs times out; the VM keeps its chain; later commands work', async (t) => {
  const s = await h.readState()
  const vm = s.vms.find((v) => v.id === '12')
  if (vm !== undefined) {
    delete vm.fail
    vm.hang = { 'snapshot.create': 60 }
  }
  await h.writeState(s)
  const d = createEsxiDriver(silent, init({ snapshotTimeoutMs: 800 }))
  t.teardown(() => d.close())
  const b = await d.openVm('12')
  const vmxBefore = await readFile(vmB.vmxPath, 'utf8')
  // the stand-in hangs 60 s and would then succeed: E_TIMEOUT proves the 800 ms timeout fired (no clock asserted)
  await t.rejects(d.createSnapshot(b, 'grainline-1'), { code: 'E_TIMEOUT', vm: '12', message: /snapshot\.create/ })
  t.equal(await readFile(vmB.vmxPath, 'utf8'), vmxBefore)
  t.same(await d.listSnapshots(b), [])
})

t.test('quiesce is passed as the fifth snapshot.create argument', async (t) => {
  const d = createEsxiDriver(silent, init({ quiesce: true, description: 'nightly DR' }))
  t.teardown(() => d.close())
  const a = await d.openVm('web 01')
  // the stand-in refuses quiesced snapshots, so the fault names the exact command
  await t.rejects(d.createSnapshot(a, 'grainline-5'), { code: 'E_VIM_FAULT', command: "vim-cmd vmsvc/snapshot.create 7 grainline-5 'nightly DR' 0 1" })
})

t.test('a connection lost during a command is E_SSH_CONNECT; the driver reconnects', async (t) => {
  const s = await h.readState()
  const vm = s.vms.find((v) => v.id === '12')
  if (vm !== undefined) vm.hang = { 'snapshot.create': 60 }
  await h.writeState(s)
  const d = createEsxiDriver(silent, init())
  t.teardown(() => d.close())
  const b = await d.openVm('12')
  const pending = d.createSnapshot(b, 'grainline-1').then(
    () => undefined,
    (e: unknown) => e,
  )
  // wait until the stand-in hangs (the hang starts after the snapshot.get that precedes the create)
  for (let i = 0; i < 200 && !execFileSync('ps', ['-eo', 'args']).toString().includes('snapshot.create 12'); i++) await new Promise((resolve) => setTimeout(resolve, 25))
  t.ok(h.dropConnections() >= 1)
  t.match(await pending, { code: 'E_SSH_CONNECT', vm: '12' })
  t.same(await d.listSnapshots(b), [], 'a new connection serves the next call')
})

t.test('removing a snapshot that is not there', async (t) => {
  const d = createEsxiDriver(silent, init())
  t.teardown(() => d.close())
  const a = await d.openVm('web 01')
  await t.rejects(d.removeSnapshot(a, { id: '77', name: 'grainline-9', grainline: true, cycle: 9, disks: [] }), { code: 'E_SNAPSHOT_NOT_FOUND', vm: 'web 01' })
})

t.test('host-key mismatch and a refused key fail the first operation with typed errors', async (t) => {
  const wrongFp = 'SHA256:' + Buffer.alloc(32, 7).toString('base64').replace(/=+$/, '')
  const d1 = createEsxiDriver(silent, init({ ssh: { host: '127.0.0.1', port: h.port, username: h.user, privateKey: h.userKey, hostKeyFingerprint: wrongFp } }))
  const err = (await d1.openVm('web 01').then(
    () => undefined,
    (e: unknown) => e,
  )) as Error
  t.match(err, { code: 'E_HOST_KEY', host: '127.0.0.1' })
  t.match(err.message, wrongFp)
  t.match(err.message, h.hostKeyFingerprint)
  await d1.close()
  const d2 = createEsxiDriver(silent, init({ ssh: { host: '127.0.0.1', port: h.port, username: h.user, privateKey: h.otherKey, hostKeyFingerprint: h.hostKeyFingerprint } }))
  await t.rejects(d2.openVm('web 01'), { code: 'E_SSH_AUTH' })
  // a failed connect is not cached: the next call tries again (and fails again)
  await t.rejects(d2.listVms(), { code: 'E_SSH_AUTH' })
  await d2.close()
})

t.test('configuration errors', async (t) => {
  t.throws(() => createEsxiDriver(silent, init({ datastores: { ds: 'relative' } })), { code: 'E_CONFIG' })
  const d = createEsxiDriver(silent, init({ ssh: { host: '127.0.0.1', port: h.port, username: h.user, privateKey: h.userKey, hostKeyFingerprint: 'md5:xx' } }))
  await t.rejects(d.openVm('web 01'), { code: 'E_CONFIG' })
  await d.close()
  await d.close()
})
