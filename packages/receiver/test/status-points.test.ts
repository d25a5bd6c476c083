/**
 * `grainline status` looks at the files of every restore point (lstat only):
 * a point whose descriptor or extent was deleted, replaced by a link or
 * truncated by hand is CRITICAL — with the VM, the point, the file and the
 * prune that drops it — instead of reading as fine until a restore fails.
 */
import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { rmSync, symlinkSync, truncateSync, writeFileSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { Agent, MiB, TOKEN, evolve, incPlan, makeEnv, runCycle, seedPlan, startReceiver, pattern, whenFree } from './helpers.ts'
import { prunePoints, restorePoint, storeHealth, storeOverview, storeStatus } from '../src/index.ts'
import { pointExtentMinSize } from '../src/point-chain.ts'

const log = pino({ level: 'silent' })

t.test('status: a restore point whose files are missing, a link or truncated is CRITICAL, named, with the prune that drops it', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const vm = 'web-status-points'
  const images: Buffer[] = [Buffer.alloc(0), Buffer.concat([pattern(MiB, 1), Buffer.alloc(2 * MiB), pattern(MiB, 2)])]
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, 'cd01cd01cd01cd01')])
  a.close()
  for (let c = 2; c <= 4; c++) {
    const ranges = [{ offset: c * 300 * 1024, length: 256 * 1024 }]
    images[c] = evolve(images[c - 1] as Buffer, c * 13, ranges)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, c, [incPlan(0, 'd.vmdk', images[c] as Buffer, c - 1, `cd0${c}cd0${c}cd0${c}cd0${c}`, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)])
    a.close()
  }
  const pdir = join(env.store, vm, '.grainline', 'points')
  const vmOf = async () => (await storeHealth(env.store)).vms.find((v) => v.vm === vm)
  let v = await vmOf()
  t.same(v?.points, [1, 2, 3], 'points 1–3 kept')
  t.same(v?.damagedPoints, [], 'no damaged point files')
  t.equal(v?.health.state, 'OK', 'OK while the points are whole')
  const ext2 = join(pdir, 'd.p2-sesparse.vmdk')
  t.ok(readFileSync(ext2).length >= pointExtentMinSize(4 * MiB, false), 'a whole extent is at least the least size')

  // truncated by hand: stat sees it, nothing is read
  truncateSync(ext2, 4096)
  v = await vmOf()
  t.match(v?.damagedPoints, [{ cycle: 2, disk: 'd.vmdk', file: 'd.p2-sesparse.vmdk', problem: /is 4096 bytes, shorter than the \d+ bytes the point's capacity requires \(truncated\)/ }])
  t.equal(v?.health.state, 'CRITICAL', 'a truncated point extent: CRITICAL')
  t.match(
    v?.health.problems.join('\n'),
    new RegExp(
      `point 2 disk d\\.vmdk: d\\.p2-sesparse\\.vmdk is 4096 bytes.*restoring point 2 or an older one fails.*grainline points prune --store ${env.store.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} --vm ${vm} --keep 1: the newer point stays`,
    ),
    'the problem names the point, disk, file and the prune keeping the newer point',
  )
  const o = await storeOverview(env.store)
  t.equal(o.exitCode, 2, 'status --output json: exit code 2 (CRITICAL), as a modified mirror')
  t.match(o.vms.find((x) => x.vm === vm)?.damagedPoints, [{ cycle: 2, file: 'd.p2-sesparse.vmdk' }], 'the JSON document lists the damaged file')

  // a descriptor deleted, another replaced by a symbolic link, an empty one
  rmSync(join(pdir, 'd.p2.vmdk'))
  rmSync(join(pdir, 'd.p1.vmdk'))
  symlinkSync(join(pdir, 'd.p3.vmdk'), join(pdir, 'd.p1.vmdk'))
  v = await vmOf()
  t.match(
    v?.damagedPoints,
    [
      { cycle: 1, file: 'd.p1.vmdk', problem: 'is a symbolic link, not a regular file' },
      { cycle: 2, file: 'd.p2.vmdk', problem: 'is missing' },
      { cycle: 2, file: 'd.p2-sesparse.vmdk', problem: /truncated/ },
    ],
    'each damaged file, by point',
  )
  t.equal(v?.damagedPoints?.length, 3, 'point 3 is whole')
  t.match(v?.health.problems.join('\n'), /restoring point 2 or an older one fails.*--keep 1/)
  const p3 = readFileSync(join(pdir, 'd.p3.vmdk'))
  writeFileSync(join(pdir, 'd.p3.vmdk'), '')
  t.match((await vmOf())?.damagedPoints, [{ cycle: 1 }, { cycle: 2 }, { cycle: 2 }, { cycle: 3, file: 'd.p3.vmdk', problem: 'is empty (truncated)' }], 'an empty descriptor')
  t.match((await vmOf())?.health.problems.join('\n'), /restoring point 3 or an older one fails.*--keep 0: the next cycles make new points/)
  writeFileSync(join(pdir, 'd.p3.vmdk'), p3)

  // the remedy the problem names works: the prune drops points 1 and 2, status is OK again, point 3 restores
  const pruned = await whenFree(() => prunePoints(env.store, vm, { keep: 1 }, { logger: log }))
  t.same(pruned.dropped, [1, 2], 'the prune drops the damaged points')
  v = await vmOf()
  t.same(v?.damagedPoints, [], 'nothing damaged left')
  t.equal(v?.health.state, 'OK', 'OK again')
  const to = join(env.dir, 'restore-3')
  await whenFree(() => restorePoint(env.store, vm, 3, to, { logger: log }))
  t.ok(readFileSync(join(to, 'd-flat.vmdk')).equals(images[3] as Buffer), 'point 3 restores as cycle 3')
  t.equal((await storeStatus(env.store)).vms.find((x) => x.vm === vm)?.damagedPoints?.length, 0)
})

// The folder store's own mirror (what damagedMirror reports on a Ceph store): a flat shorter than its committed size or
// missing is seen by the lstat that status already makes (mirror-inspection.ts) and reads as `modified`, CRITICAL
t.test('status: a mirror flat truncated or missing is CRITICAL (modified), with no damagedMirror on a folder store', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const vm = 'web-status-flat'
  const image = Buffer.concat([pattern(MiB, 5), Buffer.alloc(MiB)])
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', image, 'cf01cf01cf01cf01')])
  a.close()
  const flat = join(env.store, vm, 'd-flat.vmdk')
  const vmOf = async () => (await storeHealth(env.store)).vms.find((v) => v.vm === vm)
  let v = await vmOf()
  t.match(v?.disks, [{ name: 'd.vmdk', size: 2 * MiB, modified: false }], 'whole')
  t.equal(v?.health.state, 'OK')
  t.equal(v?.damagedMirror, undefined, 'no damagedMirror on a folder store')
  truncateSync(flat, 4096)
  v = await vmOf()
  t.match(v?.disks, [{ name: 'd.vmdk', size: 4096, modified: true }], 'a short flat: its size, modified')
  t.equal(v?.health.state, 'CRITICAL', 'CRITICAL')
  t.match(v?.health.problems.join('\n'), /d\.vmdk modified since its last commit \(booted or edited: its mirror flat is 4096 bytes, the disk 2097152\)/)
  rmSync(flat)
  v = await vmOf()
  t.match(v?.disks, [{ name: 'd.vmdk', size: 0, modified: true }], 'a missing flat: size 0, modified')
  t.equal(v?.health.state, 'CRITICAL', 'CRITICAL')
  t.match(v?.health.problems.join('\n'), /d\.vmdk modified since its last commit \(its mirror flat is missing or empty: deleted or truncated behind the store\)/)
  t.equal((await storeOverview(env.store)).exitCode, 2, 'status exits 2')
  writeFileSync(flat, image)
  t.equal((await vmOf())?.health.state, 'OK', 'put back: OK')
})
