import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MessageKind } from '@grainline/protocol'
import { recoverStore, rollbackMirror, storeStatus } from '../src/index.ts'
import { lockText } from '../src/vm-lock.ts'
import { Agent, MiB, TOKEN, hello, incPlan, makeEnv, memoryLogger, pattern, runCycle, seedPlan, startReceiver, vmOpen, type Env } from './helpers.ts'

/*
 * Hostile or unlucky stores: files whose names merely look temporary,
 * two names of one VM folder, symbolic links and FIFOs where store files
 * should be. Each case failed on the old code (deleted committed files,
 * shared a VM between two sessions, wrote through links, hung on a FIFO).
 */

const img = pattern(MiB, 1)

async function seed(env: Env, url: string, vm: string, disk = `${vm}.vmdk`): Promise<void> {
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, disk, img, '01'.repeat(8))])
  a.close()
  await a.whenClosed()
}

async function openVm(env: Env, url: string, vm: string, cycle = 2): Promise<Agent> {
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  a.send(hello())
  await a.expect(MessageKind.Welcome)
  a.send(vmOpen(vm, cycle, []))
  return a
}

/** Turn a hang into a failure (a watchdog, not a timing assertion: the success path does not depend on it). */
async function noHang<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const hang = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} hung`)), 60_000)
  })
  try {
    return await Promise.race([p, hang])
  } finally {
    clearTimeout(timer)
  }
}

t.test('start-up recovery removes exactly the temporary files of atomic writes, and logs each', async (t) => {
  const env = makeEnv(scratchDir(t))
  const first = await startReceiver(env)
  await seed(env, first.url, 'vm.tmp-1', 'data.tmp-2024.vmdk')
  await first.receiver.close()
  const dir = join(env.store, 'vm.tmp-1')
  const committed = readdirSync(dir)
    .filter((f) => !f.startsWith('.'))
    .sort()
  t.same(committed, ['data.tmp-2024-flat.vmdk', 'data.tmp-2024.vmdk', 'vm.tmp-1.nvram', 'vm.tmp-1.vmx'])
  const temps = [join(dir, 'vm.tmp-1.vmx.tmp-4242-0badc0de'), join(dir, '.grainline', 'state.json.tmp-17-deadbeef')]
  for (const f of temps) writeFileSync(f, 'half-written')
  const second = await startReceiver(env)
  t.teardown(() => second.receiver.close())
  t.same(
    readdirSync(dir)
      .filter((f) => !f.startsWith('.'))
      .sort(),
    committed,
    'committed files whose names contain ".tmp-" are kept',
  )
  t.ok(readFileSync(join(dir, 'data.tmp-2024-flat.vmdk')).equals(img))
  for (const f of temps) {
    t.notOk(existsSync(f), `${f} removed`)
    t.ok(
      second.logs.lines.some((l) => l['msg'] === 'temporary file of an interrupted write removed' && l['file'] === f),
      'and logged',
    )
  }
})

t.test('two names of one VM folder share one lock', async (t) => {
  // the store outside the tap fixture folder, so that its clean-up never meets the mount point
  const env = { ...makeEnv(scratchDir(t)), store: mkdtempSync(join(tmpdir(), 'grainline-rx-bind-')) }
  const { receiver, url } = await startReceiver(env, { lockWaitMs: 100 })
  const alias = join(env.store, 'vm-bind')
  let mounted = false
  t.teardown(async () => {
    await receiver.close()
    if (mounted) execFileSync('umount', [alias])
    rmSync(env.store, { recursive: true, force: true })
  })
  await seed(env, url, 'vm-b')
  // a bind mount stands in for a case-insensitive file system: another name, the same folder
  mkdirSync(alias)
  execFileSync('mount', ['--bind', join(env.store, 'vm-b'), alias])
  mounted = true
  const a = await openVm(env, url, 'vm-b')
  await a.expect(MessageKind.VmState)
  const b = await openVm(env, url, 'vm-bind')
  t.same(await b.expectError(), { code: 'E_BUSY', closeCode: 4429 }, 'the second name is busy too')
  await t.rejects(rollbackMirror(env.store, 'vm-bind'), { code: 'E_BUSY' }, 'and so is a rollback through it')
  a.close()
  await a.whenClosed()
})

t.test('a lock file naming this very process is held, not stale', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  await seed(env, url, 'vm-p')
  await receiver.close()
  writeFileSync(join(env.store, 'vm-p', '.grainline', 'lock'), lockText())
  await t.rejects(rollbackMirror(env.store, 'vm-p'), { code: 'E_BUSY' })
})

t.test('symbolic links in the store are never followed', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  await seed(env, url, 'vm-b')
  const victimFlat = join(env.store, 'vm-b', 'vm-b-flat.vmdk')
  const outside = join(env.dir, 'outside')
  mkdirSync(outside)

  await t.test('a VM folder that is a link to another VM', async (t) => {
    symlinkSync('vm-b', join(env.store, 'vm-alias'))
    const a = await openVm(env, url, 'vm-alias', 1)
    t.same(await a.expectError(), { code: 'E_IO', closeCode: 4500 })
    t.ok(readFileSync(victimFlat).equals(img), "the other VM's mirror is untouched")
    t.same(
      (await storeStatus(env.store)).vms.map((v) => v.vm),
      ['vm-b'],
      'a link is not listed as a VM',
    )
  })

  await t.test('a VM folder that is a link out of the store', async (t) => {
    symlinkSync(outside, join(env.store, 'vm-out'))
    const a = await openVm(env, url, 'vm-out', 1)
    t.same(await a.expectError(), { code: 'E_IO', closeCode: 4500 })
    t.same(readdirSync(outside), [], 'nothing written outside the store')
  })

  await t.test('.grainline/incoming that is a link out of the store', async (t) => {
    await seed(env, url, 'vm-i')
    const incoming = join(env.store, 'vm-i', '.grainline', 'incoming')
    rmSync(incoming, { recursive: true })
    symlinkSync(outside, incoming)
    const a = await openVm(env, url, 'vm-i')
    t.same(await a.expectError(), { code: 'E_IO', closeCode: 4500 })
    t.same(readdirSync(outside), [], 'no configuration file staged outside the store')
  })

  await t.test('a .seed file that is a link to another mirror', async (t) => {
    mkdirSync(join(env.store, 'vm-s'))
    symlinkSync(victimFlat, join(env.store, 'vm-s', 'vm-s-flat.vmdk.seed'))
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const img2 = pattern(MiB, 2)
    await runCycle(a, 'vm-s', 1, [seedPlan(0, 'vm-s.vmdk', img2, '02'.repeat(8))])
    a.close()
    await a.whenClosed()
    t.ok(readFileSync(victimFlat).equals(img), "the link's target is untouched")
    t.ok(readFileSync(join(env.store, 'vm-s', 'vm-s-flat.vmdk')).equals(img2), 'the seed went into a file of its own')
  })

  await t.test('a state file that is a link', async (t) => {
    await seed(env, url, 'vm-j')
    const state = join(env.store, 'vm-j', '.grainline', 'state.json')
    renameSync(state, join(outside, 'state.json'))
    symlinkSync(join(outside, 'state.json'), state)
    const a = await openVm(env, url, 'vm-j')
    t.same(await a.expectError(), { code: 'E_IO', closeCode: 4500 })
    t.match(
      (await storeStatus(env.store)).vms.find((v) => v.vm === 'vm-j'),
      { error: /symbolic link/ },
    )
  })

  await t.test('a .grainline that is a link: the VM is listed with an error (CRITICAL), the link not followed', async (t) => {
    await seed(env, url, 'vm-gl')
    const g = join(env.store, 'vm-gl', '.grainline')
    renameSync(g, join(outside, 'gl'))
    symlinkSync(join(outside, 'gl'), g)
    t.match(
      (await storeStatus(env.store)).vms.find((v) => v.vm === 'vm-gl'),
      { committedCycle: 0, error: /\.grainline is a symbolic link/ },
    )
  })
})

t.test('a FIFO where a store file should be: typed errors, no hang', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  await seed(env, url, 'vm-f')
  await seed(env, url, 'vm-g')
  const desc = join(env.store, 'vm-f', 'vm-f.vmdk')
  unlinkSync(desc)
  execFileSync('mkfifo', [desc])
  const st = await noHang(storeStatus(env.store), 'status')
  t.match(st.vms.find((v) => v.vm === 'vm-f')?.disks[0], { modified: true, mirrorCid: '' }, 'status: a FIFO descriptor reads as modified')
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const inc = incPlan(0, 'vm-f.vmdk', img, 1, 'x', [{ offset: 0, length: 4096 }], 'vm-f-000001.vmdk', 'vm-f-000002.vmdk')
  const r = await noHang(
    runCycle(a, 'vm-f', 2, [inc]).catch((err: { reason?: string }) => err.reason),
    'an incremental',
  )
  t.equal(r, 'E_MIRROR_MODIFIED', 'the incremental is refused: the agent seeds')
  a.close()
  await a.whenClosed()

  const state = join(env.store, 'vm-g', '.grainline', 'state.json')
  unlinkSync(state)
  execFileSync('mkfifo', [state])
  t.match(
    (await noHang(storeStatus(env.store), 'status')).vms.find((v) => v.vm === 'vm-g'),
    { error: /FIFO/ },
  )
  const b = await openVm(env, url, 'vm-g')
  t.same(await noHang(b.expectError(), 'VmOpen'), { code: 'E_IO', closeCode: 4500 })
  t.match(
    await noHang(
      rollbackMirror(env.store, 'vm-g').catch((err: unknown) => err),
      'rollback',
    ),
    { code: 'E_STORE_FILE' },
  )
  const again = await noHang(startReceiver(env), 'start-up recovery')
  t.teardown(() => again.receiver.close())
  t.ok(
    again.logs.lines.some((l) => l['msg'] === 'recovery failed' && l['vm'] === 'vm-g'),
    'recovery reports the VM and goes on',
  )
})

t.test("a VM's .grainline/points or incoming that is a link to another VM's: recovery, a cycle and status delete nothing through it", async (t) => {
  const env = makeEnv(scratchDir(t))
  const first = await startReceiver(env, { retention: { keep: 10 } })
  // VM vm-b has restore point 1 (d.p1.vmdk and its extent); vm-a and vm-c have the same disk name and no point
  const img2 = Buffer.from(img)
  pattern(64 * 1024, 9).copy(img2, 0)
  let a = await Agent.connect(first.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'vm-b', 1, [seedPlan(0, 'd.vmdk', img, '01'.repeat(8))])
  a.close()
  a = await Agent.connect(first.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'vm-b', 2, [incPlan(0, 'd.vmdk', img2, 1, '02'.repeat(8), [{ offset: 0, length: 64 * 1024 }], 'd-000001.vmdk', 'd-000002.vmdk')])
  a.close()
  for (const vm of ['vm-a', 'vm-c']) {
    a = await Agent.connect(first.url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', img, '03'.repeat(8))])
    a.close()
    await a.whenClosed()
  }
  await first.receiver.close()
  const bPoints = join(env.store, 'vm-b', '.grainline', 'points')
  const bFiles = readdirSync(bPoints).sort()
  t.ok(bFiles.includes('d.p1.vmdk') && bFiles.includes('d.p1-sesparse.vmdk'), "vm-b's point 1 is there")
  const aPoints = join(env.store, 'vm-a', '.grainline', 'points')
  rmSync(aPoints, { recursive: true, force: true })
  symlinkSync('../../vm-b/.grainline/points', aPoints)
  // vm-c's incoming: a link to a folder outside the VM holding a file whose name looks temporary
  const outside = join(env.dir, 'outside')
  mkdirSync(outside)
  writeFileSync(join(outside, 'notes.txt.tmp-12-deadbeef'), 'not grainline’s')
  const cIncoming = join(env.store, 'vm-c', '.grainline', 'incoming')
  rmSync(cIncoming, { recursive: true, force: true })
  symlinkSync(outside, cIncoming)

  const logs = memoryLogger()
  const reports = await recoverStore(env.store, logs.logger)
  t.same(readdirSync(bPoints).sort(), bFiles, "start-up recovery of vm-a removes none of vm-b's point files")
  t.same(readdirSync(outside), ['notes.txt.tmp-12-deadbeef'], "nor of the folder vm-c's incoming links to")
  for (const [vm, folder] of [
    ['vm-a', 'points'],
    ['vm-c', 'incoming'],
  ] as const) {
    t.match(
      reports.find((r) => r.vm === vm),
      { action: 'failed', error: new RegExp(`VM ${vm}: .*\\.grainline/${folder} is a symbolic link, not a folder of the VM's own.*nothing of VM ${vm} was changed`) },
      `${vm}: recovery refuses the VM, naming it and the folder`,
    )
  }
  t.equal(reports.find((r) => r.vm === 'vm-b')?.action, 'none', 'vm-b recovers as usual')

  const second = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => second.receiver.close())
  // vm-a's next cycle would make its increment d.p1.vmdk: in vm-b's points folder, over vm-b's point
  const b = await openVm(env, second.url, 'vm-a')
  t.same(await b.expectError(), { code: 'E_IO', closeCode: 4500 }, 'a cycle of vm-a is refused')
  b.close()
  await b.whenClosed()
  t.same(readdirSync(bPoints).sort(), bFiles, "vm-b's point files are still all there")
  const st = await storeStatus(env.store)
  t.match(
    st.vms.find((v) => v.vm === 'vm-a'),
    { error: /\.grainline\/points is a symbolic link/ },
    'status: vm-a in error (CRITICAL)',
  )
  t.match(
    st.vms.find((v) => v.vm === 'vm-b'),
    { points: [1] },
    'vm-b keeps its point',
  )
  t.notOk(st.vms.find((v) => v.vm === 'vm-b')?.error)
})
