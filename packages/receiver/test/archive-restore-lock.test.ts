/**
 * `restore --from s3://…` holds the archive's run lock (docs/ARCHIVE.md
 * "Guarantees"), against a real radosgw: a prune lock makes a restore refuse
 * (E_BUSY, naming the prune's host, pid and start; nothing written, no lock
 * left); a restore lock makes a prune refuse (nothing deleted) but not an
 * archive; a prune started while a restore reads its chunks is refused, and
 * the restore ends byte-exact; a restore whose lock was not rewritten for an
 * hour stops. A restore that fails half-way (a chunk of the second disk
 * missing, a chunk damaged, the lock lost) leaves nothing in its folder — no
 * descriptor and flat of the first disk that look whole — and no lock.
 */
import t from 'tap'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { DeleteObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3'
import { scratchDir, startCephCluster } from '@grainline/test-utils'
import { archivePoints, chunkKey, LOCK_HELD_MS, pruneArchive, readManifest, restoreFromArchive, S3Bucket } from '../src/index.ts'
import { Agent, MiB, TOKEN, makeEnv, pattern, runCycle, seedPlan, startReceiver } from './helpers.ts'
import { rgwBucket, rgwClient } from './s3-fixture.ts'

const log = pino({ level: 'silent' })

/** The receiver's real S3Bucket, with a hook run before each read (to act while a restore is under way). */
class HookedBucket extends S3Bucket {
  beforeGet: ((key: string) => Promise<void>) | undefined
  override async get(key: string, maxBytes: number): Promise<Buffer> {
    await this.beforeGet?.(key)
    return await super.get(key, maxBytes)
  }
}

t.test('restore from the archive and archive-prune exclude each other; a failed restore leaves nothing', async (t) => {
  const ceph = await startCephCluster({ rgw: true })
  t.teardown(() => ceph.stop())
  const { s3, bucket } = await rgwBucket(t, ceph, 'arch')
  const { endpoint, credentials } = rgwClient(t, ceph)
  const hooked = new HookedBucket({ bucket: 'arch', prefix: '', endpoint, credentials })
  t.teardown(() => hooked.close())

  // one point of a VM with two disks of 3 chunks each (4 MiB chunks), archived under r/
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const vm = 'web-restore-lock'
  const imgA = pattern(9 * MiB, 21)
  const imgB = pattern(9 * MiB, 22)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'a.vmdk', imgA, 'aa01aa01aa01aa01'), seedPlan(1, 'b.vmdk', imgB, 'bb01bb01bb01bb01')])
  a.close()
  await receiver.close()
  t.same(
    (await archivePoints(env.store, vm, [1], { logger: log, bucket, prefix: 'r/' })).map((p) => p.archived),
    [true],
  )
  const all = async (prefix: string): Promise<string[]> => (await bucket.list(prefix)).sort()
  const archived = await all('r/')
  const m = await readManifest(bucket, 'r/', vm, 1)
  t.equal(m.disks.length, 2, 'two disks archived')

  t.test('a prune lock: the restore refuses, writes nothing, leaves no lock', async (t) => {
    await s3.send(new PutObjectCommand({ Bucket: 'arch', Key: 'r/locks/prune-test', Body: JSON.stringify({ kind: 'prune', host: 'dr-host-8', pid: 77, time: '2026-12-07T03:00:00.000Z' }) }))
    const to = join(env.dir, 'refused')
    await t.rejects(
      restoreFromArchive(bucket, 'r/', vm, 1, to, { logger: log }),
      {
        code: 'E_BUSY',
        message:
          /^cannot restore from the archive in s3:\/\/arch\/r\/: a points archive-prune holds the lock r\/locks\/prune-test \(host dr-host-8 pid 77 since 2026-12-07T03:00:00\.000Z, last written .*\)\. Run again once it has finished \(on host dr-host-8: ps -p 77\); .*2 h old.*grainline restore --from s3:\/\/arch\/r\/ … --despite-lock r\/locks\/prune-test — you assert the prune is dead/,
      },
      'prune lock present: restore refused',
    )
    t.notOk(existsSync(to), 'nothing written: not even the folder')
    t.same(await all('r/'), [...archived, 'r/locks/prune-test'].sort(), 'no restore lock left')
    await s3.send(new DeleteObjectCommand({ Bucket: 'arch', Key: 'r/locks/prune-test' }))
  })

  t.test('a restore lock: a prune refuses and deletes nothing; an archive goes on', async (t) => {
    await s3.send(new PutObjectCommand({ Bucket: 'arch', Key: 'r/locks/restore-test', Body: JSON.stringify({ kind: 'restore', host: 'dr-host-9', pid: 99, time: '2026-12-07T03:01:00.000Z' }) }))
    await t.rejects(
      pruneArchive({ logger: log, bucket, prefix: 'r/', vm, keepLast: 0, graceMs: 0 }),
      {
        code: 'E_BUSY',
        message:
          /^cannot prune the archive in s3:\/\/arch\/r\/: a restore --from s3:\/\/… holds the lock r\/locks\/restore-test \(host dr-host-9 pid 99 since 2026-12-07T03:01:00\.000Z, last written .*\)\. Run again once it has finished \(on host dr-host-9: ps -p 99\); .*2 h old \(it is then ignored\)$/,
      },
      'restore lock present: prune refused',
    )
    t.same(await all('r/'), [...archived, 'r/locks/restore-test'].sort(), 'nothing deleted, no prune lock left')
    t.same(
      (await archivePoints(env.store, vm, [1], { logger: log, bucket, prefix: 'r/' })).map((p) => p.archived),
      [false],
      'an archive runs beside a restore (the point is there already)',
    )
    t.same(await all('r/locks/'), ['r/locks/restore-test'], 'the archive deleted its own lock')
    await s3.send(new DeleteObjectCommand({ Bucket: 'arch', Key: 'r/locks/restore-test' }))
  })

  t.test('a prune started while a restore reads its chunks is refused; the restore ends whole; no lock left', async (t) => {
    let prune: Promise<unknown> | undefined
    let locksDuring: string[] = []
    hooked.beforeGet = async (key) => {
      if (prune !== undefined || !key.includes('/chunks/')) return
      locksDuring = await all('r/locks/')
      // keep-last 0 would select the very manifest being restored, then its chunks
      prune = pruneArchive({ logger: log, bucket, prefix: 'r/', vm, keepLast: 0, graceMs: 0 }).then(
        () => 'pruned',
        (err: unknown) => err,
      )
      await prune
    }
    t.teardown(() => {
      hooked.beforeGet = undefined
    })
    const to = join(env.dir, 'restored')
    const r = await restoreFromArchive(hooked, 'r/', vm, 1, to, { logger: log, concurrency: 1 })
    t.equal(locksDuring.length, 1, `one lock while the restore runs: ${locksDuring.join(', ')}`)
    t.match(locksDuring[0], /^r\/locks\/restore-[0-9a-f-]{36}$/, 'the restore’s lock')
    t.match(await prune, { code: 'E_BUSY', message: /a restore --from s3:\/\/… holds the lock r\/locks\/restore-/ }, 'the prune was refused')
    t.same(await all('r/'), archived, 'nothing deleted; the restore deleted its lock')
    t.ok(readFileSync(r.disks[0]?.flat as string).equals(imgA), 'disk a restored byte-exact')
    t.ok(readFileSync(r.disks[1]?.flat as string).equals(imgB), 'disk b restored byte-exact')
    t.same(readdirSync(to).sort(), ['a-flat.vmdk', 'a.vmdk', 'b-flat.vmdk', 'b.vmdk', `${vm}.nvram`, `${vm}.vmx`].sort(), 'the whole folder, no temporary file')
  })

  t.test('a restore whose lock was not rewritten for an hour stops, leaves nothing and no lock', async (t) => {
    let skew = 0
    let chunks = 0
    hooked.beforeGet = async (key) => {
      if (key.includes('/chunks/') && ++chunks === 2) skew = LOCK_HELD_MS
    }
    t.teardown(() => {
      hooked.beforeGet = undefined
    })
    const to = join(env.dir, 'lost-lock')
    await t.rejects(
      restoreFromArchive(hooked, 'r/', vm, 1, to, { logger: log, concurrency: 1, monotonic: () => performance.now() + skew }),
      { code: 'E_ARCHIVE', message: /the run lock s3:\/\/arch\/r\/locks\/restore-.* was last written 60 min ago .* this restore stopped/ },
      'stopped before reading more chunks',
    )
    t.same(readdirSync(to), [], 'nothing left in the folder')
    t.same(await all('r/locks/'), [], 'no lock left')
  })

  t.test('a chunk of the second disk missing: nothing left that looks whole, no lock', async (t) => {
    // under its own prefix, so that the other cases keep a whole archive
    await archivePoints(env.store, vm, [1], { logger: log, bucket, prefix: 'm/' })
    const mm = await readManifest(bucket, 'm/', vm, 1)
    const firstDisk = new Set(mm.disks[0]?.chunks)
    const gone = mm.disks[1]?.chunks.find((c): c is string => c !== null && !firstDisk.has(c)) as string
    await bucket.deleteAllVersions(chunkKey('m/', gone))
    const to = join(env.dir, 'half')
    await t.rejects(restoreFromArchive(bucket, 'm/', vm, 1, to, { logger: log }), { code: 'E_ARCHIVE', message: /is missing from bucket arch.*the archive is incomplete/ })
    t.same(readdirSync(to), [], 'the first disk’s descriptor and flat (restored whole) are not left as if the restore had finished')
    t.same(await all('m/locks/'), [], 'no lock left')
  })

  t.test('a damaged chunk: E_VERIFY, nothing left, no lock', async (t) => {
    await archivePoints(env.store, vm, [1], { logger: log, bucket, prefix: 'd/' })
    const md = await readManifest(bucket, 'd/', vm, 1)
    const bad = md.disks[1]?.chunks.at(-1) as string
    await s3.send(new PutObjectCommand({ Bucket: 'arch', Key: chunkKey('d/', bad), Body: Buffer.alloc(MiB, 7) }))
    const to = join(env.dir, 'damaged')
    await t.rejects(restoreFromArchive(bucket, 'd/', vm, 1, to, { logger: log }), {
      code: 'E_VERIFY',
      message: new RegExp(
        `archive chunk ${bad} \\(disk b\\.vmdk, offset \\d+\\) of VM ${vm} point 1 does not match its digest: the archive is damaged \\(what the restore wrote to .*damaged is removed\\)`,
      ),
    })
    t.same(readdirSync(to), [], 'nothing left')
    t.same(await all('d/locks/'), [], 'no lock left')
  })
})
