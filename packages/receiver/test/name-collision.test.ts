import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { MessageKind } from '@grainline/protocol'
import { Agent, MiB, TOKEN, diskOpen, hello, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen } from './helpers.ts'

/*
 * Disk names whose file stems collide ignoring case (`a.vmdk`, `a.VMDK`, `a`)
 * would share one flat, seed and journal file: the receiver refuses the
 * second with E_BAD_NAME (fatal, close 4400), the mirror untouched.
 */

t.test('disk names whose file stems collide are refused with E_BAD_NAME', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const img = pattern(MiB, 9)
  const a0 = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a0, 'vm-n', 1, [seedPlan(0, 'a.vmdk', img, '01'.repeat(8))])
  a0.close()
  await a0.whenClosed()
  const flat = join(env.store, 'vm-n', 'a-flat.vmdk')
  const snapshot = (): string => JSON.stringify(readdirSync(join(env.store, 'vm-n')).sort()) + readFileSync(flat).toString('base64')
  const before = snapshot()

  for (const name of ['a.VMDK', 'a', 'A.vmdk', 'A.Vmdk']) {
    await t.test(`${name} against committed a.vmdk`, async (t) => {
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      a.send(hello())
      await a.expect(MessageKind.Welcome)
      a.send(vmOpen('vm-n', 2, []))
      await a.expect(MessageKind.VmState)
      a.send(diskOpen(seedPlan(0, name, pattern(MiB, 10), '02'.repeat(8)), 2, 'vm-n'))
      t.same(await a.expectError(), { code: 'E_BAD_NAME', closeCode: 4400 })
      t.equal(snapshot(), before, 'committed mirror untouched')
    })
  }

  await t.test('against a disk open in the same session, then in flight from an earlier one', async (t) => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    a.send(hello())
    await a.expect(MessageKind.Welcome)
    a.send(vmOpen('vm-n', 2, []))
    await a.expect(MessageKind.VmState)
    a.send(diskOpen(seedPlan(0, 'b.vmdk', pattern(MiB, 11), '03'.repeat(8)), 2, 'vm-n'))
    t.equal((await a.expect(MessageKind.DiskState)).accepted, true)
    a.send(diskOpen(seedPlan(1, 'B.vmdk', pattern(MiB, 12), '04'.repeat(8)), 2, 'vm-n'))
    t.same(await a.expectError(), { code: 'E_BAD_NAME', closeCode: 4400 })
    const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    b.send(hello())
    await b.expect(MessageKind.Welcome)
    b.send(vmOpen('vm-n', 2, []))
    t.equal((await b.expect(MessageKind.VmState)).inflightCycle, 2, 'b.vmdk is in flight')
    b.send(diskOpen(seedPlan(0, 'b', pattern(MiB, 12), '04'.repeat(8)), 2, 'vm-n'))
    t.same(await b.expectError(), { code: 'E_BAD_NAME', closeCode: 4400 })
  })

  // a disk's generated files (descriptor, flat, seed, journals) must not be another disk's (before: only equal stems were refused)
  for (const name of ['a-flat', 'A-Flat']) {
    await t.test(`${name} against committed a.vmdk (its descriptor would be a.vmdk's flat)`, async (t) => {
      const now = snapshot()
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      a.send(hello())
      await a.expect(MessageKind.Welcome)
      a.send(vmOpen('vm-n', 2, []))
      await a.expect(MessageKind.VmState)
      a.send(diskOpen(seedPlan(0, name, pattern(MiB, 10), '06'.repeat(8)), 2, 'vm-n'))
      t.same(await a.expectError(), { code: 'E_BAD_NAME', closeCode: 4400 })
      t.equal(snapshot(), now, 'committed mirror untouched')
    })
  }

  await t.test('the other way round: a.vmdk against committed a-flat', async (t) => {
    const a0 = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a0, 'vm-n2', 1, [seedPlan(0, 'c-flat', pattern(MiB, 14), '07'.repeat(8))])
    a0.close()
    await a0.whenClosed()
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    a.send(hello())
    await a.expect(MessageKind.Welcome)
    a.send(vmOpen('vm-n2', 2, []))
    await a.expect(MessageKind.VmState)
    a.send(diskOpen(seedPlan(0, 'c.vmdk', pattern(MiB, 15), '08'.repeat(8)), 2, 'vm-n2'))
    t.same(await a.expectError(), { code: 'E_BAD_NAME', closeCode: 4400 })
    t.ok(readFileSync(join(env.store, 'vm-n2', 'c-flat.vmdk'), 'latin1').includes('createType="vmfs"'), "c-flat's descriptor is intact")
  })

  await t.test('the same name still works (a resume, another cycle)', async (t) => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const img2 = pattern(MiB, 13)
    const r = await runCycle(a, 'vm-n', 2, [seedPlan(0, 'a.vmdk', img2, '05'.repeat(8)), seedPlan(1, 'b.vmdk', pattern(MiB, 11), '03'.repeat(8))])
    a.close()
    t.equal(r.committed?.cycle, 2)
    t.ok(readFileSync(flat).equals(img2))
    t.ok(readFileSync(join(env.store, 'vm-n', 'b-flat.vmdk')).equals(pattern(MiB, 11)))
  })
})
