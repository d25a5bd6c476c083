/**
 * Every restore writes the files it reports durably before it returns: each
 * file fsynced (a descriptor, .vmx or .nvram through a temporary file, then
 * renamed; a flat as it is written), then the restore folder, and the
 * folder's parent (its new name). Plain writes left the descriptors and the
 * configuration files in the page cache (and the flats `rbd export` writes,
 * on Ceph): a power loss right after "restored" could leave an empty or
 * missing .vmx, descriptor or .nvram, a VM that does not boot. One case per
 * restore path: `restore` of a folder store's point, of a Ceph point, a Ceph
 * failover, and `restore --from s3://…` (an archive).
 */
import t, { type Test } from 'tap'
import { haveCeph, startCephCluster } from '@grainline/test-utils'
import { readdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { pino } from 'pino'
import { CreateBucketCommand } from '@aws-sdk/client-s3'
import { seededStore, watchSyncs, whenFree } from './helpers.ts'
import { rgwClient } from './s3-fixture.ts'
import { archivePoints, cephFailover, cephRestorePoint, cephRestoreVm, restoreFromArchive, restorePoint, S3Bucket } from '../src/index.ts'

const log = pino({ level: 'silent' })

/** Every file in `dir` was fsynced (itself, or the temporary file renamed to its name), then `dir`; `dir`'s parent too. */
function durable(t: Test, synced: readonly string[], dir: string, what: string, expect: readonly string[]): void {
  const files = readdirSync(dir).sort()
  for (const f of expect) t.ok(files.includes(f), `${what}: ${f} restored`)
  t.notOk(
    files.some((f) => f.includes('.tmp-')),
    `${what}: no temporary file left (${files.join(', ')})`,
  )
  let last = -1
  for (const f of files) {
    const p = join(dir, f)
    const i = synced.findLastIndex((s) => s === p || s.startsWith(`${p}.tmp-`))
    t.ok(i >= 0, `${what}: ${f} fsynced before the restore returned (synced: ${synced.join(', ')})`)
    last = Math.max(last, i)
  }
  t.ok(synced.lastIndexOf(dir) > last, `${what}: then its folder, so that the names are durable`)
  t.ok(synced.includes(dirname(dir)), `${what}: and the folder's parent (the new folder's name)`)
}

t.test('restore of a folder store point: descriptor, .vmx and .nvram fsynced, then the folder', async (t) => {
  const vm = 'web-durable'
  const { env } = await seededStore(t, vm)
  const w = await watchSyncs(t, env.dir)
  const to = join(env.dir, 'restores', 'r1')
  await whenFree(() => restorePoint(env.store, vm, 1, to, { logger: log }))
  w.stop()
  durable(t, w.synced, to, 'restore', ['d.vmdk', 'd-flat.vmdk', `${vm}.vmx`])
  t.ok(w.synced.includes(env.dir), 'both new folders: restores/ and restores/r1')
})

const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-common)'

t.test('Ceph restore, Ceph failover, restore from an archive: every file fsynced, then the folder', { skip }, async (t) => {
  const POOL = 'gldur'
  const ceph = await startCephCluster({ pools: [POOL], rgw: true })
  t.teardown(() => ceph.stop())
  const target = { pool: POOL, conf: ceph.conf }

  t.test('Ceph: restore and failover', async (t) => {
    const vm = 'vm-ceph-durable'
    const { env, receiver } = await seededStore(t, vm, { seed: 5, cycleId: 'cd02cd02cd02cd02', extra: { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10 } })
    await receiver.close()
    const w = await watchSyncs(t, env.dir)
    const to = join(env.dir, 'ceph-restore')
    await cephRestoreVm(target, vm, 1, to)
    durable(t, w.synced, to, 'Ceph restore', ['d.vmdk', 'd-flat.vmdk', `${vm}.vmx`])
    w.synced.length = 0
    const fo = join(env.dir, 'ceph-failover')
    await cephFailover(target, vm, undefined, fo, { logger: log })
    w.stop()
    durable(t, w.synced, fo, 'Ceph failover', ['d.vmdk', 'd-flat.vmdk', `${vm}.vmx`])
  })

  t.test('Ceph: points export (raw files)', async (t) => {
    const vm = 'vm-ceph-export'
    const { env, receiver } = await seededStore(t, vm, { seed: 7, cycleId: 'cd04cd04cd04cd04', extra: { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10 } })
    await receiver.close()
    const w = await watchSyncs(t, env.dir)
    const to = join(env.dir, 'exports', 'e1')
    const r = await cephRestorePoint(target, vm, 1, to)
    w.stop()
    t.same(
      r.disks.map((d) => d.file),
      [join(to, 'd.raw')],
      'one raw file per disk',
    )
    durable(t, w.synced, to, 'points export', ['d.raw'])
  })

  t.test('restore from an archive', async (t) => {
    const { s3, endpoint, credentials } = rgwClient(t, ceph)
    await s3.send(new CreateBucketCommand({ Bucket: 'durable', ObjectLockEnabledForBucket: true }))
    const bucket = new S3Bucket({ bucket: 'durable', prefix: 'p/', endpoint, credentials })
    t.teardown(() => bucket.close())
    const vm = 'vm-arch-durable'
    const { env } = await seededStore(t, vm, { seed: 6, cycleId: 'cd03cd03cd03cd03' })
    const archived = await archivePoints(env.store, vm, [1], { logger: log, bucket, prefix: 'p/', lock: { mode: 'GOVERNANCE', until: new Date(Date.now() + 86_400_000) } })
    t.equal(archived[0]?.archived, true)
    const w = await watchSyncs(t, env.dir)
    const to = join(env.dir, 'from-archive')
    await restoreFromArchive(bucket, 'p/', vm, 1, to, { logger: log })
    w.stop()
    durable(t, w.synced, to, 'archive restore', ['d.vmdk', 'd-flat.vmdk', `${vm}.vmx`])
  })
})
