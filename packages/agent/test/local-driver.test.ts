import t from 'tap'
import { existsSync, realpathSync, symlinkSync } from 'node:fs'
import { cp, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { createDelta, openChain } from '@grainline/vmdk'
import { chainOptions, mirrorDiskNames, vmFiles } from '../src/vm-files.ts'
import { createLocalDriver, pinLocalRoots, resolveLocalRoots } from '../src/local-driver.ts'
import { replicate, type ReplicateInit } from '../src/replicate.ts'
import { createSampleVm, simulateGuestWrites } from '../src/sample-vm.ts'
import { parseVmsd } from '../src/vmsd.ts'
import { VmxConfig, vmxDisks } from '../src/vmx.ts'
import { firstDifference, haveReceiver, memoryLogger, MiB, qemuMap, qemuRaw, scratch, startReceiver, TOKEN } from './helpers.ts'

for (const format of ['sesparse', 'vmfssparse', 'hosted'] as const) {
  t.test(`local snapshots with ${format} deltas: create, map, remove = consolidate`, async (t) => {
    const dir = scratch(t)
    const vm = await createSampleVm(dir, { name: 'db 01', disks: [{ sizeBytes: 4 * MiB }, { sizeBytes: 2 * MiB, node: 'sata0:0' }], seed: 3 })
    const driver = createLocalDriver({ deltaFormat: format })
    let h = await driver.openVm(vm.vmxPath)
    t.equal(h.name, 'db 01')
    t.same(
      h.disks.map((d) => d.node),
      ['scsi0:0', 'sata0:0'],
    )
    const rawBase = join(dir, 'base.raw')
    await qemuRaw(vm.disks[0] as string, rawBase)

    const s1 = await driver.createSnapshot(h, 'grainline-1')
    t.match(s1, { name: 'grainline-1', grainline: true, cycle: 1 })
    h = await driver.openVm(vm.vmxPath)
    t.equal(h.disks[0]?.fileName, 'db 01-000001.vmdk', 'the .vmx runs on the new delta')
    t.equal(h.disks[1]?.fileName, 'db 01_1-000001.vmdk')
    const w1 = await simulateGuestWrites(vm.vmxPath, { bytes: 256 * 1024, writeSize: 64 * 1024, seed: 11, zeroFraction: 0.2 })
    // the delta holds exactly what the guest wrote (qemu-img map of the delta: depth 0)
    const map1 = await qemuMap(join(vm.dir, 'db 01-000001.vmdk'))
    for (const w of w1.filter((x) => x.disk.endsWith('db 01-000001.vmdk') && !x.zero)) {
      const covered = map1.filter((m) => m.depth === 0 && m.start <= w.offset && m.start + m.length >= w.offset + w.length)
      t.ok(covered.length === 1 && covered[0]?.data === true, `write at ${w.offset} is in the delta`)
    }
    t.ok(
      map1.some((m) => m.depth === 1),
      'unwritten ranges fall through to the base',
    )
    // the base is untouched by guest writes
    t.equal(await firstDifference(rawBase, await rawOf(dir, vm.disks[0] as string, 'base-after.raw')), -1, 'base unchanged')

    const s2 = await driver.createSnapshot(h, 'grainline-2')
    h = await driver.openVm(vm.vmxPath)
    t.equal(h.disks[0]?.fileName, 'db 01-000002.vmdk')
    await simulateGuestWrites(vm.vmxPath, { bytes: 256 * 1024, seed: 12 })
    let db = parseVmsd(await readFile(join(vm.dir, 'db 01.vmsd'), 'utf8'))
    t.same(
      db.snapshots.map((s) => [s.displayName, s.disks[0]?.fileName, s.disks[0]?.node]),
      [
        ['grainline-1', 'db 01.vmdk', 'scsi0:0'],
        ['grainline-2', 'db 01-000001.vmdk', 'scsi0:0'],
      ],
    )
    t.equal(db.current, Number(s2.id))

    const top = (): string => join(vm.dir, (h.disks[0] as { fileName: string }).fileName)
    const before = await rawOf(dir, top(), 'before.raw')
    const beforeFrozen = await rawOf(dir, join(vm.dir, 'db 01-000001.vmdk'), 'frozen.raw')
    await driver.removeSnapshot(h, s1)
    h = await driver.openVm(vm.vmxPath)
    t.equal(h.disks[0]?.fileName, 'db 01-000002.vmdk', 'the VM keeps running on the newest delta')
    t.equal(await firstDifference(before, await rawOf(dir, top(), 'after.raw')), -1, 'chain content unchanged by consolidation')
    t.equal(await firstDifference(beforeFrozen, await rawOf(dir, vm.disks[0] as string, 'base2.raw')), -1, 'the base now holds the frozen point')
    const chain = await openChain(top())
    t.same(
      chain.layers.map((l) => l.file),
      ['db 01-000002.vmdk', 'db 01.vmdk'],
      'delta re-pointed at the base',
    )
    await chain.close()
    db = parseVmsd(await readFile(join(vm.dir, 'db 01.vmsd'), 'utf8'))
    t.same(
      db.snapshots.map((s) => [s.displayName, s.disks[0]?.fileName, s.parent]),
      [['grainline-2', 'db 01.vmdk', 0]],
    )
    t.notOk(
      (await readdir(vm.dir)).some((f) => f.startsWith('db 01-000001')),
      'merged delta files deleted',
    )

    await driver.removeSnapshot(h, s2)
    h = await driver.openVm(vm.vmxPath)
    t.same(
      h.disks.map((d) => d.fileName),
      ['db 01.vmdk', 'db 01_1.vmdk'],
      'removing the last snapshot merges the running delta',
    )
    t.equal(await firstDifference(before, await rawOf(dir, vm.disks[0] as string, 'final.raw')), -1)
    t.same(await driver.listSnapshots(h), [])
    const cfg = VmxConfig.parse(await readFile(vm.vmxPath, 'utf8'))
    t.equal(cfg.get('ethernet0.networkName'), 'VM Network', 'unknown keys kept')
    t.equal(vmxDisks(cfg).length, 2)
  })
}

t.test('errors', async (t) => {
  const driver = createLocalDriver()
  await t.rejects(driver.openVm(join(scratch(t), 'nope.vmx')), { code: 'E_VM_NOT_FOUND' })
  const dir = scratch(t)
  const vm = await createSampleVm(dir, { name: 'x', disks: [{ sizeBytes: MiB }] })
  const h = await driver.openVm(vm.vmxPath)
  await t.rejects(driver.removeSnapshot(h, { id: '42', name: 'grainline-9', grainline: true, cycle: 9, disks: [] }), { code: 'E_SNAPSHOT' })
  await t.rejects(simulateGuestWrites(vm.vmxPath, { bytes: 4096 }), { code: 'E_SNAPSHOT' }, 'never writes into a base')
  await t.rejects(createSampleVm(dir, { name: 'bad', disks: [{ sizeBytes: 1000 }] }), { code: 'E_CONFIG' })
  const odd = await createSampleVm(dir, { name: 'odd', disks: [{ sizeBytes: 3 * MiB + 3584 }] })
  const oddRaw = join(dir, 'odd.raw')
  await qemuRaw(odd.disks[0] as string, oddRaw)
  t.equal((await readFile(oddRaw)).length, 3 * MiB + 3584, 'a size that is not a MiB multiple works (sectors)')
  // a crash after the .vmsd was written but before the .vmx: the snapshot can still be removed
  const vmxText = await readFile(vm.vmxPath, 'utf8')
  const s = await driver.createSnapshot(h, 'grainline-1')
  await writeFile(vm.vmxPath, vmxText)
  await driver.removeSnapshot(await driver.openVm(vm.vmxPath), s)
  t.same(await driver.listSnapshots(h), [])
  t.same(
    (await driver.openVm(vm.vmxPath)).disks.map((d) => d.fileName),
    ['x.vmdk'],
  )
})

async function rawOf(dir: string, vmdk: string, name: string): Promise<string> {
  const out = join(dir, name)
  await qemuRaw(vmdk, out)
  return out
}

t.test('a disk removed from the VM since a snapshot: removing the snapshot merges the disks the VM still has and leaves the removed one as it is', async (t) => {
  const dir = scratch(t)
  const vm = await createSampleVm(dir, { name: 'rm', disks: [{ sizeBytes: 2 * MiB }, { sizeBytes: MiB, node: 'sata0:1' }], seed: 4 })
  const driver = createLocalDriver()
  const s1 = await driver.createSnapshot(await driver.openVm(vm.vmxPath), 'grainline-1')
  await simulateGuestWrites(vm.vmxPath, { bytes: 128 * 1024, seed: 5 })
  const s2 = await driver.createSnapshot(await driver.openVm(vm.vmxPath), 'grainline-2')
  // the operator removes the second disk from the VM (its lines leave the .vmx; its files stay)
  const vmx = await readFile(vm.vmxPath, 'utf8')
  const removedLines = vmx.split('\n').filter((l) => l.startsWith('sata0:1.'))
  t.ok(removedLines.length > 0)
  await writeFile(
    vm.vmxPath,
    vmx
      .split('\n')
      .filter((l) => !l.startsWith('sata0:1.'))
      .join('\n'),
  )
  const before = await readdir(vm.dir)
  const frozen = await rawOf(dir, join(vm.dir, 'rm-000001.vmdk'), 'frozen.raw')
  const h = await driver.openVm(vm.vmxPath)
  t.same(
    h.disks.map((d) => d.node),
    ['scsi0:0'],
  )
  await driver.removeSnapshot(h, s1)
  t.equal(await firstDifference(frozen, await rawOf(dir, vm.disks[0] as string, 'base.raw')), -1, 'the remaining disk consolidated as before')
  t.same(
    (await driver.listSnapshots(h)).map((s) => s.name),
    ['grainline-2'],
  )
  t.ok(
    before.filter((f) => f.startsWith('rm_1')).every((f) => existsSync(join(vm.dir, f))),
    "the removed disk's files are left as they are",
  )
  await driver.removeSnapshot(await driver.openVm(vm.vmxPath), s2)
  t.same(await driver.listSnapshots(h), [], 'and the next snapshot goes too')
  t.same(
    (await driver.openVm(vm.vmxPath)).disks.map((d) => d.fileName),
    ['rm.vmdk'],
  )
})

t.test('the local driver reads a VM only inside the folder that holds its folder: hostile .vmx, descriptor and nvram names are refused', async (t) => {
  const dir = scratch(t)
  const secret = join(dir, 'secret.txt')
  await writeFile(secret, Buffer.alloc(4 * MiB, 'TOKEN=supersecret\n'))
  const vms = join(dir, 'vms')
  const vm = await createSampleVm(vms, { name: 'web', disks: [{ sizeBytes: 4 * MiB }] })
  const driver = createLocalDriver()
  const good = await readFile(vm.vmxPath, 'utf8')
  const h = await driver.openVm(vm.vmxPath)
  t.same(h.roots, [vms], 'the root: the folder holding the VM folder')
  t.same(await mirrorDiskNames(h, driver), ['web.vmdk'])
  // a .vmx naming a disk off the root: refused at open (a snapshot would create its delta next to it)
  for (const name of ['/etc/hostname', '../../secret.txt']) {
    await writeFile(vm.vmxPath, good.replace('scsi0:0.fileName = "web.vmdk"', `scsi0:0.fileName = "${name}"`))
    const err = (await driver.openVm(vm.vmxPath).then(
      () => undefined,
      (e: unknown) => e,
    )) as Error | undefined
    t.match(err, { name: 'AgentError', code: 'E_VMX', message: /VM web: disk scsi0:0 .*outside the folders this VM's files may be read from.*with --datastore-root DIR/ }, name)
    t.notMatch(err?.message, /map the datastore/, `${name}: one remedy, the local driver's`)
  }
  await writeFile(vm.vmxPath, good)
  // a descriptor whose extent climbs out, or is an absolute path: the chain is refused, naming the descriptor
  const desc = vm.disks[0] as string
  const text = await readFile(desc, 'utf8')
  for (const name of ['../../secret.txt', secret]) {
    await writeFile(desc, text.replace('"web-flat.vmdk"', JSON.stringify(name)))
    const err = (await mirrorDiskNames(await driver.openVm(vm.vmxPath), driver).then(
      () => undefined,
      (e: unknown) => e,
    )) as Error | undefined
    t.match(err, { name: 'VmdkError', code: 'E_OUTSIDE_ROOT', file: desc }, name)
    // the local driver's remedy: its setting, not the esxi driver's datastore mapping
    t.match(
      err?.message,
      /is refused; fix the reference, or, when the file is on another datastore, add the folder it is mounted at with --datastore-root DIR \(job file: "datastoreRoots": \["DIR", …\]\)/,
      `${name}: names --datastore-root`,
    )
    t.notMatch(err?.message, /map the datastore/, `${name}: not the esxi remedy`)
  }
  await writeFile(desc, text)
  // the nvram linked out of the folder is not shipped with the mirror
  await rm(join(vm.dir, 'web.nvram'))
  symlinkSync(secret, join(vm.dir, 'web.nvram'))
  await t.rejects(vmFiles(await driver.openVm(vm.vmxPath), driver), { code: 'E_OUTSIDE_ROOT', message: /through a symbolic link.* is refused; .*--datastore-root DIR/ })
  // an explicit root widens what is read (the folder holding the VM folder stays one)
  const wide = createLocalDriver({ roots: [dir] })
  const files = await vmFiles(await wide.openVm(vm.vmxPath), wide)
  t.same(
    files.map((f) => f.name),
    ['web.vmx', 'web.nvram'],
  )
})

t.test('the local driver: a linked clone whose base is in a sibling VM folder replicates its chain', async (t) => {
  const dir = scratch(t)
  const vms = join(dir, 'vms')
  const base = await createSampleVm(vms, { name: 'base', disks: [{ sizeBytes: 2 * MiB }] })
  const clone = join(vms, 'clone')
  await mkdir(clone)
  await createDelta(base.disks[0] as string, join(clone, 'clone.vmdk'), { format: 'sesparse' })
  t.match(await readFile(join(clone, 'clone.vmdk'), 'utf8'), /parentFileNameHint="\.\.\/base\/base\.vmdk"/)
  await writeFile(join(clone, 'clone.vmx'), 'config.version = "8"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "clone.vmdk"\n')
  const driver = createLocalDriver()
  const h = await driver.openVm(join(clone, 'clone.vmx'))
  t.same(await mirrorDiskNames(h, driver), ['base.vmdk'], 'the chain opens through the sibling folder')
})

t.test('a VM with a disk on a second datastore: refused without its root (E_VMX naming the setting), replicated with it; the folder holding the VM folder stays a root', async (t) => {
  if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')
  const dir = scratch(t)
  const ds1 = join(dir, 'ds1')
  const ds2 = join(dir, 'ds2')
  // /vmfs/volumes/ds1/app/app.vmx and /vmfs/volumes/ds2/app/app_1.vmdk
  const vm = await createSampleVm(ds1, { name: 'app', disks: [{ sizeBytes: 4 * MiB }, { sizeBytes: 3 * MiB, folder: join(ds2, 'app') }], seed: 11 })
  const second = join(ds2, 'app', 'app_1.vmdk')
  t.equal(vm.disks[1], second)
  t.match(await readFile(vm.vmxPath, 'utf8'), `scsi0:1.fileName = "${second}"`, 'the .vmx names the disk by its absolute path')
  await t.rejects(
    createLocalDriver().openVm(vm.vmxPath),
    {
      name: 'AgentError',
      code: 'E_VMX',
      message: new RegExp(`^VM app: disk scsi0:1 .*only below ${ds1} .*add the folder it is mounted at with --datastore-root DIR \\(job file: "datastoreRoots": \\["DIR", …\\]\\)`),
    },
    'without the setting: refused, naming the VM, the disk and the setting',
  )

  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const { logger } = memoryLogger()
  const base: ReplicateInit = { vm: vm.vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'state'), progress: 'none', trivialMiB: 1 }
  const refused = await replicate({ logger }, base)
  t.equal(refused.vms[0]?.error?.code, 'E_VMX', 'replicate() without datastoreRoots: the VM is refused')
  t.notOk(existsSync(join(vm.dir, 'app.vmsd')), 'before any snapshot')

  const h = await createLocalDriver({ roots: [ds2] }).openVm(vm.vmxPath)
  t.same(h.roots, [ds1, ds2], 'the folder holding the VM folder, then the roots given')
  for (let cycle = 1; cycle <= 2; cycle++) {
    if (cycle > 1) await simulateGuestWrites(vm.vmxPath, { bytes: 512 * 1024, seed: cycle, roots: [ds2] })
    const frozen: string[] = []
    const r = await replicate(
      { logger },
      {
        ...base,
        datastoreRoots: [ds2],
        certify: 'sha256',
        // the frozen view of each disk (the layer under the new delta), by qemu-img
        afterSnapshot: async (v) => {
          for (const [i, d] of v.disks.entries()) {
            const chain = await openChain(d.path)
            const layer = chain.layers[1]?.path as string
            await chain.close()
            frozen.push(await rawOf(dir, layer, `c${cycle}-${i}.raw`))
          }
        },
      },
    )
    t.ok(r.ok, `cycle ${cycle}: ${JSON.stringify(r.vms[0]?.error ?? r.vms[0]?.disks.map((d) => d.error))}`)
    t.same(
      r.vms[0]?.disks.map((d) => [d.name, d.certify?.ok]),
      [
        ['app.vmdk', true],
        ['app_1.vmdk', true],
      ],
      `cycle ${cycle}: both disks shipped and certified`,
    )
    for (const [i, name] of ['app', 'app_1'].entries()) {
      t.equal(await firstDifference(join(rx.store, 'app', `${name}-flat.vmdk`), frozen[i] as string), -1, `cycle ${cycle}: mirror of ${name}.vmdk == the frozen source`)
    }
  }
  const running = (await createLocalDriver({ roots: [ds2] }).openVm(vm.vmxPath)).disks[1]?.path as string
  t.equal(dirname(running), join(ds2, 'app'), "the second disk's delta is made on its own datastore")
})

t.test('local driver roots: / (given, through "..", or a link to it) and a root holding the agent\'s own state are refused with E_CONFIG', async (t) => {
  const dir = scratch(t)
  const vm = await createSampleVm(join(dir, 'ds1'), { name: 'db', disks: [{ sizeBytes: MiB }] })
  const toRoot = join(dir, 'to-root')
  symlinkSync('/', toRoot)
  t.throws(() => createLocalDriver({ roots: ['/'] }), { name: 'AgentError', code: 'E_CONFIG', message: /^local driver roots: "\/" is the whole filesystem/ }, '/: at once')
  t.throws(() => createLocalDriver({ roots: [`${dir}/../../..`] }), { name: 'AgentError', code: 'E_CONFIG', message: /contains "\.\."/ }, '"..": at once')
  await t.rejects(resolveLocalRoots([toRoot], '--datastore-root'), { code: 'E_CONFIG', message: new RegExp(`^--datastore-root: ${toRoot} leads to /`) }, 'a link to /')
  await t.rejects(createLocalDriver({ roots: [toRoot] }).openVm(vm.vmxPath), { code: 'E_CONFIG' }, 'a link to /: at the first openVm')
  const state = join(dir, 'state')
  await mkdir(state)
  await t.rejects(
    resolveLocalRoots([dir], 'datastoreRoots', [state]),
    { code: 'E_CONFIG', message: new RegExp(`^datastoreRoots: ${dir} contains the agent's own ${state}`) },
    'a root holding the state dir',
  )
  const { logger } = memoryLogger()
  for (const root of ['/', toRoot, `${dir}/ds1/..`, dir]) {
    const r = await replicate({ logger }, { vm: vm.vmxPath, to: 'wss://127.0.0.1:9', token: TOKEN, stateDir: state, progress: 'none', giveUpMs: 0, datastoreRoots: [root] })
    t.equal(r.vms[0]?.error?.code, 'E_CONFIG', `replicate, datastoreRoots ${root}`)
  }
  // the agent's other files (ownFiles: token, job file, esxi key…): a root that holds one, by name or through a link, fails the VM
  const secrets = join(dir, 'secrets')
  await mkdir(secrets)
  const tokenFile = join(secrets, 'agent.token')
  await writeFile(tokenFile, `${TOKEN}\n`)
  symlinkSync(secrets, join(dir, 'secrets-link'))
  for (const root of [secrets, join(dir, 'secrets-link')]) {
    const r = await replicate({ logger }, { vm: vm.vmxPath, to: 'wss://127.0.0.1:9', token: TOKEN, stateDir: state, progress: 'none', giveUpMs: 0, datastoreRoots: [root], ownFiles: [tokenFile] })
    t.match(
      r.vms[0]?.error,
      { code: 'E_CONFIG', message: `datastoreRoots: ${root} contains the agent's own ${tokenFile} (its state, credentials or settings)` },
      `replicate, the token file in ${root}`,
    )
  }
  t.notOk(existsSync(join(vm.dir, 'db.vmsd')), 'no snapshot was taken')
})

t.test('local driver roots: relative, missing or a file is refused with E_CONFIG before anything is read; a root reached through a link is resolved once', async (t) => {
  const dir = scratch(t)
  const ds2 = join(dir, 'ds2')
  const vm = await createSampleVm(join(dir, 'ds1'), { name: 'db', disks: [{ sizeBytes: MiB }, { sizeBytes: MiB, folder: join(ds2, 'db') }] })
  const file = join(dir, 'a-file')
  await writeFile(file, 'x')
  t.throws(() => createLocalDriver({ roots: ['ds2'] }), { name: 'AgentError', code: 'E_CONFIG', message: /^local driver roots: "ds2" is not an absolute path/ }, 'relative: at once')
  for (const [root, why] of [
    [join(dir, 'nope'), /does not exist/],
    [file, /is not a folder/],
    [join(file, 'sub'), /lies below a file/],
  ] as const) {
    await t.rejects(createLocalDriver({ roots: [root] }).openVm(vm.vmxPath), { name: 'AgentError', code: 'E_CONFIG', message: why }, `${root}: at the first openVm, before the .vmx is read`)
    await t.rejects(resolveLocalRoots([root], '--datastore-root'), { code: 'E_CONFIG', message: new RegExp(`^--datastore-root: ${root}`) })
  }
  await t.rejects(resolveLocalRoots(['./ds2'], 'datastoreRoots'), { code: 'E_CONFIG', message: /^datastoreRoots: "\.\/ds2" is not an absolute path/ })
  // the replicate() API: the VM fails with E_CONFIG before its snapshot or any connection
  const { logger } = memoryLogger()
  for (const root of ['ds2', join(dir, 'nope'), file]) {
    const r = await replicate({ logger }, { vm: vm.vmxPath, to: 'wss://127.0.0.1:9', token: TOKEN, stateDir: join(dir, 'state'), progress: 'none', giveUpMs: 0, datastoreRoots: [root] })
    t.equal(r.vms[0]?.error?.code, 'E_CONFIG', `datastoreRoots ${root}`)
    t.match(r.vms[0]?.error?.message, /^datastoreRoots: /)
  }
  // the esxi driver reads only its esxi.datastores: roots handed to it are refused, not ignored
  const esxiRun = await replicate(
    { logger },
    { vm: 'db01', driver: 'esxi', esxi: {} as never, to: 'wss://127.0.0.1:9', token: TOKEN, stateDir: join(dir, 'state'), progress: 'none', giveUpMs: 0, datastoreRoots: [ds2] },
  )
  t.match(
    esxiRun.vms[0]?.error,
    { code: 'E_CONFIG', message: /^VM db01: datastoreRoots are the local driver's, refused with driver "esxi".* map the datastore in esxi\.datastores/ },
    'replicate(): driver esxi with datastoreRoots',
  )
  t.notOk(existsSync(join(vm.dir, 'db.vmsd')), 'no snapshot was taken')
  // a root given through a symbolic link (a mount point's alias): the link and its target are roots; the .vmx may name either
  const link = join(dir, 'ds2-link')
  symlinkSync(ds2, link)
  t.same(await resolveLocalRoots([link, `${ds2}/`]), [link, ds2], 'the name given and the folder it leads to, once each')
  const viaLink = createLocalDriver({ roots: [link] })
  t.same((await viaLink.openVm(vm.vmxPath)).disks[1]?.path, join(ds2, 'db', 'db_1.vmdk'))
  await writeFile(vm.vmxPath, (await readFile(vm.vmxPath, 'utf8')).replace(`"${join(ds2, 'db', 'db_1.vmdk')}"`, `"${join(link, 'db', 'db_1.vmdk')}"`))
  t.same(await mirrorDiskNames(await viaLink.openVm(vm.vmxPath), viaLink), ['db.vmdk', 'db_1.vmdk'], 'a disk named through the link opens')
})

t.test('local driver roots: pinned once: a link re-pointed between load and a read is refused (E_OUTSIDE_ROOT); the .vmx keeps naming its disks through the link', async (t) => {
  const dir = scratch(t)
  const ds2 = join(dir, 'ds2')
  const vm = await createSampleVm(join(dir, 'ds1'), { name: 'db', disks: [{ sizeBytes: MiB }, { sizeBytes: MiB, folder: join(ds2, 'db') }] })
  // a mount alias of ds2, through which the .vmx names the second disk
  const link = join(dir, 'ds2-link')
  symlinkSync(ds2, link)
  const viaLink = join(link, 'db', 'db_1.vmdk')
  await writeFile(vm.vmxPath, (await readFile(vm.vmxPath, 'utf8')).replace(`"${join(ds2, 'db', 'db_1.vmdk')}"`, `"${viaLink}"`))
  // where the link is re-pointed: a look-alike folder with a disk of the same name (not a root)
  const elsewhere = join(dir, 'elsewhere')
  await cp(ds2, elsewhere, { recursive: true })
  const repoint = async (to: string): Promise<void> => {
    await rm(link)
    symlinkSync(to, link)
  }
  const real = (p: string): string => realpathSync(p)

  const driver = createLocalDriver({ roots: [link] })
  const h = await driver.openVm(vm.vmxPath)
  t.equal(h.disks[1]?.path, viaLink, 'the disk keeps the name the .vmx gives it (never rewritten to the real folder)')
  t.same(h.realRoots, [real(join(dir, 'ds1')), real(ds2)], 'pinned: the real folders at the first openVm')
  t.same(await mirrorDiskNames(h, driver), ['db.vmdk', 'db_1.vmdk'], 'read through the link while it leads to the pinned folder')
  await repoint(elsewhere)
  const moved = { code: 'E_OUTSIDE_ROOT', message: `${viaLink} resolves to ${join(real(elsewhere), 'db', 'db_1.vmdk')} (through a symbolic link), outside the folders` }
  await t.rejects(openChain(viaLink, chainOptions(driver, h)), moved, 're-pointed after the load: the chain is refused, not read from the new target')
  await t.rejects(mirrorDiskNames(h, driver), moved)
  await t.rejects(
    driver.openVm(vm.vmxPath),
    { code: 'E_VMX', message: /^VM db: disk scsi0:1 .*resolves to .*elsewhere.*through a symbolic link/ },
    'a later openVm of the same driver: the root stayed pinned',
  )
  await repoint(ds2)
  t.same(await mirrorDiskNames(h, driver), ['db.vmdk', 'db_1.vmdk'], 'the link back at the pinned folder: read again')

  // pinned at job load (loadJob runs pinLocalRoots): re-pointed before the VM's cycle starts, the VM is refused before its snapshot
  const pinned = await pinLocalRoots([link])
  t.same(pinned, [{ named: link, real: real(ds2) }])
  await repoint(elsewhere)
  const { logger } = memoryLogger()
  const r = await replicate({ logger }, { vm: vm.vmxPath, to: 'wss://127.0.0.1:9', token: TOKEN, stateDir: join(dir, 'state'), progress: 'none', giveUpMs: 0, datastoreRoots: pinned })
  t.match(r.vms[0]?.error, { code: 'E_VMX', message: /disk scsi0:1 .*resolves to .*elsewhere.*through a symbolic link/ }, 'replicate() with the roots pinned at load')
  t.notOk(existsSync(join(vm.dir, 'db.vmsd')), 'no snapshot was taken')
})

t.test("local driver roots: a root that is the agent's state dir or lies inside it (by name, through a link, by real path) fails the VM with E_CONFIG at its start", async (t) => {
  const dir = scratch(t)
  const vm = await createSampleVm(join(dir, 'ds1'), { name: 'db', disks: [{ sizeBytes: MiB }] })
  const state = join(dir, 'state')
  await mkdir(join(state, 'ds'), { recursive: true })
  symlinkSync(join(state, 'ds'), join(dir, 'ds-link'))
  symlinkSync(state, join(dir, 'state-link'))
  const remedy = 'give the folder a datastore is mounted at (e.g. /vmfs/volumes/ds2 or /mnt/nfs/ds2)'
  const inside = (setting: string, root: string): string =>
    `${setting}: ${root} lies inside the agent's own ${state} (its state: cycle records, snapshot lists, locks), whose files a .vmx or descriptor could then name as disks and ship: ${remedy}, one outside the agent's state dir`
  const { logger } = memoryLogger()
  const cases: Array<[string, Partial<ReplicateInit>, string]> = [
    ['by name', { stateDir: state, datastoreRoots: [join(state, 'ds')] }, inside('datastoreRoots', join(state, 'ds'))],
    ['through a link to a folder in it', { stateDir: state, datastoreRoots: [join(dir, 'ds-link')] }, inside('datastoreRoots', join(dir, 'ds-link'))],
    ['the state dir named through a link (its real path)', { stateDir: join(dir, 'state-link'), datastoreRoots: [join(state, 'ds')] }, inside('datastoreRoots', join(state, 'ds'))],
    // pinned at load (loadJob's pair) and named as loadJob names it: checked again at the VM's start
    [
      'pinned at load, named by its flag',
      { stateDir: state, datastoreRoots: [{ named: join(dir, 'ds-link'), real: realpathSync(join(dir, 'ds-link')) }], datastoreRootsSource: '--datastore-root' },
      inside('--datastore-root', join(dir, 'ds-link')),
    ],
    [
      'the state dir itself',
      { stateDir: state, datastoreRoots: [state] },
      `datastoreRoots: ${state} is the agent's own ${state} (its state, credentials or settings), which a descriptor could then name and ship: ${remedy}, one that holds no agent file and lies outside the agent's state dir`,
    ],
  ]
  for (const [what, init, message] of cases) {
    const r = await replicate({ logger }, { vm: vm.vmxPath, to: 'wss://127.0.0.1:9', token: TOKEN, progress: 'none', giveUpMs: 0, ...init })
    t.match(r.vms[0]?.error, { code: 'E_CONFIG', message }, what)
    t.equal(r.vms[0]?.error?.message, message, `${what}: the whole message`)
  }
  await t.rejects(pinLocalRoots([join(dir, 'ds-link')], '--datastore-root', [state]), { code: 'E_CONFIG', message: inside('--datastore-root', join(dir, 'ds-link')) }, 'pinLocalRoots')
  t.notOk(existsSync(join(vm.dir, 'db.vmsd')), 'no snapshot was taken')
  t.same(await readdir(join(state, 'ds')), [], 'nothing written in the root')
})

t.test(
  "the folder that holds the VM's folder holding the agent's state dir or job file is not read: a .vmx, link or descriptor naming the agent's file is refused, the VM's own folder is its root",
  async (t) => {
    const dir = scratch(t)
    // /srv/vms/.grainline (the state dir) beside /srv/vms/x/x.vmx
    const vms = join(dir, 'vms')
    const vm = await createSampleVm(vms, { name: 'x', disks: [{ sizeBytes: MiB }] })
    const state = join(vms, '.grainline')
    await mkdir(state)
    await writeFile(join(state, 'records.bin'), Buffer.alloc(MiB, 'a cycle record of the agent\n'))
    const { logger } = memoryLogger()
    const run = async (init: Partial<ReplicateInit> = {}) =>
      (await replicate({ logger }, { vm: vm.vmxPath, to: 'wss://127.0.0.1:9', token: TOKEN, stateDir: state, progress: 'none', giveUpMs: 0, ...init })).vms[0]?.error
    const onlyBelow = (held: string): string =>
      `The local driver reads a VM's files only below ${vm.dir} (the VM's own folder: the one that holds it, ${vms}, holds the agent's own ${held} and is not read, and the datastore roots given)`
    const good = await readFile(vm.vmxPath, 'utf8')
    symlinkSync('../.grainline/records.bin', join(vm.dir, 'linked.vmdk'))
    for (const name of ['../.grainline/records.bin', join(state, 'records.bin'), 'linked.vmdk']) {
      await writeFile(vm.vmxPath, good.replace('scsi0:0.fileName = "x.vmdk"', `scsi0:0.fileName = "${name}"`))
      const err = await run()
      t.match(err, { code: 'E_VMX', message: `VM x: disk scsi0:0 (${JSON.stringify(name)} in ${vm.vmxPath}): ` }, `.vmx naming ${name}: refused at open`)
      t.match(err?.message, onlyBelow(state), `${name}: the message says why the folder that holds the VM's folder is not read`)
    }
    await writeFile(vm.vmxPath, good)
    // a descriptor whose extent is the state dir's file: the chain is refused before any connection
    const desc = vm.disks[0] as string
    const text = await readFile(desc, 'utf8')
    await writeFile(desc, text.replace('"x-flat.vmdk"', '"../.grainline/records.bin"'))
    const err = await run()
    t.match(err, { code: 'E_OUTSIDE_ROOT', message: /records\.bin lies, outside the folders this VM's files may be read from/ }, 'a descriptor naming the state dir file')
    t.match(err?.message, `${vms}, the folder that holds the VM's folder, is not read: it holds the agent's own ${state}; move that out of it to read the VM's sibling folders`)
    await writeFile(desc, text)
    // a job or token file kept next to the VM folders (the state dir elsewhere): the same
    const jobFile = join(vms, 'job.json')
    await writeFile(jobFile, '{"vms": []}\n')
    await writeFile(vm.vmxPath, good.replace('scsi0:0.fileName = "x.vmdk"', 'scsi0:0.fileName = "../job.json"'))
    const jobErr = await run({ stateDir: join(dir, 'state'), ownFiles: [jobFile] })
    t.match(jobErr, { code: 'E_VMX', message: onlyBelow(jobFile) }, 'a .vmx naming the job file beside the VM folders')
    await writeFile(vm.vmxPath, good)
    t.notOk(existsSync(join(vm.dir, 'x.vmsd')), 'no snapshot was taken')
    // the driver: the VM's own folder is the root (pinned with its real path), the VM's files read as before
    const driver = createLocalDriver({ protect: [state] })
    const h = await driver.openVm(vm.vmxPath)
    t.same([h.roots, h.realRoots], [[vm.dir], [realpathSync(vm.dir)]], 'the root: the VM folder')
    t.same(await mirrorDiskNames(h, driver), ['x.vmdk'])
    t.same(
      (await vmFiles(h, driver)).map((f) => f.name),
      ['x.vmx', 'x.nvram'],
    )
    t.same((await createLocalDriver().openVm(vm.vmxPath)).roots, [vms], 'nothing protected: the folder that holds the VM folder, as before')
  },
)

t.test(
  'a VM whose own folder holds an agent file, is the state dir or lies inside it (by name, through a link) fails with E_CONFIG at its start, naming the VM, the folder and the file',
  async (t) => {
    const dir = scratch(t)
    const state = join(dir, 'state')
    const inState = await createSampleVm(join(state, 'vms'), { name: 'y', disks: [{ sizeBytes: MiB }] })
    const isState = await createSampleVm(dir, { name: 'state', disks: [{ sizeBytes: MiB }] })
    const holder = await createSampleVm(join(dir, 'vms'), { name: 'z', disks: [{ sizeBytes: MiB }] })
    const tokenFile = join(holder.dir, 'agent.token')
    await writeFile(tokenFile, `${TOKEN}\n`)
    symlinkSync(state, join(dir, 'state-link'))
    const { logger } = memoryLogger()
    const inside = (vm: string, vmxPath: string, folder: string, how: string): string =>
      `VM ${vm} (${vmxPath}): its folder ${folder} ${how} the agent's own ${state} (its state: cycle records, snapshot lists, locks), whose files a .vmx or descriptor could then name as disks and ship: nothing of the VM is read; keep the VM's folder out of the agent's state dir, or give the agent another one with --state-dir / "stateDir"`
    const cases: Array<[string, string, Partial<ReplicateInit>, string]> = [
      ['a VM inside the state dir', inState.vmxPath, { stateDir: state }, inside('y', inState.vmxPath, inState.dir, 'lies inside')],
      ['the state dir named through a link (its real path)', inState.vmxPath, { stateDir: join(dir, 'state-link') }, inside('y', inState.vmxPath, inState.dir, 'lies inside')],
      ['the .vmx in the state dir itself', isState.vmxPath, { stateDir: state }, inside('state', isState.vmxPath, state, 'is')],
      [
        'the token file in the VM folder',
        holder.vmxPath,
        { stateDir: join(dir, 'elsewhere'), ownFiles: [tokenFile] },
        `VM z (${holder.vmxPath}): its folder ${holder.dir} contains the agent's own ${tokenFile} (its state, credentials or settings), which a .vmx or descriptor could then name as a disk and ship: nothing of the VM is read; move ${tokenFile} out of ${holder.dir} (the state dir with --state-dir / "stateDir"; a token, key, CA or job file elsewhere)`,
      ],
    ]
    for (const [what, vmxPath, init, message] of cases) {
      const r = await replicate({ logger }, { vm: vmxPath, to: 'wss://127.0.0.1:9', token: TOKEN, progress: 'none', giveUpMs: 0, ...init })
      t.match(r.vms[0]?.error, { code: 'E_CONFIG' }, what)
      t.equal(r.vms[0]?.error?.message, message, `${what}: the whole message`)
    }
    await t.rejects(createLocalDriver({ protect: [state] }).openVm(inState.vmxPath), { name: 'AgentError', code: 'E_CONFIG' }, 'the driver, at openVm')
    for (const vm of [inState, isState, holder]) t.notOk(existsSync(vm.vmxPath.replace(/\.vmx$/, '.vmsd')), `${vm.vmxPath}: no snapshot was taken`)
  },
)

t.test(
  "replicated with the state dir and token file beside the VM folders, a descriptor naming a state dir file is not shipped; a linked clone's sibling base is refused there (E_OUTSIDE_ROOT saying why) and replicated with the state dir elsewhere",
  async (t) => {
    if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')
    const dir = scratch(t)
    const vms = join(dir, 'vms')
    const vm = await createSampleVm(vms, { name: 'web', disks: [{ sizeBytes: 2 * MiB }], seed: 5 })
    const base = await createSampleVm(vms, { name: 'base', disks: [{ sizeBytes: 2 * MiB }], seed: 6 })
    const clone = join(vms, 'clone')
    await mkdir(clone)
    await createDelta(base.disks[0] as string, join(clone, 'clone.vmdk'), { format: 'sesparse' })
    await writeFile(join(clone, 'clone.vmx'), 'config.version = "8"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "clone.vmdk"\n')
    const tokenFile = join(vms, 'agent.token')
    await writeFile(tokenFile, `${TOKEN}\n`)
    const rx = await startReceiver(join(dir, 'rx'))
    t.teardown(() => rx.stop())
    const { logger } = memoryLogger()
    const beside: ReplicateInit = { vm: vm.vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(vms, '.grainline'), ownFiles: [tokenFile], progress: 'none', trivialMiB: 1, certify: 'sha256' }
    for (let cycle = 1; cycle <= 2; cycle++) {
      if (cycle > 1) await simulateGuestWrites(vm.vmxPath, { bytes: 256 * 1024, seed: cycle })
      const r = await replicate({ logger }, beside)
      t.ok(r.ok, `cycle ${cycle}: ${JSON.stringify(r.vms[0]?.error ?? r.vms[0]?.disks.map((d) => d.error))}`)
      t.same(
        r.vms[0]?.disks.map((d) => [d.name, d.certify?.ok]),
        [['web.vmdk', true]],
        `cycle ${cycle}: shipped and certified`,
      )
    }
    // a VM beside them whose descriptor's extent is a file of the agent's state dir (as large as the disk): nothing shipped
    const evil = await createSampleVm(vms, { name: 'evil', disks: [{ sizeBytes: MiB }], seed: 7 })
    const record = join(vms, '.grainline', 'record.bin')
    await writeFile(record, Buffer.alloc(MiB, 'a record of the agent\n'))
    const desc = evil.disks[0] as string
    await writeFile(desc, (await readFile(desc, 'utf8')).replace('"evil-flat.vmdk"', '"../.grainline/record.bin"'))
    const hostile = await replicate({ logger }, { ...beside, vm: evil.vmxPath })
    t.match(hostile.vms[0]?.error, { code: 'E_OUTSIDE_ROOT', message: /record\.bin lies, outside the folders/ }, 'a descriptor naming a state dir file: the VM fails')
    t.notOk(existsSync(join(rx.store, 'evil')), 'nothing of it reached the receiver')
    const refused = await replicate({ logger }, { ...beside, vm: join(clone, 'clone.vmx') })
    t.match(
      refused.vms[0]?.error,
      {
        code: 'E_OUTSIDE_ROOT',
        message: `${vms}, the folder that holds the VM's folder, is not read: it holds the agent's own ${join(vms, '.grainline')}; move that out of it to read the VM's sibling folders (a linked clone's base)`,
      },
      "the clone's base in a sibling folder: refused, saying why",
    )
    const elsewhere = await replicate({ logger }, { ...beside, vm: join(clone, 'clone.vmx'), stateDir: join(dir, 'state'), ownFiles: [] })
    t.ok(elsewhere.ok, `the state dir elsewhere: the clone replicates ${JSON.stringify(elsewhere.vms[0]?.error)}`)
    t.same(
      elsewhere.vms[0]?.disks.map((d) => [d.name, d.certify?.ok]),
      [['base.vmdk', true]],
    )
  },
)
