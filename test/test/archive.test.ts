// Restore points archived to S3 with Object Lock (issue #18, docs/ARCHIVE.md),
// against Ceph's S3 gateway: a real one-node cluster (mon, memstore OSD,
// radosgw) on loopback, a real receiver and real agent processes. After a
// seed and three incremental cycles with points, `points archive` copies
// every point; chunks every point shares travel once; a second run sends
// nothing. Then the DR host's store is deleted and every point restored from
// the bucket alone equals the frozen source of its cycle. The lock holds: a
// locked version cannot be deleted, a delete marker does not hide the data,
// and a chunk replaced in an unlocked archive is found (E_VERIFY).
import t from 'tap'
import { rm, writeFile } from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { readFile } from 'node:fs/promises'
import { DeleteObjectCommand, ListObjectVersionsCommand, PutObjectCommand } from '@aws-sdk/client-s3'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { failIfLingering, firstDifference, qemuRaw, scratchDir, startCephCluster } from '@grainline/test-utils'
import { frozenView, startSite, replicateCli, rgwArchive, runCli } from '@grainline/e2e'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const MiB = 1024 * 1024

interface Archived {
  points: { cycle: number; archived: boolean; uploaded: number; present: number; zero: number; uploadedBytes: number }[]
}

t.test('points archived to radosgw with Object Lock; every point restored from the bucket alone', async (t) => {
  const dir = scratchDir(t, 'grainline-archive-')
  const ceph = await startCephCluster({ rgw: true })
  t.teardown(() => ceph.stop())
  const { s3, args: s3args } = await rgwArchive(t, ceph, dir, { 'dr-archive': 'locked', 'no-lock': 'unlocked' })

  const config = join(dir, 'receiver.json')
  await writeFile(config, JSON.stringify({ store: join(dir, 'dr', 'store'), retention: { keep: 5 } }))
  const site = await startSite(join(dir, 'dr'), ['*'], [], ['--config', config])
  t.teardown(() => site.receiver.stop())
  const name = 'app archive'
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes: 40 * MiB }, { sizeBytes: 16 * MiB, node: 'sata0:1', fill: 'sparse' }], seed: 11 })
  const expected: string[][] = []
  for (let cycle = 1; cycle <= 4; cycle++) {
    if (cycle > 1) await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, writeSize: 32 * 1024, seed: cycle * 3, zeroFraction: 0.2 })
    expected[cycle] = await frozenView(vm.vmxPath, join(dir, `expected-${cycle}`))
    const r = await replicateCli(site, vm.vmxPath)
    t.equal(r.code, 0, `cycle ${cycle}: ${r.stderr.slice(-1500)}`)
  }

  // refused: a lock on a bucket without Object Lock, and a bad URL
  const noLock = await runCli(['points', 'archive', '--store', site.store, '--vm', name, '--archive', 's3://no-lock/dr', '--retain', '1d', ...s3args])
  t.equal(noLock.code, 2, `a lock on a bucket without Object Lock is a settings error: ${noLock.stderr}`)
  t.match(noLock.stderr, /has no Object Lock/)
  const badUrl = await runCli(['points', 'archive', '--store', site.store, '--vm', name, '--archive', 'http://x/y', ...s3args])
  t.equal(badUrl.code, 2, 'a bad archive URL is a usage error')
  t.match(badUrl.stderr, /want s3:\/\/BUCKET/)

  const first = await runCli(['points', 'archive', '--store', site.store, '--vm', name, '--archive', 's3://dr-archive/site-a', '--retain', '1d', '--output', 'json', ...s3args])
  t.equal(first.code, 0, first.stderr)
  const a1 = JSON.parse(first.stdout.trim().split('\n').at(-1) as string) as Archived
  t.same(
    a1.points.map((p) => p.cycle),
    [1, 2, 3, 4],
    'every kept point and the mirror archived, oldest first',
  )
  // what content addressing must do, computed from the frozen sources: a point uploads exactly its
  // non-zero 4 MiB chunks that no earlier point had (plus its .vmx/.nvram when they changed)
  const seen = new Set<string>()
  for (const p of a1.points) {
    let fresh = 0
    let zero = 0
    for (const raw of expected[p.cycle] as string[]) {
      const img = await readFile(raw)
      for (let off = 0; off < img.length; off += 4 * MiB) {
        const c = img.subarray(off, off + 4 * MiB)
        if (c.every((b) => b === 0)) {
          zero++
          continue
        }
        const h = createHash('sha256').update(c).digest('hex')
        if (!seen.has(h)) fresh++
        seen.add(h)
      }
    }
    t.equal(p.zero, zero, `point ${p.cycle}: ${zero} zero chunk(s) not stored`)
    if (p.cycle === 1) t.ok(zero > 0, 'the sparse disk has zero chunks')
    t.ok(p.uploaded >= fresh && p.uploaded <= fresh + 2, `point ${p.cycle}: ${p.uploaded} chunk(s) uploaded = its ${fresh} new disk chunk(s) (+ config files when changed)`)
    if (p.cycle > 1) t.ok(p.present > 0, `point ${p.cycle} reuses chunks already in the bucket (${p.present})`)
  }
  const again = await runCli(['points', 'archive', '--store', site.store, '--vm', name, '--archive', 's3://dr-archive/site-a', '--retain', '1d', '--output', 'json', ...s3args])
  t.equal(again.code, 0, again.stderr)
  t.same(
    (JSON.parse(again.stdout.trim().split('\n').at(-1) as string) as Archived).points.map((p) => p.archived),
    [false, false, false, false],
    'a second run finds every point archived and sends nothing',
  )
  const listed = await runCli(['points', 'archived', '--vm', name, '--archive', 's3://dr-archive/site-a', '--output', 'json', ...s3args])
  t.same((JSON.parse(listed.stdout) as { cycles: number[] }).cycles, [1, 2, 3, 4])
  // an unlocked copy, for the tampering case below
  t.equal((await runCli(['points', 'archive', '--store', site.store, '--vm', name, '--point', '4', '--archive', 's3://no-lock/copy', ...s3args])).code, 0)

  // the lock: a locked version cannot be deleted; a delete marker does not hide it from a restore
  const versions = await s3.send(new ListObjectVersionsCommand({ Bucket: 'dr-archive', Prefix: 'site-a/chunks/' }))
  const victim = versions.Versions?.[0]
  t.ok(victim?.Key !== undefined && victim.VersionId !== undefined, 'chunk versions are listed')
  await t.rejects(s3.send(new DeleteObjectCommand({ Bucket: 'dr-archive', Key: victim?.Key, VersionId: victim?.VersionId })), { name: 'AccessDenied' }, 'a locked chunk version cannot be deleted')
  await s3.send(new DeleteObjectCommand({ Bucket: 'dr-archive', Key: victim?.Key }))
  // point 4's manifest hidden the same way: still restorable (below), so points archived lists it, marked
  await s3.send(new DeleteObjectCommand({ Bucket: 'dr-archive', Key: `site-a/vms/${encodeURIComponent(name)}/points/000000000004.json` }))
  const hiddenJson = await runCli(['points', 'archived', '--vm', name, '--archive', 's3://dr-archive/site-a', '--output', 'json', ...s3args])
  t.same(
    (JSON.parse(hiddenJson.stdout) as { cycles: number[]; points: { cycle: number; hidden: boolean }[] }).points.map((p) => [p.cycle, p.hidden]),
    [
      [1, false],
      [2, false],
      [3, false],
      [4, true],
    ],
    'points archived: the hidden point listed, marked',
  )
  const hiddenHuman = await runCli(['points', 'archived', '--vm', name, '--archive', 's3://dr-archive/site-a', ...s3args])
  t.match(hiddenHuman.stdout, /point\(s\) 1, 2, 3, 4 \(hidden\) in s3:\/\/dr-archive\/site-a\n {2}point 4: hidden behind a delete marker \(restorable; delete every version to remove it\)\n/)

  // the DR host is lost: only the bucket remains
  await site.receiver.stop()
  await rm(site.store, { recursive: true, force: true })
  for (let k = 1; k <= 4; k++) {
    const to = join(dir, `restored-${k}`)
    const r = await runCli(['restore', '--from', 's3://dr-archive/site-a', '--vm', name, '--point', String(k), '--to', to, '--output', 'json', ...s3args])
    t.equal(r.code, 0, r.stderr)
    const out = JSON.parse(r.stdout.trim().split('\n').at(-1) as string) as { disks: { flat: string; descriptor: string }[] }
    for (const [i, d] of out.disks.entries()) {
      t.equal(await firstDifference(d.flat, expected[k]?.[i] as string), -1, `point ${k}, disk ${i}: restored from the bucket = the frozen source of cycle ${k}`)
      const raw = join(dir, `restored-${k}-${i}.raw`)
      await qemuRaw(d.descriptor, raw)
      t.equal(await firstDifference(raw, expected[k]?.[i] as string), -1, `point ${k}, disk ${i}: QEMU opens the restored descriptor`)
    }
  }
  // a chunk replaced in the unlocked copy is found
  const copyVersions = await s3.send(new ListObjectVersionsCommand({ Bucket: 'no-lock', Prefix: 'copy/chunks/' }))
  const key = copyVersions.Versions?.find((v) => v.Size === 4 * MiB)?.Key as string
  await s3.send(new PutObjectCommand({ Bucket: 'no-lock', Key: key, Body: Buffer.alloc(4 * MiB, 0x42) }))
  const tampered = await runCli(['restore', '--from', 's3://no-lock/copy', '--vm', name, '--point', '4', '--to', join(dir, 'tampered'), ...s3args])
  t.equal(tampered.code, 1, 'a damaged archive fails the restore')
  t.match(tampered.stderr, /does not match its digest/)
})
