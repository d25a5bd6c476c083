// Points of a Ceph store archived to S3 and opened as RBD clones (issue #18,
// docs/CEPH.md "Points archive", "Points open"), end to end through the CLI:
// a real one-node Ceph cluster with radosgw on loopback, a real receiver
// with `--store ceph:POOL` and real agent processes. `points archive` reads
// each point from its RBD snapshots into the folder store's object set
// (chunks by sha256, zero chunks not stored, Object Lock, the manifest last);
// `restore --from s3://…` rebuilds each point from the bucket alone, and
// QEMU reads the restored disk equal to the snapshot (`qemu-img compare`
// against rbd:POOL/IMG@SNAP). `points open` makes an RBD clone of each
// disk's snapshot: QEMU reads each clone equal to the snapshot, a write
// through qemu-io to a clone leaves the snapshot unchanged, the point is held
// (drop E_HELD, the agent E_HELD) until `points close` removes the clones.
// `points archive-prune` keeps (exit 1) the manifests still locked, and a
// prune's run lock makes the Ceph store's archive refuse (E_BUSY).
// (Its own file and cluster: ceph-store.test.ts is near its time bound.)
import t from 'tap'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { DeleteObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { failIfLingering, firstDifference, haveCeph, qemuCompare, qemuIo, qemuRaw, scratchDir, startCephCluster } from '@grainline/test-utils'
import { replicateCli, rgwArchive, runCli, startSite, frozenView } from '@grainline/e2e'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const MiB = 1024 * 1024
const POOL = 'glpts'
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-mgr ceph-common radosgw)'

const lastJson = <T>(stdout: string): T => JSON.parse(stdout.trim().split('\n').at(-1) as string) as T

t.test('Ceph points: archived from their snapshots and restored from the bucket alone; opened as RBD clones, held, closed', { skip }, async (t) => {
  const dir = scratchDir(t, 'grainline-ceph-s3-')
  const ceph = await startCephCluster({ pools: [POOL], rgw: true })
  t.teardown(() => ceph.stop())
  const config = join(dir, 'receiver.json')
  await writeFile(config, JSON.stringify({ retention: { keep: 5 } }))
  const site = await startSite(join(dir, 'dr'), ['*'], [], ['--config', config, '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf])
  t.teardown(() => site.receiver.stop())
  const name = 'rbd pts'
  const vm = await createSampleVm(join(dir, 'src'), {
    name,
    disks: [
      { sizeBytes: 16 * MiB, fill: 'random' },
      { sizeBytes: 12 * MiB, node: 'sata0:1', fill: 'sparse' },
    ],
    seed: 31,
  })
  const expected: string[][] = []
  for (let cycle = 1; cycle <= 2; cycle++) {
    if (cycle > 1) await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, writeSize: 64 * 1024, seed: cycle * 5, zeroFraction: 0.2 })
    expected[cycle] = await frozenView(vm.vmxPath, join(dir, `exp-${cycle}`))
    const r = await replicateCli(site, vm.vmxPath)
    t.equal(r.code, 0, `cycle ${cycle}: ${r.stderr.slice(-1500)}`)
  }
  const ceph1 = ['--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--vm', name]
  const listed = await runCli(['points', ...ceph1, '--output', 'json'])
  t.equal(listed.code, 0, listed.stderr)
  const points = (JSON.parse(listed.stdout) as { points: { cycle: number; current: boolean; disks: { name: string; source: string }[] }[] }).points
  t.same(
    points.map((p) => [p.cycle, p.current]),
    [
      [1, false],
      [2, true],
    ],
    'point 1 and the mirror 2',
  )
  const sourceOf = (k: number, disk: string): string => points.find((p) => p.cycle === k)?.disks.find((d) => d.name === disk)?.source as string

  // points archive from the snapshots, with Object Lock
  const { s3, args: s3args } = await rgwArchive(t, ceph, dir, { 'dr-ceph': 'locked' })
  const noPoint = await runCli(['points', 'archive', ...ceph1, '--point', '9', '--archive', 's3://dr-ceph/site-b', ...s3args])
  t.not(noPoint.code, 0, 'a point the pool does not have is refused')
  t.match(noPoint.stderr, /no point 9/)
  const ar = await runCli(['points', 'archive', ...ceph1, '--archive', 's3://dr-ceph/site-b', '--retain', '1d', '--output', 'json', ...s3args])
  t.equal(ar.code, 0, `points archive of a Ceph store: ${ar.stderr}`)
  const archived = lastJson<{ points: { cycle: number; archived: boolean; zero: number; uploaded: number; present: number }[] }>(ar.stdout)
  t.same(
    archived.points.map((p) => [p.cycle, p.archived]),
    [
      [1, true],
      [2, true],
    ],
    'the point and the mirror archived from their snapshots, oldest first',
  )
  for (const p of archived.points) {
    let zero = 0
    for (const raw of expected[p.cycle] as string[]) {
      const img = await readFile(raw)
      for (let off = 0; off < img.length; off += 4 * MiB) if (img.subarray(off, off + 4 * MiB).every((b) => b === 0)) zero++
    }
    t.equal(p.zero, zero, `point ${p.cycle}: its ${zero} zero chunk(s) are recorded, not stored`)
  }
  t.ok((archived.points[0]?.zero ?? 0) > 0, 'the sparse disk has zero chunks')
  t.ok((archived.points[1]?.present ?? 0) > 0, 'point 2 reuses chunks point 1 stored')
  const again = await runCli(['points', 'archive', ...ceph1, '--archive', 's3://dr-ceph/site-b', '--retain', '1d', '--output', 'json', ...s3args])
  t.same(
    lastJson<{ points: { archived: boolean }[] }>(again.stdout).points.map((p) => p.archived),
    [false, false],
    'a second run finds both archived',
  )
  const inBucket = await runCli(['points', 'archived', '--vm', name, '--archive', 's3://dr-ceph/site-b', '--output', 'json', ...s3args])
  t.same((JSON.parse(inBucket.stdout) as { cycles: number[] }).cycles, [1, 2], 'points archived lists them')
  for (const k of [1, 2]) {
    const to = join(dir, `from-bucket-${k}`)
    const r = await runCli(['restore', '--from', 's3://dr-ceph/site-b', '--vm', name, '--point', String(k), '--to', to, '--output', 'json', ...s3args])
    t.equal(r.code, 0, `restore --from the bucket, point ${k}: ${r.stderr}`)
    const out = lastJson<{ disks: { name: string; descriptor: string; flat: string }[] }>(r.stdout)
    t.equal(out.disks.length, 2, `point ${k}: both disks`)
    for (const [i, d] of out.disks.entries()) {
      const src = sourceOf(k, d.name)
      const cmp = await qemuCompare(d.descriptor, `rbd:${src}:conf=${ceph.conf}`, { formatA: 'vmdk', formatB: 'raw' })
      t.ok(cmp.identical, `point ${k}, ${d.name}: QEMU reads the restored descriptor equal to rbd:${src} (${cmp.message})`)
      t.equal(await firstDifference(d.flat, (expected[k] as string[])[i] as string), -1, `point ${k}, ${d.name}: restored from the bucket = the frozen source of cycle ${k}`)
    }
    t.match(await readFile(join(to, `${name}.vmx`), 'utf8'), /displayName = ".*\(archived point \d+\)"/, `point ${k}: the .vmx comes along`)
  }

  // points archive-prune through the CLI: both manifests still locked (--retain 1d): kept and reported, exit 1, nothing deleted
  const pr = await runCli(['points', 'archive-prune', '--archive', 's3://dr-ceph/site-b', '--vm', name, '--keep-last', '0', '--grace', '0s', '--output', 'json', ...s3args])
  t.equal(pr.code, 1, `archive-prune of locked manifests: exit 1 (some kept): ${pr.stderr}`)
  const pruned = lastJson<{ manifests: { deleted: unknown[]; keptLocked: { key: string; until: string }[] }; chunks: { deleted: number; referenced: number } }>(pr.stdout)
  t.same(pruned.manifests.deleted, [], 'no manifest deleted under its lock')
  t.same(
    pruned.manifests.keptLocked.map((k) => /(\d{12})\.json$/.exec(k.key)?.[1]),
    ['000000000002', '000000000001'],
    'both reported as locked',
  )
  t.ok(pruned.chunks.referenced > 0 && pruned.chunks.deleted === 0, 'every chunk referenced by the kept manifests: none deleted')
  // the run lock: a prune in progress makes the Ceph store's archive refuse before it reads a snapshot
  await s3.send(new PutObjectCommand({ Bucket: 'dr-ceph', Key: 'site-b/locks/prune-elsewhere', Body: JSON.stringify({ kind: 'prune', host: 'dr-other', pid: 99, time: new Date().toISOString() }) }))
  const busy = await runCli(['points', 'archive', ...ceph1, '--archive', 's3://dr-ceph/site-b', ...s3args])
  t.not(busy.code, 0, 'points archive (Ceph store) refused while a prune holds the lock')
  t.match(busy.stderr, /points archive-prune holds the lock site-b\/locks\/prune-elsewhere \(host dr-other pid 99.*\[E_BUSY\]/s)
  await s3.send(new DeleteObjectCommand({ Bucket: 'dr-ceph', Key: 'site-b/locks/prune-elsewhere' }))

  // points open: an RBD clone of each disk's snapshot of point 1
  const withTo = await runCli(['points', 'open', ...ceph1, '--point', '1', '--to', join(dir, 'x')])
  t.equal(withTo.code, 2, 'points open --to on Ceph is a usage error (clones, not a folder)')
  const op = await runCli(['points', 'open', ...ceph1, '--point', '1', '--output', 'json'])
  t.equal(op.code, 0, `points open on Ceph: ${op.stderr}`)
  const opened = JSON.parse(op.stdout) as { name: string; cycle: number; clones: { disk: string; image: string; snapshot: string; qemu: string }[]; boot: string }
  t.equal(opened.cycle, 1)
  t.equal(opened.clones.length, 2, 'a clone per disk')
  t.match(opened.boot, /-drive 'file=rbd:/, 'it prints how to boot the clones')
  for (const c of opened.clones) {
    t.equal(c.snapshot, sourceOf(1, c.disk), `${c.disk}: cloned from point 1's snapshot`)
    const cmp = await qemuCompare(c.qemu, `rbd:${c.snapshot}:conf=${ceph.conf}`, { formatA: 'raw', formatB: 'raw' })
    t.ok(cmp.identical, `${c.disk}: QEMU reads the clone ${c.image} equal to ${c.snapshot} (${cmp.message})`)
  }
  const c0 = opened.clones[0] as (typeof opened.clones)[number]
  await qemuIo(c0.qemu, ['write -P 0x5a 1M 256k'], { format: 'raw' })
  t.notOk((await qemuCompare(c0.qemu, `rbd:${c0.snapshot}:conf=${ceph.conf}`, { formatA: 'raw', formatB: 'raw' })).identical, 'the clone took the write')
  const snapRaw = join(dir, 'point-1-after-clone-write.raw')
  await qemuRaw(`rbd:${c0.snapshot}:conf=${ceph.conf}`, snapRaw, { format: 'raw' })
  t.equal(await firstDifference(snapRaw, (expected[1] as string[])[0] as string), -1, "the point's snapshot is unchanged by the write to its clone")
  const human = await runCli(['points', ...ceph1])
  t.match(human.stdout, /held/, 'points lists the point held')
  const st = await runCli(['status', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf])
  t.match(st.stdout, /HELD \(open point 1\)/, 'status shows the VM held by the open')
  const heldDrop = await runCli(['points', 'drop', ...ceph1, '--point', '1'])
  t.not(heldDrop.code, 0, 'the opened point cannot be dropped')
  t.match(heldDrop.stderr, /E_HELD|held by 1 opened point/)
  await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, writeSize: 64 * 1024, seed: 77, zeroFraction: 0 })
  const refused = await replicateCli(site, vm.vmxPath, ['--give-up', '10'])
  t.not(refused.code, 0, 'the agent is refused while the point is open')
  t.match(JSON.stringify(refused.report ?? {}) + refused.stderr, /E_HELD/, 'with E_HELD, as on the folder store')
  const cl = await runCli(['points', 'close', ...ceph1, '--to', opened.name, '--output', 'json'])
  t.equal(cl.code, 0, `points close --to ${opened.name}: ${cl.stderr}`)
  const images = (await ceph.run('rbd', ['ls', POOL])).stdout.split('\n')
  t.notOk(
    opened.clones.some((c) => images.includes(c.image)),
    'the clones are removed',
  )
  const e3 = await frozenView(vm.vmxPath, join(dir, 'exp-3'))
  const r3 = await replicateCli(site, vm.vmxPath)
  t.equal(r3.code, 0, `after points close the agent's cycle goes through: ${r3.stderr.slice(-1500)}`)
  const drop = await runCli(['points', 'drop', ...ceph1, '--point', '1', '--output', 'json'])
  t.equal(drop.code, 0, `after close point 1 drops (its snapshots unprotected): ${drop.stderr}`)
  const ex = await runCli(['points', 'export', ...ceph1, '--to', join(dir, 'mirror-3'), '--output', 'json'])
  t.equal(ex.code, 0, ex.stderr)
  for (const [i, d] of (JSON.parse(ex.stdout) as { disks: { file: string }[] }).disks.entries()) {
    t.equal(await firstDifference(d.file, e3[i] as string), -1, `cycle 3 after the close: disk ${i} equals its frozen source`)
  }
})
