/**
 * Archives of restore points on S3 (docs/ARCHIVE.md) at the receiver's API,
 * against a real radosgw (test-utils startCephCluster): a store with points
 * written by real cycles, archived with Object Lock, restored from the bucket
 * into folders equal to each point's image, and the refusals: a lock on a
 * bucket without Object Lock, a point the store does not have, a cycle in
 * flight, wrong credentials, an object missing, a manifest for another VM,
 * an object larger than expected.
 */
import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import { openSync, readFileSync, rmSync, symlinkSync, writeFileSync, writeSync, closeSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { createDigest, MessageKind } from '@grainline/protocol'
import { CreateBucketCommand, DeleteObjectCommand, ListObjectVersionsCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3'
import { startCephCluster, scratchDir } from '@grainline/test-utils'
import { archivePoints, chunkKey, listArchivedPoints, manifestKey, readManifest, restoreFromArchive, S3Bucket } from '../src/index.ts'
import { Agent, MiB, TOKEN, evolve, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver } from './helpers.ts'

const log = pino({ level: 'silent' })

/** A one-node Ceph cluster with radosgw for this test, and an S3 client of it (both stopped with the test). */
async function radosgw(t: Test): Promise<{ s3cfg: NonNullable<Awaited<ReturnType<typeof startCephCluster>>['s3']>; credentials: { accessKeyId: string; secretAccessKey: string }; s3: S3Client }> {
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
  return { s3cfg, credentials, s3 }
}

t.test('archive points to radosgw with a lock, restore each from the bucket; every refusal typed', async (t) => {
  const { s3cfg, credentials, s3 } = await radosgw(t)
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
  t.same(
    (await listArchivedPoints(bucket, 'p/', vm)).map((p) => [p.cycle, p.hidden]),
    [
      [1, false],
      [2, false],
      [3, false],
    ],
  )
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

t.test('a point that no longer matches the digest recorded at its cycle is not archived as verified; nor is one read through an edited mirror descriptor', async (t) => {
  const { s3cfg, credentials, s3 } = await radosgw(t)
  await s3.send(new CreateBucketCommand({ Bucket: 'checked' }))
  const bucket = new S3Bucket({ bucket: 'checked', prefix: '', endpoint: s3cfg.endpoint, credentials })
  t.teardown(() => bucket.close())

  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 5 } })
  t.teardown(() => receiver.close())
  const vm = 'web-arch-check'
  const images: Buffer[] = [Buffer.alloc(0), Buffer.concat([pattern(4 * MiB, 5), pattern(MiB, 6)])]
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, 'ac01ac01ac01ac01')])
  a.close()
  // cycles 2 and 3 certified (md5 of the whole disk): point 2 and the mirror carry a certify record
  for (let c = 2; c <= 3; c++) {
    const ranges = [{ offset: c * 131_072, length: 65_536 }]
    images[c] = evolve(images[c - 1] as Buffer, c, ranges)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, c, [incPlan(0, 'd.vmdk', images[c] as Buffer, c - 1, `ac0${c}ac0${c}ac0${c}ac0${c}`, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)])
    a.send({
      kind: MessageKind.Certify,
      disk: 0,
      algorithm: 'md5',
      digest: createDigest('md5')
        .update(images[c] as Buffer)
        .digest(),
    })
    t.equal((await a.expect(MessageKind.CertifyResult)).ok, true, `certify at cycle ${c}`)
    a.close()
  }
  await receiver.close()

  const ok = await archivePoints(env.store, vm, undefined, { logger: log, bucket, prefix: 'ok/' })
  t.same(
    ok.map((p) => p.archived),
    [true, true, true],
  )
  const verified: unknown[] = []
  for (let k = 1; k <= 3; k++) verified.push((await readManifest(bucket, 'ok/', vm, k)).disks[0]?.verified)
  t.same(verified, ['none', 'certify', 'certify'], 'the manifest records which check each point matched')

  // bit rot in the mirror's flat (same size, same descriptor): status cannot see it, the certify digests can
  const flat = join(env.store, vm, 'd-flat.vmdk')
  const at = 3 * MiB + 12_345
  const good = readFileSync(flat).subarray(at, at + 1)
  const fd = openSync(flat, 'r+')
  writeSync(fd, Buffer.from([(good[0] as number) ^ 0xff]), 0, 1, at)
  closeSync(fd)
  await t.rejects(
    archivePoints(env.store, vm, [3], { logger: log, bucket, prefix: 'bad/' }),
    { code: 'E_VERIFY', message: /disk d\.vmdk of point 3 of VM web-arch-check does not match the certify digest recorded at that cycle \(md5 .*no manifest written/ },
    'the mirror (point 3) refused',
  )
  await t.rejects(archivePoints(env.store, vm, [2], { logger: log, bucket, prefix: 'bad/' }), { code: 'E_VERIFY' }, 'point 2, read through the mirror, refused')
  t.same(await listArchivedPoints(bucket, 'bad/', vm), [], 'no manifest written for a damaged point')
  const p1 = await archivePoints(env.store, vm, [1], { logger: log, bucket, prefix: 'bad/' })
  t.equal(p1[0]?.archived, true, 'point 1 has no check recorded: archived, and its manifest says so')
  t.equal((await readManifest(bucket, 'bad/', vm, 1)).disks[0]?.verified, 'none')
  const fd2 = openSync(flat, 'r+')
  writeSync(fd2, good, 0, 1, at)
  closeSync(fd2)

  // the mirror descriptor names a file outside the store with its recorded CID: the archive reads nothing through it
  const desc = join(env.store, vm, 'd.vmdk')
  const text = readFileSync(desc, 'utf8')
  const outside = join(env.dir, 'secret.bin')
  writeFileSync(outside, pattern(5 * MiB, 77))
  writeFileSync(desc, text.replace('"d-flat.vmdk"', JSON.stringify(outside)))
  await t.rejects(archivePoints(env.store, vm, [3], { logger: log, bucket, prefix: 'desc/' }), { code: 'E_STATE', message: /descriptor names the extents/ }, 'an edited mirror descriptor: refused')
  t.same(await bucket.list('desc/'), [], 'nothing uploaded from the outside file')
  writeFileSync(desc, text)
  t.equal((await archivePoints(env.store, vm, [3], { logger: log, bucket, prefix: 'desc/' }))[0]?.archived, true, 'archived once the descriptor is put back')
})
