/**
 * Archives of restore points on S3 (docs/ARCHIVE.md) at the receiver's API,
 * against a real radosgw (test-utils startCephCluster): a store with points
 * written by real cycles, archived with Object Lock, restored from the bucket
 * into folders equal to each point's image, and the refusals: a lock on a
 * bucket without Object Lock, a point the store does not have, a cycle in
 * flight, wrong credentials, an object missing, a manifest for another VM,
 * an object larger than expected.
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { CreateBucketCommand, DeleteObjectCommand, ListObjectVersionsCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3'
import { startCephCluster, scratchDir } from '@grainline/test-utils'
import { archivePoints, chunkKey, listArchivedPoints, manifestKey, readManifest, restoreFromArchive, S3Bucket } from '../src/index.ts'
import { Agent, MiB, TOKEN, evolve, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver } from './helpers.ts'

const log = pino({ level: 'silent' })

t.test('archive points to radosgw with a lock, restore each from the bucket; every refusal typed', async (t) => {
  const ceph = await startCephCluster({ rgw: true })
  t.teardown(() => ceph.stop())
  const s3cfg = ceph.s3 as NonNullable<typeof ceph.s3>
  const credentials = { accessKeyId: s3cfg.accessKeyId, secretAccessKey: s3cfg.secretAccessKey }
  const s3 = new S3Client({
    region: 'us-east-1',
    endpoint: s3cfg.endpoint,
    forcePathStyle: true,
    credentials,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  })
  t.teardown(() => s3.destroy())
  await s3.send(new CreateBucketCommand({ Bucket: 'locked', ObjectLockEnabledForBucket: true }))
  await s3.send(new CreateBucketCommand({ Bucket: 'plain' }))
  const bucket = new S3Bucket({ bucket: 'locked', prefix: 'p/', endpoint: s3cfg.endpoint, credentials })
  const plain = new S3Bucket({ bucket: 'plain', prefix: '', endpoint: s3cfg.endpoint, credentials })
  t.teardown(() => {
    bucket.close()
    plain.close()
  })

  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 5 } })
  t.teardown(() => receiver.close())
  const vm = 'web-arch'
  const cap = 9 * MiB
  const images: Buffer[] = [Buffer.alloc(0), Buffer.concat([pattern(4 * MiB, 1), Buffer.alloc(4 * MiB), pattern(MiB, 2)])]
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, 'ab01ab01ab01ab01')])
  a.close()
  for (let c = 2; c <= 3; c++) {
    const ranges = [{ offset: (c * 1_000_003) & ~511, length: 65_536 }]
    images[c] = evolve(images[c - 1] as Buffer, c, ranges)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, c, [incPlan(0, 'd.vmdk', images[c] as Buffer, c - 1, `ab0${c}ab0${c}ab0${c}ab0${c}`, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)])
    a.close()
  }
  await receiver.close()

  const until = new Date(Date.now() + 86_400_000)
  await t.rejects(archivePoints(env.store, vm, undefined, { logger: log, bucket: plain, prefix: '', lock: { mode: 'GOVERNANCE', until } }), { code: 'E_CONFIG', message: /no Object Lock/ })
  await t.rejects(archivePoints(env.store, vm, [9], { logger: log, bucket, prefix: 'p/' }), { code: 'E_NOT_FOUND', message: /no point 9 \(points: 1, 2, 3\)/ })
  await t.rejects(archivePoints(env.store, 'nobody', undefined, { logger: log, bucket, prefix: 'p/' }), { code: 'E_NOT_FOUND' })
  const progress: number[] = []
  const done = await archivePoints(env.store, vm, undefined, { logger: log, bucket, prefix: 'p/', lock: { mode: 'GOVERNANCE', until }, onProgress: (p) => progress.push(p.bytes) })
  t.same(
    done.map((p) => [p.cycle, p.archived, p.zero]),
    [
      [1, true, 1],
      [2, true, 1],
      [3, true, 1],
    ],
    'three points archived, the zero chunk of each not stored',
  )
  const files = (await readManifest(bucket, 'p/', vm, 1)).files
  t.ok(
    files.some((f) => f.name === `${vm}.vmx`),
    'the .vmx is archived',
  )
  t.equal(done[0]?.uploaded, 2 + files.length, 'point 1: two data chunks and the configuration files')
  t.ok((done[1]?.present ?? 0) >= 1 && (done[1]?.uploaded ?? 0) === 1, 'point 2: one changed chunk uploaded, the rest already there')
  t.ok(progress.length > 0 && progress.at(-1) === cap, 'progress reaches the total')
  const head = await bucket.head(chunkKey('p/', (await readManifest(bucket, 'p/', vm, 1)).disks[0]?.chunks[0] as string))
  t.ok(head?.retainUntil !== undefined && Math.abs((head.retainUntil as Date).getTime() - until.getTime()) < 2000, 'chunks carry the lock')
  // a longer lock on a second run extends the shared chunks' locks
  const later = new Date(until.getTime() + 86_400_000)
  const again = await archivePoints(env.store, vm, [3], { logger: log, bucket, prefix: 'q/', lock: { mode: 'GOVERNANCE', until: later } })
  t.equal(again[0]?.archived, true)
  t.same(await listArchivedPoints(bucket, 'p/', vm), [1, 2, 3])
  t.same(await listArchivedPoints(bucket, 'p/', 'nobody'), [])
  t.equal((await archivePoints(env.store, vm, [2], { logger: log, bucket, prefix: 'p/' }))[0]?.archived, false, 'an archived point is skipped')
  // a hostile store: the mirror's .vmx a link to a file outside the store, or a FIFO: refused, typed, nothing uploaded from outside
  const vmxPath = join(env.store, vm, `${vm}.vmx`)
  const vmxText = readFileSync(vmxPath)
  const secret = join(env.dir, 'secret.txt')
  writeFileSync(secret, 'not for the bucket')
  rmSync(vmxPath)
  symlinkSync(secret, vmxPath)
  await t.rejects(archivePoints(env.store, vm, [3], { logger: log, bucket, prefix: 'h/' }), { code: 'E_STORE_FILE' }, 'a .vmx that is a link to a file outside the store')
  rmSync(vmxPath)
  execFileSync('mkfifo', [vmxPath])
  await t.rejects(archivePoints(env.store, vm, [3], { logger: log, bucket, prefix: 'h/' }), { code: 'E_STORE_FILE' }, 'a .vmx that is a FIFO: refused, no hang')
  rmSync(vmxPath)
  writeFileSync(vmxPath, vmxText)
  t.same(await bucket.list('h/'), [], 'nothing uploaded under the refused prefix')

  for (let k = 1; k <= 3; k++) {
    const to = join(env.dir, `restored-${k}`)
    const r = await restoreFromArchive(bucket, 'p/', vm, k, to, { logger: log })
    t.ok(readFileSync(r.disks[0]?.flat as string).equals(images[k] as Buffer), `point ${k} restored from the bucket = its image`)
    t.match(readFileSync(join(to, `${vm}.vmx`), 'utf8'), /archived point/)
  }
  await t.rejects(restoreFromArchive(bucket, 'p/', vm, 1, join(env.dir, 'restored-1'), { logger: log }), { code: 'E_CONFIG', message: /not empty/ })
  await t.rejects(restoreFromArchive(bucket, 'p/', vm, 7, join(env.dir, 'r7'), { logger: log }), { code: 'E_ARCHIVE', message: /missing/ })
  // a delete marker over a chunk: the restore reads the locked version under it
  const m1 = await readManifest(bucket, 'p/', vm, 1)
  await s3.send(new DeleteObjectCommand({ Bucket: 'locked', Key: chunkKey('p/', m1.disks[0]?.chunks[0] as string) }))
  const r1 = await restoreFromArchive(bucket, 'p/', vm, 1, join(env.dir, 'after-marker'), { logger: log })
  t.ok(readFileSync(r1.disks[0]?.flat as string).equals(images[1] as Buffer), 'a delete marker does not hide a chunk')
  const versions = await s3.send(new ListObjectVersionsCommand({ Bucket: 'locked', Prefix: 'p/chunks/' }))
  await t.rejects(
    s3.send(new DeleteObjectCommand({ Bucket: 'locked', Key: versions.Versions?.[0]?.Key, VersionId: versions.Versions?.[0]?.VersionId })),
    { name: 'AccessDenied' },
    'a locked version cannot be deleted',
  )
  // a manifest copied under another VM's name, an oversized object, wrong credentials
  const body = await bucket.get(manifestKey('p/', vm, 2), 1 << 20)
  await s3.send(new PutObjectCommand({ Bucket: 'plain', Key: manifestKey('', 'other', 2), Body: body }))
  await t.rejects(readManifest(plain, '', 'other', 2), { code: 'E_ARCHIVE', message: /describes VM web-arch cycle 2/ })
  await t.rejects(bucket.get(manifestKey('p/', vm, 2), 10), { code: 'E_ARCHIVE', message: /over the 10 expected/ })
  const wrong = new S3Bucket({ bucket: 'locked', prefix: 'p/', endpoint: s3cfg.endpoint, credentials: { accessKeyId: s3cfg.accessKeyId, secretAccessKey: 'not-the-secret' } })
  t.teardown(() => wrong.close())
  await t.rejects(wrong.list('p/'), { code: 'E_ARCHIVE', message: /check the credentials/ })
  await t.rejects(wrong.head('p/x'), { code: 'E_ARCHIVE' })
})
