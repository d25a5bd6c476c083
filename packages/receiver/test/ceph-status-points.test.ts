// `grainline status` of a Ceph store looks at every restore point's RBD
// snapshots and at every committed disk's (ceph-overview.ts cephStoreDamage),
// as it looks at the point files and mirror flats of a folder store
// (status-points.test): on a real one-node cluster, a point's snapshot
// removed behind the store (`rbd snap rm` by hand) and a point's snapshot
// smaller than its capacity (the image shrunk, the snapshot taken again by
// hand) make the VM CRITICAL, named (point, disk, snapshot), with the prune
// that drops them; `grainline status` exits 2; the prune named works and the
// VM is OK again. Then the mirror itself, on a second VM with a cycle in
// flight: its committed snapshot removed, taken again smaller, its image
// removed — each CRITICAL, named (disk, snapshot), with the older point to
// restore and the removal and new seed, which work; one `rbd snap ls` per
// image for the points and the mirror together (counted through a wrapper).
import t from 'tap'
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { pino } from 'pino'
import { cliBin, haveCeph, scratchDir, startCephCluster } from '@grainline/test-utils'
import { cephPrunePoints, cephRemoveMirror, cephRestorePoint } from '../src/index.ts'
import { cephStoreReader } from '../src/store/ceph/ceph-overview.ts'
import { CephNames, readCephState } from '../src/store/ceph/ceph-state.ts'
import { runCeph } from '../src/store/ceph/rbd-cli.ts'
import { storeOverview } from '../src/store-overview.ts'
import { Agent, MiB, TOKEN, evolve, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, whenFree } from './helpers.ts'

const POOL = 'glstpts'
const cid = (n: number): string => n.toString(16).padStart(32, '0')
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-common)'
const log = pino({ level: 'silent' })

t.test('Ceph status: a point or a mirror whose snapshot was removed or is smaller than its capacity is CRITICAL, named, with what to do', { skip }, async (t) => {
  const ceph = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const target = { pool: POOL, conf: ceph.conf }
  const env = makeEnv(join(scratchDir(t, 'grainline-ceph-status-'), 'env'))
  // every rbd command run in this process, through a wrapper first on PATH (librbd helpers are not commands)
  const wrap = join(env.dir, 'bin')
  const calls = join(env.dir, 'rbd-calls')
  await mkdir(wrap, { recursive: true })
  const realRbd = execFileSync('sh', ['-c', 'command -v rbd'], { encoding: 'utf8' }).trim()
  await writeFile(join(wrap, 'rbd'), `#!/bin/sh\necho "$*" >> '${calls}'\nexec ${realRbd} "$@"\n`, { mode: 0o755 })
  const path = process.env.PATH
  process.env.PATH = `${wrap}:${path}`
  t.teardown(() => {
    process.env.PATH = path
  })
  const snapLists = async (): Promise<number> => (existsSync(calls) ? (await readFile(calls, 'utf8')).split('\n').filter((l) => / snap ls /.test(l)).length : 0)
  const { receiver, url } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10, retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const vm = 'vm-status-points'
  const SIZE = 4 * MiB
  /** A seed (cycle 1) of one disk `<stem>.vmdk` of `forVm`, then incrementals 2–4 (pattern seeds `seed` + cycle); the last left in flight unless `commitLast`. */
  const cycles = async (forVm: string, stem: string, seed: number, commitLast: boolean): Promise<Buffer[]> => {
    const imgs: Buffer[] = [Buffer.alloc(0), pattern(SIZE, seed + 1)]
    let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, forVm, 1, [seedPlan(0, `${stem}.vmdk`, imgs[1] as Buffer, cid(seed + 1))])
    a.close()
    for (let c = 2; c <= 4; c++) {
      const ranges = [{ offset: c * 256 * 1024, length: 128 * 1024 }]
      imgs[c] = evolve(imgs[c - 1] as Buffer, seed + c, ranges)
      a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      await runCycle(a, forVm, c, [incPlan(0, `${stem}.vmdk`, imgs[c] as Buffer, c - 1, cid(seed + c), ranges, `${stem}-00000${c - 1}.vmdk`, `${stem}-00000${c}.vmdk`)], {
        commit: c < 4 || commitLast,
      })
      a.close()
    }
    return imgs
  }
  await cycles(vm, 's', 60, true)
  const reader = cephStoreReader(target)
  const vmOf = async () => (await storeOverview(reader)).vms.find((v) => v.vm === vm)
  let v = await vmOf()
  t.same(v?.points, [1, 2, 3], 'points 1–3 kept')
  t.same(v?.damagedPoints, [], 'every point snapshot is there')
  t.same(v?.damagedMirror, [], "and the mirror's committed snapshot")
  t.equal(v?.health.state, 'OK', 'OK while the snapshots are whole')
  let lists = await snapLists()
  await reader.status()
  t.equal((await snapLists()) - lists, 1, 'one rbd snap ls for the three points and the mirror: one image')

  const s = await readCephState(target, new CephNames(vm).state, vm)
  const snapOf = (cycle: number): { image: string; snap: string } => {
    const d = s?.points.find((p) => p.cycle === cycle)?.disks['s.vmdk']
    if (d === undefined) throw new Error(`point ${cycle} has no s.vmdk`)
    return d
  }
  // point 2's snapshot removed behind the store
  const p2 = snapOf(2)
  await runCeph(target, 'rbd', ['snap', 'rm', `${POOL}/${p2.image}@${p2.snap}`])
  v = await vmOf()
  t.match(v?.damagedPoints, [{ cycle: 2, disk: 's.vmdk', file: `${POOL}/${p2.image}@${p2.snap}`, problem: /is missing \(rbd snap ls does not list it/ }], 'the removed snapshot, named')
  t.equal(v?.damagedPoints?.length, 1, 'points 1 and 3 are whole')
  t.equal(v?.health.state, 'CRITICAL', 'a removed point snapshot: CRITICAL')
  t.match(
    v?.health.problems.join('\n'),
    new RegExp(
      `restore point snapshot DAMAGED \\(point 2 disk s\\.vmdk: ${POOL}/.*@.* is missing.*restoring point 2 or an older one fails; drop point 2 and the older ones \\(grainline points prune --store ceph:${POOL} --vm ${vm} --keep 1: the newer point stays\\)`,
    ),
    'the problem names the point, disk, snapshot and the prune keeping the newer point',
  )
  t.notMatch(v?.health.problems.join('\n'), /\.grainline\/points/, 'no folder to put back on a Ceph store')
  const cli = spawnSync(process.execPath, [cliBin(), 'status', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--output', 'json'], { encoding: 'utf8' })
  t.equal(cli.status, 2, `grainline status exits 2 (CRITICAL): ${cli.stderr}`)
  t.match(JSON.parse(cli.stdout).vms.find((x: { vm: string }) => x.vm === vm)?.damagedPoints, [{ cycle: 2 }], 'its JSON lists the damaged point')

  // point 3's snapshot smaller than its capacity: the image shrunk, the snapshot taken again under the same name
  const p3 = snapOf(3)
  await runCeph(target, 'rbd', ['snap', 'rm', `${POOL}/${p3.image}@${p3.snap}`])
  await runCeph(target, 'rbd', ['resize', '--allow-shrink', '--size', '1M', `${POOL}/${p3.image}`])
  await runCeph(target, 'rbd', ['snap', 'create', `${POOL}/${p3.image}@${p3.snap}`])
  v = await vmOf()
  t.match(
    v?.damagedPoints,
    [{ cycle: 2 }, { cycle: 3, disk: 's.vmdk', file: `${POOL}/${p3.image}@${p3.snap}`, problem: `is ${MiB} bytes, smaller than the disk's capacity ${SIZE} (the image was shrunk)` }],
    'the shrunk snapshot, named',
  )
  t.match(v?.health.problems.join('\n'), /restoring point 3 or an older one fails; drop point 3 .*--keep 0: the next cycles make new points/)

  // the remedy named works: the prune drops the damaged points (the removed snapshot is not there to remove), OK again
  const pruned = await whenFree(() => cephPrunePoints(target, vm, { keep: 0 }, { logger: log }))
  t.same(pruned.dropped, [1, 2, 3], 'the prune drops them')
  v = await vmOf()
  t.same(v?.damagedPoints, [], 'nothing damaged left')
  t.equal(v?.health.state, 'OK', 'OK again')

  // the mirror itself: a second VM, points 1 and 2, cycle 3 committed, cycle 4 in flight on the image's head
  const mvm = 'vm-status-mirror'
  const mimg = await cycles(mvm, 'm', 80, false)
  const mvmOf = async () => (await storeOverview(reader)).vms.find((x) => x.vm === mvm)
  let m = await mvmOf()
  t.same([m?.committedCycle, m?.inflightCycle, m?.points], [3, 4, [1, 2]], 'cycle 3 committed, points 1 and 2, cycle 4 in flight')
  t.same(m?.damagedMirror, [], 'the committed snapshot is whole while the head is written')
  t.equal(m?.health.state, 'WARNING', 'WARNING for the cycle in flight only')
  const md = (await readCephState(target, new CephNames(mvm).state, mvm))?.disks['m.vmdk']
  if (md === undefined) throw new Error('no committed m.vmdk')
  const mfile = `${POOL}/${md.image}@${md.snap}`
  const esc = (x: string): string => x.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  const statusCli = () => spawnSync(process.execPath, [cliBin(), 'status', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--output', 'json'], { encoding: 'utf8' })

  // its committed snapshot removed behind the store
  await runCeph(target, 'rbd', ['snap', 'rm', mfile])
  m = await mvmOf()
  t.match(m?.damagedMirror, [{ disk: 'm.vmdk', cycle: 3, file: mfile, problem: 'is missing (rbd snap ls does not list it: removed behind the store)' }], 'the removed snapshot, named')
  t.equal(m?.damagedMirror?.length, 1, 'one disk')
  t.same(m?.damagedPoints, [], 'the points are whole')
  t.equal(m?.health.state, 'CRITICAL', 'CRITICAL: the cycle in flight does not hide it')
  t.match(
    m?.health.problems.join('\n'),
    new RegExp(
      `mirror snapshot DAMAGED \\(disk m\\.vmdk: ${esc(mfile)} is missing \\(rbd snap ls does not list it: removed behind the store\\)\\): the mirror's latest cycle 3 cannot be restored or failed over, and the next cycle cannot build on it .*; restore or fail over point 2 instead \\(grainline restore --store ceph:${POOL} --vm ${mvm} --point 2 --to DIR, or grainline mirror failover --store ceph:${POOL} --vm ${mvm} --point 2\\); archive the points to keep .*, then remove the mirror \\(grainline mirror remove --store ceph:${POOL} --vm ${mvm} --yes\\): the next run seeds the VM anew`,
    ),
    'the problem names the disk, the snapshot, the point to restore and the removal',
  )
  let mcli = statusCli()
  t.equal(mcli.status, 2, `grainline status exits 2 (CRITICAL): ${mcli.stderr}`)
  t.match(JSON.parse(mcli.stdout).vms.find((x: { vm: string }) => x.vm === mvm)?.damagedMirror, [{ disk: 'm.vmdk', cycle: 3, file: mfile }], 'its JSON lists the damaged mirror')
  // what the problem says holds: the latest cycle no longer restores, point 2 does
  await t.rejects(cephRestorePoint(target, mvm, 3, join(env.dir, 'm-restore-3')), 'the latest cycle cannot be restored')
  const r2 = await cephRestorePoint(target, mvm, 2, join(env.dir, 'm-restore-2'))
  t.ok((await readFile(r2.disks[0]?.file as string)).equals(mimg[2] as Buffer), 'point 2 restores as cycle 2')

  // taken again under its name, smaller than the disk (the image shrunk first)
  await runCeph(target, 'rbd', ['resize', '--allow-shrink', '--size', '1M', `${POOL}/${md.image}`])
  await runCeph(target, 'rbd', ['snap', 'create', mfile])
  m = await mvmOf()
  t.match(m?.damagedMirror, [{ disk: 'm.vmdk', cycle: 3, file: mfile, problem: `is ${MiB} bytes, smaller than the disk's capacity ${SIZE} (the image was shrunk)` }], 'the smaller snapshot, named')
  t.same(m?.damagedPoints, [], "the points' snapshots keep their size")
  t.equal(m?.health.state, 'CRITICAL', 'a smaller committed snapshot: CRITICAL')

  // the image removed (its snapshots purged first, the points' with them): every snapshot of it, one listing
  await runCeph(target, 'rbd', ['snap', 'purge', `${POOL}/${md.image}`])
  await runCeph(target, 'rbd', ['rm', `${POOL}/${md.image}`])
  lists = await snapLists()
  m = await mvmOf()
  t.equal((await snapLists()) - lists, 2, 'one rbd snap ls per image of the pool (one per VM): the points and the mirror share it')
  t.match(m?.damagedMirror, [{ disk: 'm.vmdk', file: mfile, problem: `is missing: its image ${POOL}/${md.image} does not exist (removed behind the store)` }], 'the removed image, named')
  t.match(m?.damagedPoints, [{ cycle: 1, problem: /its image .* does not exist/ }, { cycle: 2 }], 'its points too')
  t.match(
    m?.health.problems.join('\n'),
    new RegExp(`no whole restore point is kept to restore instead; remove the mirror \\(grainline mirror remove --store ceph:${POOL} --vm ${mvm} --yes\\): the next run seeds the VM anew`),
    'no point to restore instead: the removal',
  )
  mcli = statusCli()
  t.equal(mcli.status, 2, `grainline status exits 2: ${mcli.stderr}`)
  t.match(JSON.parse(mcli.stdout).vms.find((x: { vm: string }) => x.vm === vm)?.damagedMirror, [], 'the other VM: no entry')

  // the remedy named works: the mirror removed, the next run seeds it anew, OK
  await whenFree(() => cephRemoveMirror(target, mvm, log))
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, mvm, 1, [seedPlan(0, 'm.vmdk', mimg[4] as Buffer, cid(91))])
  a.close()
  m = await mvmOf()
  t.same([m?.committedCycle, m?.damagedMirror, m?.damagedPoints, m?.health.state], [1, [], [], 'OK'], 'seeded anew: whole, OK')
})
