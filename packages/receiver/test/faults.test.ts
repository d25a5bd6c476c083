import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, statfsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MessageKind } from '@grainline/protocol'
import { storeStatus } from '../src/index.ts'
import { Agent, MiB, TOKEN, diskEnd, diskOpen, evolve, extentMessage, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen } from './helpers.ts'

// A small tmpfs as the store (the tests run as root here and in CI).
t.test('disk full, read-only store, vanished folder: typed error, mirror at its committed point, others served', async (t) => {
  const env = makeEnv(scratchDir(t))
  // outside the tap fixture dir, so that its clean-up never meets a mount point
  const mnt = mkdtempSync(join(tmpdir(), 'grainline-rx-small-'))
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt])
  const store = join(mnt, 'store')
  mkdirSync(store)
  const { receiver, url } = await startReceiver({ ...env, store }, { batchBytes: 256 * 1024 })
  t.teardown(async () => {
    await receiver.close()
    execFileSync('umount', [mnt])
    rmSync(mnt, { recursive: true, force: true })
  })
  const imgA = pattern(2 * MiB, 1)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'vm1', 1, [seedPlan(0, 'vm1.vmdk', imgA, '01'.repeat(8))])
  a.close()
  const flat = join(store, 'vm1', 'vm1-flat.vmdk')

  await t.test('a seed larger than the free space: E_NO_SPACE at DiskOpen, nothing written', async (t) => {
    const big = pattern(8 * MiB, 2)
    const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(b, 'vm2', 1, [seedPlan(0, 'vm2.vmdk', big, '02'.repeat(8))]).catch(() => {})
    const e = await b.expectError().catch(() => ({ code: '?', closeCode: 0 }))
    t.same(e, { code: 'E_NO_SPACE', closeCode: 4507 })
    const st = (await storeStatus(store)).vms.find((v) => v.vm === 'vm2')
    t.equal(st?.committedCycle ?? 0, 0)
    t.equal(st?.inflightCycle ?? 0, 0, 'nothing in flight')
    t.notOk(existsSync(join(store, 'vm2', 'vm2-flat.vmdk.seed')), 'no seed file')
    t.ok(readFileSync(flat).equals(imgA))
  })

  await t.test('a seed that runs out of space while writing: E_NO_SPACE, seed discarded', async (t) => {
    const img = pattern(2 * MiB, 2)
    const d = seedPlan(0, 'vm2.vmdk', img, '02'.repeat(8))
    const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    b.send(hello())
    await b.expect(MessageKind.Welcome)
    b.send(vmOpen('vm2', 1, ['vm2.vmdk']))
    await b.expect(MessageKind.VmState)
    b.send(diskOpen(d, 1, 'vm2'))
    t.equal((await b.expect(MessageKind.DiskState)).accepted, true, 'it fits when opened')
    // then the disk fills up
    const filler = join(mnt, 'filler')
    writeFileSync(filler, Buffer.alloc(Math.max(0, statfsSync(mnt).bavail * statfsSync(mnt).bsize - 64 * 1024), 1))
    for (let seq = 0; seq < d.extents.length; seq++) b.send(extentMessage(d, seq, 'sha256'))
    const e = await b.expectError().catch(() => ({ code: '?', closeCode: 0 }))
    rmSync(filler)
    t.same(e, { code: 'E_NO_SPACE', closeCode: 4507 })
    const st = (await storeStatus(store)).vms.find((v) => v.vm === 'vm2')
    t.equal(st?.committedCycle, 0)
    t.equal(st?.inflightCycle, 0, 'rolled back automatically')
    t.notOk(existsSync(join(store, 'vm2', 'vm2-flat.vmdk.seed')), 'seed file discarded')
    t.ok(readFileSync(flat).equals(imgA))
  })

  await t.test('an incremental whose journal does not fit: E_NO_SPACE before any in-place write', async (t) => {
    const free = statfsSync(mnt).bavail * statfsSync(mnt).bsize
    const filler = join(mnt, 'filler')
    writeFileSync(filler, Buffer.alloc(Math.max(0, free - 1024 * 1024), 1))
    const ranges = [{ offset: 0, length: 2 * MiB }]
    const imgB = evolve(imgA, 3, ranges)
    const plan = () => incPlan(0, 'vm1.vmdk', imgB, 1, '03'.repeat(8), ranges, 'vm1-000001.vmdk', 'vm1-000002.vmdk')
    const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(b, 'vm1', 2, [plan()]).catch(() => {})
    const e = await b.expectError().catch(() => ({ code: '?', closeCode: 0 }))
    t.same(e, { code: 'E_NO_SPACE', closeCode: 4507 })
    t.ok(readFileSync(flat).equals(imgA), 'mirror at its committed point')
    rmSync(filler)
    // the same cycle again, as an agent retries it: resumed or restarted, never half-applied
    const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(c, 'vm1', 2, [plan()])
    c.close()
    t.ok(readFileSync(flat).equals(imgB), 'after space is freed the cycle completes, byte for byte')
  })

  await t.test('disk full after some batches: undone at once, the retried cycle is exact', async (t) => {
    const ranges = [{ offset: 0, length: 2 * MiB }]
    const imgC = evolve(readFileSync(flat), 4, ranges)
    const base = readFileSync(flat)
    const plan = () => incPlan(0, 'vm1.vmdk', imgC, 2, '07'.repeat(8), ranges, 'vm1-000002.vmdk', 'vm1-000003.vmdk', 256 * 1024)
    // no spare journal to overwrite: the journal must grow into the little space left
    rmSync(join(store, 'vm1', '.grainline', 'vm1.journal.spare'), { force: true })
    const free = statfsSync(mnt).bavail * statfsSync(mnt).bsize
    const filler = join(mnt, 'filler')
    // room for about one MiB of journal: the first batches apply, a later one fails
    writeFileSync(filler, Buffer.alloc(Math.max(0, free - 1200 * 1024), 1))
    const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(b, 'vm1', 3, [plan()]).catch(() => {})
    const e = await b.expectError().catch(() => ({ code: '?', closeCode: 0 }))
    t.same(e, { code: 'E_NO_SPACE', closeCode: 4507 })
    t.ok(readFileSync(flat).equals(base), 'flat undone to the committed image even though the disk is full')
    rmSync(filler)
    const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const r = await runCycle(c, 'vm1', 3, [plan()])
    c.close()
    t.ok(readFileSync(flat).equals(imgC), `retried cycle exact (resumed at ${String(r.resume[0])})`)
  })

  await t.test('read-only store: E_IO, nothing changes', async (t) => {
    execFileSync('mount', ['-o', 'remount,ro', mnt])
    const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    b.send(hello())
    await b.expect(MessageKind.Welcome)
    b.send(vmOpen('vm1', 3, ['vm1-000002.vmdk']))
    const e = await b.expectError()
    execFileSync('mount', ['-o', 'remount,rw', mnt])
    t.same(e, { code: 'E_IO', closeCode: 4500 })
  })

  await t.test('vanished VM folder during a cycle: E_IO; other VMs still served', async (t) => {
    const img3 = pattern(MiB, 9)
    const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const d = seedPlan(0, 'vm3.vmdk', img3, '04'.repeat(8))
    b.send(hello())
    await b.expect(MessageKind.Welcome)
    b.send(vmOpen('vm3', 1, ['vm3.vmdk']))
    await b.expect(MessageKind.VmState)
    b.send(diskOpen(d, 1, 'vm3'))
    await b.expect(MessageKind.DiskState)
    rmSync(join(store, 'vm3'), { recursive: true, force: true })
    b.send(extentMessage(d, 0, 'sha256'))
    await b.expect(MessageKind.ExtentAck)
    b.send(diskEnd(d, 'sha256'))
    await b.expect(MessageKind.DiskEnded)
    b.send({ kind: MessageKind.Commit, vm: 'vm3', cycle: 1, retention: null })
    const e = await b.expectError()
    t.same(e, { code: 'E_IO', closeCode: 4500 }, 'commit into a vanished folder fails with E_IO')
    const f = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const okRun = await runCycle(f, 'vm5', 1, [seedPlan(0, 'vm5.vmdk', img3, '06'.repeat(8))])
    t.equal(okRun.committed?.cycle, 1, 'another VM is served')
    f.close()
    t.ok(readFileSync(flat).length === 2 * MiB)
  })
})
