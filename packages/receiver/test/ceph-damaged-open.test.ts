// A Ceph mirror damaged behind the store gets a typed answer at DiskOpen, on
// a real one-node cluster (ceph-mirror.ts openDisk, ceph-snapshots.ts): its
// committed snapshot removed (`rbd snap rm` by hand), taken again smaller
// (the image shrunk), its image removed — each time an incremental is
// refused E_MIRROR_MODIFIED with `modified` (was: accepted, and the apply's
// helper failing at the first batch with E_IO, the agent retrying without
// end), and the resync the agent tries next refused the same way (it would
// compare with that snapshot), the receiver's log naming the snapshot and
// what the operator does; `grainline_disk_modified` is 1 for the disk. A
// seed still works (a new image). Then the extent log of a cycle in flight
// (ceph-apply.ts): a record whose `zero` or digest is malformed ends the log
// there as a torn line does (the resume starts at it), and a log larger than
// a cycle of the disk can write is refused E_STATE, named, at the resume and
// removed unread by the rollback it names.
import t from 'tap'
import { pino } from 'pino'
import { join } from 'node:path'
import { cycleIdentity, MessageKind, PROTOCOL_VERSIONS, type DiskOpenMessage, type DiskStateMessage } from '@grainline/protocol'
import { haveCeph, scratchDir, startCephCluster } from '@grainline/test-utils'
import { ReceiverMetrics } from '../src/index.ts'
import { cephRollbackMirror } from '../src/store/ceph/ceph-rollback.ts'
import { cephStoreReader } from '../src/store/ceph/ceph-overview.ts'
import { extentLogMaxBytes, extentLogShape, parseExtentLog } from '../src/store/ceph/ceph-apply.ts'
import { CephNames, readCephState } from '../src/store/ceph/ceph-state.ts'
import { snapSizes } from '../src/store/ceph/ceph-snapshots.ts'
import { runCeph } from '../src/store/ceph/rbd-cli.ts'
import { storeOverview } from '../src/store-overview.ts'
import { Agent, MiB, TOKEN, diskOpen, evolve, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen, whenFree, type LogLine } from './helpers.ts'

const POOL = 'gldmgopen'
const cid = (n: number): string => n.toString(16).padStart(32, '0')
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-common)'
const log = pino({ level: 'silent' })

function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (m === null || m[1] !== name) continue
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]))
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3])
  }
  return undefined
}

t.test('Ceph: a committed snapshot or image damaged behind the store is refused at DiskOpen, typed; a seed works; the extent log is bounded and checked', { skip }, async (t) => {
  const ceph = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const target = { pool: POOL, conf: ceph.conf }
  const env = makeEnv(join(scratchDir(t, 'grainline-ceph-dmg-'), 'env'))
  const { receiver, url, logs } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10, retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const reader = cephStoreReader(target)
  const metrics = new ReceiverMetrics(reader, () => 0)
  const vm = 'vm-damaged'
  const SIZE = 4 * MiB
  const imgs: Buffer[] = [Buffer.alloc(0), pattern(SIZE, 1)]
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', imgs[1] as Buffer, cid(1))])
  a.close()
  const ranges = [{ offset: 512 * 1024, length: 128 * 1024 }]
  imgs[2] = evolve(imgs[1] as Buffer, 2, ranges)
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 2, [incPlan(0, 'd.vmdk', imgs[2] as Buffer, 1, cid(2), ranges, 'd-000001.vmdk', 'd-000002.vmdk')])
  a.close()
  const rec = (await readCephState(target, new CephNames(vm).state, vm))?.disks['d.vmdk']
  if (rec === undefined) throw new Error('no committed d.vmdk')
  const file = `${POOL}/${rec.image}@${rec.snap}`
  imgs[3] = evolve(imgs[2] as Buffer, 3, ranges)
  const inc3 = incPlan(0, 'd.vmdk', imgs[3] as Buffer, 2, cid(3), ranges, 'd-000002.vmdk', 'd-000003.vmdk')

  /** The DiskStates of an incremental of cycle 3 and then (a new handle) of the resync the agent tries after it, in one connection; the time of the incremental's open. */
  const opens = async (): Promise<{ inc: DiskStateMessage; resync: DiskStateMessage; ms: number }> => {
    const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    try {
      // version 9: the refusals carry the receiver's words (DiskState.detail)
      c.send(hello('sha256', 'none', PROTOCOL_VERSIONS))
      await c.expect(MessageKind.Welcome)
      c.send(vmOpen(vm, 3, ['d-000002.vmdk']))
      const st = await c.expect(MessageKind.VmState)
      const t0 = performance.now()
      c.send(diskOpen(inc3, 3, vm, st.generation))
      const inc = await c.expect(MessageKind.DiskState)
      const ms = performance.now() - t0
      const f = { vm, name: 'd.vmdk', cycle: 3, mode: 'resync' as const, baseCycle: 0, baseGeneration: '', source: inc3.source, blockSize: 64 * 1024 }
      const { vm: _vm, ...fields } = f
      const open: DiskOpenMessage = { kind: MessageKind.DiskOpen, disk: 1, ...fields, capacity: SIZE, cycleId: cycleIdentity(f), ddb: {}, totalBytes: SIZE, totalExtents: 0 }
      c.send(open)
      const resync = await c.expect(MessageKind.DiskState)
      return { inc, resync, ms }
    } finally {
      c.close()
      await c.whenClosed()
    }
  }
  const refusedWhy = (): string[] => logs.lines.filter((l: LogLine) => l.msg === 'disk open refused').map((l: LogLine) => String(l['why']))
  const modifiedMetric = async (): Promise<number | undefined> => sample(await metrics.registry.metrics(), 'grainline_disk_modified', { vm, disk: 'd.vmdk' })

  // whole: an incremental is accepted (what the open's one listing costs, measured), the metric 0
  {
    const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    c.send(hello())
    await c.expect(MessageKind.Welcome)
    c.send(vmOpen(vm, 3, ['d-000002.vmdk']))
    const st = await c.expect(MessageKind.VmState)
    const t0 = performance.now()
    c.send(diskOpen(inc3, 3, vm, st.generation))
    const ds = await c.expect(MessageKind.DiskState)
    t.comment(`DiskOpen of a whole incremental: ${(performance.now() - t0).toFixed(0)} ms (its state write, its log object and the snapshot's size through the session client)`)
    t.ok(ds.accepted, 'a whole mirror: the incremental is accepted')
    c.close()
    await c.whenClosed()
    await whenFree(() => cephRollbackMirror(target, vm, log))
  }
  t.equal(await modifiedMetric(), 0, 'grainline_disk_modified 0 while whole')
  // for comparison: what the check would cost as one `rbd snap ls` (a process and a cluster connection each time)
  const lists: number[] = []
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now()
    await snapSizes(target, rec.image)
    lists.push(performance.now() - t0)
  }
  t.comment(`rbd snap ls of the image: ${lists.map((x) => x.toFixed(0)).join(', ')} ms`)

  const cases: Array<[string, () => Promise<void>, RegExp]> = [
    ['its committed snapshot removed', () => runCeph(target, 'rbd', ['snap', 'rm', file]).then(() => {}), /is missing \(rbd snap ls does not list it: removed behind the store\)/],
    [
      'taken again smaller (the image shrunk)',
      async () => {
        await runCeph(target, 'rbd', ['resize', '--allow-shrink', '--size', '1M', `${POOL}/${rec.image}`])
        await runCeph(target, 'rbd', ['snap', 'create', file])
      },
      new RegExp(`is ${MiB} bytes, smaller than the disk's capacity ${SIZE}`),
    ],
    [
      'its image removed',
      async () => {
        await runCeph(target, 'rbd', ['snap', 'purge', `${POOL}/${rec.image}`])
        await runCeph(target, 'rbd', ['rm', `${POOL}/${rec.image}`])
      },
      new RegExp(`is missing: its image ${POOL}/${rec.image} does not exist`),
    ],
  ]
  for (const [what, damage, problem] of cases) {
    await damage()
    const before = refusedWhy().length
    const { inc, resync, ms } = await opens()
    t.comment(`${what}: the refused DiskOpen took ${ms.toFixed(0)} ms (the snapshot's size through the session client, nothing written)`)
    t.match(inc, { accepted: false, reason: 'E_MIRROR_MODIFIED', modified: true, committedCycle: 2 }, `${what}: the incremental is refused E_MIRROR_MODIFIED, modified`)
    t.match(resync, { accepted: false, reason: 'E_MIRROR_MODIFIED', modified: true }, `${what}: the resync after it too (the agent fails the VM, no seed over the mirror, no loop)`)
    const why = refusedWhy().slice(before)
    t.equal(why.length, 2, 'both refusals logged')
    t.same([inc.detail, resync.detail], why, 'version 9: each refusal tells the agent what the log says (the snapshot, the problem, what to do)')
    for (const w of why) {
      t.match(w, new RegExp(`^the committed snapshot ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} of disk d\\.vmdk of VM ${vm} `), 'the log names the snapshot, the disk and the VM')
      t.match(w, problem, 'and the problem')
      t.match(w, /neither an incremental \(written from that snapshot\) nor a resync \(compared with it\) can build on it/, 'why no cycle can')
      t.match(w, new RegExp(`then remove the mirror \\(grainline mirror remove --store ceph:${POOL} --vm ${vm} --yes\\): the next run seeds the VM anew`), 'and what to do')
    }
    t.equal(await modifiedMetric(), 1, `${what}: grainline_disk_modified 1`)
    const v = (await storeOverview(reader)).vms.find((x) => x.vm === vm)
    t.same([v?.inflightCycle, v?.committedCycle], [0, 2], 'nothing was started: no cycle in flight')
  }

  // a seed does not read the old image: it writes a new one, and commits
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const seeded = await runCycle(a, vm, 3, [seedPlan(0, 'd.vmdk', imgs[3] as Buffer, cid(33))])
  a.close()
  t.ok(seeded.committed, 'the seed commits cycle 3')
  const after = (await storeOverview(reader)).vms.find((x) => x.vm === vm)
  t.same(after?.damagedMirror, [], 'the mirror is whole again')
  t.equal(await modifiedMetric(), 0, 'grainline_disk_modified 0 again')

  // the extent log of a cycle in flight: an incremental of cycle 4 in many small extents, stopped after 6
  const rec3 = (await readCephState(target, new CephNames(vm).state, vm))?.disks['d.vmdk']
  if (rec3 === undefined) throw new Error('no committed d.vmdk')
  const small = [{ offset: 0, length: 64 * 1024 }]
  imgs[4] = evolve(imgs[3] as Buffer, 4, small)
  const inc4 = incPlan(0, 'd.vmdk', imgs[4] as Buffer, 3, cid(4), small, rec3.source.successor, 'd-000004.vmdk', 4096)
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 4, [inc4], { stopAfter: 10 })
  // until the receiver acknowledged (flushed and logged) at least 6 of them
  for (;;) {
    const m = await a.next()
    if (m === undefined) throw new Error('closed before 6 extents were acknowledged')
    if (m.kind === MessageKind.ExtentAck && m.seq >= 5) break
  }
  a.terminate()
  await a.whenClosed()
  const st4 = await whenFree(async () => {
    const s = await readCephState(target, new CephNames(vm).state, vm)
    if (s?.inflight === null || s === undefined) throw new Error('no cycle in flight yet')
    return s
  })
  const inf = st4.inflight?.disks['d.vmdk']
  if (inf === undefined) throw new Error('no d.vmdk in flight')
  const logObject = inf.log
  // the log as the apply left it: at least 6 records; rewritten with record 4's `zero` not a boolean, then its digest of the wrong length
  const raw = await whenFree(async () => {
    const b = await runCeph(target, 'rados', ['-p', POOL, 'get', logObject, '-'])
    if (parseExtentLog(b).length < 6) throw new Error('fewer than 6 logged')
    return b
  })
  const lines = raw.toString('utf8').trim().split('\n')
  const put = async (text: string): Promise<void> => {
    await runCeph(target, 'rados', ['-p', POOL, 'put', logObject, '-'], Buffer.from(text))
  }
  const resumeAt = async (): Promise<DiskStateMessage | { error: string }> => {
    const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    try {
      c.send(hello())
      await c.expect(MessageKind.Welcome)
      c.send(vmOpen(vm, 4, ['d-000004.vmdk']))
      const st = await c.expect(MessageKind.VmState)
      c.send(diskOpen(inc4, 4, vm, st.generation))
      const m = await c.next()
      if (m?.kind === MessageKind.DiskState) return m
      if (m?.kind === MessageKind.Error) return { error: `${m.code}: ${m.message}` }
      throw new Error(`unexpected ${JSON.stringify(m?.kind)}`)
    } finally {
      c.close()
      await c.whenClosed()
    }
  }
  const shape = extentLogShape(inf)
  for (const [what, bad] of [
    ['`zero` not a boolean', (r: Record<string, unknown>) => ({ ...r, zero: 'no' })],
    ['a digest of the wrong length', (r: Record<string, unknown>) => ({ ...r, digest: String(r.digest).slice(2) })],
    ['a digest on a data extent that is not hex', (r: Record<string, unknown>) => ({ ...r, digest: 'zz'.repeat(32) })],
    ['a zero extent with a digest', (r: Record<string, unknown>) => ({ ...r, zero: true })],
    ['an extent beyond the capacity', (r: Record<string, unknown>) => ({ ...r, offset: SIZE })],
  ] as const) {
    const edited = lines.map((l, i) => (i === 4 ? JSON.stringify(bad(JSON.parse(l) as Record<string, unknown>)) : l))
    t.equal(parseExtentLog(edited.join('\n'), shape).length, 4, `${what}: the log ends before it`)
    await put(`${edited.join('\n')}\n`)
    const r = await resumeAt()
    t.match(r, { accepted: true, resumeSeq: 4 }, `${what}: the resume starts at that record (was: at ${lines.length}, or a TypeError)`)
  }
  // a log larger than a cycle of the disk can write: refused, named, unread
  const max = extentLogMaxBytes(shape)
  t.ok(max < 8 * MiB && max > (SIZE / 512) * 100, `the bound of a ${SIZE}-byte disk: ${max} bytes`)
  await put(`${lines.join('\n')}\n${' '.repeat(max)}`)
  const before = refusedWhy().length
  const big = await resumeAt()
  t.match(big, { accepted: false, reason: 'E_CYCLE_MISMATCH' }, 'a log above the bound: the resume is refused E_CYCLE_MISMATCH (the agent rolls back once and ships again)')
  t.match(
    refusedWhy().slice(before),
    [
      new RegExp(
        `^the extent log ${logObject.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} of disk d\\.vmdk of VM ${vm} in pool ${POOL} is \\d+ bytes, larger than the ${max} bytes a cycle of its ${SIZE}-byte capacity can log: .*grainline mirror rollback --store ceph:${POOL} --vm ${vm}, which removes the log unread`,
      ),
    ],
    'logged: the object, the disk, the VM, the bound and the rollback',
  )
  const v = (await storeOverview(reader)).vms.find((x) => x.vm === vm)
  t.equal(v?.disks[0]?.inflight?.resumeSeq, 0, 'status reads no resume point from it (bounded, not read whole)')
  // what the agent does after E_CYCLE_MISMATCH: Rollback first (which removes the log unread), then the cycle again
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const again = await runCycle(a, vm, 4, [inc4], { rollbackFirst: true })
  a.close()
  t.ok(again.committed, 'and the cycle is shipped again')
})
