import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { execFileSync } from 'node:child_process'
import { readFileSync, statSync, writeFileSync, existsSync } from 'node:fs'
import { join } from 'node:path'
import { MessageKind } from '@grainline/protocol'
import { storeStatus } from '../src/index.ts'
import { Agent, MiB, TOKEN, diskEnd, diskOpen, extentMessage, evolve, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen } from './helpers.ts'

t.test('seed then incremental cycles produce the exact images, bootable descriptors, mirror .vmx', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const cap = 6 * MiB
  // image with a zero hole in the middle
  const img1 = Buffer.concat([pattern(2 * MiB, 1), Buffer.alloc(2 * MiB), pattern(2 * MiB, 2)])
  const a1 = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const r1 = await runCycle(a1, 'web-01', 1, [seedPlan(0, 'web-01.vmdk', img1, 'aa01aa01aa01aa01')], { compression: 'lz4' })
  a1.close()
  t.equal(r1.committed?.cycle, 1)
  const flat = join(env.store, 'web-01', 'web-01-flat.vmdk')
  t.ok(readFileSync(flat).equals(img1), 'seed flat == image')
  t.equal(statSync(flat).size, cap)
  t.ok(statSync(flat).blocks * 512 < cap, 'zero range left as a hole (sparse)')
  const desc = readFileSync(join(env.store, 'web-01', 'web-01.vmdk'), 'utf8')
  t.match(desc, /createType="vmfs"/)
  t.match(desc, new RegExp(`CID=${r1.committed?.disks[0]?.mirrorCid ?? 'x'}`))
  t.match(desc, /ddb.adapterType = "lsilogic"/)
  const raw1 = join(env.dir, 'img1.raw')
  writeFileSync(raw1, img1)
  execFileSync('qemu-img', ['compare', '-f', 'vmdk', '-F', 'raw', join(env.store, 'web-01', 'web-01.vmdk'), raw1])
  const vmx = readFileSync(join(env.store, 'web-01', 'web-01.vmx'), 'utf8')
  t.match(vmx, /displayName = "web-01 \(grainline mirror\)"/)
  t.match(vmx, /scsi0:0.fileName = "web-01.vmdk"/)
  t.ok(existsSync(join(env.store, 'web-01', 'web-01.nvram')))

  // incremental: change 3 ranges incl. a zeroed one and growth-free
  const ranges = [
    { offset: 512 * 1024, length: 1536 * 1024 },
    { offset: 3 * MiB, length: 64 * 1024 },
    { offset: 5 * MiB, length: MiB, zero: true },
  ]
  const img2 = evolve(img1, 9, ranges)
  // the VM's files come again unchanged: neither staged nor installed again (the same inodes after the next commit)
  const inodes = (): number[] =>
    [join(env.store, 'web-01', 'web-01.vmx'), join(env.store, 'web-01', 'web-01.nvram'), join(env.store, 'web-01', '.grainline', 'incoming', 'web-01.nvram')].map((p) => statSync(p).ino)
  const before = inodes()
  const a2 = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const r2 = await runCycle(a2, 'web-01', 2, [incPlan(0, 'web-01.vmdk', img2, 1, 'bb02bb02bb02bb02', ranges, 'web-01-000001.vmdk', 'web-01-000002.vmdk')], { alg: 'xxh64', compression: 'deflate' })
  t.equal(r2.committed?.cycle, 2)
  t.not(r2.committed?.disks[0]?.mirrorCid, r1.committed?.disks[0]?.mirrorCid, 'new CID per commit')
  t.ok(readFileSync(flat).equals(img2), 'incremental flat == image 2')
  t.same(inodes(), before, 'unchanged .vmx and nvram neither staged nor installed again')
  // trivial check + certify
  const { createDigest } = await import('@grainline/protocol')
  const prefix = createDigest('sha256').update(img2.subarray(0, MiB)).digest()
  a2.send({ kind: MessageKind.TrivialCheck, disk: 0, prefixBytes: MiB, algorithm: 'sha256', size: cap, digest: prefix })
  const tr = await a2.expect(MessageKind.TrivialResult)
  t.equal(tr.ok, true)
  t.equal(tr.size, cap)
  a2.send({ kind: MessageKind.Certify, disk: 0, algorithm: 'md5', digest: createDigest('md5').update(img2).digest() })
  const cr = await a2.expect(MessageKind.CertifyResult)
  t.equal(cr.ok, true)
  t.equal(cr.bytes, cap)
  a2.send({ kind: MessageKind.Certify, disk: 0, algorithm: 'sha1', digest: createDigest('sha1').update(img1).digest() })
  t.equal((await a2.expect(MessageKind.CertifyResult)).ok, false, 'certify against the old image fails')
  a2.close()
  await a2.whenClosed()

  // an incremental that does not follow the recorded successor is refused
  const a3 = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await t.rejects(runCycle(a3, 'web-01', 3, [incPlan(0, 'web-01.vmdk', img2, 2, 'cc03cc03cc03cc03', ranges, 'web-01-000099.vmdk', 'x.vmdk')]), { message: /E_CHAIN_MISMATCH/ })
  a3.close()
  await a3.whenClosed()

  const st = await storeStatus(env.store)
  t.equal(st.vms.length, 1)
  t.equal(st.vms[0]?.committedCycle, 2)
  t.equal(st.vms[0]?.disks[0]?.trivial?.ok, true)
  t.equal(st.vms[0]?.disks[0]?.certify?.ok, false)
  t.equal(st.vms[0]?.needsRecovery, false)
  t.notOk(logs.text().includes(TOKEN), 'token never logged')

  // someone boots the mirror: its descriptor CID changes → modified, incremental refused
  const dpath = join(env.store, 'web-01', 'web-01.vmdk')
  writeFileSync(dpath, readFileSync(dpath, 'utf8').replace(/CID=[0-9a-f]{8}/, 'CID=12345678'))
  const a4 = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const err = await runCycle(a4, 'web-01', 3, [incPlan(0, 'web-01.vmdk', img2, 2, 'dd03dd03dd03dd03', ranges, 'web-01-000002.vmdk', 'web-01-000003.vmdk')]).catch(
    (e: { reason: string; state: { modified: boolean } }) => e,
  )
  t.match(err, { reason: 'E_MIRROR_MODIFIED', state: { modified: true } })
  // and a re-seed over it works, on the same connection under a new handle (the refused one is spent, SPEC §8.2)
  const img3 = pattern(cap, 33)
  const sp = seedPlan(1, 'web-01.vmdk', img3, 'ee03'.repeat(4))
  a4.send(diskOpen(sp, 3, 'web-01'))
  const ds = await a4.expect(MessageKind.DiskState)
  t.equal(ds.accepted, true, 'seed accepted after the refused incremental')
  for (let seq = 0; seq < sp.extents.length; seq++) a4.send(extentMessage(sp, seq, 'sha256'))
  a4.send(diskEnd(sp, 'sha256'))
  for (;;) {
    const m = await a4.next()
    if (m?.kind === MessageKind.DiskEnded) break
    if (m?.kind !== MessageKind.ExtentAck) throw new Error(`unexpected ${String(m?.kind)}`)
  }
  a4.send({ kind: MessageKind.Commit, vm: 'web-01', cycle: 3, retention: null })
  t.equal((await a4.expect(MessageKind.Committed)).cycle, 3)
  a4.close()
  t.ok(readFileSync(flat).equals(img3), 'reseed flat == image 3')
  t.equal((await storeStatus(env.store)).vms[0]?.disks[0]?.modified, false)
})

t.test('many agents and disks at once', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { batchBytes: 256 * 1024 })
  t.teardown(() => receiver.close())
  const vms = ['web-a', 'web-b', 'web-c', 'web-d', 'web-e', 'web-f']
  const images = vms.map((_, i) => [pattern(2 * MiB, 100 + i), Buffer.concat([Buffer.alloc(MiB), pattern(MiB, 200 + i)])] as const)
  await Promise.all(
    vms.map(async (vm, i) => {
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      const [d0, d1] = images[i] as readonly [Buffer, Buffer]
      const r = await runCycle(a, vm, 1, [seedPlan(0, `${vm}.vmdk`, d0, `a${i}`.repeat(8), 128 * 1024), seedPlan(1, `${vm}_1.vmdk`, d1, `b${i}`.repeat(8), 128 * 1024)])
      a.close()
      t.equal(r.committed?.disks.length, 2, `${vm} committed both disks`)
    }),
  )
  vms.forEach((vm, i) => {
    const [d0, d1] = images[i] as readonly [Buffer, Buffer]
    t.ok(readFileSync(join(env.store, vm, `${vm}-flat.vmdk`)).equals(d0), `${vm} disk 0`)
    t.ok(readFileSync(join(env.store, vm, `${vm}_1-flat.vmdk`)).equals(d1), `${vm} disk 1`)
  })
  const st = await storeStatus(env.store)
  t.same(
    st.vms.map((v) => [v.vm, v.committedCycle, v.disks.length]),
    vms.map((vm) => [vm, 1, 2]),
  )
})

/*
 * Only the cycle after the committed one is applied (SPEC §5.1): a seed
 * committed at cycle 2^53 − 1, the largest the schema allows, left the VM no
 * next cycle — only `mirror remove`, losing its points, got it replicating
 * again. A VmOpen of any cycle stays legal: the agent opens the cycle its
 * record proposes to learn the mirror's, and (v7) reopens a committed one.
 */
t.test('a DiskOpen of a cycle other than the committed one + 1 is refused (E_CYCLE_MISMATCH); the VmOpen of it is not', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const img = pattern(MiB, 41)
  const attempt = async (cycle: number, plan: Parameters<typeof diskOpen>[0]): Promise<{ committedCycle: number; reason: string }> => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    a.send(hello())
    await a.expect(MessageKind.Welcome)
    a.send(vmOpen('web-07', cycle, ['web-07-000001.vmdk']))
    const st = await a.expect(MessageKind.VmState)
    a.send(diskOpen(plan, cycle, 'web-07', st.generation))
    const ds = await a.expect(MessageKind.DiskState)
    a.close()
    await a.whenClosed()
    return { committedCycle: st.committedCycle, reason: ds.reason }
  }
  const last = Number.MAX_SAFE_INTEGER
  t.same(await attempt(last, seedPlan(0, 'web-07.vmdk', img, 'aa07'.repeat(4))), { committedCycle: 0, reason: 'E_CYCLE_MISMATCH' }, 'a first seed at cycle 2^53 − 1')
  t.same(await attempt(2, seedPlan(0, 'web-07.vmdk', img, 'ab07'.repeat(4))), { committedCycle: 0, reason: 'E_CYCLE_MISMATCH' }, 'a first seed at cycle 2')
  const a1 = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  t.equal((await runCycle(a1, 'web-07', 1, [seedPlan(0, 'web-07.vmdk', img, 'ac07'.repeat(4))])).committed?.cycle, 1, 'cycle 1 is seeded')
  a1.close()
  await a1.whenClosed()
  const ranges = [{ offset: 0, length: 65_536 }]
  const img2 = evolve(img, 42, ranges)
  t.same(
    await attempt(last, incPlan(0, 'web-07.vmdk', img2, 1, 'ad07'.repeat(4), ranges, 'web-07-000001.vmdk', 'web-07-000002.vmdk')),
    { committedCycle: 1, reason: 'E_CYCLE_MISMATCH' },
    'an incremental at cycle 2^53 − 1',
  )
  t.same(await attempt(last, seedPlan(0, 'web-07.vmdk', img2, 'ae07'.repeat(4))), { committedCycle: 1, reason: 'E_CYCLE_MISMATCH' }, 'a re-seed at cycle 2^53 − 1')
  t.same(await attempt(1, seedPlan(0, 'web-07.vmdk', img2, 'af07'.repeat(4))), { committedCycle: 1, reason: 'E_CYCLE_MISMATCH' }, 'the committed cycle again')
  const a2 = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const r2 = await runCycle(a2, 'web-07', 2, [incPlan(0, 'web-07.vmdk', img2, 1, 'b007'.repeat(4), ranges, 'web-07-000001.vmdk', 'web-07-000002.vmdk')])
  a2.close()
  t.equal(r2.committed?.cycle, 2, 'the next cycle still replicates')
  t.ok(readFileSync(join(env.store, 'web-07', 'web-07-flat.vmdk')).equals(img2))
})
