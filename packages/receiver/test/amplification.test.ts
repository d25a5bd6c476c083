import t, { type Test } from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { closeSync, openSync, readFileSync, readSync, statSync, statfsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { CycleDigest, MessageKind, createDigest, initDigests } from '@grainline/protocol'
import { VmMirror } from '../src/vm-mirror.ts'
import { JOURNAL_PIECE } from '../src/journal.ts'
import type { ApplyExtent } from '../src/disk-apply.ts'
import {
  Agent,
  MiB,
  TOKEN,
  diskEnd,
  diskOpen,
  evolve,
  extentMessage,
  hello,
  incPlan,
  makeEnv,
  pattern,
  runCycle,
  seedPlan,
  startReceiver,
  vmOpen,
  type DiskPlan,
  type Env,
  type memoryLogger,
} from './helpers.ts'
import { allocatedBytes } from '../src/store-usage.ts'
import { PendingOpens, diskKey } from '../src/quota-room.ts'

/*
 * Zero-extent amplification: one frame that grows a disk and one zero extent
 * over all of it made the receiver write (and journal) gigabytes of zeros,
 * going on after the sender left and delaying SIGTERM. Now grown space is
 * left a hole, in-place zeroing stops between pieces when the session is
 * aborted, a capacity increase must fit in the free space (E_NO_SPACE), and a
 * token's mirrors stay within its quota (E_QUOTA) — counting what the disks
 * it opened and has not committed may still add (several at once, in several
 * sessions) and the holes of a thin mirror a cycle may fill.
 */

const log = pino({ level: 'silent' })
const compat = { hwVersion: 14, datastoreType: 'local', guestOS: 'otherlinux-64' }

t.test('a zero extent over grown space writes nothing there', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const img1 = pattern(MiB, 1)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'vm-g', 1, [seedPlan(0, 'vm-g.vmdk', img1, '01'.repeat(8))])
  a.close()
  await a.whenClosed()
  // grow 1 MiB → 256 MiB and zero all of it with ONE extent
  const CAP = 256 * MiB
  const plan = { ...incPlan(0, 'vm-g.vmdk', Buffer.alloc(0), 1, 'z', [], 'vm-g-000001.vmdk', 'vm-g-000002.vmdk'), capacity: CAP, extents: [{ offset: 0, length: CAP, zero: true }] }
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(b, 'vm-g', 2, [plan])
  b.close()
  t.equal(r.committed?.cycle, 2)
  const flat = join(env.store, 'vm-g', 'vm-g-flat.vmdk')
  const st = statSync(flat)
  t.equal(st.size, CAP)
  t.ok(st.blocks * 512 <= 2 * MiB, `the flat allocates ${st.blocks * 512} bytes, not ${CAP}: grown space stays a hole`)
  const spare = statSync(join(env.store, 'vm-g', '.grainline', 'vm-g.journal.spare'))
  t.ok(spare.size <= 2 * MiB, `the journal holds ${spare.size} bytes: only the committed MiB was journaled`)
  const fd = openSync(flat, 'r')
  const head = Buffer.alloc(2 * MiB, 1)
  readSync(fd, head, 0, head.length, 0)
  closeSync(fd)
  t.ok(head.equals(Buffer.alloc(2 * MiB)), 'and it reads as zeros')
})

t.test('a capacity increase beyond the free space fails with E_NO_SPACE before any extent', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'vm-n', 1, [seedPlan(0, 'vm-n.vmdk', pattern(MiB, 1), '01'.repeat(8))])
  a.close()
  await a.whenClosed()
  const fs = statfsSync(env.store)
  const huge = Math.ceil((fs.bavail * fs.bsize + 1024 * MiB) / MiB) * MiB
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  b.send(hello())
  await b.expect(MessageKind.Welcome)
  b.send(vmOpen('vm-n', 2, []))
  const vs = await b.expect(MessageKind.VmState)
  const plan = incPlan(0, 'vm-n.vmdk', Buffer.alloc(0), 1, 'z', [], 'vm-n-000001.vmdk', 'vm-n-000002.vmdk')
  b.send(diskOpen({ ...plan, capacity: huge, extents: [{ offset: 0, length: huge, zero: true }] }, 2, 'vm-n', vs.generation))
  t.same(await b.expectError(), { code: 'E_NO_SPACE', closeCode: 4507 })
  t.equal(statSync(join(env.store, 'vm-n', 'vm-n-flat.vmdk')).size, MiB, 'the flat was not grown')
})

t.test("a token's mirrors stay within its quota", async (t) => {
  const env = makeEnv(scratchDir(t))
  const QUOTA = 3 * MiB
  const tokensFile = join(env.dir, 'tokens-q.json')
  writeFileSync(tokensFile, JSON.stringify({ tokens: [{ name: 'proxy-q', token: TOKEN, vms: ['q-*'], quota: '3M' }] }))
  const { receiver, url } = await startReceiver({ ...env, tokensFile })
  t.teardown(() => receiver.close())
  const img = pattern(2 * MiB, 1)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  t.equal((await runCycle(a, 'q-1', 1, [seedPlan(0, 'q-1.vmdk', img, '01'.repeat(8))])).committed?.cycle, 1, 'a first seed of 2 MiB fits in 3 MiB')
  a.close()
  await a.whenClosed()
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(b, 'q-2', 1, [seedPlan(0, 'q-2.vmdk', img, '02'.repeat(8))]).catch(() => {})
  t.same(await b.expectError(), { code: 'E_QUOTA', closeCode: 4508 }, `a second one does not: 2 MiB + 2 MiB > ${QUOTA}`)
  const ranges = [{ offset: 0, length: 64 * 1024 }]
  const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const img2 = Buffer.from(img)
  pattern(64 * 1024, 3).copy(img2)
  const r = await runCycle(c, 'q-1', 2, [incPlan(0, 'q-1.vmdk', img2, 1, 'i', ranges, 'q-1-000001.vmdk', 'q-1-000002.vmdk')])
  c.close()
  t.equal(r.committed?.cycle, 2, 'an incremental that does not grow the disk adds nothing')
})

/** A receiver whose only token (TOKEN) covers the VMs `q-*` with an 8 MiB quota. */
async function quotaReceiver(t: Test): Promise<{ env: Env; url: string; logs: ReturnType<typeof memoryLogger> }> {
  const env = makeEnv(scratchDir(t))
  const tokensFile = join(env.dir, 'tokens-q.json')
  writeFileSync(tokensFile, JSON.stringify({ tokens: [{ name: 'proxy-q', token: TOKEN, vms: ['q-*'], quota: QUOTA }] }))
  const { receiver, url, logs } = await startReceiver({ ...env, tokensFile })
  t.teardown(() => receiver.close())
  return { env, url, logs }
}

const QUOTA = 8 * MiB

/** The bytes of a VM's mirror flat (named after its one disk). */
const flatOf = (env: Env, vm: string): Buffer => readFileSync(join(env.store, vm, `${vm}-flat.vmdk`))

/** Hello and VmOpen of `vm`'s cycle 1 naming `disks`; the VmState. */
async function openVm(a: Agent, vm: string, disks: readonly string[]): Promise<void> {
  await initDigests()
  a.send(hello())
  await a.expect(MessageKind.Welcome)
  a.send(
    vmOpen(
      vm,
      1,
      disks.map((d) => d.replace(/\.vmdk$/, '-000001.vmdk')),
    ),
  )
  await a.expect(MessageKind.VmState)
}

/** The answer to a DiskOpen: 'accepted', or the code of the Error that ended the session. */
async function openAnswer(a: Agent, d: DiskPlan, vm: string): Promise<string> {
  a.send(diskOpen(d, 1, vm))
  const m = await a.next()
  if (m?.kind === MessageKind.DiskState) return m.accepted ? 'accepted' : m.reason
  return m?.kind === MessageKind.Error ? m.code : '(closed)'
}

t.test("a token's quota counts the disks it opened and has not committed: four at once before any extent", async (t) => {
  const { env, url, logs } = await quotaReceiver(t)
  const CAP = QUOTA - MiB
  const names = ['d0.vmdk', 'd1.vmdk', 'd2.vmdk', 'd3.vmdk']
  const plans = names.map((n, i) => seedPlan(i, n, pattern(CAP, 100 + i), 'x'))
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await openVm(a, 'q-four', names)
  t.equal(await openAnswer(a, plans[0] as DiskPlan, 'q-four'), 'accepted', `a first disk of ${CAP} bytes fits in ${QUOTA}`)
  t.equal(await openAnswer(a, plans[1] as DiskPlan, 'q-four'), 'E_QUOTA', 'a second, before the first wrote anything: its capacity counts, E_QUOTA')
  t.same(await a.expectError(), { code: 'E_QUOTA', closeCode: 4508 }, 'the session ends')
  t.match(
    logs.text(),
    /disk d1\.vmdk of VM q-four may add 7340032 bytes .* and the 7340032 its disks open and not yet committed may still add, above its quota of 8388608: raise the quota/,
    'the error names the disk, the VM, what the open disks hold and what to do',
  )
  const state = JSON.parse(readFileSync(join(env.store, 'q-four', '.grainline', 'state.json'), 'utf8')) as { inflight: { disks: Record<string, unknown> } }
  t.same(Object.keys(state.inflight.disks), ['d0.vmdk'], 'only the first disk is in flight')
  t.ok((await allocatedBytes(env.store)) <= QUOTA, 'the store holds no more than the quota')
})

t.test("a token's quota counts the open disks of its other sessions, until they are rolled back", async (t) => {
  const { env, url } = await quotaReceiver(t)
  const CAP = QUOTA - MiB
  const plan = (vm: string): DiskPlan => seedPlan(0, `${vm}.vmdk`, pattern(CAP, 7), 'x')
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await openVm(a, 'q-a', ['q-a.vmdk'])
  t.equal(await openAnswer(a, plan('q-a'), 'q-a'), 'accepted', 'session A opens a disk of VM q-a and writes nothing yet')
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await openVm(b, 'q-b', ['q-b.vmdk'])
  t.equal(await openAnswer(b, plan('q-b'), 'q-b'), 'E_QUOTA', "session B's disk of VM q-b, beside A's: E_QUOTA")
  t.same(await b.expectError(), { code: 'E_QUOTA', closeCode: 4508 })
  a.close()
  await a.whenClosed()
  const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await openVm(c, 'q-b', ['q-b.vmdk'])
  t.equal(await openAnswer(c, plan('q-b'), 'q-b'), 'E_QUOTA', 'A left without a rollback: its disk is in flight (a resume is not charged again), it still counts')
  await c.expectError()
  const d = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await openVm(d, 'q-a', ['q-a.vmdk'])
  d.send({ kind: MessageKind.Rollback, vm: 'q-a' })
  await d.expect(MessageKind.RolledBack)
  d.close()
  await d.whenClosed()
  const e = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  t.equal((await runCycle(e, 'q-b', 1, [plan('q-b')])).committed?.cycle, 1, 'once A is rolled back, the disk of VM q-b opens and commits')
  e.close()
  t.ok((await allocatedBytes(env.store)) <= QUOTA, 'the store holds no more than the quota')
})

t.test("a token's quota counts the holes of a thin mirror: a seed of zeros, then a cycle that fills it", async (t) => {
  const { env, url } = await quotaReceiver(t)
  const CAP = QUOTA - MiB
  const zeros = Buffer.alloc(CAP)
  const full = pattern(CAP, 9)
  for (const vm of ['q-s1', 'q-s2']) {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    t.equal((await runCycle(a, vm, 1, [seedPlan(0, `${vm}.vmdk`, zeros, 'x')])).committed?.cycle, 1, `VM ${vm}: a seed of zeros leaves its flat a hole`)
    a.close()
    await a.whenClosed()
  }
  t.ok((await allocatedBytes(env.store)) < MiB, 'the two mirrors allocate almost nothing')
  const fill = (vm: string): DiskPlan => incPlan(0, `${vm}.vmdk`, full, 1, 'f', [{ offset: 0, length: CAP }], `${vm}-000001.vmdk`, `${vm}-000002.vmdk`)
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  t.equal((await runCycle(b, 'q-s1', 2, [fill('q-s1')])).committed?.cycle, 2, 'VM q-s1: a cycle filling its holes fits in the quota')
  b.close()
  await b.whenClosed()
  const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(c, 'q-s2', 2, [fill('q-s2')]).catch(() => {})
  t.same(await c.expectError(), { code: 'E_QUOTA', closeCode: 4508 }, 'VM q-s2: the same cycle does not, its holes count (they were free before)')
  t.ok((await allocatedBytes(env.store)) <= QUOTA, 'the store holds no more than the quota')
})

t.test("a thin mirror's incremental is charged the change it announces, not the holes it might fill; and held to it", async (t) => {
  const { env, url } = await quotaReceiver(t)
  // q-t is a 6 MiB mirror seeded with zeros (a hole), then q-d takes 5 MiB of data: 5 + 6 > 8 MiB, but 5 + q-t's 128 KiB change fit
  const data = pattern(5 * MiB, 30)
  const zeros = Buffer.alloc(6 * MiB)
  for (const [vm, img] of [
    ['q-t', zeros],
    ['q-d', data],
  ] as const) {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    t.equal((await runCycle(a, vm, 1, [seedPlan(0, `${vm}.vmdk`, img, 'x')])).committed?.cycle, 1, `VM ${vm} seeded`)
    a.close()
    await a.whenClosed()
  }
  const ranges = [
    { offset: MiB, length: 64 * 1024 },
    { offset: 3 * MiB, length: 64 * 1024 },
  ]
  const next = evolve(zeros, 31, ranges)
  const inc = incPlan(0, 'q-t.vmdk', next, 1, 'i', ranges, 'q-t-000001.vmdk', 'q-t-000002.vmdk')
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  t.equal((await runCycle(b, 'q-t', 2, [inc])).committed?.cycle, 2, 'the incremental commits: charged its change, not the 6 MiB of holes')
  b.close()
  await b.whenClosed()
  t.ok(flatOf(env, 'q-t').equals(next), 'and the mirror is the source')
  // an agent that announces one extent of 64 KiB and sends more is refused at the first byte beyond (E_RANGE), before writing it
  const more = [
    { offset: 0, length: 64 * 1024 },
    { offset: 4 * MiB, length: 64 * 1024 },
  ]
  const big = incPlan(0, 'q-t.vmdk', evolve(next, 32, more), 2, 'j', more, 'q-t-000002.vmdk', 'q-t-000003.vmdk')
  const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await initDigests()
  c.send(hello())
  await c.expect(MessageKind.Welcome)
  c.send(vmOpen('q-t', 3, ['q-t-000003.vmdk']))
  const vs = await c.expect(MessageKind.VmState)
  c.send(diskOpen({ ...big, extents: big.extents.slice(0, 1) }, 3, 'q-t', vs.generation))
  t.equal((await c.expect(MessageKind.DiskState)).accepted, true)
  c.send(extentMessage(big, 0, 'sha256'))
  c.send(extentMessage(big, 1, 'sha256'))
  t.same(await c.expectError(), { code: 'E_RANGE', closeCode: 4412 }, 'the second extent is beyond what the DiskOpen announced')
  // and one extent that is longer than announced
  const d = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  d.send(hello())
  await d.expect(MessageKind.Welcome)
  d.send(vmOpen('q-t', 3, ['q-t-000003.vmdk']))
  const vs2 = await d.expect(MessageKind.VmState)
  const one = incPlan(0, 'q-t.vmdk', evolve(next, 33, [{ offset: 0, length: 128 * 1024 }]), 2, 'k', [{ offset: 0, length: 128 * 1024 }], 'q-t-000002.vmdk', 'q-t-000003.vmdk')
  d.send({ kind: MessageKind.Rollback, vm: 'q-t' })
  for (let m = await d.next(); m?.kind !== MessageKind.RolledBack; m = await d.next()) if (m === undefined || m.kind === MessageKind.Error) throw new Error(`no RolledBack: ${JSON.stringify(m)}`)
  const openMsg = diskOpen(one, 3, 'q-t', vs2.generation) as Extract<ReturnType<typeof diskOpen>, { kind: typeof MessageKind.DiskOpen }>
  d.send({ ...openMsg, totalBytes: 64 * 1024 })
  t.equal((await d.expect(MessageKind.DiskState)).accepted, true)
  d.send(extentMessage(one, 0, 'sha256'))
  t.same(await d.expectError(), { code: 'E_RANGE', closeCode: 4412 }, 'a 128 KiB extent after 64 KiB announced')
  t.ok(
    flatOf(env, 'q-t')
      .subarray(0, 128 * 1024)
      .equals(next.subarray(0, 128 * 1024)),
    'nothing of the refused extents reached the mirror',
  )
})

t.test("disks within a token's quota: opened at once before any extent, they commit; so does an incremental of them all", async (t) => {
  const { env, url } = await quotaReceiver(t)
  const CAP = 1.5 * MiB
  const names = ['d0.vmdk', 'd1.vmdk', 'd2.vmdk', 'd3.vmdk']
  const images = names.map((_n, i) => pattern(CAP, 20 + i))
  const plans = names.map((n, i) => seedPlan(i, n, images[i] as Buffer, 'x'))
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await openVm(a, 'q-ok', names)
  for (const d of plans) t.equal(await openAnswer(a, d, 'q-ok'), 'accepted', `${d.name}: ${4 * CAP} bytes of disks fit in ${QUOTA}`)
  for (const d of plans) {
    for (let seq = 0; seq < d.extents.length; seq++) a.send(extentMessage(d, seq, 'sha256'))
    a.send(diskEnd(d, 'sha256'))
    for (let m = await a.next(); m?.kind !== MessageKind.DiskEnded; m = await a.next()) if (m === undefined || m.kind === MessageKind.Error) throw new Error(`no DiskEnded: ${JSON.stringify(m)}`)
  }
  a.send({ kind: MessageKind.Commit, vm: 'q-ok', cycle: 1, retention: null })
  t.equal((await a.expect(MessageKind.Committed)).cycle, 1, 'committed')
  a.close()
  await a.whenClosed()
  const ranges = [{ offset: 64 * 1024, length: 64 * 1024 }]
  const incs = names.map((n, i) => incPlan(i, n, evolve(images[i] as Buffer, 40 + i, ranges), 1, 'i', ranges, n.replace('.vmdk', '-000001.vmdk'), n.replace('.vmdk', '-000002.vmdk')))
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  t.equal((await runCycle(b, 'q-ok', 2, incs)).committed?.cycle, 2, 'an incremental of the four disks (their mirrors allocated) commits')
  b.close()
})

t.test('PendingOpens: a DiskOpen being decided is counted by the others of its VMs, once, until it lets go', async (t) => {
  const p = new PendingOpens()
  const letGo = p.hold('q-1', 'd.vmdk', 100)
  p.hold('other', 'd.vmdk', 1000)
  const covers = (vm: string): boolean => vm.startsWith('q-')
  t.equal(
    p.bytes(covers, () => false),
    100,
    'only the VMs the token covers',
  )
  t.equal(
    p.bytes(covers, (k) => k === diskKey('q-1', 'd.vmdk')),
    0,
    'not a disk counted already (in flight), nor the one deciding',
  )
  letGo()
  p.hold('q-1', 'd.vmdk', 50)
  letGo()
  t.equal(
    p.bytes(covers, () => false),
    50,
    'letting go twice does not drop a later hold of the same disk',
  )
})

t.test('in-place zeroing stops between pieces when the session is aborted', async (t) => {
  await initDigests()
  const store = join(scratchDir(t), 'store')
  const CAP = 3 * JOURNAL_PIECE
  const base = pattern(CAP, 7)
  const src = { layers: [{ file: 'd.vmdk', cid: '00000001', parentCid: 'ffffffff' }], successor: 'd-000001.vmdk' }
  let m = await VmMirror.acquire(store, 'vm', log)
  const s = await m.openDisk(
    { name: 'd.vmdk', capacity: CAP, cycle: 1, mode: 'seed', baseCycle: 0, baseGeneration: '', source: src, cycleId: '1'.repeat(16), ddb: {}, algorithm: 'sha256' },
    { compat },
  )
  const sa = s.apply
  if (sa === undefined) throw new Error('seed refused')
  const seedExt: ApplyExtent = { seq: 0, offset: 0, length: CAP, zero: false, data: base, digest: createDigest('sha256').update(base).digest() }
  sa.accept(seedExt)
  await sa.prepareBatch([seedExt])
  await sa.writeBatch([seedExt])
  const cd = new CycleDigest('sha256')
  cd.add(seedExt)
  await sa.end({ extents: 1, dataBytes: CAP, zeroBytes: 0, digest: cd.digest() })
  await m.commit(1, [sa], '', compat)
  const generation = m.state.generation as string
  m.release()

  m = await VmMirror.acquire(store, 'vm', log)
  const r = await m.openDisk(
    {
      name: 'd.vmdk',
      capacity: CAP,
      cycle: 2,
      mode: 'incremental',
      baseCycle: 1,
      baseGeneration: generation,
      source: { layers: [{ file: 'd-000001.vmdk', cid: '00000002', parentCid: '00000001' }], successor: 'd-000002.vmdk' },
      cycleId: '2'.repeat(16),
      ddb: {},
      algorithm: 'sha256',
    },
    { compat },
  )
  const a = r.apply
  if (a === undefined) throw new Error(`refused ${r.reason}`)
  const zero: ApplyExtent = { seq: 0, offset: 0, length: CAP, zero: true, data: undefined, digest: new Uint8Array(0) }
  a.accept(zero)
  await a.prepareBatch([zero])
  const ctl = new AbortController()
  const writing = a.writeBatch([zero], { signal: ctl.signal })
  ctl.abort()
  await t.rejects(writing, { name: 'AbortError' }, 'the write stops')
  await a.close()
  m.release()
  const flat = readFileSync(join(store, 'vm', 'd-flat.vmdk'))
  t.ok(
    flat.subarray(0, JOURNAL_PIECE).every((x) => x === 0),
    'the piece under way was finished',
  )
  t.ok(flat.subarray(JOURNAL_PIECE).equals(base.subarray(JOURNAL_PIECE)), 'no piece after it was written')
  // the journal holds the old contents: a rollback restores the committed image exactly
  m = await VmMirror.acquire(store, 'vm', log)
  await m.rollback()
  m.release()
  t.ok(readFileSync(join(store, 'vm', 'd-flat.vmdk')).equals(base), 'rolled back to the committed image')

  // data extents are bounded by the batch: an abort does not stop them, so a disconnect keeps the batch's resume point
  m = await VmMirror.acquire(store, 'vm', log)
  const r2 = await m.openDisk(
    {
      name: 'd.vmdk',
      capacity: CAP,
      cycle: 2,
      mode: 'incremental',
      baseCycle: 1,
      baseGeneration: generation,
      source: { layers: [{ file: 'd-000001.vmdk', cid: '00000002', parentCid: '00000001' }], successor: 'd-000002.vmdk' },
      cycleId: '3'.repeat(16),
      ddb: {},
      algorithm: 'sha256',
    },
    { compat },
  )
  const b = r2.apply
  if (b === undefined) throw new Error(`refused ${r2.reason}`)
  const data = [0, 1].map((seq): ApplyExtent => {
    const bytes = pattern(64 * 1024, 50 + seq)
    return { seq, offset: seq * 64 * 1024, length: bytes.length, zero: false, data: bytes, digest: createDigest('sha256').update(bytes).digest() }
  })
  for (const e of data) b.accept(e)
  await b.prepareBatch(data)
  const aborted = AbortSignal.abort()
  await b.writeBatch(data, { signal: aborted })
  t.equal(b.appliedSeq, 1, 'the batch of data extents finished and recorded its resume point')
  await b.close()
  m.release()
})
