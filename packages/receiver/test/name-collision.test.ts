import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { MessageKind, type VmOpenMessage } from '@grainline/protocol'
import { VmMirror } from '../src/vm-mirror.ts'
import { readVmState } from '../src/state-file.ts'
import { VmPaths, diskStem } from '../src/vm-paths.ts'
import { MAX_FILE_NAME_BYTES, MAX_VM_NAME_BYTES, checkFileName, checkVmNameFits } from '../src/receiver-rules.ts'
import { Agent, MiB, TEST_COMPAT, TEST_SOURCE, TOKEN, VMX, diskOpen, hello, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen } from './helpers.ts'

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

/*
 * A disk name of up to 255 bytes passes the wire's rule (SPEC §4.1), but the
 * receiver derives longer file names from it (`<stem>-flat.vmdk.seed`, the
 * point files `<stem>.p<cycle>-sesparse.vmdk`, temporary names): one that does
 * not fit in a file name is refused at DiskOpen (E_BAD_NAME) before anything
 * is written. Before, the seed file's creation failed with ENAMETOOLONG after
 * the journal and the state named the disk, and every rollback failed on the
 * same unlink: the VM could never replicate again.
 */
t.test('a disk name whose derived file names do not fit is refused with E_BAD_NAME before anything is written', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  // a file name's bytes; the longest derived: `<stem>.p<2^53 − 1>.vmdk.tmp-<pid>-<8 hex>` (a point descriptor being replaced), 47 bytes more than the stem
  const NAME_MAX = 255
  const fits = `${'b'.repeat(NAME_MAX - 47)}.vmdk`
  for (const name of [`${'a'.repeat(241)}.vmdk`, `${'a'.repeat(NAME_MAX - 46)}.vmdk`, 'é'.repeat(105)]) {
    await t.test(`${Buffer.byteLength(name)} bytes: ${name.slice(0, 12)}…`, async (t) => {
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      a.send(hello())
      await a.expect(MessageKind.Welcome)
      a.send(vmOpen('vm-long', 1, [name]))
      await a.expect(MessageKind.VmState)
      a.send(diskOpen(seedPlan(0, name, pattern(MiB, 21), '09'.repeat(8)), 1, 'vm-long'))
      t.same(await a.expectError(), { code: 'E_BAD_NAME', closeCode: 4400 })
      await a.whenClosed()
      t.equal((await readVmState(new VmPaths(env.store, 'vm-long')))?.inflight ?? null, null, 'no cycle in flight')
      t.same(
        readdirSync(join(env.store, 'vm-long', '.grainline')).filter((f) => f.includes('journal')),
        [],
        'no journal',
      )
    })
  }
  await t.test(`the longest that fits (${Buffer.byteLength(fits)} bytes) is seeded and committed`, async (t) => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const img = pattern(MiB, 22)
    const r = await runCycle(a, 'vm-long', 1, [seedPlan(0, fits, img, '0a'.repeat(8))])
    a.close()
    t.equal(r.committed?.cycle, 1)
    t.ok(readFileSync(join(env.store, 'vm-long', `${diskStem(fits)}-flat.vmdk`)).equals(img))
  })
})

/*
 * A VM name of up to 255 bytes passes the wire's rule (SPEC §4.1), but the
 * receiver writes the mirror's .vmx at commit as `<vm>.vmx.tmp-<pid>-<8 hex>`,
 * 28 bytes longer: a name above 227 bytes is refused at VmOpen (E_BAD_NAME)
 * before anything is written. Before, the VM's folder and state were made,
 * the disks seeded, and every commit failed on the .vmx's temporary name.
 * A configuration file's name is staged and installed the same way: above
 * 231 bytes, refused at VmOpen too.
 */
t.test('a VM name (or a file name) whose derived file names do not fit is refused at VmOpen with E_BAD_NAME before anything is written', async (t) => {
  t.equal(MAX_VM_NAME_BYTES, 227, 'the limit: 255 less ".vmx.tmp-<10 digits>-<8 hex>"')
  t.equal(MAX_FILE_NAME_BYTES, 231, 'a file: 255 less ".tmp-<10 digits>-<8 hex>"')
  t.throws(() => checkVmNameFits('v'.repeat(228)), {
    code: 'E_BAD_NAME',
    message: /VM name "v{48}…" is 228 bytes: .*\.vmx\.tmp-<pid>-<8 hex>.*above the 255 bytes of a file name: rename the VM on the source to at most 227 bytes \(UTF-8\); nothing was written/,
  })
  t.throws(() => checkFileName(`${'f'.repeat(228)}.vmx`, 'web'), { code: 'E_BAD_NAME', message: /file "f{48}…" of VM "web" is 232 bytes: .*at most 231 bytes/ })
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  for (const [vm, files] of [
    // the token covers `vm*`
    [`vm${'v'.repeat(226)}`, undefined],
    [`vm${'é'.repeat(113)}`, undefined],
    ['vm-file', [{ name: `${'n'.repeat(226)}.nvram`, data: Buffer.from('nvram') }]],
  ] as const) {
    await t.test(`${Buffer.byteLength(vm)} bytes: ${vm.slice(0, 12)}…${files === undefined ? '' : ' with a file name of 232 bytes'}`, async (t) => {
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      a.send(hello())
      await a.expect(MessageKind.Welcome)
      const open = vmOpen(vm, 1, ['d.vmdk']) as VmOpenMessage
      // files of short names (the source's own): only the VM name, or the long file added, is at fault
      const own = [
        { name: 'v.vmx', data: Buffer.from(VMX(vm, ['d.vmdk'])) },
        { name: 'v.nvram', data: pattern(8192, 7) },
      ]
      a.send({ ...open, files: [...own, ...(files ?? [])] })
      t.same(await a.expectError(), { code: 'E_BAD_NAME', closeCode: 4400 })
      await a.whenClosed()
      t.same(
        readdirSync(env.store).filter((e) => !e.startsWith('.')),
        [],
        'no VM folder made',
      )
    })
  }
  const fits = `vm${'w'.repeat(225)}`
  await t.test('the longest VM name that fits (227 bytes) is seeded and committed, its .vmx installed', async (t) => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    // its nvram under a name of the source's that fits (a `<vm>.nvram` of 233 bytes is refused as above)
    const files = [
      { name: `${fits}.vmx`, data: Buffer.from(VMX(fits, ['d-000001.vmdk'])) },
      { name: 'w.nvram', data: pattern(8192, 7) },
    ]
    const r = await runCycle(a, fits, 1, [seedPlan(0, 'd.vmdk', pattern(MiB, 24), '0c'.repeat(8))], { files })
    a.close()
    t.equal(r.committed?.cycle, 1)
    t.match(readFileSync(join(env.store, fits, `${fits}.vmx`), 'utf8'), /d\.vmdk/, 'its .vmx installed')
  })
})

t.test('a VM left in flight by a seed whose file name did not fit rolls back, and replicates again', async (t) => {
  const env = makeEnv(scratchDir(t))
  const log = pino({ level: 'silent' })
  const name = `${'a'.repeat(241)}.vmdk`
  // as an older receiver took it: the store API does not apply the session's name rules
  const m = await VmMirror.acquire(env.store, 'vm-wedged', log)
  await m.stageFiles([], [name])
  const open = m.openDisk(
    { name, capacity: MiB, cycle: 1, mode: 'seed', baseCycle: 0, baseGeneration: '', source: TEST_SOURCE, cycleId: '1'.repeat(16), ddb: {}, algorithm: 'sha256' },
    { compat: TEST_COMPAT },
  )
  await t.rejects(open, { code: 'E_IO' }, 'the seed file cannot be created')
  t.equal(m.state.inflight?.cycle, 1, 'the state names the disk in flight')
  m.release()

  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  a.send(hello())
  await a.expect(MessageKind.Welcome)
  a.send(vmOpen('vm-wedged', 1, []))
  t.equal((await a.expect(MessageKind.VmState)).inflightCycle, 1)
  a.send({ kind: MessageKind.Rollback, vm: 'vm-wedged' })
  t.equal((await a.expect(MessageKind.RolledBack)).committedCycle, 0, 'rolled back (before: E_IO on every Rollback)')
  a.close()
  await a.whenClosed()
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(b, 'vm-wedged', 1, [seedPlan(0, 'short.vmdk', pattern(MiB, 23), '0b'.repeat(8))])
  b.close()
  t.equal(r.committed?.cycle, 1, 'the VM replicates again')
})
