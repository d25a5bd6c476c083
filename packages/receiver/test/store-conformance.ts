/**
 * One conformance suite for every store kind (issue #18): the same cases, run
 * through a real in-process receiver (TLS, the protocol harness of
 * helpers.ts), against the folder store (store-folder.test.ts) and the Ceph
 * store (store-ceph.test.ts): seed, incrementals, an atomic commit, the
 * resume of a cycle whose connection died after a durable batch, lineage and
 * generation refusals, points listed and read back, retention removing the
 * oldest, a disk grown in place keeping its points (each read back at its own
 * size), a re-seed keeping them (the old disk data kept until the last point
 * that reads it goes), hostile VM and disk names refused with typed errors, a block
 * check (`--verify changed`, `--scrub`) finding blocks changed behind the
 * store's back and a resync repairing exactly those, a second resync reading
 * only the blocks written since the first (the kept block map); `points drop` and
 * `points prune` (the mirror never dropped), and a failover holding the
 * mirror (`E_HELD` to the next cycle and to a prune) until `points close`.
 */
import type { Test } from 'tap'
import { MessageKind, committedCycleIdentity, encodeMessage, type Message } from '@grainline/protocol'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { qemuRaw } from '@grainline/test-utils'
import type { ReceiverInit, RetentionPolicy } from '../src/index.ts'
import type { StoreOverview } from '../src/store-overview.ts'
import { BLOCKS, BS, NAME, SIZE, VM as RVM, mapOf, resyncCycle } from './resync-helpers.ts'
import { Agent, MiB, TOKEN, diskOpen, evolve, hello, incPlan, makeEnv, openVmOnly, pattern, runCycle, seedPlan, startReceiver, vmOpen, type Env, whenFree as whenFreeAfter } from './helpers.ts'

/** A frame of `m` even when the codec refuses a field (hand-encoded, so the receiver sees the bad field). */
async function frameOf(m: Message): Promise<Uint8Array> {
  try {
    return encodeMessage(m)
  } catch {
    const { Packr } = await import('msgpackr')
    const { kind, ...fields } = m as unknown as Record<string, unknown>
    return Buffer.concat([Buffer.from([kind as number]), new Packr({ useRecords: false }).pack(fields)])
  }
}

/** A store kind under test. */
export interface StoreUnderTest {
  readonly kind: string
  /** receiver settings selecting this store (`store`, client settings) */
  init(env: Env): Partial<ReceiverInit>
  /** the committed content of a disk */
  readDisk(env: Env, vm: string, disk: string): Promise<Buffer>
  /** the cycles of a VM's kept points (the mirror excluded), oldest first */
  points(env: Env, vm: string): Promise<number[]>
  /** the content of a disk at point `cycle` */
  readPoint(env: Env, vm: string, cycle: number, disk: string): Promise<Buffer>
  /** change the committed content of a disk behind the store's back (bit rot, a stray write) */
  corrupt(env: Env, vm: string, disk: string, offset: number, data: Buffer): Promise<void>
  /** `grainline points drop` (`cycles`) or `points prune` (a policy) */
  prune(env: Env, vm: string, what: RetentionPolicy | { cycles: number[] }): Promise<{ dropped: number[]; kept: number[] }>
  /** `grainline mirror failover` of point `cycle` into `dir`: each disk's file QEMU reads (VMDK) */
  failover(env: Env, vm: string, cycle: number, dir: string): Promise<Record<string, string>>
  /** `grainline points close --to dir`: the holds released */
  /** `points close --to dir` (`failover`: with --failover) */
  close(env: Env, vm: string, dir: string, failover?: boolean): Promise<number>
  /** the store's overview (`grainline status --output json`, the dashboard) */
  overview(env: Env): Promise<StoreOverview>
  /** the names of what holds a VM's disk data (the folder store's flats, the Ceph store's images), sorted */
  storage(env: Env, vm: string): Promise<string[]>
}

/** Retry an operator action while a session that just ended still holds the VM (E_BUSY), every 50 ms. */
const whenFree = <T>(fn: () => Promise<T>): Promise<T> => whenFreeAfter(fn, 200, 50)

/** A disk file (VMDK) as QEMU reads it. */
async function qemuReads(file: string, out: string): Promise<Buffer> {
  await qemuRaw(file, out)
  return await readFile(out)
}

const cid = (n: number): string => n.toString(16).padStart(32, '0')

/** Register the conformance cases for `store` on `t`. */
export function storeConformance(t: Test, store: StoreUnderTest, dir: () => string): void {
  t.test(`${store.kind}: seed, incrementals, points, retention keeps the newest`, async (t) => {
    const env = makeEnv(dir())
    const { receiver, url } = await startReceiver(env, { ...store.init(env), retention: { keep: 2 } })
    t.teardown(() => receiver.close())
    const vm = 'vm-conf'
    const images: Buffer[] = []
    images[1] = pattern(4 * MiB, 1)
    let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(1, 'd.vmdk', images[1], cid(1))])
    a.close()
    t.ok((await store.readDisk(env, vm, 'd.vmdk')).equals(images[1]), 'seed: the mirror holds the image')
    for (let c = 2; c <= 4; c++) {
      const ranges = [
        { offset: (c * 307_200) % (3 * MiB), length: 204_800 },
        { offset: 3 * MiB + 4096 * c, length: 65536, zero: c === 3 },
      ]
      images[c] = evolve(images[c - 1] as Buffer, c, ranges)
      a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      const r = await runCycle(a, vm, c, [incPlan(1, 'd.vmdk', images[c] as Buffer, c - 1, cid(c), ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)])
      a.close()
      t.equal(r.committed?.cycle, c, `cycle ${c} committed`)
      t.ok((await store.readDisk(env, vm, 'd.vmdk')).equals(images[c] as Buffer), `cycle ${c}: the mirror holds the image`)
    }
    t.same(await store.points(env, vm), [2, 3], 'keep=2: points 2 and 3 kept, point 1 removed')
    for (const k of [2, 3]) t.ok((await store.readPoint(env, vm, k, 'd.vmdk')).equals(images[k] as Buffer), `point ${k} reads back as cycle ${k}`)
  })

  t.test(`${store.kind}: VmState on protocol version 8 names the identity of the committed cycle (SPEC §5.10), recorded with the commit: after a restart too`, async (t) => {
    const env = makeEnv(dir())
    let rx = await startReceiver(env, store.init(env))
    t.teardown(() => rx.receiver.close())
    const vm = 'vm-ident'
    const v8 = [8, 7, 6, 5, 4, 3, 2]
    const plans = [seedPlan(0, 'b.vmdk', pattern(MiB, 51), cid(51)), seedPlan(1, 'a.vmdk', pattern(MiB, 52), cid(52))]
    const a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, plans, { versions: v8 })
    a.close()
    // the cycleIds of the DiskOpens runCycle sent
    const want = committedCycleIdentity(plans.map((d) => ({ name: d.name, cycleId: diskOpen(d, 1, vm).cycleId })))
    // the VmState of a VmOpen of the committed cycle (an agent whose Committed was lost)
    const reopen = async (): Promise<Message | undefined> => {
      const b = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
      try {
        b.send(hello('sha256', 'none', v8))
        await b.expect(MessageKind.Welcome)
        b.send(vmOpen(vm, 1, ['a-000001.vmdk', 'b-000001.vmdk']))
        return await b.next()
      } finally {
        b.close()
        await b.whenClosed()
      }
    }
    t.match(await reopen(), { kind: MessageKind.VmState, committedCycle: 1, committedCycleId: want }, 'the reopening of the committed cycle hears its identity')
    await rx.receiver.close()
    rx = await startReceiver(env, store.init(env))
    t.match(await reopen(), { kind: MessageKind.VmState, committedCycle: 1, committedCycleId: want }, 'after a restart: from the VM state')
  })

  t.test(`${store.kind}: a disk grown in place keeps the points: each older point reads back at its own size`, async (t) => {
    const env = makeEnv(dir())
    const { receiver, url } = await startReceiver(env, { ...store.init(env), retention: { keep: 5 } })
    t.teardown(() => receiver.close())
    const vm = 'vm-grow'
    const images: Buffer[] = [Buffer.alloc(0), pattern(2 * MiB, 41)]
    let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(1, 'd.vmdk', images[1] as Buffer, cid(41))])
    a.close()
    const grow: Record<number, number> = { 2: 2 * MiB, 3: 3 * MiB, 4: 3 * MiB, 5: 4 * MiB }
    for (let c = 2; c <= 5; c++) {
      const size = grow[c] as number
      const prev = images[c - 1] as Buffer
      const ranges = [
        { offset: 65_536 * c, length: 131_072 },
        { offset: size - 262_144, length: 131_072 },
      ]
      // a grown disk reads as zeros past its old end until written
      images[c] = evolve(size > prev.length ? Buffer.concat([prev, Buffer.alloc(size - prev.length)]) : prev, c + 40, ranges)
      a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      const r = await runCycle(a, vm, c, [incPlan(1, 'd.vmdk', images[c] as Buffer, c - 1, cid(40 + c), ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)])
      a.close()
      t.equal(r.committed?.cycle, c, `cycle ${c} (${size / MiB} MiB) committed`)
    }
    t.ok((await store.readDisk(env, vm, 'd.vmdk')).equals(images[5] as Buffer), 'the mirror holds the disk at 4 MiB')
    t.same(await store.points(env, vm), [1, 2, 3, 4], 'no point dropped by the two capacity changes')
    for (const k of [1, 2, 3, 4]) t.ok((await store.readPoint(env, vm, k, 'd.vmdk')).equals(images[k] as Buffer), `point ${k} reads back as cycle ${k} (${(images[k] as Buffer).length / MiB} MiB)`)
    await receiver.close()
    const files = await whenFree(() => store.failover(env, vm, 2, join(env.dir, 'failover-2')))
    t.ok((await qemuReads(files['d.vmdk'] as string, join(env.dir, 'fo2.raw'))).equals(images[2] as Buffer), 'a failover of point 2 boots the disk at 2 MiB')
  })

  t.test(`${store.kind}: a disk removed from the VM (its .vmx no longer names it): points before keep it, the point of the removal and the mirror leave it out`, async (t) => {
    const env = makeEnv(dir())
    const { receiver, url } = await startReceiver(env, { ...store.init(env), retention: { keep: 5 } })
    t.teardown(() => receiver.close())
    const vm = 'vm-removed'
    const a1 = pattern(MiB, 81)
    const b1 = pattern(MiB, 82)
    let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(1, 'a.vmdk', a1, cid(81)), seedPlan(2, 'b.vmdk', b1, cid(82))])
    a.close()
    const r = [{ offset: 65_536, length: 65_536 }]
    const a2 = evolve(a1, 83, r)
    const b2 = evolve(b1, 84, r)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await whenFree(() => runCycle(a, vm, 2, [incPlan(1, 'a.vmdk', a2, 1, cid(83), r, 'a-000001.vmdk', 'a-000002.vmdk'), incPlan(2, 'b.vmdk', b2, 1, cid(84), r, 'b-000001.vmdk', 'b-000002.vmdk')]))
    a.close()
    // cycles 3 and 4 carry a.vmdk only, and their .vmx (helpers' VMX) names only it: b.vmdk was removed from the VM
    const a3 = evolve(a2, 85, r)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await whenFree(() => runCycle(a, vm, 3, [incPlan(1, 'a.vmdk', a3, 2, cid(85), r, 'a-000002.vmdk', 'a-000003.vmdk')]))
    a.close()
    const a4 = evolve(a3, 86, r)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await whenFree(() => runCycle(a, vm, 4, [incPlan(1, 'a.vmdk', a4, 3, cid(86), r, 'a-000003.vmdk', 'a-000004.vmdk')]))
    a.close()
    const v = (await store.overview(env)).vms.find((x) => x.vm === vm)
    t.match(
      v?.disks.map((d) => [d.name, d.committedCycle, d.removed ?? null]),
      [
        ['a.vmdk', 4, null],
        ['b.vmdk', 2, 3],
      ],
      'b.vmdk: last cycle 2, removed in cycle 3',
    )
    t.equal(v?.health.state, 'OK', 'a removed disk raises no alarm')
    t.same(await store.points(env, vm), [1, 2, 3])
    t.ok((await store.readPoint(env, vm, 2, 'b.vmdk')).equals(b2), 'point 2 holds b.vmdk as of cycle 2')
    for (const k of [2, 3, 4]) {
      const fo = join(env.dir, `failover-${k}`)
      const files = await whenFree(() => store.failover(env, vm, k, fo))
      t.same(Object.keys(files).sort(), k < 3 ? ['a.vmdk', 'b.vmdk'] : ['a.vmdk'], `point ${k}: ${k < 3 ? 'both disks' : 'the removed disk left out'}`)
      if (k < 3) t.ok((await qemuReads(files['b.vmdk'] as string, join(env.dir, `fo-b-${k}.raw`))).equals(b2), `point ${k}: b.vmdk as of cycle 2`)
      t.equal(await whenFree(() => store.close(env, vm, fo, true)), 1, `point ${k}: released`)
    }
    // named again by the .vmx (re-attached, not carried: an independent disk), it is part of the VM again
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await whenFree(() => runCycle(a, vm, 5, [incPlan(1, 'a.vmdk', evolve(a4, 87, r), 4, cid(87), r, 'a-000004.vmdk', 'a-000005.vmdk')], { vmxDisks: ['a-000004.vmdk', 'b-000002.vmdk'] }))
    a.close()
    const v5 = (await store.overview(env)).vms.find((x) => x.vm === vm)
    t.match(
      v5?.disks.map((d) => [d.name, d.removed ?? null]),
      [
        ['a.vmdk', null],
        ['b.vmdk', null],
      ],
      'b.vmdk named again: no longer removed',
    )
    // the points taken while it was out of the VM still leave it out; the ones before keep it
    for (const [k, want] of [
      [3, ['a.vmdk']],
      [2, ['a.vmdk', 'b.vmdk']],
    ] as const) {
      const fo = join(env.dir, `failover-again-${k}`)
      const files = await whenFree(() => store.failover(env, vm, k, fo))
      t.same(Object.keys(files).sort(), want, `after the re-attach, point ${k}: ${want.join(', ')}`)
      t.equal(await whenFree(() => store.close(env, vm, fo, true)), 1)
    }
  })

  t.test(`${store.kind}: a removed disk is reclaimed once no kept point holds it (a prune, a commit's retention)`, async (t) => {
    const r = [{ offset: 65_536, length: 65_536 }]
    /** cycles `from`…`to` of `vm`: cycle 1 seeds a.vmdk and b.vmdk, the later ones carry a.vmdk only and their .vmx no longer names b.vmdk */
    const cycles = async (url: string, ca: Buffer, vm: string, a: { img: Buffer }, from: number, to: number): Promise<void> => {
      for (let c = from; c <= to; c++) {
        const ag = await Agent.connect(url, { token: TOKEN, ca })
        if (c === 1) {
          a.img = pattern(MiB, 91)
          await whenFree(() => runCycle(ag, vm, 1, [seedPlan(1, 'a.vmdk', a.img, cid(91)), seedPlan(2, 'b.vmdk', pattern(MiB, 92), cid(92))]))
        } else {
          a.img = evolve(a.img, 90 + c, r)
          await whenFree(() => runCycle(ag, vm, c, [incPlan(1, 'a.vmdk', a.img, c - 1, cid(90 + c), r, `a-00000${c - 1}.vmdk`, `a-00000${c}.vmdk`)]))
        }
        ag.close()
      }
    }
    const diskNames = async (env: Env, vm: string): Promise<string[] | undefined> => (await store.overview(env)).vms.find((x) => x.vm === vm)?.disks.map((d) => d.name)

    // points drop: b.vmdk (removed in cycle 2) stays while point 1 is kept, and goes with it
    const env = makeEnv(dir())
    const rx = await startReceiver(env, { ...store.init(env), retention: { keep: 5 } })
    t.teardown(() => rx.receiver.close())
    const a = { img: Buffer.alloc(0) }
    await cycles(rx.url, env.tls.ca, 'vm-reclaim', a, 1, 3)
    t.same(await store.points(env, 'vm-reclaim'), [1, 2])
    t.same(await diskNames(env, 'vm-reclaim'), ['a.vmdk', 'b.vmdk'], 'point 1 holds b.vmdk: kept')
    t.ok((await store.readPoint(env, 'vm-reclaim', 1, 'b.vmdk')).equals(pattern(MiB, 92)), 'point 1 reads b.vmdk')
    t.same((await whenFree(() => store.prune(env, 'vm-reclaim', { cycles: [2] }))).dropped, [2], 'dropping point 2 (after the removal)…')
    t.same(await diskNames(env, 'vm-reclaim'), ['a.vmdk', 'b.vmdk'], '…keeps b.vmdk: point 1 still holds it')
    t.ok((await store.readPoint(env, 'vm-reclaim', 1, 'b.vmdk')).equals(pattern(MiB, 92)), 'point 1 still reads b.vmdk')
    t.same((await whenFree(() => store.prune(env, 'vm-reclaim', { cycles: [1] }))).dropped, [1], 'dropping point 1…')
    t.same(await diskNames(env, 'vm-reclaim'), ['a.vmdk'], '…reclaims b.vmdk')
    await t.rejects(store.readDisk(env, 'vm-reclaim', 'b.vmdk'), "b.vmdk's mirror is gone")
    t.ok((await store.readDisk(env, 'vm-reclaim', 'a.vmdk')).equals(a.img), 'a.vmdk untouched')
    t.match((await store.overview(env)).vms.find((x) => x.vm === 'vm-reclaim')?.health, { state: 'OK' })
    await cycles(rx.url, env.tls.ca, 'vm-reclaim', a, 4, 4)
    t.ok((await store.readDisk(env, 'vm-reclaim', 'a.vmdk')).equals(a.img), 'the next cycle commits')

    // a commit whose retention drops the last point holding it
    const env1 = makeEnv(dir())
    const rx1 = await startReceiver(env1, { ...store.init(env1), retention: { keep: 1 } })
    t.teardown(() => rx1.receiver.close())
    const a1 = { img: Buffer.alloc(0) }
    await cycles(rx1.url, env1.tls.ca, 'vm-reclaim-1', a1, 1, 2)
    t.same(await store.points(env1, 'vm-reclaim-1'), [1])
    t.same(await diskNames(env1, 'vm-reclaim-1'), ['a.vmdk', 'b.vmdk'], 'after cycle 2: point 1 holds b.vmdk')
    await cycles(rx1.url, env1.tls.ca, 'vm-reclaim-1', a1, 3, 3)
    t.same(await store.points(env1, 'vm-reclaim-1'), [2])
    t.same(await diskNames(env1, 'vm-reclaim-1'), ['a.vmdk'], 'after cycle 3 (keep 1: point 1 dropped): b.vmdk reclaimed by the commit')
    await t.rejects(store.readDisk(env1, 'vm-reclaim-1', 'b.vmdk'), "b.vmdk's mirror is gone")
    t.ok((await store.readPoint(env1, 'vm-reclaim-1', 2, 'a.vmdk')).equals(evolve(pattern(MiB, 91), 92, r)), 'point 2 reads a.vmdk as of cycle 2')
  })

  t.test(`${store.kind}: a VM whose first cycle stopped after its VmOpen: status lists it, never committed (the VM count counts it); its next cycle seeds`, async (t) => {
    const env = makeEnv(dir())
    const { receiver, url } = await startReceiver(env, store.init(env))
    t.teardown(() => receiver.close())
    const vm = 'vm-opened'
    t.equal(await openVmOnly(url, TOKEN, env.tls.ca, vm), 'ok', 'VmOpen, then the agent went away')
    const v = (await store.overview(env)).vms.find((x) => x.vm === vm)
    t.match(v, { vm, committedCycle: 0, inflightCycle: 0, disks: [], points: [] }, 'listed at cycle 0, nothing in flight')
    t.match(v?.health, { state: 'WARNING', problems: [/never committed/] }, 'WARNING: never committed')
    const image = pattern(MiB, 7)
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await whenFree(() => runCycle(a, vm, 1, [seedPlan(1, 'd.vmdk', image, cid(7))]))
    a.close()
    t.ok((await store.readDisk(env, vm, 'd.vmdk')).equals(image), 'the next cycle seeds it')
    t.match(
      (await store.overview(env)).vms.find((x) => x.vm === vm),
      { committedCycle: 1, health: { state: 'OK' } },
      'then OK at cycle 1',
    )
  })

  t.test(`${store.kind}: a connection killed after a durable batch resumes from it`, async (t) => {
    const env = makeEnv(dir())
    const { receiver, url } = await startReceiver(env, { ...store.init(env), batchBytes: 256 * 1024 })
    t.teardown(() => receiver.close())
    const vm = 'vm-resume'
    const img1 = pattern(2 * MiB, 7)
    let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(1, 'r.vmdk', img1, cid(11), 128 * 1024)])
    a.close()
    const ranges = [{ offset: 0, length: 2 * MiB }]
    const img2 = evolve(img1, 99, ranges)
    const plan = incPlan(1, 'r.vmdk', img2, 1, cid(12), ranges, 'r-000001.vmdk', 'r-000002.vmdk', 128 * 1024)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 2, [plan], { stopAfter: 6 })
    const ack = await a.expect(MessageKind.ExtentAck)
    t.ok(ack.seq >= 0, `a durable batch acknowledged (seq ${ack.seq})`)
    a.terminate()
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const r = await runCycle(a, vm, 2, [plan])
    a.close()
    t.ok((r.resume[0] ?? 0) > ack.seq, `resumed after the acknowledged seq ${ack.seq} (at ${r.resume[0]})`)
    t.equal(r.committed?.cycle, 2)
    t.ok((await store.readDisk(env, vm, 'r.vmdk')).equals(img2), 'after the resume the mirror holds cycle 2')
  })

  t.test(`${store.kind}: lineage and generation refusals`, async (t) => {
    const env = makeEnv(dir())
    const { receiver, url } = await startReceiver(env, store.init(env))
    t.teardown(() => receiver.close())
    const vm = 'vm-lineage'
    const img = pattern(1 * MiB, 3)
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(1, 'l.vmdk', img, cid(21))])
    a.close()
    const ranges = [{ offset: 0, length: 4096 }]
    const refused = async (plan: ReturnType<typeof incPlan>, generation: string | undefined, cycle = 2): Promise<string> => {
      const ag = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      ag.send(hello())
      await ag.expect(MessageKind.Welcome)
      ag.send(vmOpen(vm, cycle, ['l-000001.vmdk']))
      const st = await ag.expect(MessageKind.VmState)
      ag.send(diskOpen(plan, cycle, vm, generation ?? st.generation))
      const ds = await ag.expect(MessageKind.DiskState)
      ag.close()
      return ds.accepted ? 'accepted' : ds.reason
    }
    const good = (base: number, layer: string): ReturnType<typeof incPlan> => incPlan(1, 'l.vmdk', evolve(img, 2, ranges), base, cid(22), ranges, layer, 'l-000002.vmdk')
    t.equal(await refused(good(1, 'l-000001.vmdk'), 'f'.repeat(32)), 'E_GENERATION', 'an incremental planned against another generation')
    // the cycle after the committed one, nothing else (SPEC §5.1): a cycle on another base is a skipped one
    t.equal(await refused(good(5, 'l-000001.vmdk'), undefined, 7), 'E_CYCLE_MISMATCH', 'an incremental on another base cycle, not the next cycle')
    t.equal(await refused(good(1, 'l-000001.vmdk'), undefined, 7), 'E_CYCLE_MISMATCH', 'an incremental on the committed base that skips cycles')
    t.equal(await refused(good(1, 'x-000009.vmdk'), undefined), 'E_CHAIN_MISMATCH', 'a delta that is not the recorded successor')
    t.equal(await refused(good(1, 'l-000001.vmdk'), undefined), 'accepted', 'the right lineage is accepted')
  })

  t.test(`${store.kind}: hostile VM and disk names are refused with E_BAD_NAME`, async (t) => {
    const env = makeEnv(dir())
    const { receiver, url } = await startReceiver(env, store.init(env))
    t.teardown(() => receiver.close())
    for (const vm of ['..', 'vm/../x', 'vm-nul\u0000x', `vm-${'v'.repeat(300)}`]) {
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      a.send(hello())
      await a.expect(MessageKind.Welcome)
      a.sendRaw(await frameOf({ ...vmOpen('vm-x', 1, ['d-000001.vmdk']), vm } as Message))
      const e = await a.expectError()
      t.equal(e.code, vm.length > 255 ? 'E_SCHEMA' : 'E_BAD_NAME', `VM name ${JSON.stringify(vm.slice(0, 20))} refused`)
    }
    for (const disk of ['../d.vmdk', 'a/b.vmdk', 'x\u0000.vmdk', `${'d'.repeat(300)}.vmdk`]) {
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      a.send(hello())
      await a.expect(MessageKind.Welcome)
      a.send(vmOpen('vm-names', 1, ['d-000001.vmdk']))
      await a.expect(MessageKind.VmState)
      a.sendRaw(await frameOf({ ...diskOpen(seedPlan(1, 'ok.vmdk', pattern(4096, 1), cid(31)), 1, 'vm-names'), name: disk } as Message))
      const e = await a.expectError()
      t.equal(e.code, disk.length > 255 ? 'E_SCHEMA' : 'E_BAD_NAME', `disk name ${JSON.stringify(disk.slice(0, 20))} refused`)
    }
  })

  t.test(`${store.kind}: a block check finds blocks changed behind the store's back; a resync sends and repairs exactly those`, async (t) => {
    const env = makeEnv(dir())
    const { receiver, url } = await startReceiver(env, store.init(env))
    t.teardown(() => receiver.close())
    const img1 = pattern(SIZE, 41)
    let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, RVM, 1, [seedPlan(0, NAME, img1, cid(41))])
    const all = new Uint8Array(BLOCKS * 8)
    const idx = new DataView(all.buffer)
    for (let b = 0; b < BLOCKS; b++) idx.setBigUint64(b * 8, BigInt(b), true)
    const check = async (ag: Agent, image: Buffer): Promise<{ ok: boolean; mismatched: number[] }> => {
      ag.send({ kind: MessageKind.BlockCheck, disk: 0, blockSize: BS, blocks: all, digests: mapOf(image) })
      const r = await ag.expect(MessageKind.BlockCheckResult)
      const v = new DataView(r.mismatched.buffer, r.mismatched.byteOffset, r.mismatched.byteLength)
      return { ok: r.ok, mismatched: Array.from({ length: r.mismatched.length / 8 }, (_, i) => Number(v.getBigUint64(i * 8, true))) }
    }
    t.same(await check(a, img1), { ok: true, mismatched: [] }, 'the seeded mirror passes a check of every block')
    a.close()
    // two blocks rot in the committed mirror; the next incremental writes elsewhere
    await store.corrupt(env, RVM, NAME, 5 * BS + 100, Buffer.alloc(300, 0x5a))
    await store.corrupt(env, RVM, NAME, 20 * BS + 8192, Buffer.alloc(4096, 0))
    const ranges = [{ offset: BS, length: BS }]
    const img2 = evolve(img1, 42, ranges)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const r2 = await runCycle(a, RVM, 2, [incPlan(0, NAME, img2, 1, cid(42), ranges, 'vm-r-000001.vmdk', 'vm-r-000002.vmdk')])
    t.equal(r2.committed?.cycle, 2, 'the incremental commits')
    t.same(await check(a, img2), { ok: false, mismatched: [5, 20] }, 'the check names exactly the changed blocks')
    a.close()
    // a diverged mirror takes no incremental
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    a.send(hello())
    await a.expect(MessageKind.Welcome)
    a.send(vmOpen(RVM, 3, ['vm-r-000002.vmdk']))
    const st = await a.expect(MessageKind.VmState)
    a.send(diskOpen(incPlan(0, NAME, img2, 2, cid(43), ranges, 'vm-r-000002.vmdk', 'vm-r-000003.vmdk'), 3, RVM, st.generation))
    const ds = await a.expect(MessageKind.DiskState)
    a.close()
    t.equal(ds.reason, 'E_DIVERGED', 'the next incremental is refused: the mirror is marked diverged')
    const r3 = await resyncCycle(env, url, 3, img2)
    t.same(r3.sent, [5, 20], 'the resync map differs in the changed blocks only, and only they are sent')
    t.ok((await store.readDisk(env, RVM, NAME)).equals(img2), 'after the resync the mirror equals the source')
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const ranges4 = [{ offset: 7 * BS, length: 4096 }]
    const img4 = evolve(img2, 44, ranges4)
    const plan4 = { ...incPlan(0, NAME, img4, 3, cid(44), ranges4, 'vm-r-000001.vmdk', 'vm-r-000004.vmdk') }
    const r4 = await runCycle(a, RVM, 4, [plan4])
    t.equal(r4.committed?.cycle, 4, 'incrementals go on after the resync')
    t.same(await check(a, img4), { ok: true, mismatched: [] }, 'and every block checks out')
    a.close()
  })
  t.test(`${store.kind}: a kept block map: a resync after a resync reads only the blocks written in between`, async (t) => {
    const env = makeEnv(dir())
    const { receiver, url, logs } = await startReceiver(env, store.init(env))
    t.teardown(() => receiver.close())
    /** the map figures of the last resync's DiskEnd (`disk sealed`): mirror bytes read, digests taken from the kept map */
    const sealed = (): { read: number; kept: number } => {
      const l = logs.lines.filter((x) => x['msg'] === 'disk sealed' && x['mapMirrorBytes'] !== undefined).at(-1)
      return { read: Number(l?.['mapMirrorBytes']), kept: Number(l?.['mapKeptBlocks']) }
    }
    // its own VM: the Ceph store's cases share one pool
    const KVM = 'vm-kept'
    const img1 = pattern(SIZE, 71)
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, KVM, 1, [seedPlan(0, NAME, img1, cid(71))])
    a.close()
    const r2 = await resyncCycle(env, url, 2, img1, KVM)
    t.same(r2.sent, [], 'a first resync of an equal mirror sends nothing')
    t.same(sealed(), { read: SIZE, kept: 0 }, 'and reads every block (no kept map yet)')
    // an incremental writes into block 7 only
    const ranges = [{ offset: 7 * BS + 512, length: 4096 }]
    const img3 = evolve(img1, 73, ranges)
    const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const r3 = await runCycle(b, KVM, 3, [incPlan(0, NAME, img3, 2, cid(73), ranges, 'vm-r-000001.vmdk', 'vm-r-000003.vmdk')])
    b.close()
    t.equal(r3.committed?.cycle, 3, 'the incremental commits')
    const r4 = await resyncCycle(env, url, 4, img3, KVM)
    t.same(r4.sent, [], 'the second resync sends nothing either')
    t.same(sealed(), { read: BS, kept: BLOCKS - 1 }, 'and reads only block 7 from the mirror: every other digest comes from the kept map')
    t.same(r4.map, mapOf(img3), "the map sent is the mirror's, block 7 included")
    t.ok((await store.readDisk(env, KVM, NAME)).equals(img3), 'the mirror holds cycle 3')
  })

  t.test(`${store.kind}: a re-seed keeps the restore points: each reads back, the old disk's data stays until the last point that reads it goes`, async (t) => {
    const env = makeEnv(dir())
    const { receiver, url } = await startReceiver(env, { ...store.init(env), retention: { keep: 10 } })
    t.teardown(() => receiver.close())
    const vm = 'vm-reseed'
    const images: Buffer[] = [Buffer.alloc(0), pattern(2 * MiB, 61)]
    let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(1, 'r.vmdk', images[1] as Buffer, cid(61))])
    a.close()
    for (let c = 2; c <= 3; c++) {
      const ranges = [{ offset: c * 131_072, length: 65_536 }]
      images[c] = evolve(images[c - 1] as Buffer, c + 60, ranges)
      a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      t.equal((await runCycle(a, vm, c, [incPlan(1, 'r.vmdk', images[c] as Buffer, c - 1, cid(60 + c), ranges, `r-00000${c - 1}.vmdk`, `r-00000${c}.vmdk`)])).committed?.cycle, c)
      a.close()
    }
    const before = await store.storage(env, vm)
    t.equal(before.length, 1, `one disk, one ${store.kind === 'ceph' ? 'image' : 'flat'}: ${before.join(', ')}`)
    // a new lineage of the disk (replaced on the host): the agent seeds it again
    images[4] = pattern(2 * MiB, 64)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const r = await runCycle(a, vm, 4, [seedPlan(1, 'r.vmdk', images[4] as Buffer, cid(164))])
    a.close()
    t.equal(r.committed?.cycle, 4, 're-seed committed')
    t.ok((await store.readDisk(env, vm, 'r.vmdk')).equals(images[4] as Buffer), 'the mirror holds the new seed')
    t.same(await store.points(env, vm), [1, 2, 3], 'no point dropped: the mirror as it was before the re-seed is point 3')
    for (const k of [1, 2, 3]) t.ok((await store.readPoint(env, vm, k, 'r.vmdk')).equals(images[k] as Buffer), `point ${k} reads back as cycle ${k}`)
    const ov = (await store.overview(env)).vms.find((v) => v.vm === vm)
    t.equal(ov?.pointsDropped, undefined, 'nothing recorded as dropped')
    t.equal(ov?.health.state, 'OK')
    t.equal((await store.storage(env, vm)).length, 2, 'the old disk data is kept for the points')
    t.same(await whenFree(() => store.prune(env, vm, { cycles: [1, 2] })), { vm, dropped: [1, 2], kept: [3] })
    t.ok((await store.readPoint(env, vm, 3, 'r.vmdk')).equals(images[3] as Buffer), 'point 3 still reads back')
    t.equal((await store.storage(env, vm)).length, 2, 'point 3 still reads the old data')
    t.same(await whenFree(() => store.prune(env, vm, { cycles: [3] })), { vm, dropped: [3], kept: [] })
    t.equal((await store.storage(env, vm)).length, 1, 'the last point that read the old data gone, it goes too')
    t.ok((await store.readDisk(env, vm, 'r.vmdk')).equals(images[4] as Buffer), 'the mirror is untouched')
    const ranges = [{ offset: 65_536, length: 65_536 }]
    images[5] = evolve(images[4] as Buffer, 65, ranges)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    t.equal((await runCycle(a, vm, 5, [incPlan(1, 'r.vmdk', images[5] as Buffer, 4, cid(165), ranges, 'r-000001.vmdk', 'r-000002.vmdk')])).committed?.cycle, 5, 'cycles go on')
    a.close()
    t.same(await store.points(env, vm), [4])
    t.ok((await store.readPoint(env, vm, 4, 'r.vmdk')).equals(images[4] as Buffer), 'point 4 reads back as the re-seed')
  })

  t.test(`${store.kind}: points turned off: the next commit drops them, recorded as chosen (no warning), told to a version 6 agent`, async (t) => {
    const env = makeEnv(dir())
    let rx = await startReceiver(env, { ...store.init(env), retention: { keep: 5 } })
    const vm = 'vm-off'
    const v6 = [6, 5, 4, 3, 2]
    const images: Buffer[] = [Buffer.alloc(0), pattern(2 * MiB, 71)]
    let a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
    t.same((await runCycle(a, vm, 1, [seedPlan(1, 'o.vmdk', images[1] as Buffer, cid(71))], { versions: v6 })).pointsDropped, [])
    a.close()
    const cycle = async (c: number) => {
      const ranges = [{ offset: c * 131_072, length: 65_536 }]
      images[c] = evolve(images[c - 1] as Buffer, c + 70, ranges)
      a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
      const r = await runCycle(a, vm, c, [incPlan(1, 'o.vmdk', images[c] as Buffer, c - 1, cid(70 + c), ranges, `o-00000${c - 1}.vmdk`, `o-00000${c}.vmdk`)], { versions: v6 })
      a.close()
      t.equal(r.committed?.cycle, c, `cycle ${c} committed`)
      return r
    }
    for (const c of [2, 3]) t.same((await cycle(c)).pointsDropped, [], `cycle ${c}: nothing dropped, nothing told`)
    t.same(await store.points(env, vm), [1, 2])
    await rx.receiver.close()
    rx = await startReceiver(env, store.init(env))
    t.teardown(() => rx.receiver.close())
    const r = await cycle(4)
    t.match(r.pointsDropped, [{ vm, cycle: 4, count: 2, oldest: 1, newest: 2, broken: false, reason: /keeps no restore points any more/ }], 'told before the Committed')
    t.same(await store.points(env, vm), [])
    t.ok((await store.readDisk(env, vm, 'o.vmdk')).equals(images[4] as Buffer), 'the mirror holds cycle 4')
    const ov = (await store.overview(env)).vms.find((v) => v.vm === vm)
    t.match(ov?.pointsDropped, { cycle: 4, cycles: [1, 2], broken: false })
    t.equal(ov?.health.state, 'OK', "the operator's choice: no warning")
    t.same((await cycle(5)).pointsDropped, [], 'the next commit tells nothing again')
  })

  t.test(`${store.kind}: points drop and prune remove exactly those points; the mirror is never dropped; cycles go on`, async (t) => {
    const env = makeEnv(dir())
    const { receiver, url } = await startReceiver(env, { ...store.init(env), retention: { keep: 10 } })
    t.teardown(() => receiver.close())
    const vm = 'vm-prune'
    const images: Buffer[] = [Buffer.alloc(0), pattern(2 * MiB, 51)]
    const cycle = async (c: number): Promise<void> => {
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      if (c === 1) await runCycle(a, vm, 1, [seedPlan(1, 'p.vmdk', images[1] as Buffer, cid(51))])
      else {
        const ranges = [{ offset: (c * 131_072) % (2 * MiB - 65_536), length: 65_536 }]
        images[c] = evolve(images[c - 1] as Buffer, c * 3, ranges)
        const r = await runCycle(a, vm, c, [incPlan(1, 'p.vmdk', images[c] as Buffer, c - 1, cid(50 + c), ranges, `p-00000${c - 1}.vmdk`, `p-00000${c}.vmdk`)])
        t.equal(r.committed?.cycle, c, `cycle ${c} committed`)
      }
      a.close()
    }
    for (let c = 1; c <= 5; c++) await cycle(c)
    t.same(await store.points(env, vm), [1, 2, 3, 4], 'points 1-4 and the mirror at 5')
    t.same(await whenFree(() => store.prune(env, vm, { cycles: [3] })), { vm, dropped: [3], kept: [1, 2, 4] }, 'drop 3')
    t.same(await store.points(env, vm), [1, 2, 4])
    for (const k of [1, 2, 4]) t.ok((await store.readPoint(env, vm, k, 'p.vmdk')).equals(images[k] as Buffer), `after the drop: point ${k} reads back as cycle ${k}`)
    await t.rejects(
      whenFree(() => store.prune(env, vm, { cycles: [3] })),
      { code: 'E_NOT_FOUND' },
      'a point dropped already',
    )
    await t.rejects(
      whenFree(() => store.prune(env, vm, { cycles: [5] })),
      { code: 'E_NOT_FOUND' },
      'the mirror (the resync base) is not a point: never dropped',
    )
    t.same(await whenFree(() => store.prune(env, vm, { keep: 1 })), { vm, dropped: [1, 2], kept: [4] }, 'prune --keep 1')
    t.same(await whenFree(() => store.prune(env, vm, { keep: 1 })), { vm, dropped: [], kept: [4] }, 'a prune with nothing to drop')
    t.ok((await store.readPoint(env, vm, 4, 'p.vmdk')).equals(images[4] as Buffer), 'point 4 still reads back')
    t.ok((await store.readDisk(env, vm, 'p.vmdk')).equals(images[5] as Buffer), 'the mirror is untouched')
    await cycle(6)
    t.same(await store.points(env, vm), [4, 5], 'the next cycle adds its point after a prune')
    t.ok((await store.readDisk(env, vm, 'p.vmdk')).equals(images[6] as Buffer), 'and the mirror holds cycle 6')
    await t.rejects(store.prune(env, 'vm-none', { cycles: [1] }), { code: 'E_NOT_FOUND' }, 'a VM the store does not hold')
  })

  t.test(`${store.kind}: a failover holds the mirror: the next cycle is refused E_HELD, so is a prune, until points close`, async (t) => {
    const env = makeEnv(dir())
    const { receiver, url } = await startReceiver(env, { ...store.init(env), retention: { keep: 5 } })
    t.teardown(() => receiver.close())
    const vm = 'vm-failover'
    const img1 = pattern(2 * MiB, 61)
    let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(1, 'f.vmdk', img1, cid(61))])
    a.close()
    const r2 = [{ offset: 65_536, length: 131_072 }]
    const img2 = evolve(img1, 62, r2)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 2, [incPlan(1, 'f.vmdk', img2, 1, cid(62), r2, 'f-000001.vmdk', 'f-000002.vmdk')])
    a.close()
    const fo = join(env.dir, 'failover-2')
    const files = await whenFree(() => store.failover(env, vm, 2, fo))
    t.ok((await qemuReads(files['f.vmdk'] as string, join(env.dir, 'fo.raw'))).equals(img2), 'QEMU reads the failed-over disk as the mirror (cycle 2)')
    const r3 = [{ offset: 0, length: 65_536 }]
    const img3 = evolve(img2, 63, r3)
    const plan3 = incPlan(1, 'f.vmdk', img3, 2, cid(63), r3, 'f-000002.vmdk', 'f-000003.vmdk')
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const refused = await runCycle(a, vm, 3, [plan3]).catch((e: unknown) => e as { reason?: string })
    a.close()
    t.equal((refused as { reason?: string }).reason, 'E_HELD', 'the next cycle is refused: the VM is failed over')
    await t.rejects(
      whenFree(() => store.prune(env, vm, { cycles: [1] })),
      { code: 'E_HELD' },
      'no drop while held',
    )
    t.same(await store.points(env, vm), [1], 'point 1 is still there')
    await t.rejects(
      whenFree(() => store.close(env, vm, fo)),
      { code: 'E_HELD', message: /failover folder/ },
      'a failover hold is not closed without --failover',
    )
    t.equal(await whenFree(() => store.close(env, vm, fo, true)), 1, 'points close --failover releases the hold')
    await t.rejects(
      whenFree(() => store.close(env, vm, fo, true)),
      { code: 'E_NOT_FOUND' },
      'no hold left to close',
    )
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const ok = await runCycle(a, vm, 3, [plan3])
    a.close()
    t.equal(ok.committed?.cycle, 3, 'released: the cycle goes through')
    t.ok((await store.readDisk(env, vm, 'f.vmdk')).equals(img3), 'the mirror holds cycle 3')
  })
}
