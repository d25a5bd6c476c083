import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { execFileSync } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, truncateSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MessageKind } from '@grainline/protocol'
import { cephRestorePoint, prunePoints, recoverStore, rollbackMirror, storeStatus } from '../src/index.ts'
import { lockText } from '../src/vm-lock.ts'
import { readStoreFile, readStoreJson } from '../src/store-fs.ts'
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

/*
 * A carried-in or hand-edited state.json: its names become paths (seed
 * renames, removed disks, journals, stems, the VM's own name) in the hands
 * of whoever takes the VM next and finishes its pending commit. Each hostile
 * name is refused E_STATE before anything is renamed, removed or written.
 */

const AT = '2026-01-01T00:00:00.000Z'

/** A disk record as the receiver writes one (the fields the readers use). */
function diskRecord(name: string, stem = name.replace(/\.vmdk$/i, '')): Record<string, unknown> {
  return {
    name,
    stem,
    capacity: MiB,
    size: MiB,
    cycle: 3,
    since: 1,
    committedAt: AT,
    source: { layers: [], successor: 'x-000001.vmdk' },
    cycleId: 'c',
    mirrorCid: '0000abcd',
    ddb: {},
    cycleDigest: { algorithm: 'sha256', digest: '' },
  }
}

/** `base/store/<vm>` with a hand-written state (`patch` over a committed, idle VM) and `base/outside` beside the store. */
function handStore(base: string, vm: string, patch: Record<string, unknown>): { store: string; outside: string; dir: string } {
  const store = join(base, 'store')
  const outside = join(base, 'outside')
  const dir = join(store, vm)
  mkdirSync(join(dir, '.grainline', 'incoming'), { recursive: true })
  mkdirSync(outside, { recursive: true })
  const state = { format: 1, vm, compat: null, committedCycle: 3, committedAt: AT, displaySuffix: ' (DR)', disks: {}, inflight: null, pending: null, ...patch }
  writeFileSync(join(dir, '.grainline', 'state.json'), JSON.stringify(state))
  return { store, outside, dir }
}

/** Every file of a folder with its content (`.grainline` apart). */
function contents(dir: string): Record<string, string> {
  return Object.fromEntries(
    readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isFile())
      .map((e) => [e.name, readFileSync(join(dir, e.name), 'utf8')]),
  )
}

t.test('a hand-edited state.json cannot rename, delete or write files outside its VM folder, nor delete a disk it still has', async (t) => {
  const pending = (p: Record<string, unknown>): Record<string, unknown> => ({ pending: { cycle: 3, renames: [], descriptors: [], journals: [], files: false, ...p } })
  const web = { 'web.vmdk': diskRecord('web.vmdk') }
  const cases: Array<{ what: string; field: RegExp; state: Record<string, unknown>; via: 'prune' | 'rollback' | 'recovery' }> = [
    // the auditor's repro: `grainline points prune` finished this pending commit and exited 0
    {
      what: 'seed renames and removed disks leaving the folder',
      field: /pending\.renames\[0\]/,
      via: 'prune',
      state: pending({ renames: [{ from: '../../outside/moveme.txt', to: '../../outside/moved.txt' }], removeDisks: ['../../outside/victim'] }),
    },
    { what: 'a removed disk leaving the folder', field: /pending\.removeDisks\[0\]/, via: 'recovery', state: pending({ removeDisks: ['../../outside/victim'] }) },
    {
      what: 'a rename that is not a seed over its own flat',
      field: /pending\.renames\[0\]/,
      via: 'rollback',
      state: { disks: web, ...pending({ renames: [{ from: 'web-flat.vmdk.seed', to: 'web.vmdk' }] }) },
    },
    { what: 'a retired journal leaving the folder', field: /pending\.journals\[0\]/, via: 'rollback', state: pending({ journals: ['../../../outside/victim.journal'] }) },
    { what: 'a removed disk the VM still has', field: /pending\.removeDisks\[0\].*still has/, via: 'rollback', state: { disks: web, ...pending({ removeDisks: ['web'] }) } },
    {
      what: 'a disk stem leaving the folder (its descriptor rewritten)',
      field: /disks\["web\.vmdk"\]\.stem/,
      via: 'recovery',
      state: { disks: { 'web.vmdk': diskRecord('web.vmdk', '../../outside/victim') }, ...pending({ descriptors: ['web.vmdk'] }) },
    },
    { what: 'a disk name leaving the folder', field: /disks key/, via: 'rollback', state: { disks: { '../../outside/victim.vmdk': diskRecord('../../outside/victim.vmdk') } } },
    {
      what: 'an in-flight seed stem leaving the folder (its seed removed by a rollback)',
      field: /inflight\.disks\["web\.vmdk"\]\.stem/,
      via: 'rollback',
      state: { inflight: { cycle: 4, startedAt: AT, disks: { 'web.vmdk': { ...diskRecord('web.vmdk', '../../outside/victim'), target: 'seed', mode: 'seed' } } } },
    },
    {
      what: 'a VM name that is not its folder (the .vmx installed under it)',
      field: /vm = .*not the name of its folder/,
      via: 'rollback',
      state: { vm: '../../outside/victim', ...pending({ files: true }) },
    },
    {
      what: 'a point merge leaving the points folder',
      field: /pending\.merges\[0\]/,
      via: 'prune',
      state: { disks: web, ...pending({ renames: [{ from: 'web-flat.vmdk.seed', to: 'web-flat.vmdk' }], merges: [{ child: '../../../../outside/victim.vmdk', parent: 'web.p2.vmdk' }] }) },
    },
  ]
  for (const c of cases) {
    const { store, outside, dir } = handStore(join(scratchDir(t), 'b'), 'web', c.state)
    for (const f of ['moveme.txt', 'victim.vmdk', 'victim-flat.vmdk', 'victim-flat.vmdk.seed', 'victim.journal']) writeFileSync(join(outside, f), `outside ${f}`)
    for (const f of ['web.vmdk', 'web-flat.vmdk', 'web-flat.vmdk.seed']) writeFileSync(join(dir, f), `mirror ${f}`)
    writeFileSync(join(dir, '.grainline', 'incoming', 'web.vmx'), 'displayName = "web"\n')
    const before = { outside: contents(outside), dir: contents(dir) }
    const { logger } = memoryLogger()
    const field = new RegExp(`VM web: .*state\\.json has .*${c.field.source}.*Put back \\.grainline/state\\.json from a backup`)
    if (c.via === 'recovery') {
      const r = await recoverStore(store, logger)
      t.match(r, [{ vm: 'web', action: 'failed', error: field }], `${c.what}: start-up recovery reports the VM`)
    } else {
      const run: Promise<unknown> = c.via === 'prune' ? prunePoints(store, 'web', { keep: 1 }, { logger }) : rollbackMirror(store, 'web', logger)
      await t.rejects(run, { code: 'E_STATE', message: field }, `${c.what}: ${c.via} refused`)
    }
    t.same(contents(outside), before.outside, `${c.what}: nothing outside the VM folder touched`)
    t.same(contents(dir), before.dir, `${c.what}: nothing in the VM folder touched`)
  }
})

t.test('the names a commit writes still roll forward: a seed over its flat, a removed disk, a journal', async (t) => {
  const { store, dir } = handStore(scratchDir(t), 'web', {
    disks: { 'web.vmdk': diskRecord('web.vmdk') },
    pending: { cycle: 3, renames: [{ from: 'web-flat.vmdk.seed', to: 'web-flat.vmdk' }], descriptors: [], journals: ['web.journal'], files: false, removeDisks: ['old'] },
  })
  writeFileSync(join(dir, 'web-flat.vmdk.seed'), 'new mirror')
  writeFileSync(join(dir, 'web-flat.vmdk'), 'old mirror')
  writeFileSync(join(dir, 'old.vmdk'), 'removed disk')
  writeFileSync(join(dir, 'old-flat.vmdk'), 'removed disk')
  const r = await rollbackMirror(store, 'web', memoryLogger().logger)
  t.match(r, { vm: 'web', committedCycle: 3 })
  t.equal(readFileSync(join(dir, 'web-flat.vmdk'), 'utf8'), 'new mirror', 'the seed is the mirror')
  t.notOk(existsSync(join(dir, 'web-flat.vmdk.seed')))
  t.notOk(existsSync(join(dir, 'old.vmdk')), 'the removed disk is gone')
  t.notOk(existsSync(join(dir, 'old-flat.vmdk')))
  t.equal(JSON.parse(readFileSync(join(dir, '.grainline', 'state.json'), 'utf8')).pending, null, 'the commit is finished')
})

t.test('a store file is read only within its bound: the size is checked on the opened file before anything is allocated', async (t) => {
  const dir = scratchDir(t)
  const file = join(dir, 'f.json')
  writeFileSync(file, '{"a":12345}')
  await t.rejects(readStoreFile(file, 10), { code: 'E_STORE_FILE', message: `${file} is 11 bytes, more than the 10 grainline ever writes there` })
  await t.rejects(readStoreJson(file, 10, 'E_STATE'), { code: 'E_STATE', message: /is 11 bytes/ })
  t.equal((await readStoreFile(file, 11)).toString('utf8'), '{"a":12345}')
  t.same(await readStoreJson(file, 11), { a: 12345 })
  t.equal(await readStoreJson(join(dir, 'absent.json'), 11), undefined)
})

t.test('a huge (sparse) state.json, lock or mirror descriptor: typed errors or a stale lock, and no memory spent on them', async (t) => {
  const base = scratchDir(t)
  const HUGE = 200 * MiB
  // sparse: no disk space, but a reader of the whole file allocates 200 MiB (the audit: `grainline status` peaked at 485 MB)
  const { store, dir: stateDir } = handStore(base, 'state-vm', {})
  truncateSync(join(stateDir, '.grainline', 'state.json'), HUGE)
  const { dir: lockDir } = handStore(base, 'lock-vm', {})
  const lock = join(lockDir, '.grainline', 'lock')
  writeFileSync(lock, '')
  truncateSync(lock, HUGE)
  // settled: a lock no process of ours wrote, taken over as stale
  utimesSync(lock, new Date(Date.now() - 60_000), new Date(Date.now() - 60_000))
  const { dir: descDir } = handStore(base, 'desc-vm', { disks: { 'd.vmdk': diskRecord('d.vmdk') } })
  writeFileSync(join(descDir, 'd-flat.vmdk'), Buffer.alloc(MiB))
  writeFileSync(join(descDir, 'd.vmdk'), '')
  truncateSync(join(descDir, 'd.vmdk'), HUGE)
  // a process of its own: the growth of its peak memory (VmHWM) from the moment the receiver is loaded is these reads' alone
  const index = new URL('../src/index.js', import.meta.url).href
  const script = `
    import { readFileSync } from 'node:fs'
    import { rollbackMirror, storeStatus } from ${JSON.stringify(index)}
    const hwm = () => Number(/VmHWM:\\s*(\\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024
    const loaded = hwm()
    const store = ${JSON.stringify(store)}
    const fail = (e) => ({ code: e.code, message: e.message })
    const status = await storeStatus(store)
    const lock = await rollbackMirror(store, 'lock-vm').catch(fail)
    const state = await rollbackMirror(store, 'state-vm').catch(fail)
    console.log(JSON.stringify({ status, lock, state, grown: hwm() - loaded }))
  `
  const out = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } })) as {
    status: { vms: Array<{ vm: string; error?: string; disks: unknown[] }> }
    lock: unknown
    state: unknown
    grown: number
  }
  const size = `is ${HUGE} bytes, more than the ${128 * MiB} grainline ever writes there`
  t.match(
    out.status.vms.find((v) => v.vm === 'state-vm'),
    { error: `${join(stateDir, '.grainline', 'state.json')} ${size}` },
    'status: the state file is named with its size',
  )
  t.match(out.status.vms.find((v) => v.vm === 'desc-vm')?.disks, [{ name: 'd.vmdk', modified: true, mirrorCid: '' }], 'status: a huge descriptor reads as modified (the agent seeds)')
  t.same(out.lock, { vm: 'lock-vm', committedCycle: 3, rolledBack: false }, 'a huge lock is no lock of ours: taken over once settled')
  t.match(out.state, { code: 'E_STATE', message: size }, 'a rollback refuses the huge state file')
  t.ok(out.grown < 32 * MiB, `peak memory grew ${Math.round(out.grown / MiB)} MiB: none of the 200 MiB files was read whole`)
})

t.test('a Ceph state object whose disk name leaves the folder: points restore refuses it E_STATE and writes nothing outside', async (t) => {
  // fake `rados` and `rbd` on PATH stand in for the cluster (as in rbd-cli.test): the state object names a disk `../outside/victim`
  const base = scratchDir(t)
  const bin = join(base, 'bin')
  mkdirSync(bin)
  const disk = { image: 'img1', snap: 'c3', capacity: 4096 }
  const state = {
    format: 'grainline-ceph-vm-1',
    vm: 'web',
    committedCycle: 3,
    committedAt: AT,
    generation: null,
    compat: null,
    disks: {},
    inflight: null,
    points: [{ cycle: 2, committedAt: AT, generation: 'g', disks: { '../outside/victim.vmdk': disk } }],
    files: {},
    pending: null,
  }
  writeFileSync(join(base, 'state.json'), JSON.stringify(state))
  writeFileSync(join(bin, 'rados'), `#!/bin/sh\necho "rados $*" >> "${base}/calls"\ncat "${base}/state.json"\n`)
  writeFileSync(join(bin, 'rbd'), `#!/bin/sh\necho "rbd $*" >> "${base}/calls"\nprintf data\n`)
  for (const f of ['rados', 'rbd']) chmodSync(join(bin, f), 0o755)
  const path = process.env['PATH']
  process.env['PATH'] = `${bin}:${path}`
  t.teardown(() => {
    process.env['PATH'] = path
  })
  mkdirSync(join(base, 'outside'))
  await t.rejects(cephRestorePoint({ pool: 'p' }, 'web', 2, join(base, 'to')), { code: 'E_STATE', message: /names a disk "\.\.\/outside\/victim\.vmdk" that is not a safe file name/ })
  t.same(readdirSync(join(base, 'outside')), [], 'nothing written beside the restore folder')
  t.notMatch(readFileSync(join(base, 'calls'), 'utf8'), /rbd/, 'no image was exported')
})

t.test("a state.json whose in-flight incremental's announced totals are not integers is refused (E_STATE): they bound the token's quota", async (t) => {
  const { checkStateNames } = await import('../src/state-names.ts')
  const { VmPaths } = await import('../src/vm-paths.ts')
  const paths = new VmPaths(scratchDir(t), 'web')
  const disk = (announced: unknown): Record<string, unknown> => ({
    vm: 'web',
    disks: {},
    inflight: { cycle: 2, disks: { 'd.vmdk': { name: 'd.vmdk', stem: 'd', announced } } },
  })
  t.doesNotThrow(() => checkStateNames(paths, disk({ bytes: 65536, extents: 1, allocatedAtOpen: 0 })), 'the totals the receiver records')
  for (const bad of [
    { bytes: '1', extents: 1, allocatedAtOpen: 0 },
    { bytes: -1, extents: 1, allocatedAtOpen: 0 },
    { bytes: 1, extents: 1.5, allocatedAtOpen: 0 },
    { bytes: 1, extents: 1 },
    null,
    'x',
  ]) {
    t.throws(() => checkStateNames(paths, disk(bad)), { code: 'E_STATE', message: /announced/ }, JSON.stringify(bad))
  }
})
