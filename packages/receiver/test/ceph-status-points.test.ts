// `grainline status` of a Ceph store looks at every restore point's RBD
// snapshots (ceph-overview.ts cephDamagedPoints), as it looks at the point
// files of a folder store (status-points.test): on a real one-node cluster, a
// point's snapshot removed behind the store (`rbd snap rm` by hand) and a
// point's snapshot smaller than its capacity (the image shrunk, the snapshot
// taken again by hand) make the VM CRITICAL, named (point, disk, snapshot),
// with the prune that drops them; `grainline status` exits 2; the prune
// named works and the VM is OK again.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { pino } from 'pino'
import { cliBin, haveCeph, scratchDir, startCephCluster } from '@grainline/test-utils'
import { cephPrunePoints } from '../src/index.ts'
import { cephStoreReader } from '../src/store/ceph/ceph-overview.ts'
import { CephNames, readCephState } from '../src/store/ceph/ceph-state.ts'
import { runCeph } from '../src/store/ceph/rbd-cli.ts'
import { storeOverview } from '../src/store-overview.ts'
import { Agent, MiB, TOKEN, evolve, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, whenFree } from './helpers.ts'

const POOL = 'glstpts'
const cid = (n: number): string => n.toString(16).padStart(32, '0')
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-common)'
const log = pino({ level: 'silent' })

t.test('Ceph status: a point whose snapshot was removed or is smaller than its capacity is CRITICAL, named, with the prune that drops it', { skip }, async (t) => {
  const ceph = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const target = { pool: POOL, conf: ceph.conf }
  const env = makeEnv(join(scratchDir(t, 'grainline-ceph-status-'), 'env'))
  const { receiver, url } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10, retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const vm = 'vm-status-points'
  const SIZE = 4 * MiB
  const images: Buffer[] = [Buffer.alloc(0), pattern(SIZE, 61)]
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 's.vmdk', images[1] as Buffer, cid(61))])
  a.close()
  for (let c = 2; c <= 4; c++) {
    const ranges = [{ offset: c * 256 * 1024, length: 128 * 1024 }]
    images[c] = evolve(images[c - 1] as Buffer, 60 + c, ranges)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, c, [incPlan(0, 's.vmdk', images[c] as Buffer, c - 1, cid(60 + c), ranges, `s-00000${c - 1}.vmdk`, `s-00000${c}.vmdk`)])
    a.close()
  }
  const reader = cephStoreReader(target)
  const vmOf = async () => (await storeOverview(reader)).vms.find((v) => v.vm === vm)
  let v = await vmOf()
  t.same(v?.points, [1, 2, 3], 'points 1–3 kept')
  t.same(v?.damagedPoints, [], 'every point snapshot is there')
  t.equal(v?.health.state, 'OK', 'OK while the snapshots are whole')

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
})
