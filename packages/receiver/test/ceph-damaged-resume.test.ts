// A cycle in flight on a Ceph mirror whose base snapshot is damaged behind
// the store, and the extent log read in pieces, on a real one-node cluster
// (ceph-mirror.ts openDisk/rollback damagedBase, ceph-apply.ts
// readExtentLogRecords, the session client's `stat` and `read`).
// 1. An incremental of cycle 3 stopped after some acknowledged extents, then
//    its base (the committed snapshot of cycle 2) removed by hand: the
//    resume's DiskOpen is refused E_MIRROR_MODIFIED, `modified` (was:
//    accepted, its first batch failing E_IO), so is the resync the agent
//    tries next (was: E_CYCLE_MISMATCH, the agent rolling back), and the
//    Rollback is refused E_MIRROR_MODIFIED naming the snapshot and the remedy
//    (was: E_IO from `rbd snap rollback`, at every run); nothing is undone
//    (the cycle stays in flight, its log kept). `mirror remove` then clears
//    the VM and a seed commits.
// 2. The extent log is read through the session client at offsets, a piece
//    at a time, the records parsed across the pieces' boundaries: a log of
//    more than a piece (hand-written zero records): pieces of 100 bytes give
//    every record of it.
import t from 'tap'
import { pino } from 'pino'
import { join } from 'node:path'
import { cycleIdentity, MessageKind, type DiskOpenMessage, type DiskStateMessage, type Message } from '@grainline/protocol'
import { failIfLingering, haveCeph, scratchDir, startCephCluster } from '@grainline/test-utils'
import { cephRollbackMirror } from '../src/store/ceph/ceph-rollback.ts'
import { cephRemoveMirror } from '../src/store/ceph/ceph-remove.ts'
import { EXTENT_LOG_PIECE_BYTES, parseExtentLog, readExtentLogRecords, sessionLogSource } from '../src/store/ceph/ceph-apply.ts'
import { CephVmMirror } from '../src/store/ceph/ceph-mirror.ts'
import { CephNames, readCephState } from '../src/store/ceph/ceph-state.ts'
import { runCeph } from '../src/store/ceph/rbd-cli.ts'
import { Agent, MiB, TOKEN, diskOpen, evolve, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen, whenFree, type DiskPlan, type LogLine } from './helpers.ts'

const POOL = 'gldmgresume'
const cid = (n: number): string => n.toString(16).padStart(32, '0')
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-common)'
const log = pino({ level: 'silent' })
const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
failIfLingering(t)

t.test('Ceph: a cycle in flight on a damaged base is refused at its resume and its rollback, typed; the extent log is read in pieces', { skip }, async (t) => {
  const ceph = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const target = { pool: POOL, conf: ceph.conf }
  const env = makeEnv(join(scratchDir(t, 'grainline-ceph-dmgres-'), 'env'))
  const { receiver, url, logs } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10, retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const vm = 'vm-dmg-resume'
  const SIZE = 4 * MiB
  const img1 = pattern(SIZE, 1)
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', img1, cid(1))])
  a.close()
  const ranges = [{ offset: 512 * 1024, length: 128 * 1024 }]
  const img2 = evolve(img1, 2, ranges)
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 2, [incPlan(0, 'd.vmdk', img2, 1, cid(2), ranges, 'd-000001.vmdk', 'd-000002.vmdk')])
  a.close()
  const rec = (await readCephState(target, new CephNames(vm).state, vm))?.disks['d.vmdk']
  if (rec === undefined) throw new Error('no committed d.vmdk')
  const snapshot = `${POOL}/${rec.image}@${rec.snap}`

  // cycle 3 in many small extents, stopped once 6 are acknowledged (flushed and logged)
  const small = [{ offset: 0, length: 64 * 1024 }]
  const img3 = evolve(img2, 3, small)
  const inc3 = incPlan(0, 'd.vmdk', img3, 2, cid(3), small, 'd-000002.vmdk', 'd-000003.vmdk', 4096)
  const stopInFlight = async (plan: DiskPlan, cycle: number): Promise<void> => {
    const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(c, vm, cycle, [plan], { stopAfter: 10 })
    for (;;) {
      const m = await c.next()
      if (m === undefined) throw new Error('closed before 6 extents were acknowledged')
      if (m.kind === MessageKind.ExtentAck && m.seq >= 5) break
    }
    c.terminate()
    await c.whenClosed()
  }
  await stopInFlight(inc3, 3)
  const st3 = await whenFree(async () => {
    const s = await readCephState(target, new CephNames(vm).state, vm)
    if (s === undefined || s.inflight === null) throw new Error('no cycle in flight yet')
    return s
  })
  const inf = st3.inflight?.disks['d.vmdk']
  if (inf === undefined) throw new Error('no d.vmdk in flight')
  t.equal(inf.baseSnap, rec.snap, 'the cycle in flight is written on the committed snapshot')
  const logged = await whenFree(async () => {
    const n = parseExtentLog(await runCeph(target, 'rados', ['-p', POOL, 'get', inf.log, '-'])).length
    if (n < 6) throw new Error('fewer than 6 logged')
    return n
  })

  // the base removed behind the store
  await runCeph(target, 'rbd', ['snap', 'rm', snapshot])

  /** The DiskStates of the resume of cycle 3 and of the resync the agent tries after it (a new handle), in one connection; then a Rollback's answer. */
  const resumeThenResync = async (): Promise<{ inc: DiskStateMessage; resync: DiskStateMessage; rollback: Message | undefined }> => {
    const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    try {
      c.send(hello())
      await c.expect(MessageKind.Welcome)
      c.send(vmOpen(vm, 3, ['d-000003.vmdk']))
      const st = await c.expect(MessageKind.VmState)
      t.equal(st.inflightCycle, 3, 'VmState: cycle 3 in flight')
      c.send(diskOpen(inc3, 3, vm, st.generation))
      const inc = await c.expect(MessageKind.DiskState)
      const f = { vm, name: 'd.vmdk', cycle: 3, mode: 'resync' as const, baseCycle: 0, baseGeneration: '', source: inc3.source, blockSize: 64 * 1024 }
      const { vm: _vm, ...fields } = f
      const open: DiskOpenMessage = { kind: MessageKind.DiskOpen, disk: 1, ...fields, capacity: SIZE, cycleId: cycleIdentity(f), ddb: {}, totalBytes: SIZE, totalExtents: 0 }
      c.send(open)
      const resync = await c.expect(MessageKind.DiskState)
      c.close()
      await c.whenClosed()
      // the agent's rollback: a new connection, Rollback before any DiskOpen
      const r = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      try {
        r.send(hello())
        await r.expect(MessageKind.Welcome)
        r.send(vmOpen(vm, 3, ['d-000003.vmdk']))
        await r.expect(MessageKind.VmState)
        r.send({ kind: MessageKind.Rollback, vm })
        let rollback: Message | undefined
        for (;;) {
          rollback = await r.next()
          if (rollback?.kind !== MessageKind.VmProgress) break
        }
        return { inc, resync, rollback }
      } finally {
        r.close()
        await r.whenClosed()
      }
    } finally {
      c.close()
      await c.whenClosed()
    }
  }
  const before = logs.lines.length
  const { inc, resync, rollback } = await resumeThenResync()
  t.match(inc, { accepted: false, reason: 'E_MIRROR_MODIFIED', modified: true, committedCycle: 2 }, 'the resume is refused E_MIRROR_MODIFIED, modified (was: accepted, its first batch failing E_IO)')
  t.match(resync, { accepted: false, reason: 'E_MIRROR_MODIFIED', modified: true }, 'the resync the agent tries next too (the agent fails the VM: planAfterRefusal)')
  const why = logs.lines
    .slice(before)
    .filter((l: LogLine) => l.msg === 'disk open refused')
    .map((l: LogLine) => String(l['why']))
  t.equal(why.length, 2, 'both refusals logged')
  const text = new RegExp(
    `the base snapshot ${esc(snapshot)} of disk d\\.vmdk of VM ${vm} \\(its committed cycle 2, which cycle 3 in flight is written on\\) is missing \\(rbd snap ls does not list it: removed behind the store\\): ` +
      `cycle 3 can neither resume \\(its head is written from that snapshot\\) nor be rolled back \\(a rollback returns the image to it\\).*` +
      `archive the points to keep \\(grainline points archive --store ceph:${POOL} --vm ${vm} --archive s3://BUCKET/PREFIX\\), ` +
      `then remove the mirror with its cycle in flight \\(grainline mirror remove --store ceph:${POOL} --vm ${vm} --yes\\): the next run seeds the VM anew`,
  )
  for (const w of why) t.match(w, text, 'the log names the snapshot, the disk, the VM, both cycles, the problem and what to do')
  t.match(rollback, { kind: MessageKind.Error, code: 'E_MIRROR_MODIFIED', message: text }, 'the Rollback is refused E_MIRROR_MODIFIED, named (was: E_IO from rbd snap rollback)')
  // by hand likewise; nothing was undone
  const byHand = await whenFree(() =>
    cephRollbackMirror(target, vm, log).then(
      () => undefined,
      (err: unknown) => {
        if ((err as { code?: string }).code === 'E_BUSY') throw err
        return err as Error & { code?: string }
      },
    ),
  )
  t.match(byHand, { code: 'E_MIRROR_MODIFIED', message: text }, 'grainline mirror rollback: refused E_MIRROR_MODIFIED with the remedy')
  const kept = await readCephState(target, new CephNames(vm).state, vm)
  t.equal(kept?.inflight?.cycle, 3, 'the cycle stays in flight')
  t.equal(parseExtentLog(await runCeph(target, 'rados', ['-p', POOL, 'get', inf.log, '-'])).length, logged, 'its extent log is kept (nothing undone)')

  // the remedy: mirror remove (the cycle in flight with it), then a seed (of a 16 MiB disk: its log can be more than a piece)
  const removed = await whenFree(() => cephRemoveMirror(target, vm, log))
  t.ok(removed, 'mirror remove clears the VM with its cycle in flight')
  const BIG = 16 * MiB
  const imgB = pattern(BIG, 5)
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const seeded = await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', imgB, cid(31))])
  a.close()
  t.ok(seeded.committed, 'and the next seed commits')

  // 2. the extent log read in pieces: a cycle in flight, its log replaced by more than a piece of zero records
  const recS = (await readCephState(target, new CephNames(vm).state, vm))?.disks['d.vmdk']
  if (recS === undefined) throw new Error('no committed d.vmdk after the seed')
  const img4 = evolve(imgB, 4, small)
  const inc4 = incPlan(0, 'd.vmdk', img4, 1, cid(4), small, recS.source.successor, 'd-000004.vmdk', 4096)
  await stopInFlight(inc4, 2)
  const inf4 = await whenFree(async () => {
    const s = await readCephState(target, new CephNames(vm).state, vm)
    const d = s?.inflight?.disks['d.vmdk']
    if (d === undefined) throw new Error('no d.vmdk in flight')
    return d
  })
  const zeros = Array.from({ length: BIG / 512 }, (_, i) => JSON.stringify({ seq: i, offset: i * 512, length: 512, zero: true, digest: '' }))
  const whole = Buffer.from(`${zeros.join('\n')}\n`)
  t.ok(whole.length > EXTENT_LOG_PIECE_BYTES, `a log of ${whole.length} bytes: more than a piece (${EXTENT_LOG_PIECE_BYTES})`)
  await runCeph(target, 'rados', ['-p', POOL, 'put', inf4.log, '-'], whole)
  // through a session client of the VM (as a resume reads it), at offsets
  const m = await whenFree(() => CephVmMirror.acquire(target, vm, log, { description: 'test' }))
  try {
    t.equal(await m.lock.objectSize(inf4.log), whole.length, 'the session client says the log object size (stat)')
    t.equal(await m.lock.objectSize(`${inf4.log}.none`), undefined, 'and undefined for no such object')
    t.same(await m.lock.readObject(inf4.log, 1000, 300), whole.subarray(1000, 1300), 'reads 300 bytes at offset 1000 (librados read)')
    t.equal((await m.lock.readObject(inf4.log, whole.length - 10, 300)).length, 10, 'fewer at the end')
    const pieces: number[] = []
    const counting = {
      objectSize: (o: string) => m.lock.objectSize(o),
      readObject: async (o: string, off: number, len: number) => {
        const b = await m.lock.readObject(o, off, len)
        pieces.push(b.length)
        return b
      },
    }
    let n = 0
    let last = -1
    for await (const r of readExtentLogRecords(target, vm, inf4, sessionLogSource(counting, 100))) {
      if (r.seq !== last + 1) break
      last = r.seq
      n++
    }
    t.equal(n, zeros.length, 'pieces of 100 bytes (every record cut across two): every record, in order')
    t.ok(pieces.length > 0 && pieces.every((p) => p <= 100), `each read at most a piece (${pieces.length} reads)`)
    // a torn last line across the boundary, and a run without a newline longer than a record ends the log
    await runCeph(target, 'rados', ['-p', POOL, 'put', inf4.log, '-'], Buffer.concat([whole.subarray(0, 4 * 1024 * 10), Buffer.from('{"seq":')]))
    const torn = parseExtentLog(whole.subarray(0, 4 * 1024 * 10)).length
    let k = 0
    for await (const _ of readExtentLogRecords(target, vm, inf4, sessionLogSource(m.lock, 64))) k++
    t.equal(k, torn, 'a torn last line: the records before it')
    await runCeph(target, 'rados', ['-p', POOL, 'put', inf4.log, '-'], Buffer.concat([Buffer.from(`${zeros.slice(0, 3).join('\n')}\n`), Buffer.alloc(5000, 0x20), Buffer.from(`\n${zeros[3]}\n`)]))
    k = 0
    for await (const _ of readExtentLogRecords(target, vm, inf4, sessionLogSource(m.lock, 256))) k++
    t.equal(k, 3, 'a run of 5000 bytes without a newline (longer than any record): the log ends before it')
  } finally {
    // gone (unlocked) before the teardown stops the cluster: a helper still unlocking then would wait for it until
    // killed at releaseMs (ceph-release.test)
    m.release()
    await m.lock.whenExited()
  }
})
