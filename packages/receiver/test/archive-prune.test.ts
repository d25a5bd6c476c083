/**
 * Retention of the S3 archive (`points archive-prune`, docs/ARCHIVE.md
 * "Pruning") at the receiver's API, against a real radosgw (one cluster for
 * every case): a dry run deletes nothing; manifests selected by keep-last
 * are deleted with every version, the chunks only they used are collected
 * once past the grace period, the kept point still restores byte-exact;
 * --older-than selects by archive time; a manifest under Object Lock is kept
 * and reported; a manifest that does not parse makes the run delete
 * nothing; the run locks: an archive lock makes a prune refuse, a prune lock
 * makes an archive refuse, and a host whose clock is 2 h ahead is refused
 * (it took the archive lock for stale); a manifest hidden behind a delete
 * marker still counts as a point: its chunks stay, it restores through the
 * marker.
 */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { DeleteObjectCommand, ListObjectVersionsCommand, PutObjectCommand } from '@aws-sdk/client-s3'
import { startCephCluster, scratchDir } from '@grainline/test-utils'
import { archivePoints, chunkKey, listArchivedPoints, LOCK_STALE_MS, manifestKey, pruneArchive, readManifest, restoreFromArchive } from '../src/index.ts'
import { Agent, MiB, TOKEN, evolve, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver } from './helpers.ts'
import { rgwBucket } from './s3-fixture.ts'

const log = pino({ level: 'silent' })

t.test('archive-prune against radosgw: selection, GC with grace, Object Lock, strict manifests, run locks', async (t) => {
  const ceph = await startCephCluster({ rgw: true })
  t.teardown(() => ceph.stop())
  const { s3, bucket } = await rgwBucket(t, ceph, 'arch')

  // three points of a VM: each changes the first chunk, the last chunk is shared
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 5 } })
  t.teardown(() => receiver.close())
  const vm = 'web-prune'
  const images: Buffer[] = [Buffer.alloc(0), Buffer.concat([pattern(4 * MiB, 11), Buffer.alloc(4 * MiB), pattern(MiB, 12)])]
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, 'ad01ad01ad01ad01')])
  a.close()
  for (let c = 2; c <= 3; c++) {
    const ranges = [{ offset: c * 262_144, length: 65_536 }]
    images[c] = evolve(images[c - 1] as Buffer, c, ranges)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, c, [incPlan(0, 'd.vmdk', images[c] as Buffer, c - 1, `ad0${c}ad0${c}ad0${c}ad0${c}`, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)])
    a.close()
  }
  await receiver.close()

  const all = async (prefix: string): Promise<string[]> => (await bucket.list(prefix)).sort()
  const versionsOf = async (key: string): Promise<number> => {
    const r = await s3.send(new ListObjectVersionsCommand({ Bucket: 'arch', Prefix: key }))
    return [...(r.Versions ?? []), ...(r.DeleteMarkers ?? [])].filter((v) => v.Key === key).length
  }
  const digestsOf = async (prefix: string, cycle: number): Promise<Set<string>> => {
    const m = await readManifest(bucket, prefix, vm, cycle)
    return new Set([...m.files.map((f) => f.sha256), ...m.disks.flatMap((d) => d.chunks.filter((c): c is string => c !== null))])
  }

  // unlocked archive under a/
  t.same(
    (await archivePoints(env.store, vm, undefined, { logger: log, bucket, prefix: 'a/' })).map((p) => p.archived),
    [true, true, true],
  )
  t.same(await all('a/locks/'), [], 'the archive deleted its run lock')
  const used = [1, 2, 3].map(async (k) => await digestsOf('a/', k))
  const [d1, d2, d3] = (await Promise.all(used)) as [Set<string>, Set<string>, Set<string>]
  const onlyOld = new Set([...d1, ...d2].filter((d) => !d3.has(d)))
  t.ok(onlyOld.size >= 2, `chunks only points 1 and 2 use: ${onlyOld.size}`)
  const before = await all('a/')

  await t.rejects(pruneArchive({ logger: log, bucket, prefix: 'a/' }), { code: 'E_CONFIG', message: /--keep-last N and\/or --older-than/ }, 'no selector')

  // --grace 0 below: a chunk counts as past it once S3's clock, as the prune knows it (its own lock's LastModified,
  // to the second, less that second), is not before the chunk's LastModified — a chunk written in the same second
  // as the prune's lock is kept as young. The archive above may have ended within that second: one more passes.
  await new Promise((resolve) => setTimeout(resolve, 1100))

  // --dry-run: the same report, nothing deleted
  const dry = await pruneArchive({ logger: log, bucket, prefix: 'a/', keepLast: 1, graceMs: 0, dryRun: true })
  t.same(
    dry.manifests.deleted.map((m) => m.cycle),
    [2, 1],
    'dry run: would delete the manifests of points 2 and 1',
  )
  t.equal(dry.chunks.deleted, onlyOld.size, 'dry run: would delete the chunks only they use')
  t.ok(dry.bytesFreed > 4 * MiB, `dry run: bytes it would free (${dry.bytesFreed})`)
  t.same(await all('a/'), before, 'dry run: nothing deleted')

  // --older-than selects by archive time (against S3's clock): nothing archived an hour ago; all but the newest archived over 2 s ago
  t.same((await pruneArchive({ logger: log, bucket, prefix: 'a/', olderThanMs: 3600_000, dryRun: true })).manifests.deleted, [], 'older-than 1h: nothing yet')
  await new Promise((resolve) => setTimeout(resolve, 3000))
  t.same(
    (await pruneArchive({ logger: log, bucket, prefix: 'a/', olderThanMs: 2000, dryRun: true })).manifests.deleted.map((m) => m.cycle),
    [2, 1],
    'older-than 2s: every point but the newest (without --keep-last a VM keeps its newest archived point)',
  )
  t.same((await pruneArchive({ logger: log, bucket, prefix: 'a/', vm: 'someone-else', keepLast: 0, dryRun: true })).manifests.deleted, [], '--vm: only that VM')

  // an archive lock: the prune refuses, deletes nothing, leaves no lock of its own; a host whose clock is 2 h ahead (by
  // which the lock looked stale) is refused for its clock
  await s3.send(new PutObjectCommand({ Bucket: 'arch', Key: 'a/locks/archive-test', Body: JSON.stringify({ kind: 'archive', host: 'dr-host-7', pid: 4242, time: new Date().toISOString() }) }))
  await t.rejects(
    pruneArchive({ logger: log, bucket, prefix: 'a/', keepLast: 1, graceMs: 0 }),
    { code: 'E_BUSY', message: /a points archive holds the lock a\/locks\/archive-test \(host dr-host-7 pid 4242 since .*\).*2 h old/ },
    'archive lock present: prune refused',
  )
  t.same(await all('a/'), [...before, 'a/locks/archive-test'].sort(), 'nothing deleted, no prune lock left')
  await t.rejects(
    pruneArchive({ logger: log, bucket, prefix: 'a/', keepLast: 1, graceMs: 0, now: () => Date.now() + LOCK_STALE_MS }),
    { code: 'E_ARCHIVE', message: /the local clock of .* is 2 h 0 min ahead of the S3 server's.*Fix the clock \(NTP/ },
    'a host 2 h ahead: refused, the archive lock not taken for stale',
  )
  t.same(await all('a/'), [...before, 'a/locks/archive-test'].sort(), 'nothing deleted, no prune lock left')
  await s3.send(new DeleteObjectCommand({ Bucket: 'arch', Key: 'a/locks/archive-test' }))

  // a prune lock: an archive refuses (before reading or sending anything)
  await s3.send(new PutObjectCommand({ Bucket: 'arch', Key: 'b/locks/prune-test', Body: JSON.stringify({ kind: 'prune', host: 'dr-host-8', pid: 77, time: new Date().toISOString() }) }))
  await t.rejects(
    archivePoints(env.store, vm, undefined, { logger: log, bucket, prefix: 'b/' }),
    { code: 'E_BUSY', message: /cannot archive points in s3:\/\/arch\/b\/: a points archive-prune holds the lock b\/locks\/prune-test \(host dr-host-8 pid 77/ },
    'prune lock present: archive refused',
  )
  t.same(await all('b/'), ['b/locks/prune-test'], 'nothing uploaded, no archive lock left')
  await s3.send(new DeleteObjectCommand({ Bucket: 'arch', Key: 'b/locks/prune-test' }))

  // a manifest that does not parse (another VM's): the run deletes nothing and names it
  await s3.send(new PutObjectCommand({ Bucket: 'arch', Key: manifestKey('a/', 'other', 1), Body: '{"format":"grainline-archive-v1", "vm": "other"' }))
  await t.rejects(
    pruneArchive({ logger: log, bucket, prefix: 'a/', vm, keepLast: 1, graceMs: 0 }),
    { code: 'E_ARCHIVE', message: /s3:\/\/arch\/a\/vms\/other\/points\/000000000001\.json: not JSON.*nothing was deleted.*delete it by hand/ },
    'an unparsable manifest: refused',
  )
  t.same(await all('a/'), [...before, manifestKey('a/', 'other', 1)].sort(), 'nothing deleted')
  await bucket.deleteAllVersions(manifestKey('a/', 'other', 1))

  // the prune: manifests 2 and 1 go at once (every version), their chunks only after the grace period
  const first = await pruneArchive({ logger: log, bucket, prefix: 'a/', keepLast: 1 })
  t.same(
    first.manifests.deleted.map((m) => m.cycle),
    [2, 1],
  )
  t.equal(first.chunks.deleted, 0, 'default grace 24h: no chunk deleted yet')
  t.equal(first.chunks.young, onlyOld.size, 'the unreferenced chunks are younger than the grace')
  t.same(await listArchivedPoints(bucket, 'a/', vm), [{ cycle: 3, hidden: false }])
  t.equal(await versionsOf(manifestKey('a/', vm, 1)), 0, 'no version or delete marker of a deleted manifest is left')
  const gc = await pruneArchive({ logger: log, bucket, prefix: 'a/', keepLast: 1, graceMs: 0 })
  t.equal(gc.manifests.deleted.length, 0)
  t.equal(gc.chunks.deleted, onlyOld.size, 'grace 0: the chunks only points 1 and 2 used are deleted')
  t.equal(gc.chunks.referenced, d3.size, 'the kept point’s chunks are all referenced')
  t.ok(gc.bytesFreed > 4 * MiB)
  const left = (await all('a/chunks/')).map((k) => k.slice(-64)).sort()
  t.same(left, [...d3].sort(), 'exactly the kept point’s chunks are left')
  for (const d of onlyOld) t.equal(await versionsOf(chunkKey('a/', d)), 0, `chunk ${d.slice(0, 8)}: every version deleted`)
  const r = await restoreFromArchive(bucket, 'a/', vm, 3, join(env.dir, 'restored-3'), { logger: log })
  t.ok(readFileSync(r.disks[0]?.flat as string).equals(images[3] as Buffer), 'the kept point still restores byte-exact')
  t.same(await all('a/locks/'), [], 'the prune deleted its run lock')

  // point 3's manifest hidden by a plain DELETE (a delete marker): still a point — the prune keeps its chunks, it restores
  await s3.send(new DeleteObjectCommand({ Bucket: 'arch', Key: manifestKey('a/', vm, 3) }))
  t.same(await listArchivedPoints(bucket, 'a/', vm), [{ cycle: 3, hidden: true }], 'listed, marked hidden (restore reads through the marker)')
  const hidden = await pruneArchive({ logger: log, bucket, prefix: 'a/', keepLast: 1, graceMs: 0 })
  t.same(
    [hidden.manifests.hidden, hidden.manifests.deleted, hidden.chunks.deleted, hidden.chunks.referenced],
    [[manifestKey('a/', vm, 3)], [], 0, d3.size],
    'seen through the marker: no chunk deleted',
  )
  const through = await restoreFromArchive(bucket, 'a/', vm, 3, join(env.dir, 'restored-3-hidden'), { logger: log })
  t.ok(readFileSync(through.disks[0]?.flat as string).equals(images[3] as Buffer), 'the hidden point restores byte-exact through the marker')
  const gone = await pruneArchive({ logger: log, bucket, prefix: 'a/', vm, keepLast: 0, graceMs: 0 })
  t.same([gone.manifests.deleted.map((m) => m.cycle), gone.chunks.deleted], [[3], d3.size], 'selected: deleted, its chunks with it')
  t.equal(await versionsOf(manifestKey('a/', vm, 3)), 0, 'every version and the marker deleted')
  t.same(await all('a/'), [], 'nothing left under a/')

  // locked manifests: kept, reported with their lock's end; their chunks (locked too, and referenced) stay
  const until = new Date(Date.now() + 86_400_000)
  await archivePoints(env.store, vm, undefined, { logger: log, bucket, prefix: 'l/', lock: { mode: 'GOVERNANCE', until } })
  t.same(await all('l/locks/'), [], 'run locks are written without retention: deleted even with a lock')
  const lockedBefore = await all('l/')
  const locked = await pruneArchive({ logger: log, bucket, prefix: 'l/', keepLast: 1, graceMs: 0 })
  t.same(locked.manifests.deleted, [], 'nothing deleted')
  t.same(
    locked.manifests.keptLocked.map((k) => [k.key, Math.abs(Date.parse(k.until as string) - until.getTime()) < 2000]),
    [
      [manifestKey('l/', vm, 2), true],
      [manifestKey('l/', vm, 1), true],
    ],
    'the locked manifests are reported with the end of their lock',
  )
  t.same(await all('l/'), lockedBefore, 'nothing deleted under a lock')
})
