// Offline seeding into a Ceph store (ceph-import.ts): a VM seeded and
// cycled into a folder store is imported into a pool with its lineage; the
// next cycle to a receiver on the pool is an ordinary incremental and the
// mirror reads equal to the source. Refusals: the pool holds the VM
// already, no such VM, a cycle in flight in the folder, a flat that is a
// symbolic link, a folder mirror changed since its last commit (booted,
// edited), diverged or held — the folder side of those is checked without
// Ceph (openImportSource). Real one-node cluster.
import t from 'tap'
import { mkdir, open, readFile, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { pino } from 'pino'
import { haveCeph, scratchDir, startCephCluster, type CephCluster } from '@grainline/test-utils'
import { cephImportVm, cephListPoints, cephRestorePoint } from '../src/index.ts'
import { CephNames, readCephState } from '../src/store/ceph/ceph-state.ts'
import { closeImportFlats, openImportSource } from '../src/store/ceph/import-source.ts'
import { readVmState } from '../src/state-file.ts'
import { VmPaths } from '../src/vm-paths.ts'
import { Agent, MiB, TOKEN, evolve, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver } from './helpers.ts'

const POOL = 'glimport'
const cid = (n: number): string => n.toString(16).padStart(32, '0')
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-common)'

t.test('a VM seeded offline into a folder store, imported into a Ceph pool, takes an incremental there', { skip }, async (t) => {
  const ceph: CephCluster = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const target = { pool: POOL, conf: ceph.conf }
  const log = pino({ level: 'silent' })
  const base = scratchDir(t, 'grainline-ceph-import-')
  const vm = 'vm-imp'
  // 8 MiB: data, then 4 MiB of zeros the import must not write (the image stays thin)
  const imgs: Buffer[] = [Buffer.alloc(0), Buffer.concat([pattern(4 * MiB, 31), Buffer.alloc(4 * MiB)])]
  const folder = makeEnv(join(base, 'folder'))
  {
    const { receiver, url } = await startReceiver(folder)
    const a = await Agent.connect(url, { token: TOKEN, ca: folder.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(0, 'i.vmdk', imgs[1] as Buffer, cid(31))])
    a.close()
    const ranges = [{ offset: MiB, length: 65_536 }]
    imgs[2] = evolve(imgs[1] as Buffer, 2, ranges)
    const b = await Agent.connect(url, { token: TOKEN, ca: folder.tls.ca })
    t.equal((await runCycle(b, vm, 2, [incPlan(0, 'i.vmdk', imgs[2] as Buffer, 1, cid(32), ranges, 'i-000001.vmdk', 'i-000002.vmdk')])).committed?.cycle, 2, 'seeded and cycled in the folder store')
    b.close()
    await receiver.close()
  }
  const src = await readVmState(new VmPaths(folder.store, vm))

  const r = await cephImportVm(target, folder.store, vm, { logger: log })
  t.equal(r.cycle, 2, 'the committed cycle is imported')
  t.same(
    r.disks.map((d) => d.name),
    ['i.vmdk'],
  )
  const s = await readCephState(target, new CephNames(vm).state, vm)
  t.equal(s?.committedCycle, 2)
  t.equal(s?.generation, src?.generation, 'the generation of the folder store: the lineage is kept')
  t.equal(s?.disks['i.vmdk']?.generation, src?.disks['i.vmdk']?.generation)
  t.same(s?.disks['i.vmdk']?.source, src?.disks['i.vmdk']?.source, 'the source identity (the successor the next incremental names)')
  t.equal(s?.inflight, null, 'nothing in flight')
  t.ok(s?.files[`${vm}.vmx`] !== undefined, 'the .vmx is kept for restores')
  t.notMatch(Buffer.from(s?.files[`${vm}.vmx`] ?? '', 'base64').toString(), /\(grainline mirror\)"/, "the folder store's display suffix taken off (a restore marks it again)")
  const read = await cephRestorePoint(target, vm, 2, join(base, 'read-2'))
  t.ok((await readFile(read.disks[0]?.file as string)).equals(imgs[2] as Buffer), 'the snapshot reads equal to cycle 2 (rbd export)')
  const image = (read.disks[0]?.snapshot ?? '').split('@')[0] ?? ''
  const du = JSON.parse((await ceph.run('rbd', ['du', '--format', 'json', image])).stdout) as { images: Array<{ used_size: number }> }
  const used = du.images.reduce((n, e) => n + e.used_size, 0)
  t.ok(used <= 4 * MiB, `the image is thin: ${used} bytes used of 8 MiB (the zero half not written)`)

  await t.rejects(cephImportVm(target, folder.store, vm, { logger: log }), { code: 'E_CONFIG', message: /already/ }, 'a second import: the pool holds the VM')
  await t.rejects(cephImportVm(target, folder.store, 'vm-none', { logger: log }), { code: 'E_NOT_FOUND' }, 'no such VM in the folder')
  const busy = new VmPaths(folder.store, 'vm-busy')
  await mkdir(busy.gdir, { recursive: true })
  await writeFile(
    busy.state,
    JSON.stringify({ format: 1, vm: 'vm-busy', compat: null, committedCycle: 1, committedAt: null, displaySuffix: '', disks: {}, inflight: { cycle: 2, startedAt: '', disks: {} }, pending: null }),
  )
  await t.rejects(cephImportVm(target, folder.store, 'vm-busy', { logger: log }), { code: 'E_BUSY', message: /cycle 2/ }, 'a cycle in flight in the folder store')
  t.equal(await readCephState(target, new CephNames('vm-busy').state, 'vm-busy'), undefined, 'nothing written to the pool for it')

  // a flat that is a symbolic link (the store is not trusted): refused before anything is written
  const orig = new VmPaths(folder.store, vm)
  const linked = new VmPaths(folder.store, 'vm-link')
  await mkdir(linked.gdir, { recursive: true })
  const state = JSON.parse(await readFile(orig.state, 'utf8')) as { vm: string; disks: Record<string, { stem: string }> }
  state.vm = 'vm-link'
  await writeFile(linked.state, JSON.stringify(state))
  for (const d of Object.values(state.disks)) await symlink(orig.flat(d.stem), linked.flat(d.stem))
  await t.rejects(cephImportVm(target, folder.store, 'vm-link', { logger: log }), { code: 'E_STORE_FILE' }, 'a flat that is a symlink')
  t.equal(await readCephState(target, new CephNames('vm-link').state, 'vm-link'), undefined, 'nothing written to the pool for it')

  // the agent's next cycle, to a receiver on the pool: an incremental on the imported point
  const env = makeEnv(join(base, 'ceph'))
  const { receiver, url } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10, retention: { keep: 5 } })
  t.teardown(() => receiver.close())
  const ranges = [{ offset: 2 * MiB, length: 65_536 }]
  imgs[3] = evolve(imgs[2] as Buffer, 3, ranges)
  const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const res = await runCycle(c, vm, 3, [incPlan(0, 'i.vmdk', imgs[3] as Buffer, 2, cid(33), ranges, 'i-000002.vmdk', 'i-000003.vmdk')])
  c.close()
  t.equal(res.committed?.cycle, 3, 'cycle 3 is accepted as an incremental and commits')
  const after = await cephRestorePoint(target, vm, 3, join(base, 'read-3'))
  t.ok((await readFile(after.disks[0]?.file as string)).equals(imgs[3] as Buffer), 'the mirror reads equal to cycle 3')
  t.same(
    (await cephListPoints(target, vm)).points.map((p) => p.cycle),
    [2, 3],
    'the imported cycle is now a restore point',
  )
})

/** A folder store with VM `vm` seeded (cycle 1); returns its paths and the committed state text. */
async function seededFolder(dir: string, vm: string, img: Buffer): Promise<{ paths: VmPaths; state: string }> {
  const folder = makeEnv(dir)
  const { receiver, url } = await startReceiver(folder)
  const a = await Agent.connect(url, { token: TOKEN, ca: folder.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'i.vmdk', img, cid(41))])
  a.close()
  await receiver.close()
  const paths = new VmPaths(folder.store, vm)
  return { paths, state: await readFile(paths.state, 'utf8') }
}

/** What a DR test boot does to a mirror: ESXi gives the descriptor a new CID and writes the flat (its size unchanged). */
async function bootMirror(paths: VmPaths, stem: string): Promise<void> {
  const desc = paths.descriptor(stem)
  await writeFile(desc, (await readFile(desc, 'latin1')).replace(/^CID=.*$/m, 'CID=0b00710b'))
  const fh = await open(paths.flat(stem), 'r+')
  await fh.write(Buffer.from('booted'), 0, 6, 4096)
  await fh.close()
}

t.test('the folder side of an import: only a mirror still as its last commit wrote it, not diverged nor held', async (t) => {
  const vm = 'vm-pre'
  const img = Buffer.concat([pattern(MiB, 41), Buffer.alloc(MiB)])
  const { paths, state } = await seededFolder(join(scratchDir(t, 'grainline-import-pre-'), 'folder'), vm, img)
  const src = async (): Promise<NonNullable<Awaited<ReturnType<typeof readVmState>>>> => (await readVmState(paths)) as NonNullable<Awaited<ReturnType<typeof readVmState>>>
  const flats = await openImportSource(paths, await src(), paths.store)
  t.same(
    flats.map((f) => [f.record.name, f.size]),
    [['i.vmdk', 2 * MiB]],
    'a mirror as committed: its flat opened',
  )
  await closeImportFlats(flats)

  const desc = paths.descriptor('i')
  const goodDesc = await readFile(desc)
  const goodFlat = await readFile(paths.flat('i'))
  const putBack = async (): Promise<void> => {
    await writeFile(desc, goodDesc)
    await writeFile(paths.flat('i'), goodFlat)
    await writeFile(paths.state, state)
  }
  await bootMirror(paths, 'i')
  await t.rejects(
    openImportSource(paths, await src(), paths.store),
    { code: 'E_MIRROR_MODIFIED', message: /mirror of disk i\.vmdk of VM vm-pre .* changed since its last commit \(descriptor CID 0b00710b, recorded [0-9a-f]{8}.*resync/ },
    'booted since its commit (new CID, flat written): refused',
  )
  await putBack()
  await writeFile(desc, goodDesc.toString('latin1').replace('"i-flat.vmdk"', '"../../outside.bin"'))
  await t.rejects(
    openImportSource(paths, await src(), paths.store),
    { code: 'E_MIRROR_MODIFIED', message: /names the extents \["\.\.\/\.\.\/outside\.bin"\]/ },
    'a descriptor naming another file, its CID kept: refused',
  )
  await putBack()
  const s = JSON.parse(state) as { disks: Record<string, Record<string, unknown>>; holds?: unknown[] }
  await writeFile(
    paths.state,
    JSON.stringify({ ...s, disks: { 'i.vmdk': { ...s.disks['i.vmdk'], diverged: { at: '2026-12-01T00:00:00.000Z', reason: 'trivial check (sha256) of cycle 1 failed' } } } }),
  )
  await t.rejects(openImportSource(paths, await src(), paths.store), { code: 'E_DIVERGED', message: /differ from its source .*resync/ }, 'diverged: refused')
  await putBack()
  await writeFile(paths.state, JSON.stringify({ ...s, holds: [{ id: 'h1', cycle: 1, dir: '/tmp/dr-test', kind: 'failover', createdAt: '2026-12-01T00:00:00.000Z' }] }))
  await t.rejects(openImportSource(paths, await src(), paths.store), { code: 'E_HELD', message: /held by 1 failover/ }, 'held by a failover: refused')
  await putBack()
  const again = await openImportSource(paths, await src(), paths.store)
  t.equal(again.length, 1, 'put back: accepted')
  await closeImportFlats(again)
})

t.test('a folder mirror booted since its last commit is not imported into Ceph under its committed generation', { skip }, async (t) => {
  const ceph: CephCluster = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const target = { pool: POOL, conf: ceph.conf }
  const log = pino({ level: 'silent' })
  const vm = 'vm-booted'
  const { paths } = await seededFolder(join(scratchDir(t, 'grainline-ceph-import-b-'), 'folder'), vm, Buffer.concat([pattern(MiB, 42), Buffer.alloc(MiB)]))
  await bootMirror(paths, 'i')
  await t.rejects(cephImportVm(target, paths.store, vm, { logger: log }), { code: 'E_MIRROR_MODIFIED', message: /changed since its last commit/ }, 'refused')
  t.equal(await readCephState(target, new CephNames(vm).state, vm), undefined, 'nothing written to the pool for it')
})
