/**
 * Full cycles against the REAL receiver process over TLS: seed and incremental
 * cycles for every delta kind with a guest writing during the cycles; after each
 * cycle the mirror equals `qemu-img convert -O raw` of the frozen source view.
 */
import t from 'tap'
import { readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { mkdir, open as openFile } from 'node:fs/promises'
import { createFlatDisk, openChain } from '@grainline/vmdk'
import { replicate, type ReplicateInit } from '../src/replicate.ts'
import { createLocalDriver } from '../src/local-driver.ts'
import { createSampleVm, simulateGuestWrites } from '../src/sample-vm.ts'
import type { VmHandle } from '../src/driver.ts'
import { firstDifference, haveReceiver, memoryLogger, MiB, qemuRaw, startReceiver, TOKEN, scratch } from './helpers.ts'

if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')

/** Record the frozen view of every disk (qemu-img, the oracle) right after the snapshot. */
async function recordFrozen(vm: VmHandle, dir: string, tag: string): Promise<Map<string, string>> {
  const out = new Map<string, string>()
  for (const d of vm.disks) {
    const chain = await openChain(d.path)
    const frozen = chain.layers[1]?.path
    const base = chain.layers[chain.layers.length - 1]?.file as string
    await chain.close()
    if (frozen === undefined) throw new Error('no frozen layer')
    const raw = join(dir, `${tag}-${base}.raw`)
    await qemuRaw(frozen, raw)
    out.set(base, raw)
  }
  return out
}

function mirrorFlat(store: string, vm: string, base: string): string {
  return join(store, vm, base.replace(/\.vmdk$/, '') + '-flat.vmdk')
}

for (const format of ['sesparse', 'vmfssparse', 'hosted'] as const) {
  t.test(`seed + incremental cycles with ${format} deltas, guest writing during cycles`, async (t) => {
    const dir = scratch(t)
    const rx = await startReceiver(join(dir, 'rx'))
    t.teardown(() => rx.stop())
    const vm = await createSampleVm(dir, { name: 'web 01', disks: [{ sizeBytes: 8 * MiB }, { sizeBytes: 3 * MiB, node: 'nvme0:0' }], seed: 5 })
    const { logger } = memoryLogger()
    for (let cycle = 1; cycle <= 3; cycle++) {
      let frozen = new Map<string, string>()
      const init: ReplicateInit = {
        vm: vm.vmxPath,
        to: rx.url,
        token: TOKEN,
        ca: rx.ca,
        stateDir: join(dir, 'agent-state'),
        deltaFormat: format,
        certify: 'sha256',
        trivialMiB: 2,
        progress: 'none',
        maxExtentBytes: 256 * 1024,
        afterSnapshot: async (h) => {
          frozen = await recordFrozen(h, dir, `c${cycle}`)
          await simulateGuestWrites(h.vmxPath, { bytes: 384 * 1024, writeSize: 64 * 1024, seed: 100 + cycle, zeroFraction: 0.25 })
        },
      }
      const report = await replicate({ logger }, init)
      const v = report.vms[0]
      t.ok(report.ok, `cycle ${cycle} ok ${JSON.stringify(v?.error ?? v?.disks.map((d) => d.error))}`)
      t.equal(v?.cycle, cycle)
      t.equal(v?.disks.length, 2)
      for (const d of v?.disks ?? []) {
        t.equal(d.mode, cycle === 1 ? 'seed' : 'incremental', `${d.name} mode`)
        t.equal(d.trivial?.ok, true)
        t.equal(d.certify?.ok, true)
        const raw = frozen.get(d.name) as string
        t.equal(await firstDifference(mirrorFlat(rx.store, 'web 01', d.name), raw), -1, `cycle ${cycle} ${d.name}: mirror == qemu-img convert of the frozen view`)
        if (cycle > 1) t.ok(d.dataBytes + d.zeroBytes <= 2 * 1024 * 1024, `incremental ships the change only (${d.dataBytes}+${d.zeroBytes} bytes)`)
        if (cycle === 1) t.ok(d.zeroBytes > 0, 'zero ranges travel as zero extents')
      }
      t.same(v?.removedSnapshots, cycle === 1 ? [] : [`grainline-${cycle - 1}`], 'the older snapshot was consolidated')
      const h = await createLocalDriver().openVm(vm.vmxPath)
      const snaps = await createLocalDriver().listSnapshots(h)
      t.same(
        snaps.map((s) => s.name),
        [`grainline-${cycle}`],
        'the VM runs on exactly one grainline snapshot',
      )
      const chain = await openChain(h.disks[0]?.path as string)
      t.equal(chain.layers.length, 2, 'chain: base ← running delta')
      await chain.close()
    }
  })
}

t.test('foreign snapshots: refused by default, consolidated with consolidateExisting', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'app', disks: [{ sizeBytes: 2 * MiB }] })
  const driver = createLocalDriver()
  await driver.createSnapshot(await driver.openVm(vm.vmxPath), 'before upgrade')
  await simulateGuestWrites(vm.vmxPath, { bytes: 128 * 1024, seed: 9 })
  const { logger } = memoryLogger()
  const base = { vm: vm.vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'agent-state'), progress: 'none' as const }
  const refused = await replicate({ logger }, base)
  t.notOk(refused.ok)
  t.equal(refused.vms[0]?.error?.code, 'E_FOREIGN_SNAPSHOTS')
  t.match(refused.vms[0]?.error?.message, /before upgrade/)
  let frozen = new Map<string, string>()
  const ok = await replicate(
    { logger },
    {
      ...base,
      consolidateExisting: true,
      afterSnapshot: async (h) => {
        frozen = await recordFrozen(h, dir, 'f')
      },
    },
  )
  t.ok(ok.ok)
  t.same(
    (await driver.listSnapshots(await driver.openVm(vm.vmxPath))).map((s) => s.name),
    ['grainline-1'],
  )
  t.equal(await firstDifference(mirrorFlat(rx.store, 'app', 'app.vmdk'), frozen.get('app.vmdk') as string), -1)
})

t.test('a modified mirror falls back to a full resync', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'files', disks: [{ sizeBytes: 2 * MiB }] })
  const { logger } = memoryLogger()
  const base = { vm: vm.vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'agent-state'), progress: 'none' as const }
  t.ok(
    (
      await replicate(
        { logger },
        {
          ...base,
          afterSnapshot: async (h) => {
            await simulateGuestWrites(h.vmxPath, { bytes: 64 * 1024, seed: 1 })
          },
        },
      )
    ).ok,
  )
  // someone boots the mirror: its descriptor CID changes
  const desc = join(rx.store, 'files', 'files.vmdk')
  await writeFile(desc, (await readFile(desc, 'utf8')).replace(/^CID=[0-9a-f]{8}/m, 'CID=0badc0de'))
  let frozen = new Map<string, string>()
  const r = await replicate(
    { logger },
    {
      ...base,
      afterSnapshot: async (h) => {
        frozen = await recordFrozen(h, dir, 'm')
      },
    },
  )
  t.ok(r.ok, JSON.stringify(r.vms[0]?.error))
  t.equal(r.vms[0]?.disks[0]?.mode, 'resync')
  t.match(r.vms[0]?.disks[0]?.fallbackReason, /E_MIRROR_MODIFIED/)
  t.equal(await firstDifference(mirrorFlat(rx.store, 'files', 'files.vmdk'), frozen.get('files.vmdk') as string), -1)
  t.ok((await readdir(join(rx.store, 'files'))).includes('files.vmx'))
})

t.test('our snapshot gone (deleted by someone): no incremental, full resync with the reason', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'gone', disks: [{ sizeBytes: 2 * MiB }] })
  const { logger, lines } = memoryLogger()
  const base = { vm: vm.vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'agent-state'), progress: 'none' as const, deltaFormat: 'vmfssparse' as const }
  t.ok((await replicate({ logger }, base)).ok)
  await simulateGuestWrites(vm.vmxPath, { bytes: 128 * 1024, seed: 3 })
  const driver = createLocalDriver()
  const h = await driver.openVm(vm.vmxPath)
  for (const s of await driver.listSnapshots(h)) await driver.removeSnapshot(h, s)
  let frozen = new Map<string, string>()
  const r = await replicate(
    { logger },
    {
      ...base,
      afterSnapshot: async (x) => {
        frozen = await recordFrozen(x, dir, 'g')
      },
    },
  )
  t.ok(r.ok, JSON.stringify(r.vms[0]?.error))
  t.equal(r.vms[0]?.cycle, 2)
  t.equal(r.vms[0]?.disks[0]?.mode, 'resync')
  t.match(r.vms[0]?.disks[0]?.fallbackReason, /snapshot of committed cycle 1 \(grainline-1, id \d+\) is no longer on the VM/)
  t.ok(
    lines.some((l) => l['msg'] === 'incremental not safe: resync of the disk by block digests' && /no longer on the VM/.test(String(l['reason']))),
    'the reason is logged',
  )
  t.equal(await firstDifference(mirrorFlat(rx.store, 'gone', 'gone.vmdk'), frozen.get('gone.vmdk') as string), -1)
})

t.test('an incompatible mirror is refused (no reseed), and a failed cycle leaves no connection behind', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'hw', disks: [{ sizeBytes: 2 * MiB }] })
  const { logger } = memoryLogger()
  const base = { vm: vm.vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'agent-state'), progress: 'none' as const, giveUpMs: 20_000 }
  t.ok((await replicate({ logger }, base)).ok)
  // the VM was upgraded to another virtual hardware version
  await writeFile(vm.vmxPath, (await readFile(vm.vmxPath, 'utf8')).replace('virtualHW.version = "14"', 'virtualHW.version = "19"'))
  for (let i = 0; i < 2; i++) {
    const t0 = performance.now()
    const r = await replicate({ logger }, base)
    t.notOk(r.ok)
    t.match(r.vms[0]?.error, { code: 'E_REFUSED', remoteCode: 'E_INCOMPATIBLE' })
    t.ok(performance.now() - t0 < 10_000, `run ${i + 1} answered promptly (the VM lock of the failed run was released)`)
  }
  const driver = createLocalDriver()
  t.same(
    (await driver.listSnapshots(await driver.openVm(vm.vmxPath))).map((s) => s.name),
    ['grainline-1'],
    'no snapshot taken for a refused cycle',
  )
})

t.test('two disks with the same basename on different datastores get distinct mirror names', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'dup', disks: [{ sizeBytes: 2 * MiB }] })
  await mkdir(join(vm.dir, 'ds2'))
  await createFlatDisk(join(vm.dir, 'ds2', 'dup.vmdk'), MiB)
  const fh = await openFile(join(vm.dir, 'ds2', 'dup-flat.vmdk'), 'r+')
  await fh.write(Buffer.alloc(64 * 1024, 0x5a), 0, 64 * 1024, 128 * 1024)
  await fh.close()
  await writeFile(vm.vmxPath, (await readFile(vm.vmxPath, 'utf8')) + 'scsi0:1.present = "TRUE"\nscsi0:1.fileName = "ds2/dup.vmdk"\n')
  const { logger } = memoryLogger()
  const job = { vm: vm.vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'agent-state'), progress: 'none' as const, certify: 'md5' as const }
  for (let cycle = 1; cycle <= 2; cycle++) {
    let frozen = new Map<string, string>()
    const r = await replicate(
      { logger },
      {
        ...job,
        afterSnapshot: async (h) => {
          frozen = await recordFrozen(h, dir, `d${cycle}`)
          await simulateGuestWrites(h.vmxPath, { bytes: 64 * 1024, seed: cycle })
        },
      },
    )
    t.ok(r.ok, JSON.stringify(r.vms[0]?.error ?? r.vms[0]?.disks.map((d) => d.error)))
    t.same(
      r.vms[0]?.disks.map((d) => d.name),
      ['dup.vmdk', 'scsi0-1_dup.vmdk'],
    )
    // recordFrozen keys by base file name: the first disk's raw was overwritten by the second; compare the second by name
    t.equal(await firstDifference(mirrorFlat(rx.store, 'dup', 'scsi0-1_dup.vmdk'), frozen.get('dup.vmdk') as string), -1, `cycle ${cycle}: second disk mirror correct`)
    t.equal(r.vms[0]?.disks[0]?.certify?.ok, true, 'first disk certified against its own frozen view')
    // the mirror's .vmx attaches each device to its own disk's mirror: scsi0:1 names ds2/dup.vmdk, whose base name is the first disk's too
    const mirrorVmx = await readFile(join(rx.store, 'dup', 'dup.vmx'), 'utf8')
    t.match(mirrorVmx, /^scsi0:0\.fileName = "dup\.vmdk"$/m, `cycle ${cycle}: scsi0:0 attaches the first disk's mirror`)
    t.match(mirrorVmx, /^scsi0:1\.fileName = "scsi0-1_dup\.vmdk"$/m, `cycle ${cycle}: scsi0:1 attaches the second disk's mirror, not the first's`)
  }
  // the first disk leaves the VM: the second is now the only dup.vmdk, mirrored under the plain name (a resync onto that mirror)
  await writeFile(
    vm.vmxPath,
    (await readFile(vm.vmxPath, 'utf8'))
      .split('\n')
      .filter((l) => !l.startsWith('scsi0:0.'))
      .join('\n'),
  )
  let frozen = new Map<string, string>()
  const r = await replicate(
    { logger },
    {
      ...job,
      afterSnapshot: async (h) => {
        frozen = await recordFrozen(h, dir, 'd3')
      },
    },
  )
  t.ok(r.ok, JSON.stringify(r.vms[0]?.error ?? r.vms[0]?.disks.map((d) => d.error)))
  t.same(
    r.vms[0]?.disks.map((d) => d.name),
    ['dup.vmdk'],
  )
  t.equal(await firstDifference(mirrorFlat(rx.store, 'dup', 'dup.vmdk'), frozen.get('dup.vmdk') as string), -1, 'cycle 3: dup.vmdk holds the second disk')
  const vmx3 = await readFile(join(rx.store, 'dup', 'dup.vmx'), 'utf8')
  t.match(vmx3, /^scsi0:1\.fileName = "dup\.vmdk"$/m, "cycle 3: scsi0:1 attaches the mirror the cycle wrote, not the second disk's old one")
  const state = JSON.parse(await readFile(join(rx.store, 'dup', '.grainline', 'state.json'), 'utf8')) as { disks: Record<string, { cycle: number; removed?: number }> }
  t.same(
    Object.entries(state.disks).map(([n, d]) => [n, d.cycle, d.removed ?? null]),
    [['dup.vmdk', 3, null]],
    'the old name no cycle writes any more was removed at cycle 3, and reclaimed (this receiver keeps no restore points)',
  )
  t.same(
    (await readdir(join(rx.store, 'dup'))).filter((f) => f.startsWith('scsi0-1_')),
    [],
    'its files are gone',
  )
  // the next snapshot names its delta by the files of the disk's own folder (ds2), not the VM folder's: it was E_SNAPSHOT (file exists)
  await simulateGuestWrites(vm.vmxPath, { bytes: 64 * 1024, seed: 4 })
  const r4 = await replicate({ logger }, job)
  t.ok(r4.ok, `cycle 4: ${JSON.stringify(r4.vms[0]?.error ?? r4.vms[0]?.disks.map((d) => d.error))}`)
  t.same(
    r4.vms[0]?.disks.map((d) => [d.name, d.mode, d.certify?.ok]),
    [['dup.vmdk', 'incremental', true]],
  )
})

t.test("several frozen deltas since the mirror's successor: the union is shipped, newest data wins", async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'uni', disks: [{ sizeBytes: 2 * MiB }] })
  const { logger } = memoryLogger()
  const base = { vm: vm.vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'agent-state'), progress: 'none' as const, certify: 'sha1' as const }
  t.ok((await replicate({ logger }, base)).ok, 'seed')
  // writes land in the delta the mirror recorded as successor; then a stale snapshot of ours
  // (an earlier run's, never shipped) freezes it and more writes follow, partly over the same ranges
  await simulateGuestWrites(vm.vmxPath, { bytes: 256 * 1024, writeSize: 64 * 1024, seed: 21, zeroFraction: 0 })
  const driver = createLocalDriver()
  await driver.createSnapshot(await driver.openVm(vm.vmxPath), 'grainline-7')
  await simulateGuestWrites(vm.vmxPath, { bytes: 256 * 1024, writeSize: 64 * 1024, seed: 21, zeroFraction: 0.5 })
  await simulateGuestWrites(vm.vmxPath, { bytes: 128 * 1024, writeSize: 64 * 1024, seed: 22 })
  let frozen = new Map<string, string>()
  const r = await replicate(
    { logger },
    {
      ...base,
      afterSnapshot: async (h) => {
        frozen = await recordFrozen(h, dir, 'u')
      },
    },
  )
  const d = r.vms[0]?.disks[0]
  t.ok(r.ok, JSON.stringify(r.vms[0]?.error ?? d?.error))
  t.equal(d?.mode, 'incremental')
  t.same(
    d?.layers.map((l) => l.file),
    ['uni-000001.vmdk', 'uni-000002.vmdk'],
    'two frozen deltas, bottom first',
  )
  t.equal(d?.certify?.ok, true)
  t.equal(await firstDifference(mirrorFlat(rx.store, 'uni', 'uni.vmdk'), frozen.get('uni.vmdk') as string), -1)
  t.same(r.vms[0]?.removedSnapshots.sort(), ['grainline-1', 'grainline-7'])
  const chain = await openChain((await driver.openVm(vm.vmxPath)).disks[0]?.path as string)
  t.equal(chain.layers.length, 2, 'both older deltas consolidated')
  await chain.close()
})

t.test('a broken CID link on the source is refused before any snapshot or connection', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'cid', disks: [{ sizeBytes: 2 * MiB }] })
  const { logger } = memoryLogger()
  const base = { vm: vm.vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'agent-state'), progress: 'none' as const }
  t.ok((await replicate({ logger }, base)).ok)
  const delta = join(vm.dir, 'cid-000001.vmdk')
  await writeFile(delta, (await readFile(delta, 'utf8')).replace(/^parentCID=[0-9a-f]+/m, 'parentCID=12345678'))
  const r = await replicate({ logger }, base)
  t.notOk(r.ok)
  t.equal(r.vms[0]?.error?.code, 'E_CHAIN_CID')
  const driver = createLocalDriver()
  t.same(
    (await driver.listSnapshots(await driver.openVm(vm.vmxPath))).map((s) => s.name),
    ['grainline-1'],
    'no snapshot taken',
  )
  t.notOk(
    rx.logs.some((l) => l.includes('"vm":"cid","cycle":2')),
    'the receiver never saw cycle 2',
  )
})
