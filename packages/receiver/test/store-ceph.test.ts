// The store conformance suite (store-conformance.ts) against the Ceph store,
// on a real one-node cluster; plus the Ceph pieces alone: the diff stream,
// the extent log, the store spec, the lease lock and hostile names at the
// store API; `points drop` through the CLI killed between its state write and
// the snapshot removal (the next cycle finishes it), operator actions refused
// while a session holds the lease or a cycle is in flight, a hostile hold;
// `mirror rollback` killed between its steps, or its log removal failing (the
// resumed cycle still commits every extent).
import t from 'tap'
import { existsSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { pino } from 'pino'
import { cliBin, haveCeph, pollUntil, scratchDir, startCephCluster, type CephCluster } from '@grainline/test-utils'
import {
  cephArchivePoints,
  cephClosePoint,
  cephFailover,
  cephListPoints,
  cephOpenPoint,
  cephPrunePoints,
  cephRemoveMirror,
  cephRestorePoint,
  cephRestoreVm,
  cephRollbackMirror,
  parseCephStore,
  qemuRbdName,
  restoreFromArchive,
  S3Bucket,
} from '../src/index.ts'
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3'
import { cephConfigFiles } from '../src/store/ceph/ceph-archive.ts'
import { restoredVmx } from '../src/store/ceph/ceph-restore.ts'
import { Agent, MiB, TOKEN, TOKEN_B, evolve, incPlan, makeEnv, openVmOnly, pattern, runCycle, seedPlan, startReceiver, whenFree, type DiskPlan } from './helpers.ts'
import { encodeDiff } from '../src/store/ceph/rbd-diff-stream.ts'
import { extentLogRecords, parseExtentLog } from '../src/store/ceph/ceph-apply.ts'
import { CephLock } from '../src/store/ceph/ceph-lock.ts'
import { CephVmMirror } from '../src/store/ceph/ceph-mirror.ts'
import { CephCommandError, runCeph } from '../src/store/ceph/rbd-cli.ts'
import { storeConformance } from './store-conformance.ts'
import { ReceiverMetrics } from '../src/metrics.ts'
import { cephStoreReader } from '../src/store/ceph/ceph-overview.ts'
import { readCephHistory } from '../src/store/ceph/ceph-history.ts'
import { storeOverview, vmDetail } from '../src/store-overview.ts'
import { BS as RBS, NAME as RNAME, SIZE as RSIZE, resyncCycle } from './resync-helpers.ts'
import { MessageKind } from '@grainline/protocol'
import { createHash } from 'node:crypto'
import { cephStatus } from '../src/store/ceph/ceph-admin.ts'
import { imageVmKey, vmSeen } from '../src/store/ceph/ceph-space.ts'
import { digestImage } from '../src/store/ceph/ceph-read.ts'
import { CephNames, emptyCephState, readCephState, writeCephState, type CephHoldRecord, type CephVmState } from '../src/store/ceph/ceph-state.ts'
import { MAX_READ_BYTES, RbdImage } from '../src/store/ceph/rbd-image.ts'
import { execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, writeFile } from 'node:fs/promises'

const POOL = 'glconf'
const cid = (n: number): string => n.toString(16).padStart(32, '0')
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-common)'

t.test('rbd diff v1 stream: header, snapshots, size, data and zero records, end', async (t) => {
  const b = Buffer.concat(
    encodeDiff({
      size: 1024,
      from: 'a',
      to: 'bb',
      extents: [
        { offset: 512, length: 3, data: Buffer.from('xyz') },
        { offset: 0, length: 512, data: undefined },
      ],
    }),
  )
  let o = 0
  t.equal(b.subarray(0, 12).toString(), 'rbd diff v1\n')
  o = 12
  t.equal(b.subarray(o, o + 1).toString(), 'f')
  t.equal(b.readUInt32LE(o + 1), 1)
  t.equal(b.subarray(o + 5, o + 6).toString(), 'a')
  o += 6
  t.equal(b.subarray(o, o + 1).toString(), 't')
  t.equal(b.subarray(o + 5, o + 7).toString(), 'bb')
  o += 7
  t.equal(b.subarray(o, o + 1).toString(), 's')
  t.equal(Number(b.readBigUInt64LE(o + 1)), 1024)
  o += 9
  t.equal(b.subarray(o, o + 1).toString(), 'w')
  t.equal(Number(b.readBigUInt64LE(o + 1)), 512)
  t.equal(Number(b.readBigUInt64LE(o + 9)), 3)
  t.equal(b.subarray(o + 17, o + 20).toString(), 'xyz')
  o += 20
  t.equal(b.subarray(o, o + 1).toString(), 'z')
  t.equal(Number(b.readBigUInt64LE(o + 9)), 512)
  o += 17
  t.equal(b.subarray(o).toString(), 'e', 'ends with e')
})

t.test('extent log: the in-order prefix counts, a torn or foreign tail does not', async (t) => {
  const rec = (seq: number): string => JSON.stringify({ seq, offset: seq * 10, length: 10, zero: false, digest: 'ab' })
  t.equal(parseExtentLog([rec(0), rec(1), rec(2)].join('\n') + '\n').length, 3)
  t.equal(parseExtentLog([rec(0), rec(1), '{"seq":2,"off'].join('\n')).length, 2, 'a torn last line is ignored')
  t.equal(parseExtentLog([rec(0), rec(2)].join('\n')).length, 1, 'a gap ends the prefix')
  t.equal(parseExtentLog('').length, 0)
  // read from the bytes rados returns, a line at a time (ceph-apply.ts extentLogRecords): never joined into one string
  const many = Buffer.from(`${Array.from({ length: 3000 }, (_, i) => rec(i)).join('\n')}\n`)
  const got = [...extentLogRecords(many)]
  t.equal(got.length, 3000)
  t.same(got[2999], { seq: 2999, offset: 29990, length: 10, zero: false, digest: 'ab' })
  t.equal([...extentLogRecords(many.subarray(0, many.length - 7))].length, 2999, 'a torn last record in the bytes')
  t.equal([...extentLogRecords(Buffer.from(`${rec(0)}\n\n${rec(1)}`))].length, 2, 'an empty line is skipped')
  t.equal([...extentLogRecords(Buffer.from(`${rec(0)}\n\xff\xfe\n${rec(1)}`, 'latin1'))].length, 1, 'bytes that are not a record end it')
  // a line that is JSON but not a record (the pool holds whatever its writers put there): the log ends there, not a TypeError at resume
  for (const foreign of ['null', '7', '"x"', '[]', 'true']) t.equal([...extentLogRecords(Buffer.from(`${rec(0)}\n${foreign}\n${rec(1)}`))].length, 1, `a line ${foreign} ends it`)
  t.equal(parseExtentLog(`null\n${rec(0)}`).length, 0, 'a first line null: no records')
  const view = Buffer.concat([Buffer.from('garbage\n'), many]).subarray(8)
  t.equal([...extentLogRecords(view)].length, 3000, 'a view into a larger buffer: only its bytes')
})

t.test('store spec: ceph:POOL with client settings; a bad pool name is a config error', async (t) => {
  t.same(parseCephStore('ceph:rbd', { conf: '/c', id: 'gl', keyring: '/k' }), { pool: 'rbd', conf: '/c', id: 'gl', keyring: '/k' })
  t.throws(() => parseCephStore('ceph:'), { code: 'E_CONFIG' })
  t.throws(() => parseCephStore('ceph:a/b'), { code: 'E_CONFIG' })
  t.throws(() => parseCephStore('ceph:rbd', { id: '--conf=/tmp/evil' }), { code: 'E_CONFIG' }, 'a client id that reads as an option')
  t.throws(() => parseCephStore('ceph:rbd', { id: 'x'.repeat(65) }), { code: 'E_CONFIG' }, 'a client id too long')
})

t.test("a Ceph restore's .vmx: the display name marked as a folder store's restore marks it, the recorded mark replaced, a name's own ending kept", async (t) => {
  const name = (text: string): string | undefined => /^displayName = "(.*)"$/m.exec(text)?.[1]
  const disks = new Map([['web.vmdk', 'web.vmdk']])
  // a VM restored by grainline, registered and replicated since: its .vmx as the restore wrote it
  const restored = 'displayName = "web (grainline mirror) (point 2)"\ngrainline.displayMark = " (grainline mirror) (point 2)"\nscsi0:0.fileName = "web-000002.vmdk"\n'
  t.equal(name(restoredVmx(restored, disks, 5).text), 'web (grainline mirror) (point 5)', 'one mark, not "web (grainline mirror) (point 2) (grainline mirror) (point 5)"')
  t.match(restoredVmx(restored, disks, 5).text, /^grainline\.displayMark = " \(grainline mirror\) \(point 5\)"$/m, 'the new mark recorded, once')
  t.equal(name(restoredVmx(restored, disks, 5, { suffix: ' (grainline failover)' }).text), 'web (grainline failover)', "a failover: the VM's name and its mark alone")
  const own = 'displayName = "Build (opened)"\nscsi0:0.fileName = "web-000002.vmdk"\n'
  t.equal(name(restoredVmx(own, disks, 5).text), 'Build (opened) (grainline mirror) (point 5)', "a name's own ending that looks like a mark: kept")
  t.match(restoredVmx(own, disks, 5).text, /scsi0:0\.fileName = "web\.vmdk"/, 'the .vmx names the restored descriptor')
})

t.test('Ceph store', { skip }, async (t) => {
  const ceph: CephCluster = await startCephCluster({ pools: [POOL], rgw: true })
  t.teardown(() => ceph.stop())
  const target = { pool: POOL, conf: ceph.conf }
  const base = scratchDir(t, 'grainline-store-ceph-')
  let n = 0

  t.test('lease lock: a second holder is refused naming the first; released, it is free', async (t) => {
    const a = await CephLock.take(target, 'lock-test', 'receiver A', 'cookie-a', 5)
    await t.rejects(CephLock.take(target, 'lock-test', 'receiver B', 'cookie-b', 5), { code: 'E_BUSY', message: /held by receiver A/ })
    a.release()
    const b = await CephLock.take(target, 'lock-test', 'receiver B', 'cookie-b', 5)
    t.equal(b.lost, undefined)
    t.doesNotThrow(() => b.check('vm'))
    t.same(b.fencedAddrs, [], 'A released cleanly (its registrations removed first): nothing to fence')
    b.release()
  })

  t.test('fencing: a holder gone without releasing (its lease ran out) is blocklisted by the next; its late writes are refused', async (t) => {
    const a = await CephLock.take(target, 'fence-test', 'receiver A', 'cookie-fa', 2)
    await a.put('fence-obj', Buffer.from('a1'))
    t.match(a.addr, /:\d+\/\d+$/, `A's session client has an address: ${a.addr}`)
    // A's helper stalls (SIGSTOP): its lease runs out, nothing is released
    process.kill(a.helperPid as number, 'SIGSTOP')
    const b = await CephLock.take(target, 'fence-test', 'receiver B', 'cookie-fb', 5).catch(async (err: unknown) => {
      // still held: wait for the lease to run out (cls_lock drops an expired locker)
      await pollUntil(
        async () => ((await runCeph(target, 'rados', ['-p', POOL, 'lock', 'info', 'fence-test', 'grainline', '--format', 'json'])).toString().includes('"lockers":[]') ? true : undefined),
        { intervalMs: 250 },
      )
      t.match(err, { code: 'E_BUSY' })
      return await CephLock.take(target, 'fence-test', 'receiver B', 'cookie-fb', 5)
    })
    t.same(b.fencedAddrs, [a.addr], "B blocklisted A's address before reporting the lease taken")
    t.match((await ceph.run('ceph', ['osd', 'blocklist', 'ls'])).stdout, a.addr, 'the cluster lists it')
    await b.put('fence-obj', Buffer.from('b1'))
    // A continues: its write is refused by the cluster, typed, and nothing more is sent
    const late = a.put('fence-obj', Buffer.from('a2'))
    process.kill(a.helperPid as number, 'SIGCONT')
    await t.rejects(late, { code: 'E_BUSY', message: /fenced/ }, "A's late write: the fencing error")
    t.equal(a.fenced, true)
    t.throws(() => a.check('vm'), { code: 'E_BUSY', message: /fenced/ }, 'the lease check fails from now on')
    await t.rejects(a.put('fence-obj', Buffer.from('a3')), { code: 'E_BUSY' }, 'and no request is sent')
    t.equal((await runCeph(target, 'rados', ['-p', POOL, 'get', 'fence-obj', '-'])).toString(), 'b1', "the object is B's")
    a.release()
    b.release()
  })

  t.test('hostile names at the store API: E_BAD_NAME before anything touches the pool', async (t) => {
    const log = pino({ level: 'silent' })
    for (const vm of ['../x', 'a/b', 'n\u0000', 'v'.repeat(300)]) await t.rejects(CephVmMirror.acquire(target, vm, log, { description: 'test' }), { code: 'E_BAD_NAME' })
  })

  t.test('VMs per token on Ceph: a VmOpen records its VM; one VM more than maxVms is E_QUOTA before its lock or state object exists', async (t) => {
    const env = makeEnv(join(base, `vms-${n++}`))
    const file = join(env.dir, 'tokens-vms.json')
    writeFileSync(
      file,
      JSON.stringify({
        tokens: [
          { name: 'proxy-a', token: TOKEN, vms: ['cnt-a-*'], maxVms: 2 },
          { name: 'proxy-b', token: TOKEN_B, vms: ['cnt-b-*'] },
        ],
      }),
    )
    const { receiver, url } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10, tokensFile: file })
    t.teardown(() => receiver.close())
    const exists = async (o: string): Promise<boolean> =>
      runCeph(target, 'rados', ['-p', POOL, 'stat', o]).then(
        () => true,
        (err: unknown) => {
          if (err instanceof CephCommandError && err.notFound) return false
          throw err
        },
      )
    // another token's VM and a state object nobody can read count for nobody
    t.equal(await openVmOnly(url, TOKEN_B, env.tls.ca, 'cnt-b-1'), 'ok')
    const junk = `grainline.vm.${'e'.repeat(24)}`
    await runCeph(target, 'rados', ['-p', POOL, 'put', junk, '-'], Buffer.from('not json'))
    t.teardown(() => runCeph(target, 'rados', ['-p', POOL, 'rm', junk]).then(() => undefined))
    for (const vm of ['cnt-a-1', 'cnt-a-2']) {
      t.equal(await openVmOnly(url, TOKEN, env.tls.ca, vm), 'ok', `${vm} opened`)
      t.match(await readCephState(target, new CephNames(vm).state, vm), { vm, committedCycle: 0, disks: {} }, `${vm}: its state object is written at VmOpen, before any DiskOpen`)
    }
    const third = new CephNames('cnt-a-3')
    t.match(
      await openVmOnly(url, TOKEN, env.tls.ca, 'cnt-a-3'),
      /^E_QUOTA: token proxy-a keeps 2 VMs in Ceph pool glconf, its limit \(maxVms 2\): VM cnt-a-3 is not created; .*grainline mirror remove/,
      'a third VM: E_QUOTA naming the token, the pool and what to do',
    )
    t.notOk(await exists(third.lock), 'no lock object of it')
    t.notOk(await exists(third.state), 'no state object of it')
    t.equal(await openVmOnly(url, TOKEN, env.tls.ca, 'cnt-a-2'), 'ok', 'a VM the token keeps still opens')
    t.equal(await openVmOnly(url, TOKEN_B, env.tls.ca, 'cnt-b-2'), 'ok', "another token's VMs are not counted against it")
    // an operator removes a VM's state object by hand (its key stays in the pool's VM index): its place is free again once the count, at its limit, checks the VMs it has not seen for vmSeen.ms
    const first = new CephNames('cnt-a-1')
    await runCeph(target, 'rados', ['-p', POOL, 'rm', first.state])
    const seen = vmSeen.ms
    vmSeen.ms = 0
    t.teardown(() => {
      vmSeen.ms = seen
    })
    t.equal(await openVmOnly(url, TOKEN, env.tls.ca, 'cnt-a-3'), 'ok', 'a removed mirror frees its place')
  })

  t.test('mirror remove on Ceph: refused while held; killed after the state object, run again it finishes; nothing of the VM is left in the pool', async (t) => {
    const env = makeEnv(join(base, `remove-${n++}`))
    const log = pino({ level: 'silent' })
    const { receiver, url } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10, retention: { keep: 10 } })
    t.teardown(() => receiver.close())
    const vm = 'vm-remove'
    const images: Buffer[] = [Buffer.alloc(0), pattern(MiB, 91)]
    for (let c = 1; c <= 3; c++) {
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      if (c === 1) await runCycle(a, vm, 1, [seedPlan(0, 'r.vmdk', images[1] as Buffer, cid(91))])
      else {
        const ranges = [{ offset: c * 65_536, length: 65_536 }]
        images[c] = evolve(images[c - 1] as Buffer, c, ranges)
        await runCycle(a, vm, c, [incPlan(0, 'r.vmdk', images[c] as Buffer, c - 1, cid(90 + c), ranges, `r-00000${c - 1}.vmdk`, `r-00000${c}.vmdk`)])
      }
      a.close()
    }
    const names = new CephNames(vm)
    const k = names.vmKey
    const mine = async (): Promise<string[]> => [
      ...(await runCeph(target, 'rbd', ['ls', POOL]))
        .toString()
        .split('\n')
        .filter((i) => i.includes(`.${k}.`)),
      ...(await runCeph(target, 'rados', ['-p', POOL, 'ls']))
        .toString()
        .split('\n')
        .filter((o) => o.includes(k)),
    ]
    t.ok((await mine()).length >= 5, 'the VM has images and objects (state, lock, history, logs)')
    const o = await cephOpenPoint(target, vm, 2, { logger: log })
    await t.rejects(cephRemoveMirror(target, vm, log), { code: 'E_HELD', message: /points close .*then remove it/ }, 'an opened point holds it: E_HELD')
    await cephClosePoint(target, vm, { logger: log, dir: o.hold.dir })
    const held = await CephVmMirror.acquire(target, vm, log, { description: 'receiver under test' })
    await t.rejects(cephRemoveMirror(target, vm, log), { code: 'E_BUSY', message: /receiver under test/ }, 'the lease is held: E_BUSY')
    held.release()
    const child = spawn(process.execPath, [cliBin(), 'mirror', 'remove', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--vm', vm, '--yes', '--log-level', 'warn'], {
      env: { ...process.env, GRAINLINE_RECEIVER_FAULT: 'ceph-remove-after-state:1' },
      stdio: 'ignore',
    })
    const [, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null]
    t.equal(signal, 'SIGKILL', 'mirror remove killed after the state object went')
    t.equal(await readCephState(target, names.state, vm), undefined, 'the VM is gone for every reader')
    const indexed = async (): Promise<boolean> => (await runCeph(target, 'rados', ['-p', POOL, 'listomapkeys', 'grainline.vms'])).toString().split('\n').includes(names.state)
    t.ok(await indexed(), "its key is still in the pool's VM index (the kill came before it)")
    t.notOk(
      (await storeOverview(cephStoreReader(target))).vms.some((v) => v.vm === vm),
      'the overview no longer lists it',
    )
    t.ok(
      (await mine()).some((x) => x.startsWith('gl.')),
      'its images are still there',
    )
    const r = await cephRemoveMirror(target, vm, log)
    t.match(r, { vm, committedCycle: 0, leftovers: 1, resumed: true }, 'run again: it finishes the interrupted removal')
    t.notOk(await indexed(), 'and takes its key out of the index')
    t.ok(r.bytes >= MiB, `the bytes freed (${r.bytes})`)
    t.same(await mine(), [], 'no image, snapshot, log, map, history, state or lock object of the VM is left')
    await t.rejects(cephRemoveMirror(target, vm, log), { code: 'E_NOT_FOUND' }, 'removed: not found')
    await t.rejects(cephRemoveMirror(target, 'vm-never', log), { code: 'E_NOT_FOUND' })
    t.same(
      (await runCeph(target, 'rados', ['-p', POOL, 'ls']))
        .toString()
        .split('\n')
        .filter((x) => x.includes(new CephNames('vm-never').vmKey)),
      [],
      'a removal of a VM the pool never held leaves no lock object',
    )
    // the VM replicated again: a seed into the empty pool, its cycle 1 again (SPEC §5.1: the committed cycle + 1)
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(0, 'r.vmdk', images[3] as Buffer, cid(94))])
    a.close()
    t.equal((await readCephState(target, names.state, vm))?.committedCycle, 1, 'seeded again after its removal')
    t.ok(await indexed(), 'indexed again by its new first write')
    t.match(await cephRemoveMirror(target, vm, log), { committedCycle: 1, disks: ['r.vmdk'], points: [], leftovers: 0, resumed: false }, 'and removed again in one go')
    t.same(await mine(), [])
    t.notOk(await indexed(), 'its key with it')
  })

  t.test("a Ceph command failure is typed, with Ceph's message", async (t) => {
    const err = await runCeph(target, 'rbd', ['info', `${POOL}/no-such-image`]).catch((e: unknown) => e)
    t.ok(err instanceof CephCommandError)
    t.ok((err as CephCommandError).notFound)
    t.equal((err as CephCommandError).code, 'E_IO')
  })

  t.test('librbd reader: reads of a snapshot anywhere, split into bounded requests; past the end zeros; typed failures', async (t) => {
    const img = 'reader-test'
    const size = MAX_READ_BYTES + 3 * 65536
    const data = Buffer.alloc(size)
    for (let i = 0; i < size; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i)
    const { writeFile: wf } = await import('node:fs/promises')
    const raw = join(base, 'reader.raw')
    await wf(raw, data)
    await runCeph(target, 'rbd', ['import', '--no-progress', raw, `${POOL}/${img}`])
    await runCeph(target, 'rbd', ['snap', 'create', '--no-progress', `${POOL}/${img}@s1`])
    // the head changes after the snapshot: the snapshot's reader still sees the old bytes
    await ceph.writeImage(POOL, img, 0, Buffer.alloc(4096, 0xff))
    const r = await RbdImage.open(target, img, 's1')
    t.teardown(() => r.close())
    t.equal(r.size, size, 'the snapshot size')
    t.ok((await r.read(0, 4096)).equals(data.subarray(0, 4096)), 'the snapshot, not the head')
    const across = await r.read(MAX_READ_BYTES - 100, 65536 + 200)
    t.ok(across.equals(data.subarray(MAX_READ_BYTES - 100, MAX_READ_BYTES + 65536 + 100)), 'a read across the request bound is split and joined')
    const all = await Promise.all([r.read(0, size), r.read(65536, 10), r.read(size - 10, 10)])
    t.ok(all[0].equals(data) && all[1].equals(data.subarray(65536, 65546)) && all[2].equals(data.subarray(size - 10)), 'pipelined reads answer in order')
    const tail = await r.read(size - 4, 12)
    t.ok(tail.subarray(0, 4).equals(data.subarray(size - 4)) && tail.subarray(4).equals(Buffer.alloc(8)), 'past the end reads as zeros')
    const head = await RbdImage.open(target, img, null)
    t.ok((await head.read(0, 4096)).equals(Buffer.alloc(4096, 0xff)), 'the head when no snapshot is named')
    await head.close()
    await t.rejects(head.read(0, 1), { code: 'E_IO', message: /closed/ }, 'a closed reader refuses reads')
    await t.rejects(RbdImage.open(target, 'no-such-image', null), { code: 'E_IO', message: /no-such-image/ }, 'a missing image: E_IO naming it')
    await t.rejects(RbdImage.open(target, img, 'no-such-snap'), { code: 'E_IO', message: /no-such-snap/ }, 'a missing snapshot: E_IO naming it')
    // the side object (a kept block map): read by a reader, written only by a helper opened writable
    const snaps = JSON.parse((await runCeph(target, 'rbd', ['snap', 'ls', '--format', 'json', `${POOL}/${img}`])).toString()) as Array<{ id: number; name: string }>
    t.equal(r.snapId, snaps.find((x) => x.name === 's1')?.id, "the reader reports the snapshot's id")
    const w = await RbdImage.open(target, img, 's1', undefined, { object: 'side-test', writable: true })
    t.teardown(() => w.close())
    await t.rejects(w.readSide(0, 10), { code: 'E_NOT_FOUND' }, 'no side object yet: E_NOT_FOUND')
    const big = Buffer.alloc(MAX_READ_BYTES + 1000, 7)
    await w.writeSide(0, big, true)
    await w.writeSide(MAX_READ_BYTES + 10, Buffer.from('abc'))
    const back = await w.readSide(0, MAX_READ_BYTES + 2000)
    t.equal(back.length, MAX_READ_BYTES + 1000, 'a read of the side object ends with it; requests split at the bound')
    t.ok(back.subarray(MAX_READ_BYTES + 10, MAX_READ_BYTES + 13).equals(Buffer.from('abc')) && back[0] === 7, 'written in parts, at offsets')
    await w.writeSide(0, Buffer.from('x'), true)
    t.equal((await w.readSide(0, 100)).length, 1, 'write_full replaces the object')
    const ro = await RbdImage.open(target, img, 's1', undefined, { object: 'side-test' })
    t.teardown(() => ro.close())
    t.ok((await ro.readSide(0, 1)).equals(Buffer.from('x')), 'a reader reads the side object')
    await t.rejects(ro.writeSide(0, Buffer.from('y')), { code: 'E_IO', message: /bad request op 6/ }, 'but never writes it')
  })

  storeConformance(
    t,
    {
      kind: 'ceph',
      init: () => ({ store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10 }),
      readDisk: async (env, vm, disk) => {
        const r = await cephRestorePoint(target, vm, (await cephListPoints(target, vm)).committedCycle, join(env.dir, `mirror-${n++}`))
        return await readFile((r.disks.find((d) => d.name === disk) as { file: string }).file)
      },
      points: async (_env, vm) => (await cephListPoints(target, vm)).points.filter((p) => !p.current).map((p) => p.cycle),
      readPoint: async (env, vm, cycle, disk) => {
        const r = await cephRestorePoint(target, vm, cycle, join(env.dir, `point-${cycle}-${n++}`))
        return await readFile((r.disks.find((d) => d.name === disk) as { file: string }).file)
      },
      // a snapshot cannot be written: the head (equal to it between cycles) is, and the snapshot is taken again under its name
      corrupt: async (_env, vm, disk, offset, data) => {
        const rec = (await readCephState(target, new CephNames(vm).state, vm))?.disks[disk]
        if (rec === undefined) throw new Error(`no committed disk ${disk} of ${vm}`)
        await ceph.writeImage(POOL, rec.image, offset, data)
        await runCeph(target, 'rbd', ['snap', 'rm', '--no-progress', `${POOL}/${rec.image}@${rec.snap}`])
        await runCeph(target, 'rbd', ['snap', 'create', '--no-progress', `${POOL}/${rec.image}@${rec.snap}`])
      },
      prune: async (_env, vm, what) => await cephPrunePoints(target, vm, what, { logger: pino({ level: 'silent' }) }),
      failover: async (_env, vm, cycle, dir) => {
        const r = await cephFailover(target, vm, cycle, dir, { logger: pino({ level: 'silent' }) })
        return Object.fromEntries(r.disks.map((d) => [d.name, d.descriptor]))
      },
      close: async (_env, vm, dir, failover) => (await cephClosePoint(target, vm, { logger: pino({ level: 'silent' }), dir, failover: failover === true })).length,
      overview: async () => await storeOverview(cephStoreReader(target)),
      // the VM's images (its points-open clones, glo., are no disk data)
      storage: async (_env, vm) =>
        (await runCeph(target, 'rbd', ['ls', '-p', POOL]))
          .toString('utf8')
          .split('\n')
          .filter((i) => i.startsWith('gl.') && imageVmKey(i) === new CephNames(vm).vmKey)
          .sort(),
    },
    () => join(base, String(n++)),
  )

  t.test("the kept block map on Ceph: recorded with the snapshot's id; a snapshot taken again behind the store's back, or a failed check, and it is not trusted", async (t) => {
    const env = makeEnv(join(base, `kept-${n++}`))
    const { receiver, url, logs } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10 })
    t.teardown(() => receiver.close())
    const vm = 'vm-kept-rot'
    const names = new CephNames(vm)
    const sealed = (): { read: number; kept: number } => {
      const l = logs.lines.filter((x) => x['msg'] === 'disk sealed' && x['mapMirrorBytes'] !== undefined).at(-1)
      return { read: Number(l?.['mapMirrorBytes']), kept: Number(l?.['mapKeptBlocks']) }
    }
    const rec = async () => (await readCephState(target, names.state, vm))?.disks[RNAME]
    const img = pattern(RSIZE, 81)
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(0, RNAME, img, cid(81))])
    a.close()
    t.equal((await rec())?.kept, undefined, 'a seed keeps no map')
    t.same((await resyncCycle(env, url, 2, img, vm)).sent, [], 'a resync of an equal mirror')
    const r2 = await rec()
    const snapId = (JSON.parse((await runCeph(target, 'rbd', ['snap', 'ls', '--format', 'json', `${POOL}/${r2?.image}`])).toString()) as Array<{ id: number; name: string }>).find(
      (x) => x.name === r2?.snap,
    )?.id
    t.same(r2?.kept, { blockSize: RBS, algorithm: 'sha256', snapId }, "the state records the map and its snapshot's id")
    t.ok((await runCeph(target, 'rados', ['-p', POOL, 'ls'])).toString().split('\n').includes(names.keptMap(RNAME)), 'the map is a RADOS object')
    // a block rots in the committed snapshot: the head written, the snapshot taken again under its name (another id)
    const rotten = Buffer.from(img)
    rotten.fill(0x5a, 9 * RBS + 10, 9 * RBS + 400)
    await ceph.writeImage(POOL, r2?.image as string, 9 * RBS + 10, rotten.subarray(9 * RBS + 10, 9 * RBS + 400))
    await runCeph(target, 'rbd', ['snap', 'rm', '--no-progress', `${POOL}/${r2?.image}@${r2?.snap}`])
    await runCeph(target, 'rbd', ['snap', 'create', '--no-progress', `${POOL}/${r2?.image}@${r2?.snap}`])
    const r3 = await resyncCycle(env, url, 3, img, vm)
    t.same(r3.sent, [9], 'the kept map is not trusted for a snapshot with another id: the rotten block is found and sent')
    t.same(sealed(), { read: RSIZE, kept: 0 }, 'every block read from the snapshot')
    await logs.waitFor((l) => l['msg'] === 'no kept block map: the resync reads the whole snapshot' && l['why'] === 'the mirror changed since')
    // a failed block check drops the map
    t.not((await rec())?.kept, undefined, 'the resync wrote a new map')
    const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const ranges = [{ offset: 0, length: 4096 }]
    const img4 = evolve(img, 84, ranges)
    await runCycle(b, vm, 4, [incPlan(0, RNAME, img4, 3, cid(84), ranges, 'vm-r-000001.vmdk', 'vm-r-000004.vmdk')])
    t.not((await rec())?.kept, undefined, 'an incremental carries the map over')
    const one = new Uint8Array(8)
    new DataView(one.buffer).setBigUint64(0, 20n, true)
    b.send({ kind: MessageKind.BlockCheck, disk: 0, blockSize: RBS, blocks: one, digests: Buffer.alloc(32, 1) })
    t.equal((await b.expect(MessageKind.BlockCheckResult)).ok, false, 'a block check with a wrong digest fails')
    b.close()
    t.equal((await rec())?.kept, undefined, 'the failed check dropped the map with the divergence')
    t.same((await resyncCycle(env, url, 5, img4, vm)).sent, [], 'the next resync')
    t.same(sealed(), { read: RSIZE, kept: 0 }, 'reads the whole snapshot')
  })

  t.test('the overview of a Ceph store (status, metrics, dashboard): the state objects, the history objects, rbd du; an unreadable state object is a CRITICAL VM', async (t) => {
    const reader = cephStoreReader(target)
    const o = await storeOverview(reader, { now: Date.now() })
    t.equal(o.store, `ceph:${POOL}`)
    const v = o.vms.find((x) => x.vm === 'vm-kept-rot')
    t.equal(v?.committedCycle, 5, 'the VM of the kept-map case, at cycle 5')
    t.match(v?.disks[0], { name: RNAME, committedCycle: 5, capacity: RSIZE, size: RSIZE, modified: false, diverged: null, inflight: null }, 'its disk, from the state object')
    t.match((v?.disks[0] as { snapshot?: string } | undefined)?.snapshot, new RegExp(`^${POOL}/gl\\..*@c5-`), 'with its snapshot')
    t.ok((v?.usedBytes ?? 0) >= RSIZE, 'its bytes (rbd du)')
    t.equal(v?.lastCycle?.cycle, 5, 'the last cycle from the history object')
    t.same(
      (await readCephHistory(target, 'vm-kept-rot')).map((h) => [h.cycle, h.modes]),
      [
        [1, ['seed']],
        [2, ['resync']],
        [3, ['resync']],
        [4, ['incremental']],
        [5, ['resync']],
      ],
      'every committed cycle with its mode',
    )
    t.same(await readCephHistory(target, 'vm-none'), [], 'no history: empty')
    const d = await vmDetail(reader, 'vm-kept-rot')
    t.equal(d?.history.length, 5, "the VM's page")
    t.equal(await vmDetail(reader, 'vm-none'), undefined, 'a VM the pool does not hold')
    const metrics = new ReceiverMetrics(reader, () => 0)
    t.match(await metrics.registry.metrics(), /grainline_mirror_committed_cycle\{vm="vm-kept-rot"\} 5/, '/metrics reads the pool')
    // a VM's state object that cannot be read (its key in the pool's VM index): the VM (named by its object) is CRITICAL, the others still shown
    const bad = `grainline.vm.${'f'.repeat(24)}`
    await runCeph(target, 'rados', ['-p', POOL, 'setomapval', 'grainline.vms', bad, 'bad'])
    await runCeph(target, 'rados', ['-p', POOL, 'put', bad, '-'], Buffer.from('not json'))
    const withBad = await storeOverview(reader)
    t.match(
      withBad.vms.find((x) => x.vm === bad),
      { error: /not JSON/, health: { state: 'CRITICAL' } },
      'an unreadable state object: CRITICAL',
    )
    t.ok(
      withBad.vms.some((x) => x.vm === 'vm-kept-rot'),
      'the other VMs are still read',
    )
    await runCeph(target, 'rados', ['-p', POOL, 'rm', bad])
    t.notOk(
      (await storeOverview(reader)).vms.some((x) => x.vm === bad),
      'its object removed by hand: no VM (the key left in the index names nothing)',
    )
    await runCeph(target, 'rados', ['-p', POOL, 'rmomapkey', 'grainline.vms', bad])
    await t.rejects(storeOverview(cephStoreReader({ pool: 'glnopool', conf: ceph.conf })), { code: 'E_NOT_FOUND', message: /glnopool does not exist/ }, 'a pool that does not exist')
  })

  t.test("the pool's VM index: status, the VM count and a new VM never list the pool; a pool from before the index is indexed once; mirror remove takes the key out", async (t) => {
    const env = makeEnv(join(base, `index-${n++}`))
    const file = join(env.dir, 'tokens-index.json')
    writeFileSync(file, JSON.stringify({ tokens: [{ name: 'proxy-a', token: TOKEN, vms: ['idx-*'], maxVms: 5 }] }))
    // every rados command the store runs, through a wrapper first on PATH (the session client is librados, not the command)
    const wrap = join(env.dir, 'bin')
    const calls = join(env.dir, 'rados-calls')
    await mkdir(wrap)
    const real = execFileSync('sh', ['-c', 'command -v rados'], { encoding: 'utf8' }).trim()
    await writeFile(join(wrap, 'rados'), `#!/bin/sh\necho "$*" >> '${calls}'\nexec ${real} "$@"\n`, { mode: 0o755 })
    const path = process.env.PATH
    process.env.PATH = `${wrap}:${path}`
    t.teardown(() => {
      process.env.PATH = path
    })
    const listings = async (): Promise<number> => (existsSync(calls) ? (await readFile(calls, 'utf8')).split('\n').filter((l) => / ls$/.test(l)).length : 0)
    const keys = async (): Promise<string[]> =>
      (await runCeph(target, 'rados', ['-p', POOL, 'listomapkeys', 'grainline.vms']))
        .toString()
        .split('\n')
        .filter((k) => k !== '')
    const stateObjects = async (): Promise<string[]> =>
      (await runCeph(target, 'rados', ['-p', POOL, 'ls']))
        .toString()
        .split('\n')
        .filter((o) => o.startsWith('grainline.vm.'))
        .sort()
    // a pool written before the index: the VMs the earlier cases left, no index object
    await runCeph(target, 'rados', ['-p', POOL, 'rm', 'grainline.vms'])
    const held = await stateObjects()
    t.ok(held.length >= 3, `the pool holds VMs (${held.length})`)
    const names = async (): Promise<string[]> => (await cephStatus(target)).vms.map((v) => new CephNames(v.vm).state).sort()
    const beforeCalls = await listings()
    t.same(await names(), held, 'status lists every VM of a pool from before the index')
    t.equal((await listings()) - beforeCalls, 1, 'by one listing of the pool')
    t.same((await keys()).filter((k) => k !== 'complete').sort(), held, 'which indexed every state object')
    t.ok((await keys()).includes('complete'), 'and marked the index complete')
    // from now on: no listing of the pool
    const indexed = await listings()
    t.same(await names(), held, 'status again: the same VMs')
    const { receiver, url } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10, tokensFile: file })
    t.teardown(() => receiver.close())
    t.equal(await openVmOnly(url, TOKEN, env.tls.ca, 'idx-1'), 'ok', 'a VM new to the pool, counted against maxVms')
    const idx1 = new CephNames('idx-1').state
    t.ok((await keys()).includes(idx1), 'its VmOpen put its key in the index')
    t.match((await runCeph(target, 'rados', ['-p', POOL, 'getomapval', 'grainline.vms', idx1])).toString(), /idx-1/, "the key's value names the VM (for an operator)")
    t.ok((await names()).includes(idx1), 'status lists it')
    const reader = cephStoreReader(target)
    t.ok(
      (await storeOverview(reader)).vms.some((v) => v.vm === 'idx-1'),
      'the overview (dashboard, metrics) lists it',
    )
    t.equal(await listings(), indexed, 'none of status, the count, VmOpen or the overview listed the pool')
    // a key whose state object never came (a first write killed after its key): no VM, counted for nobody
    const ghost = new CephNames('idx-ghost').state
    await runCeph(target, 'rados', ['-p', POOL, 'setomapval', 'grainline.vms', ghost, 'idx-ghost'])
    t.notOk((await names()).includes(ghost), 'a key without a state object is no VM')
    for (let i = 2; i <= 5; i++) t.equal(await openVmOnly(url, TOKEN, env.tls.ca, `idx-${i}`), 'ok', `idx-${i} (the ghost key is not counted)`)
    const stats = async (): Promise<number> => (await readFile(calls, 'utf8')).split('\n').filter((l) => / stat /.test(l)).length
    const statsBefore = await stats()
    t.match(await openVmOnly(url, TOKEN, env.tls.ca, 'idx-6'), /^E_QUOTA: token proxy-a keeps 5 VMs/, 'the sixth: E_QUOTA')
    t.equal((await stats()) - statsBefore, 1, "at the limit, only the new VM's own rados stat: the counted VMs were read within vmSeen.ms")
    // a removal killed between its state object and its key (the state object removed by hand here): at its limit the count asks whether the VMs it has not seen lately still exist
    await runCeph(target, 'rados', ['-p', POOL, 'rm', idx1])
    const seen = vmSeen.ms
    vmSeen.ms = 0
    t.teardown(() => {
      vmSeen.ms = seen
    })
    t.equal(await openVmOnly(url, TOKEN, env.tls.ca, 'idx-6'), 'ok', 'a VM whose state object is gone (its key left) is not counted')
    vmSeen.ms = seen
    // mirror remove of it and of the ghost: nothing else of them left (E_NOT_FOUND), their keys taken out
    const log = pino({ level: 'silent' })
    t.ok((await keys()).includes(idx1), "the gone VM's key was still in the index")
    await t.rejects(cephRemoveMirror(target, 'idx-1', log), { code: 'E_NOT_FOUND' }, 'idx-1: nothing left to remove')
    t.notOk((await keys()).includes(idx1), 'mirror remove took its key out')
    await t.rejects(cephRemoveMirror(target, 'idx-ghost', log), { code: 'E_NOT_FOUND' }, 'the ghost: nothing to remove')
    t.notOk((await keys()).includes(ghost), 'but its key is gone')
    // a removal that finds the state object: the key goes with it
    const idx2 = new CephNames('idx-2').state
    t.match(await cephRemoveMirror(target, 'idx-2', log), { vm: 'idx-2', resumed: false })
    t.notOk((await keys()).includes(idx2), 'mirror remove took its key out of the index')
    t.notOk((await names()).includes(idx2), 'status no longer lists it')
    t.equal(await openVmOnly(url, TOKEN, env.tls.ca, 'idx-7'), 'ok', 'a place under maxVms is free again')
    t.equal(await listings(), indexed + 3, 'only the three removals listed the pool (for their leftovers)')
  })

  t.test('points drop killed between the state write and the snapshot removal: the state names no such point, the next cycle finishes the removal', async (t) => {
    const env = makeEnv(join(base, `crash-${n++}`))
    const log = pino({ level: 'silent' })
    const { receiver, url } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10, retention: { keep: 10 } })
    t.teardown(() => receiver.close())
    const vm = 'vm-prune-crash'
    const images: Buffer[] = [Buffer.alloc(0), pattern(MiB, 71)]
    const cycle = async (c: number, opts: { stopAfter?: number } = {}): Promise<Agent> => {
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      if (c === 1) await runCycle(a, vm, 1, [seedPlan(0, 'x.vmdk', images[1] as Buffer, cid(71))])
      else {
        const ranges = [{ offset: c * 65_536, length: 65_536 }]
        images[c] = evolve(images[c - 1] as Buffer, c, ranges)
        await runCycle(a, vm, c, [incPlan(0, 'x.vmdk', images[c] as Buffer, c - 1, cid(70 + c), ranges, `x-00000${c - 1}.vmdk`, `x-00000${c}.vmdk`)], opts)
      }
      return a
    }
    for (let c = 1; c <= 3; c++) (await cycle(c)).close()
    const names = new CephNames(vm)
    const before = (await readCephState(target, names.state, vm)) as CephVmState
    const p1 = before.points.find((p) => p.cycle === 1)?.disks['x.vmdk']
    if (p1 === undefined) throw new Error('no point 1')
    const snaps = async (): Promise<string[]> => JSON.parse((await runCeph(target, 'rbd', ['snap', 'ls', '--format', 'json', `${POOL}/${p1.image}`])).toString()).map((x: { name: string }) => x.name)
    t.ok((await snaps()).includes(p1.snap), 'point 1 is a snapshot')
    // an operator action while a session holds the VM's lease: it waits, then E_BUSY naming the holder (never races it)
    const held = await CephVmMirror.acquire(target, vm, log, { description: 'receiver under test' })
    await t.rejects(cephPrunePoints(target, vm, { cycles: [1] }, { logger: log }), { code: 'E_BUSY', message: /receiver under test/ }, 'the lease is held: E_BUSY')
    held.release()
    const child = spawn(process.execPath, [cliBin(), 'points', 'drop', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--vm', vm, '--point', '1', '--log-level', 'warn'], {
      env: { ...process.env, GRAINLINE_RECEIVER_FAULT: 'ceph-prune-after-state:1' },
      stdio: 'ignore',
    })
    const [, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null]
    t.equal(signal, 'SIGKILL', 'points drop killed after the state write')
    const mid = (await readCephState(target, names.state, vm)) as CephVmState
    t.same(
      mid.points.map((p) => p.cycle),
      [2],
      'the state (the commit point) no longer names point 1',
    )
    t.same(mid.pending?.snaps, [{ image: p1.image, snap: p1.snap }], 'its snapshot is pending removal')
    t.ok((await snaps()).includes(p1.snap), 'the snapshot is still there')
    t.same(
      (await cephListPoints(target, vm)).points.map((p) => p.cycle),
      [2, 3],
      'points lists it as dropped',
    )
    // a cycle in flight refuses a drop, as on the folder store
    const a4 = await cycle(4, { stopAfter: 0 })
    a4.terminate()
    await t.rejects(
      pollUntil(
        async () =>
          await cephPrunePoints(target, vm, { cycles: [2] }, { logger: log }).catch((e: { code?: string }) => (e.code === 'E_BUSY' && /in flight/.test(String(e)) ? Promise.reject(e) : undefined)),
      ),
      { code: 'E_BUSY', message: /cycle 4 in flight/ },
      'a cycle in flight: E_BUSY',
    )
    t.notOk((await snaps()).includes(p1.snap), "the next holder of the lease (the cycle's receiver) finished the removal")
    t.equal(((await readCephState(target, names.state, vm)) as CephVmState).pending, null, 'nothing pending')
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const ranges = [{ offset: 4 * 65_536, length: 65_536 }]
    const r = await runCycle(a, vm, 4, [incPlan(0, 'x.vmdk', images[4] as Buffer, 3, cid(74), ranges, 'x-000003.vmdk', 'x-000004.vmdk')])
    a.close()
    t.equal(r.committed?.cycle, 4, 'the cycle resumes and commits')
    t.same(
      (await cephListPoints(target, vm)).points.map((p) => p.cycle),
      [2, 3, 4],
    )
  })

  // A cycle in flight with batches logged (an incremental rewriting the whole 2 MiB disk over its seed, or the seed
  // itself), its connection killed: the plan, what the committed image must hold once the cycle commits, and what a
  // durable ExtentAck acknowledged.
  const inflightCycle = async (url: string, ca: Buffer, vm: string, mode: 'seed' | 'incremental', seed: number): Promise<{ cycle: number; plan: DiskPlan; want: Buffer; acked: number }> => {
    const img1 = pattern(2 * MiB, seed)
    let plan = seedPlan(0, 'r.vmdk', img1, cid(seed), 128 * 1024)
    if (mode === 'incremental') {
      const a = await Agent.connect(url, { token: TOKEN, ca })
      await runCycle(a, vm, 1, [plan])
      a.close()
      const ranges = [{ offset: 0, length: 2 * MiB }]
      plan = incPlan(0, 'r.vmdk', evolve(img1, seed + 1, ranges), 1, cid(seed + 1), ranges, 'r-000001.vmdk', 'r-000002.vmdk', 128 * 1024)
    }
    const cycle = mode === 'seed' ? 1 : 2
    const a = await Agent.connect(url, { token: TOKEN, ca })
    await runCycle(a, vm, cycle, [plan], { stopAfter: 6 })
    const ack = await a.expect(MessageKind.ExtentAck)
    a.terminate()
    return { cycle, plan, want: plan.image, acked: ack.seq }
  }
  const committedBytes = async (vm: string, cycle: number): Promise<Buffer> => await readFile((await cephRestorePoint(target, vm, cycle, join(base, `committed-${n++}`))).disks[0]?.file as string)

  t.test(
    "mirror rollback killed between its steps (after the extent log's removal, after the image's undo, before the state write): the resumed cycle writes every extent again; the committed snapshot holds the cycle",
    async (t) => {
      const env = makeEnv(join(base, `rollback-crash-${n++}`))
      const { receiver, url } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10, batchBytes: 256 * 1024 })
      t.teardown(() => receiver.close())
      const cases = [
        { point: 'ceph-rollback-head', mode: 'incremental' },
        { point: 'ceph-rollback-log', mode: 'incremental' },
        { point: 'ceph-rollback-log', mode: 'seed' },
        { point: 'ceph-rollback-state', mode: 'incremental' },
      ] as const
      for (const [i, c] of cases.entries()) {
        const vm = `vm-rb-crash-${i}`
        const what = `${c.mode} killed at ${c.point}`
        const f = await inflightCycle(url, env.tls.ca, vm, c.mode, 40 + 2 * i)
        t.ok(f.acked >= 0, `${what}: a durable batch acknowledged (seq ${f.acked})`)
        const child = spawn(process.execPath, [cliBin(), 'mirror', 'rollback', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--vm', vm, '--log-level', 'warn'], {
          env: { ...process.env, GRAINLINE_RECEIVER_FAULT: `${c.point}:1` },
          stdio: 'ignore',
        })
        const [, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null]
        t.equal(signal, 'SIGKILL', `${what}: mirror rollback killed`)
        t.equal(((await readCephState(target, new CephNames(vm).state, vm)) as CephVmState).inflight?.cycle, f.cycle, `${what}: the cycle is still in flight`)
        const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
        const r = await runCycle(a, vm, f.cycle, [f.plan])
        a.close()
        t.equal(r.resume[0], 0, `${what}: the resume starts at seq 0 (the log went before the undo)`)
        t.equal(r.committed?.cycle, f.cycle, `${what}: the cycle commits`)
        t.ok((await committedBytes(vm, f.cycle)).equals(f.want), `${what}: the committed snapshot holds every extent of the cycle`)
      }
    },
  )

  t.test('a rollback whose extent log removal fails undoes nothing: typed error naming the VM and disk; the cycle resumes after its logged extents and commits the right bytes', async (t) => {
    const env = makeEnv(join(base, `rollback-fail-${n++}`))
    const log = pino({ level: 'silent' })
    const { receiver, url } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10, batchBytes: 256 * 1024 })
    t.teardown(() => receiver.close())
    const vm = 'vm-rb-fail'
    const f = await inflightCycle(url, env.tls.ca, vm, 'incremental', 60)
    const m = await whenFree(() => CephVmMirror.acquire(target, vm, log, { description: 'test' }))
    const logObject = m.state.inflight?.disks['r.vmdk']?.log as string
    // the cluster refuses the removal of the log object (as a RADOS failure would), every other request goes through
    const remove = m.lock.remove.bind(m.lock)
    m.lock.remove = async (object: string, missingOk?: boolean): Promise<void> => {
      if (object === logObject) throw new CephCommandError(`rados rm ${object} (session client)`, 5, 'Input/output error (5)')
      await remove(object, missingOk)
    }
    await t.rejects(
      m.rollback(),
      { code: 'E_IO', message: new RegExp(`VM ${vm}: removing the extent log .* of disk r\\.vmdk failed .*run grainline mirror rollback again`) },
      'typed, naming VM, disk and what to do',
    )
    m.release()
    t.equal(((await readCephState(target, new CephNames(vm).state, vm)) as CephVmState).inflight?.cycle, 2, 'the cycle is still in flight')
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const r = await runCycle(a, vm, 2, [f.plan])
    a.close()
    t.ok((r.resume[0] ?? 0) > f.acked, `the resume trusts the log, which the head still holds (at ${r.resume[0]})`)
    t.equal(r.committed?.cycle, 2)
    t.ok((await committedBytes(vm, 2)).equals(f.want), 'the committed snapshot holds every extent of the cycle')
  })

  t.test('points close --all leaves a folder a hostile state names that is not a failover folder; mirror rollback on Ceph', async (t) => {
    const log = pino({ level: 'silent' })
    const vm = 'vm-prune-crash'
    const names = new CephNames(vm)
    const s = (await readCephState(target, names.state, vm)) as CephVmState
    const victim = join(base, 'victim')
    await mkdir(join(victim, 'sub'), { recursive: true })
    await writeFile(join(victim, 'sub', 'keep'), 'x')
    await writeCephState(target, names.state, { ...s, holds: [{ id: 'x', cycle: s.committedCycle, dir: victim, kind: 'failover', createdAt: new Date().toISOString() }] })
    await t.rejects(cephClosePoint(target, vm, { logger: log, all: true }), { code: 'E_HELD' }, 'a failover hold needs --failover')
    const closed = await cephClosePoint(target, vm, { logger: log, all: true, failover: true })
    t.equal(closed.length, 1, 'the hold is released')
    t.ok(existsSync(join(victim, 'sub', 'keep')), 'a folder with subfolders is not removed')
    t.same(((await readCephState(target, names.state, vm)) as CephVmState).holds, [])
    await t.rejects(cephClosePoint(target, vm, { logger: log, all: true }), { code: 'E_NOT_FOUND' }, 'no hold left')
    await t.rejects(cephFailover(target, vm, 99, join(base, 'fo-99'), { logger: log }), { code: 'E_NOT_FOUND' }, 'failover of a point the pool does not have')
    await t.rejects(cephFailover(target, 'no-such-vm', undefined, join(base, 'fo-none'), { logger: log }), { code: 'E_NOT_FOUND' }, 'failover of a VM the pool does not have')
    t.same(await cephRollbackMirror(target, vm, log), { vm, committedCycle: s.committedCycle, rolledBack: false }, 'mirror rollback with nothing in flight')
    await t.rejects(cephRollbackMirror(target, 'no-such-vm', log), { code: 'E_NOT_FOUND' })
  })

  t.test('status lists what the cases committed; digests of a snapshot equal a digest of its export', async (t) => {
    const st = await cephStatus(target)
    t.equal(st.store, `ceph:${POOL}`)
    const vm = st.vms.find((v) => v.committedCycle > 0 && v.disks.some((d) => d.snapshot !== ''))
    t.ok(vm !== undefined, `a committed VM among ${st.vms.map((v) => v.vm).join(', ')}`)
    const disk = vm?.disks.find((d) => d.snapshot !== '')
    const snap = (disk?.snapshot ?? '').slice(POOL.length + 1)
    t.match(snap, /@/, 'a disk names its image and snapshot')
    const data = await readFile(
      (
        (await cephRestorePoint(target, vm?.vm as string, vm?.committedCycle as number, join(base, 'digest-check'))).disks.find((d) => d.name === disk?.name) as {
          file: string
        }
      ).file,
    )
    t.equal(data.length, disk?.capacity, 'the export is the whole disk')
    const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')
    const full = await digestImage(target, snap, 'sha256', Number.MAX_SAFE_INTEGER)
    t.equal(full.bytes, data.length)
    t.equal(Buffer.from(full.digest).toString('hex'), sha(data), 'the whole snapshot')
    const head = await digestImage(target, snap, 'sha256', 4096)
    t.equal(head.bytes, 4096)
    t.equal(Buffer.from(head.digest).toString('hex'), sha(data.subarray(0, 4096)), 'a prefix (the trivial check) stops early')
    t.equal((await digestImage(target, snap, 'sha256', 0)).bytes, 0, 'no prefix: nothing read')
    const aborted = new AbortController()
    aborted.abort(new Error('stop'))
    await t.rejects(digestImage(target, snap, 'sha256', Number.MAX_SAFE_INTEGER, aborted.signal), /stop/, 'an aborted read stops')
  })

  t.test('restore: a committed VM as a folder (descriptor + flat per disk) equal to its export; hostile state names refused', async (t) => {
    const st = await cephStatus(target)
    const vm = st.vms.find((v) => v.committedCycle > 0 && v.disks.length > 0 && v.disks.every((d) => d.snapshot !== ''))
    if (vm === undefined) throw new Error('no committed VM to restore')
    const progress: number[] = []
    const to = join(base, 'restore-ok')
    const r = await cephRestoreVm(target, vm.vm, vm.committedCycle, to, { onProgress: (p) => progress.push(p.bytes) })
    t.equal(r.disks.length, vm.disks.length, 'every disk restored')
    const exported = await cephRestorePoint(target, vm.vm, vm.committedCycle, join(base, 'restore-ref'))
    for (const d of r.disks) {
      const ref = exported.disks.find((e) => e.name === d.name)?.file as string
      t.same(await readFile(d.flat), await readFile(ref), `${d.name}: the flat equals rbd export of ${d.snapshot}`)
      t.match(await readFile(d.descriptor, 'utf8'), /createType="vmfs"/, `${d.name}: a vmfs descriptor`)
      t.equal(d.verified, 'snapshot')
    }
    t.equal(
      progress.at(-1),
      vm.disks.reduce((n, d) => n + d.capacity, 0),
      'progress ends at the total',
    )
    await t.rejects(cephRestoreVm(target, vm.vm, vm.committedCycle, to), { code: 'E_CONFIG' }, 'a folder that is not empty')
    await t.rejects(cephRestoreVm(target, vm.vm, 999, join(base, 'restore-999')), { code: 'E_NOT_FOUND' }, 'no such point')
    await t.rejects(cephRestoreVm(target, 'no-such-vm', 1, join(base, 'restore-none')), { code: 'E_NOT_FOUND' }, 'no such VM')
    await t.rejects(cephRestoreVm(target, '../etc', 1, join(base, 'restore-bad')), { code: 'E_BAD_NAME' }, 'a VM name that is not a path component')
    // a hostile pool: names in the state object never become paths unchecked
    const disk = (name: string, image = 'img', snap = 'c1-x') => ({
      [name]: { name, image, snap, cycle: 1, generation: 'g', capacity: 512, source: { layers: [], successor: '' }, ddb: {}, digest: '', committedAt: new Date().toISOString() },
    })
    const plant = async (vmName: string, disks: object, files: Record<string, string> = {}): Promise<void> => {
      await writeCephState(target, new CephNames(vmName).state, { ...emptyCephState(vmName), committedCycle: 1, disks, files } as CephVmState)
    }
    await plant('hostile-disk', disk('../../etc/passwd'))
    await t.rejects(cephRestoreVm(target, 'hostile-disk', 1, join(base, 'h1')), { code: 'E_STATE' }, 'a disk name with a separator')
    await plant('hostile-image', disk('a.vmdk', 'img; rm -rf /'))
    await t.rejects(cephRestoreVm(target, 'hostile-image', 1, join(base, 'h2')), { code: 'E_STATE' }, 'an image name that is not an RBD name')
    await plant('hostile-collide', { ...disk('a.vmdk'), ...disk('A.VMDK') })
    await t.rejects(cephRestoreVm(target, 'hostile-collide', 1, join(base, 'h3')), { code: 'E_STATE' }, 'two disks on one file name')
    await plant('hostile-file', disk('a.vmdk'), { '../evil.vmx': Buffer.from('x').toString('base64') })
    await t.rejects(cephRestoreVm(target, 'hostile-file', 1, join(base, 'h4')), { code: 'E_STATE' }, 'a configuration file name with a separator')
    for (const configs of ['x', ['eA=='], { k: 7 }]) {
      await writeCephState(target, new CephNames('hostile-configs').state, { ...emptyCephState('hostile-configs'), committedCycle: 1, disks: disk('a.vmdk'), configs } as unknown as CephVmState)
      await t.rejects(cephRestoreVm(target, 'hostile-configs', 1, join(base, 'h-cfg')), { code: 'E_STATE' }, `points' configurations ${JSON.stringify(configs)}: not a state record`)
    }
    t.notOk(existsSync(join(base, 'evil.vmx')), 'nothing written outside the folder')
    await plant('missing-image', disk('a.vmdk', 'nonexistent-image'))
    await t.rejects(cephRestoreVm(target, 'missing-image', 1, join(base, 'h5')), { code: 'E_IO', message: /a\.vmdk.*point 1/ }, 'a missing image is a typed read failure naming the disk and point')
    // a failover whose copy fails: the hold stays (recorded first), the error says how to release it
    const log = pino({ level: 'silent' })
    const fo = join(base, 'fo-missing')
    await t.rejects(cephFailover(target, 'missing-image', undefined, fo, { logger: log }), { code: 'E_IO', message: /stays held.*points close/ }, 'a failed failover says the VM stays held')
    t.equal((await cephListPoints(target, 'missing-image')).points.at(-1)?.held, true, 'the mirror is listed as held')
    await t.rejects(cephFailover(target, 'missing-image', undefined, fo, { logger: log }), { code: 'E_CONFIG', message: /holds VM/ }, 'a second failover into the same folder')
    t.equal((await cephClosePoint(target, 'missing-image', { logger: log, dir: fo, failover: true })).length, 1, 'points close releases it')
    t.notOk(existsSync(fo), 'and removes the partial folder')
    await writeCephState(target, new CephNames('hostile-holds').state, { ...emptyCephState('hostile-holds'), holds: 'x' } as unknown as CephVmState)
    await t.rejects(cephListPoints(target, 'hostile-holds'), { code: 'E_STATE' }, 'holds that are not a list of holds: E_STATE')
  })

  t.test('points archive from RBD snapshots to radosgw with Object Lock; restored from the bucket alone equal to each snapshot; refusals typed', async (t) => {
    const log = pino({ level: 'silent' })
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
    await s3.send(new CreateBucketCommand({ Bucket: 'ceph-locked', ObjectLockEnabledForBucket: true }))
    await s3.send(new CreateBucketCommand({ Bucket: 'ceph-plain' }))
    const bucket = new S3Bucket({ bucket: 'ceph-locked', prefix: 'r/', endpoint: s3cfg.endpoint, credentials })
    const plain = new S3Bucket({ bucket: 'ceph-plain', prefix: '', endpoint: s3cfg.endpoint, credentials })
    t.teardown(() => {
      bucket.close()
      plain.close()
    })
    const lock = { mode: 'GOVERNANCE' as const, until: new Date(Date.now() + 86_400_000) }
    const vm = 'vm-prune-crash'
    const listed = await cephListPoints(target, vm)
    const cycles = listed.points.map((p) => p.cycle)
    t.same(cycles, [2, 3, 4], 'points 2, 3 and the mirror 4 (the drop case left them)')
    const progress: number[] = []
    const done = await cephArchivePoints(target, vm, undefined, { logger: log, bucket, prefix: 'r/', lock, onProgress: (p) => progress.push(p.bytes) })
    t.same(
      done.map((p) => [p.cycle, p.archived]),
      [
        [2, true],
        [3, true],
        [4, true],
      ],
      'every kept point and the mirror archived, oldest first',
    )
    t.ok(progress.length >= 3, 'progress reported')
    t.ok(
      done.every((p) => p.uploaded >= 1),
      'each point uploads its changed chunk',
    )
    for (const k of cycles) {
      const to = join(base, `from-bucket-${k}`)
      const r = await restoreFromArchive(bucket, 'r/', vm, k, to, { logger: log })
      const ref = await cephRestorePoint(target, vm, k, join(base, `archive-ref-${k}`))
      t.equal(r.disks.length, ref.disks.length, `point ${k}: every disk`)
      for (const d of r.disks) {
        const e = ref.disks.find((x) => x.name === d.name) as { file: string; snapshot: string }
        t.same(await readFile(d.flat), await readFile(e.file), `point ${k}, ${d.name}: restored from the bucket = rbd export of ${e.snapshot}`)
      }
    }
    t.same(
      (await cephArchivePoints(target, vm, [3], { logger: log, bucket, prefix: 'r/', lock })).map((p) => p.archived),
      [false],
      'archived already: nothing read or sent',
    )
    await t.rejects(
      cephArchivePoints(target, vm, undefined, { logger: log, bucket: plain, prefix: '', lock }),
      { code: 'E_CONFIG', message: /no Object Lock/ },
      'a lock on a bucket without Object Lock',
    )
    await t.rejects(cephArchivePoints(target, vm, [99], { logger: log, bucket, prefix: 'r/' }), { code: 'E_NOT_FOUND', message: /no point 99/ }, 'a point the pool does not have')
    await t.rejects(cephArchivePoints(target, 'no-such-vm', undefined, { logger: log, bucket, prefix: 'r/' }), { code: 'E_NOT_FOUND' }, 'a VM the pool does not have')
    await t.rejects(cephArchivePoints(target, '../x', undefined, { logger: log, bucket, prefix: 'r/' }), { code: 'E_BAD_NAME' }, 'a VM name that is not a name')
    // hostile states (planted by the restore case): nothing read or sent
    await t.rejects(cephArchivePoints(target, 'hostile-disk', undefined, { logger: log, bucket, prefix: 'h/' }), { code: 'E_STATE' }, 'a disk name with a separator')
    await t.rejects(cephArchivePoints(target, 'hostile-image', undefined, { logger: log, bucket, prefix: 'h/' }), { code: 'E_STATE' }, 'an image name that is not an RBD name')
    await t.rejects(
      cephArchivePoints(target, 'missing-image', undefined, { logger: log, bucket, prefix: 'h/' }),
      { code: 'E_IO', message: /a\.vmdk.*point 1/ },
      'a snapshot that cannot be read: E_IO naming the disk and point',
    )
    const s = (await readCephState(target, new CephNames(vm).state, vm)) as CephVmState
    const real = s.disks['x.vmdk'] as CephVmState['disks'][string]
    await writeCephState(target, new CephNames('wrong-capacity').state, { ...emptyCephState('wrong-capacity'), committedCycle: 1, disks: { 'x.vmdk': { ...real, capacity: 512 } } })
    await t.rejects(
      cephArchivePoints(target, 'wrong-capacity', undefined, { logger: log, bucket, prefix: 'h/' }),
      { code: 'E_STATE', message: /capacity of 512/ },
      'a snapshot whose size is not the recorded capacity',
    )
    t.same(await bucket.list('h/'), [], 'nothing was written for a refused point')
  })

  t.test('configuration files of an archived Ceph point: the .vmx as a mirror has it, the .nvram', async (t) => {
    const vmx = 'displayName = "web"\nscsi0:0.fileName = "web-000002.vmdk"\nscsi0:0.present = "TRUE"\n'
    const s = { ...emptyCephState('web'), files: { 'web.vmx': Buffer.from(vmx).toString('base64'), 'web.nvram': Buffer.from('nv').toString('base64'), 'web.vmsd': '' } }
    const files = cephConfigFiles(s, s.committedCycle, ['web.vmdk'])
    t.same(
      files.map((f) => f.name),
      ['web.vmx', 'web.nvram'],
    )
    t.match(files[0]?.data.toString(), /displayName = "web \(grainline mirror\)"/)
    t.match(files[0]?.data.toString(), /scsi0:0\.fileName = "web\.vmdk"/, 'the .vmx names the restored descriptor')
    t.equal(files[1]?.data.toString(), 'nv')
    t.same(cephConfigFiles(emptyCephState('none'), 0, []), [], 'no files: none archived')
  })

  t.test('points open: RBD clones of a point, held; writes to a clone leave the snapshot; close removes the clones and unprotects', async (t) => {
    const log = pino({ level: 'silent' })
    const vm = 'vm-prune-crash'
    const names = new CephNames(vm)
    const p2 = ((await readCephState(target, names.state, vm)) as CephVmState).points.find((p) => p.cycle === 2)?.disks['x.vmdk']
    if (p2 === undefined) throw new Error('no point 2')
    const snapshotBytes = async (): Promise<Buffer> => {
      const r = await RbdImage.open(target, p2.image, p2.snap)
      try {
        return await r.read(0, r.size)
      } finally {
        await r.close()
      }
    }
    const before = await snapshotBytes()
    const o = await cephOpenPoint(target, vm, 2, { logger: log })
    t.equal(o.cycle, 2)
    t.match(o.name, /^open-[0-9a-f]{12}$/)
    t.equal(o.clones.length, 1, 'one clone per disk')
    const c = o.clones[0] as (typeof o.clones)[number]
    t.match(c.image, /^glo\.[0-9a-f]{24}\.[0-9a-f]{24}\.[0-9a-f]{12}$/, 'a clone name no mirror image (gl.) can have')
    t.equal(c.snapshot, `${POOL}/${p2.image}@${p2.snap}`)
    t.equal(c.qemu, `rbd:${POOL}/${c.image}:conf=${ceph.conf}`)
    t.match(o.boot, /qemu-system-x86_64 .*-nic none .*file=rbd:/, 'how to boot it')
    const info = JSON.parse((await runCeph(target, 'rbd', ['info', '--format', 'json', `${POOL}/${c.image}`])).toString()) as { parent?: { image: string; snapshot: string } }
    t.equal(info.parent?.snapshot, p2.snap, "the clone's parent is the point's snapshot")
    const clone = await RbdImage.open(target, c.image, null)
    t.ok((await clone.read(0, clone.size)).equals(before), 'the clone reads as the snapshot')
    await clone.close()
    await ceph.writeImage(POOL, c.image, 0, Buffer.alloc(65536, 0xee))
    const changed = await RbdImage.open(target, c.image, null)
    t.ok((await changed.read(0, 65536)).equals(Buffer.alloc(65536, 0xee)), 'the clone is writable')
    await changed.close()
    t.ok((await snapshotBytes()).equals(before), "a write to the clone leaves the point's snapshot unchanged")
    const held = (await readCephState(target, names.state, vm)) as CephVmState
    t.same(
      held.holds?.map((h) => [h.kind, h.cycle, h.dir]),
      [['open', 2, o.name]],
      'the open is a hold in the state object',
    )
    t.equal((await cephListPoints(target, vm)).points.find((p) => p.cycle === 2)?.held, true, 'points lists it held')
    await t.rejects(cephPrunePoints(target, vm, { cycles: [2] }, { logger: log }), { code: 'E_HELD', message: /opened point/ }, 'a drop of the held point: E_HELD')
    await t.rejects(cephPrunePoints(target, vm, { keep: 0 }, { logger: log }), { code: 'E_HELD' }, 'a prune while held: E_HELD')
    const o2 = await cephOpenPoint(target, vm, undefined, { logger: log })
    t.equal(o2.cycle, held.committedCycle, 'without a point: the mirror')
    t.not(o2.clones[0]?.image, c.image, 'two opens never share a clone name')
    // a clone in use (a writer has it open: librbd watches it) is not removed; the hold stays
    const user = await RbdImage.open(target, c.image, null, { log: 'open-test-log', capacity: p2.capacity })
    await t.rejects(cephClosePoint(target, vm, { logger: log, dir: o.name }), { code: 'E_BUSY', message: /in use/ }, 'a clone in use: E_BUSY')
    await user.close()
    const closed = await cephClosePoint(target, vm, { logger: log, dir: o.name })
    t.same(
      closed.map((h) => h.dir),
      [o.name],
      'points close --to NAME releases that open',
    )
    const gone = async (image: string): Promise<boolean> => {
      const e = await runCeph(target, 'rbd', ['info', `${POOL}/${image}`]).catch((err: unknown) => err)
      return e instanceof CephCommandError && e.notFound
    }
    t.ok(await gone(c.image), 'its clone is removed')
    const snapInfo = JSON.parse((await runCeph(target, 'rbd', ['info', '--format', 'json', `${POOL}/${p2.image}@${p2.snap}`])).toString()) as { protected?: string }
    t.equal(snapInfo.protected, 'false', 'the snapshot is unprotected again')
    // a crash after the record, before the clones: close removes what exists (nothing) and releases
    const s = (await readCephState(target, names.state, vm)) as CephVmState
    const ghost: CephHoldRecord = {
      ...(s.holds?.[0] as CephHoldRecord),
      id: 'ghost',
      dir: 'open-000000000000',
      clones: [{ disk: 'x.vmdk', image: names.clone('x.vmdk', '000000000000'), parent: { image: p2.image, snap: p2.snap } }],
    }
    await writeCephState(target, names.state, { ...s, holds: [...(s.holds ?? []), ghost] })
    t.equal((await cephClosePoint(target, vm, { logger: log, all: true })).length, 2, 'close --all: the second open and a hold whose clone was never made')
    t.same(((await readCephState(target, names.state, vm)) as CephVmState).holds, [], 'no hold left')
    t.ok(await gone(o2.clones[0]?.image as string), 'the second clone is removed')
    t.equal(((await cephPrunePoints(target, vm, { cycles: [2] }, { logger: log })).dropped as number[])[0], 2, 'after close the point drops (its snapshot unprotected)')
    // hostile: a hold naming a clone that is not one points open makes is refused, nothing removed
    const s2 = (await readCephState(target, names.state, vm)) as CephVmState
    await writeCephState(target, names.state, { ...s2, holds: [{ ...ghost, clones: [{ disk: 'x.vmdk', image: p2.image, parent: { image: p2.image, snap: p2.snap } }] }] })
    await t.rejects(cephClosePoint(target, vm, { logger: log, all: true }), { code: 'E_STATE' }, 'a hold naming a mirror image as its clone: E_STATE, the image kept')
    await writeCephState(target, names.state, s2)
    // a clone that cannot be made (the planted state's image does not exist): the hold stays, the error says how to release it
    await t.rejects(cephOpenPoint(target, 'missing-image', undefined, { logger: log }), { code: 'E_IO', message: /stays held.*points close/ }, 'a failed open says the VM stays held')
    t.equal((await cephListPoints(target, 'missing-image')).points.at(-1)?.held, true, 'held after the failed open')
    t.equal((await cephClosePoint(target, 'missing-image', { logger: log, all: true })).length, 1, 'points close releases a hold whose clones were never made')
    await t.rejects(cephOpenPoint(target, vm, 99, { logger: log }), { code: 'E_NOT_FOUND' }, 'a point the pool does not have')
    t.same(((await readCephState(target, names.state, vm)) as CephVmState).holds ?? [], [], 'a refused open records no hold')
    t.equal(qemuRbdName({ pool: 'p', conf: '/a:b', id: 'gl', keyring: '/k' }, 'img'), 'rbd:p/img:conf=/a\\:b:id=gl:keyring=/k', 'QEMU option values escape ":"')
  })
})
