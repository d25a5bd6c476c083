// Room and usage on the Ceph store (ceph-space.ts): a token's quota and the
// pool's free space refuse a DiskOpen with E_QUOTA / E_NO_SPACE as on the
// folder store (the receiver serving other tokens meanwhile); the bytes of
// restore points (`rbd du`) in `points` and `status`, and a `maxBytes`
// retention pruning by them, at commit and by `points prune`. The parsers
// alone, then a real one-node cluster (its own, so store-ceph.test.ts keeps
// its time).
import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { haveCeph, haveCephMgr, scratchDir, startCephCluster, type CephCluster } from '@grainline/test-utils'
import { MessageKind } from '@grainline/protocol'
import { cephListPoints, cephPrunePoints } from '../src/index.ts'
import { roomFailure } from '../src/open-decision.ts'
import { cephStatus } from '../src/store/ceph/ceph-admin.ts'
import { cephFreeBytes, cephMirrorsUsage, imageVmKey, parseCephDf, parsePoolFull, parseRbdDu, pointBytes, poolFreeBytes } from '../src/store/ceph/ceph-space.ts'
import { CephNames, readCephState } from '../src/store/ceph/ceph-state.ts'
import { runCeph } from '../src/store/ceph/rbd-cli.ts'
import { pino } from 'pino'
import { Agent, MiB, TOKEN, TOKEN_B, diskOpen, evolve, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen } from './helpers.ts'

const POOL = 'glspace'
const QPOOL = 'glquota'
const cid = (n: number): string => n.toString(16).padStart(32, '0')
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-common)'
const mgr = await haveCephMgr()

t.test('ceph df: MAX AVAIL, within the pool quota when there is one; no figures are unknown; a bad document is typed', async (t) => {
  const df = (stats: Record<string, unknown>): string =>
    JSON.stringify({
      stats: {},
      pools: [
        { name: 'other', stats: { max_avail: 1 } },
        { name: 'p', id: 2, stats },
      ],
    })
  t.same(parseCephDf(df({ max_avail: 1000, stored: 10 }), 'p'), { maxAvail: 1000, stored: 10, quotaBytes: 0 })
  const freeOf = (stats: Record<string, unknown>): number => {
    const d = parseCephDf(df(stats), 'p')
    if (d === undefined) throw new Error('no figures')
    return poolFreeBytes(d)
  }
  t.equal(freeOf({ max_avail: 1000, stored: 10 }), 1000, 'no quota: MAX AVAIL')
  t.equal(freeOf({ max_avail: 1000, stored: 100, quota_bytes: 300 }), 200, 'a quota leaves less: quota minus stored')
  t.equal(freeOf({ max_avail: 50, stored: 100, quota_bytes: 300 }), 50, 'MAX AVAIL is less: MAX AVAIL')
  t.equal(freeOf({ max_avail: 1000, stored: 400, quota_bytes: 300 }), 0, 'over its quota: nothing')
  t.equal(parseCephDf(df({ max_avail: 1 }), 'q'), undefined, 'a pool ceph df does not list: unknown')
  t.equal(parseCephDf(JSON.stringify({ stats: { total_bytes: 0 }, pools: [{ name: 'p', stats: { max_avail: 0 } }] }), 'p'), undefined, 'no OSD statistics reported yet: unknown, not 0 free')
  t.throws(() => parseCephDf('not json', 'p'), { code: 'E_IO' })
  t.throws(() => parseCephDf('{}', 'p'), { code: 'E_IO' })
  t.throws(() => parseCephDf(df({ max_avail: -1 }), 'p'), { code: 'E_IO' })
  t.throws(() => parseCephDf(df({ max_avail: '5' }), 'p'), { code: 'E_IO' })
})

t.test("rbd du: images and snapshots; a point's bytes are the used bytes of the snapshot after it", async (t) => {
  const du = JSON.stringify({
    images: [
      { name: 'gl.a', id: 'x', snapshot: 's3', snapshot_id: 9, provisioned_size: 100, used_size: 30 },
      { name: 'gl.a', id: 'x', snapshot: 's1', snapshot_id: 4, provisioned_size: 100, used_size: 100 },
      { name: 'gl.a', id: 'x', snapshot: 's2', snapshot_id: 6, provisioned_size: 100, used_size: 20 },
      { name: 'gl.a', id: 'x', provisioned_size: 100, used_size: 5 },
    ],
    total_provisioned_size: 100,
    total_used_size: 155,
  })
  const u = parseRbdDu(du)
  t.same(
    u.map((x) => [x.snapshot, x.snapshotId, x.used]),
    [
      ['s3', 9, 30],
      ['s1', 4, 100],
      ['s2', 6, 20],
      [null, -1, 5],
    ],
  )
  const point = (cycle: number, snap: string) => ({ cycle, committedAt: '', generation: '', disks: { 'a.vmdk': { image: 'gl.a', snap, capacity: 100 } } })
  const b = pointBytes([point(1, 's1'), point(2, 's2'), point(3, 's3'), point(4, 'gone')], u)
  t.same(b.get(1), { 'a.vmdk': 20 }, 'point 1: what the next cycle wrote (s2 against s1), in creation order, not listing order')
  t.same(b.get(2), { 'a.vmdk': 30 })
  t.same(b.get(3), { 'a.vmdk': 5 }, 'no snapshot after it: the head')
  t.same(b.get(4), { 'a.vmdk': 0 }, 'a snapshot rbd du does not list: 0')
  // gl.a replaced by a re-seed (no disk's head any more): its newest point keeps the whole image alive, and counts it
  const retired = pointBytes([point(1, 's1'), point(2, 's2'), point(3, 's3')], u, new Set(['gl.new']))
  t.same(retired.get(1), { 'a.vmdk': 20 }, 'an older point of a retired image: what the next cycle wrote, as before')
  t.same(retired.get(3), { 'a.vmdk': 105 }, "the retired image's newest point: the rest of the image (155 less the older points' 20 and 30)")
  t.equal(
    [...retired.values()].reduce((n, r) => n + (r['a.vmdk'] ?? 0), 0),
    155,
    'the points of a retired image sum to the image, never more',
  )
  t.same(pointBytes([point(3, 's3')], u, new Set(['gl.new'])).get(3), { 'a.vmdk': 155 }, 'the only point left of it: the whole image')
  t.same(pointBytes([point(3, 's3')], u, new Set(['gl.a'])).get(3), { 'a.vmdk': 5 }, 'an image still a head: the head, as before')
  t.throws(() => parseRbdDu('[]'), { code: 'E_IO' })
  t.throws(() => parseRbdDu('{"images":[{"used_size":1}]}'), { code: 'E_IO' })
  t.throws(() => parseRbdDu('{"images":[{"name":"a","snapshot":"s"}]}'), { code: 'E_IO' })
  t.throws(() => parseRbdDu('x'), { code: 'E_IO' })
  t.equal(imageVmKey(`gl.${'a'.repeat(24)}.${'b'.repeat(24)}.1234`), 'a'.repeat(24))
  t.equal(imageVmKey(`glo.${'c'.repeat(24)}.${'b'.repeat(24)}.open-1`), 'c'.repeat(24), 'a points-open clone is its VM')
  t.equal(imageVmKey('rbd-other'), undefined, "another tool's image is no VM's")
})

t.test('a full pool from its flags (ceph osd pool ls detail): full_quota or full; a bad document is typed', async (t) => {
  const ls = (flags: string | undefined): string =>
    JSON.stringify([
      { pool_name: 'other', flags_names: 'full' },
      { pool_name: 'p', ...(flags === undefined ? {} : { flags_names: flags }) },
    ])
  t.equal(parsePoolFull(ls('hashpspool,selfmanaged_snaps'), 'p'), false)
  t.equal(parsePoolFull(ls('hashpspool,full_quota'), 'p'), true, 'its quota reached')
  t.equal(parsePoolFull(ls('full,hashpspool'), 'p'), true, 'its OSDs full')
  t.equal(parsePoolFull(ls('hashpspool,nearfull'), 'p'), false, 'near full is not full')
  t.equal(parsePoolFull(ls(undefined), 'p'), false, 'no flags')
  t.equal(parsePoolFull(ls('full'), 'q'), false, 'a pool not listed')
  t.throws(() => parsePoolFull('nope', 'p'), { code: 'E_IO' })
  t.throws(() => parsePoolFull('{}', 'p'), { code: 'E_IO' })
})

t.test('the room rule names the pool on Ceph, with the folder store codes and rule', async (t) => {
  const space = { freeBytes: 10, quotaBytes: 100, usedBytes: 95, reservedBytes: 0 }
  const place = { store: 'Ceph pool p', remedy: 'free space in the pool' }
  t.match(roomFailure('vm', { name: 'd', capacity: 20 }, 0, 20, space, place), { code: 'E_NO_SPACE', message: /grow by 20 bytes, Ceph pool p has 10 free: free space in the pool, then retry/ })
  t.match(roomFailure('vm', { name: 'd', capacity: 20 }, 20, 6, space, place), { code: 'E_QUOTA', message: /may add 6 bytes to the 95 .* quota of 100/ })
  t.equal(roomFailure('vm', { name: 'd', capacity: 20 }, 20, 5, space, place), undefined, 'within the quota, no growth: opens')
})

t.test('Ceph store: room, quota and the bytes of points', { skip }, async (t) => {
  // with a manager when installed: ceph df reports the pools' free space only then
  const ceph: CephCluster = await startCephCluster({ pools: [POOL, QPOOL], mgr })
  t.teardown(() => ceph.stop())
  const target = { pool: POOL, conf: ceph.conf }
  const qtarget = { pool: QPOOL, conf: ceph.conf }
  const base = scratchDir(t, 'grainline-ceph-space-')
  const images = async (pool: string): Promise<string[]> => JSON.parse((await ceph.run('rbd', ['ls', '--format', 'json', pool])).stdout) as string[]

  t.test("a token's quota: E_QUOTA at Open, nothing created; the receiver goes on serving", async (t) => {
    const env = makeEnv(join(base, 'quota'))
    const tokensFile = join(env.dir, 'tokens-q.json')
    writeFileSync(
      tokensFile,
      JSON.stringify({
        tokens: [
          { name: 'proxy-q', token: TOKEN, vms: ['q-*'], quota: '3M' },
          { name: 'proxy-b', token: TOKEN_B, vms: ['other-*'] },
        ],
      }),
    )
    const { receiver, url, logs } = await startReceiver({ ...env, tokensFile }, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10 })
    t.teardown(() => receiver.close())
    const img = pattern(2 * MiB, 1)
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    t.equal((await runCycle(a, 'q-1', 1, [seedPlan(0, 'q-1.vmdk', img, cid(1))])).committed?.cycle, 1, 'a first seed of 2 MiB fits in 3 MiB')
    a.close()
    await a.whenClosed()
    const used = await cephMirrorsUsage(target, (vm) => vm.startsWith('q-'))
    t.equal(used, 2 * MiB, "the token's mirrors use the 2 MiB written (rbd du)")
    t.equal(await cephMirrorsUsage(target, (vm) => vm.startsWith('other-')), 0, "another token's VMs: nothing yet")
    const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(b, 'q-2', 1, [seedPlan(0, 'q-2.vmdk', img, cid(2))]).catch(() => {})
    t.same(await b.expectError(), { code: 'E_QUOTA', closeCode: 4508 }, '2 MiB + 2 MiB > 3 MiB: E_QUOTA, the session ends')
    t.match(logs.text(), /above its quota of 3145728/, 'the log says why')
    // its VmOpen recorded the VM (an empty state object: it counts against maxVms, ceph-vm-count.ts), as a folder store's VmOpen makes its folder
    t.match(await readCephState(target, new CephNames('q-2').state, 'q-2'), { committedCycle: 0, disks: {}, inflight: null }, 'nothing of a disk in the state of the refused VM')
    t.notOk(
      (await images(POOL)).some((i) => imageVmKey(i) === new CephNames('q-2').vmKey),
      'no image for the refused VM',
    )
    const c = await Agent.connect(url, { token: TOKEN_B, ca: env.tls.ca })
    t.equal((await runCycle(c, 'other-1', 1, [seedPlan(0, 'other-1.vmdk', img, cid(3))])).committed?.cycle, 1, 'another token (no quota) seeds on the same receiver')
    c.close()
    const ranges = [{ offset: 0, length: 64 * 1024 }]
    const d = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const r = await runCycle(d, 'q-1', 2, [incPlan(0, 'q-1.vmdk', evolve(img, 2, ranges), 1, cid(4), ranges, 'q-1-000001.vmdk', 'q-1-000002.vmdk')])
    d.close()
    t.equal(r.committed?.cycle, 2, 'an incremental of the same capacity adds nothing by the rule: it commits')
  })

  t.test(
    "free space: a seed above the pool's MAX AVAIL, or above what its quota leaves, is E_NO_SPACE at Open",
    { skip: mgr ? false : 'no ceph-mgr here (Debian ceph-mgr; .ci/run installs it): ceph df reports no free space' },
    async (t) => {
      const env = makeEnv(join(base, 'nospace'))
      const { receiver, url, logs } = await startReceiver(env, { store: `ceph:${QPOOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10 })
      t.teardown(() => receiver.close())
      const open = async (vm: string, capacity: number): Promise<{ code: string; closeCode: number }> => {
        const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
        a.send(hello())
        await a.expect(MessageKind.Welcome)
        a.send(vmOpen(vm, 1, []))
        await a.expect(MessageKind.VmState)
        a.send(diskOpen({ ...seedPlan(0, `${vm}.vmdk`, pattern(MiB, 5), cid(5)), capacity }, 1, vm))
        return await a.expectError()
      }
      const free = (await cephFreeBytes(qtarget)) ?? 0
      t.ok(free > 0 && free < 2 * 1024 * MiB, `MAX AVAIL of the 1 GiB memstore pool: ${free}`)
      const huge = Math.ceil((free + 1024 * MiB) / MiB) * MiB
      t.same(await open('vm-huge', huge), { code: 'E_NO_SPACE', closeCode: 4507 }, 'a seed larger than MAX AVAIL')
      t.match(logs.text(), new RegExp(`grow by ${huge} bytes, Ceph pool ${QPOOL} has \\d+ free`), 'the log names the pool')
      await ceph.run('ceph', ['osd', 'pool', 'set-quota', QPOOL, 'max_bytes', String(64 * MiB)])
      t.teardown(async () => {
        await ceph.run('ceph', ['osd', 'pool', 'set-quota', QPOOL, 'max_bytes', '0'])
      })
      t.ok(((await cephFreeBytes(qtarget)) ?? Number.POSITIVE_INFINITY) <= 64 * MiB, 'the pool quota bounds the free space')
      t.same(await open('vm-quota', 128 * MiB), { code: 'E_NO_SPACE', closeCode: 4507 }, 'a seed larger than the pool quota leaves')
      t.same(await images(QPOOL), [], 'nothing created')
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      t.equal((await runCycle(a, 'vm-fits', 1, [seedPlan(0, 'vm-fits.vmdk', pattern(4 * MiB, 6), cid(6))])).committed?.cycle, 1, 'a seed that fits commits on the same receiver')
      a.close()
    },
  )

  t.test('points and status show the bytes of points (rbd du); prune --max-bytes drops the oldest', async (t) => {
    const env = makeEnv(join(base, 'bytes'))
    const { receiver, url } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10, retention: { keep: 10 } })
    t.teardown(() => receiver.close())
    const vm = 'vm-bytes'
    const SIZE = 16 * MiB
    const imgs: Buffer[] = [Buffer.alloc(0), pattern(SIZE, 11)]
    const a1 = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a1, vm, 1, [seedPlan(0, 'b.vmdk', imgs[1] as Buffer, cid(11))])
    a1.close()
    // cycle c writes 64 KiB into c - 1 of the disk's four 4 MiB objects: the points grow in that order
    for (let c = 2; c <= 4; c++) {
      const ranges = Array.from({ length: c - 1 }, (_, k) => ({ offset: k * 4 * MiB + c * 65_536, length: 65_536 }))
      imgs[c] = evolve(imgs[c - 1] as Buffer, c, ranges)
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      const r = await runCycle(a, vm, c, [incPlan(0, 'b.vmdk', imgs[c] as Buffer, c - 1, cid(10 + c), ranges, `b-00000${c - 1}.vmdk`, `b-00000${c}.vmdk`)])
      a.close()
      t.equal(r.committed?.cycle, c)
    }
    const listed = await cephListPoints(target, vm)
    const bytes = listed.points.filter((p) => !p.current).map((p) => p.bytes)
    t.same(
      listed.points.map((p) => p.cycle),
      [1, 2, 3, 4],
    )
    const [b1, b2, b3] = bytes as [number, number, number]
    t.ok(b1 >= 65_536 && b2 >= 2 * 65_536 && b3 >= 3 * 65_536, `each point holds at least what the next cycle overwrote: ${bytes.join(', ')}`)
    t.ok(b1 < b2 && b2 < b3, 'more objects overwritten, more bytes')
    t.equal(listed.points.at(-1)?.bytes, 0, 'the mirror is not a point: 0, as on the folder store')
    t.same(
      listed.points.filter((p) => !p.current).map((p) => p.disks[0]?.bytes),
      bytes,
      "the disk's bytes (one disk)",
    )
    // the oracle: rbd du of the image, read here — a point's bytes are the used bytes of the snapshot after it
    const s = await readCephState(target, new CephNames(vm).state, vm)
    const rec = s?.disks['b.vmdk']
    if (rec === undefined) throw new Error('no committed disk')
    const du = JSON.parse((await ceph.run('rbd', ['du', '--format', 'json', `${POOL}/${rec.image}`])).stdout) as { images: Array<{ snapshot?: string; used_size: number }> }
    const usedOf = (snap: string): number => du.images.find((e) => e.snapshot === snap)?.used_size ?? -1
    const snaps = [...(s?.points ?? []).map((p) => p.disks['b.vmdk']?.snap as string), rec.snap]
    t.same(bytes, [usedOf(snaps[1] as string), usedOf(snaps[2] as string), usedOf(snaps[3] as string)], 'equal to rbd du of the next snapshot')
    const st = (await cephStatus(target)).vms.find((v) => v.vm === vm)
    t.equal(st?.pointBytes, b1 + b2 + b3, 'status: the bytes of the points')
    t.equal(st?.disks[0]?.bytes, usedOf(snaps[0] as string) + b1 + b2 + b3, 'status: the disk takes its seed plus what each point keeps (rbd du of image and snapshots)')
    t.equal(usedOf(snaps[0] as string), SIZE, 'the seed wrote the whole 16 MiB')
    const log = pino({ level: 'silent' })
    t.same(await cephPrunePoints(target, vm, { keep: 10, maxBytes: b2 + b3 }, { logger: log }), { vm, dropped: [1], kept: [2, 3] }, 'max-bytes of points 2 and 3: the oldest goes')
    t.same(await cephPrunePoints(target, vm, { keep: 10, maxBytes: b3 }, { logger: log }), { vm, dropped: [2], kept: [3] })
    t.same(await cephPrunePoints(target, vm, { keep: 10, maxBytes: b3 }, { logger: log }), { vm, dropped: [], kept: [3] }, 'within the bytes: nothing dropped')
    t.equal((await cephListPoints(target, vm)).points[0]?.bytes, b3, "point 3's bytes do not change with the drops before it")
  })

  t.test('a maxBytes retention at commit: points that cost bytes go, a point whose next cycle wrote nothing costs 0 and stays', async (t) => {
    const env = makeEnv(join(base, 'maxbytes'))
    const { receiver, url } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10, retention: { keep: 10, maxBytes: 1 } })
    t.teardown(() => receiver.close())
    const vm = 'vm-maxbytes'
    const imgs: Buffer[] = [Buffer.alloc(0), pattern(4 * MiB, 21)]
    const run = async (c: number, ranges: Array<{ offset: number; length: number }>): Promise<number[]> => {
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      if (c === 1) await runCycle(a, vm, 1, [seedPlan(0, 'm.vmdk', imgs[1] as Buffer, cid(21))])
      else {
        imgs[c] = evolve(imgs[c - 1] as Buffer, c, ranges)
        await runCycle(a, vm, c, [incPlan(0, 'm.vmdk', imgs[c] as Buffer, c - 1, cid(20 + c), ranges, `m-00000${c - 1}.vmdk`, `m-00000${c}.vmdk`)])
      }
      a.close()
      return (await cephListPoints(target, vm)).points.filter((p) => !p.current).map((p) => p.cycle)
    }
    t.same(await run(1, []), [])
    t.same(await run(2, [{ offset: 65_536, length: 65_536 }]), [1], 'point 1 keeps what cycle 2 overwrote (> 1 byte), but it is the newest point: kept above maxBytes')
    t.same(await run(3, []), [2], 'cycle 3 wrote nothing: point 2 costs 0 bytes and is kept; point 1, no longer the newest, is pruned at the commit')
    const snaps = JSON.parse(
      (await runCeph(target, 'rbd', ['snap', 'ls', '--format', 'json', `${POOL}/${(await readCephState(target, new CephNames(vm).state, vm))?.disks['m.vmdk']?.image}`])).toString(),
    ) as Array<{ name: string }>
    t.equal(snaps.length, 2, 'point 2 and the mirror are the snapshots left')
  })
})
