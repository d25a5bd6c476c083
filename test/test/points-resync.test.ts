// Restore points across a resync, real receiver and agent processes (issues
// #12 and #13 together):
// - a store restored from a backup is its older committed point with that
//   point's increments: the resync's undo data becomes that point, and every
//   point still reads as the frozen source of its cycle;
// - a mirror booted behind the receiver's back no longer holds its committed
//   point, so nothing built on it can: the resync drops every restore point
//   (with the reason logged) instead of keeping points that read wrong data.
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { createServer } from 'node:http'
import { readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { httpPort, promSample, replicateCli, runCli, startSite, type Site, expectedView } from '@grainline/e2e'
import { failIfLingering, firstDifference, httpCall, qemuRaw, scratchDir, startReceiverProcess } from '@grainline/test-utils'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const exec = promisify(execFile)
const MiB = 1024 * 1024

interface Listed {
  points: { cycle: number; current: boolean; disks: { name: string; source: string }[] }[]
}

async function listed(site: Site, vm: string): Promise<Listed> {
  const r = await runCli(['points', '--store', site.store, '--vm', vm, '--output', 'json'])
  if (r.code !== 0) throw new Error(r.stderr)
  return JSON.parse(r.stdout) as Listed
}

async function site(dir: string): Promise<Site> {
  const config = join(dir, 'receiver.json')
  await writeFile(config, JSON.stringify({ store: join(dir, 'dr', 'store'), retention: { keep: 10 } }))
  return await startSite(join(dir, 'dr'), ['*'], [], ['--config', config, '--http-listen', '127.0.0.1:0'])
}

/** The receiver's /metrics, scraped over https with the site's certificate. */
async function metrics(s: Site): Promise<string> {
  const r = await httpCall(`https://127.0.0.1:${httpPort(s.receiver.lines)}/metrics`, { ca: await readFile(s.cert) })
  if (r.status !== 200) throw new Error(`/metrics: ${r.status}`)
  return r.text
}

async function cycle(t: Test, s: Site, vmx: string, mode: string, label: string, args: string[] = []): Promise<Awaited<ReturnType<typeof replicateCli>>> {
  const r = await replicateCli(s, vmx, ['--trivial-mb', '4', ...args])
  t.equal(r.code, 0, `${label}: ${r.stderr.slice(-1500)}`)
  t.equal(r.report?.vms[0]?.disks[0]?.mode, mode, `${label}: ${mode}`)
  return r
}

/** A local HTTP endpoint that keeps what is POSTed to it. */
async function endpoint(t: Test): Promise<{ url: string; hits: Array<{ event: string | undefined; body: string }> }> {
  const hits: Array<{ event: string | undefined; body: string }> = []
  const srv = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      hits.push({ event: req.headers['x-grainline-event'] as string | undefined, body: Buffer.concat(chunks).toString('utf8') })
      res.writeHead(200)
      res.end()
    })
  })
  srv.listen(0, '127.0.0.1')
  await once(srv, 'listening')
  t.teardown(() => new Promise((r) => srv.close(r)))
  return { url: `http://127.0.0.1:${(srv.address() as { port: number }).port}/hook`, hits }
}

t.test('a store restored from a backup: the resync keeps every point exact and adds the restored one', async (t) => {
  const dir = scratchDir(t, 'grainline-points-resync-')
  const s = await site(dir)
  t.teardown(() => s.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'prr', disks: [{ sizeBytes: 16 * MiB }], seed: 41 })
  const views: string[] = []
  for (let c = 1; c <= 2; c++) {
    if (c > 1) await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, writeSize: 32 * 1024, seed: c, zeroFraction: 0.2 })
    views[c] = await expectedView(vm.vmxPath, join(dir, `v${c}.raw`))
    await cycle(t, s, vm.vmxPath, c === 1 ? 'seed' : 'incremental', `cycle ${c}`)
  }
  // back up the store at cycle 2 (point 1 + mirror), go on to cycle 3, then put the backup back
  await s.receiver.stop()
  await exec('cp', ['-a', s.store, join(dir, 'backup')])
  await s.restart()
  await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, writeSize: 32 * 1024, seed: 3, zeroFraction: 0.2 })
  await cycle(t, s, vm.vmxPath, 'incremental', 'cycle 3')
  await s.receiver.stop()
  await rm(s.store, { recursive: true })
  await exec('cp', ['-a', join(dir, 'backup'), s.store])
  await s.restart()
  t.same(
    (await listed(s, 'prr')).points.map((p) => [p.cycle, p.current]),
    [
      [1, false],
      [2, true],
    ],
    'the backup: point 1 and the mirror at 2',
  )
  await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, writeSize: 32 * 1024, seed: 4, zeroFraction: 0.2 })
  // the receiver is at cycle 2: the resync is cycle 3 again (the agent numbers from the receiver's commit)
  views[3] = await expectedView(vm.vmxPath, join(dir, 'v3-again.raw'))
  await cycle(t, s, vm.vmxPath, 'resync', 'after the restore')
  const after = await listed(s, 'prr')
  t.same(
    after.points.map((p) => [p.cycle, p.current]),
    [
      [1, false],
      [2, false],
      [3, true],
    ],
    'point 2 (what the resync overwrote) joined point 1; the mirror is at the resync',
  )
  for (const p of after.points) {
    const raw = join(dir, `point-${p.cycle}.raw`)
    await qemuRaw(p.disks[0]?.source as string, raw)
    t.equal(await firstDifference(raw, views[p.cycle] as string), -1, `point ${p.cycle} reads as the frozen source of cycle ${p.cycle}`)
  }
})

t.test('a booted mirror: the resync drops the restore points that no longer hold, and says why', async (t) => {
  const dir = scratchDir(t, 'grainline-points-boot-')
  const s = await site(dir)
  t.teardown(() => s.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'pboot', disks: [{ sizeBytes: 16 * MiB }], seed: 42 })
  for (let c = 1; c <= 3; c++) {
    if (c > 1) await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, writeSize: 32 * 1024, seed: 10 + c, zeroFraction: 0.2 })
    await cycle(t, s, vm.vmxPath, c === 1 ? 'seed' : 'incremental', `cycle ${c}`)
  }
  t.same(
    (await listed(s, 'pboot')).points.map((p) => p.cycle),
    [1, 2, 3],
  )
  const before = await metrics(s)
  t.equal(promSample(before, 'grainline_restore_points', { vm: 'pboot' }), 2, '/metrics: points 1 and 2 (3 is the mirror)')
  t.ok((promSample(before, 'grainline_restore_point_oldest_timestamp_seconds', { vm: 'pboot' }) ?? 0) > Date.now() / 1000 - 600, 'and how far back they reach')
  t.equal(promSample(before, 'grainline_restore_points_dropped_timestamp_seconds', { vm: 'pboot', broken: 'true' }), undefined, 'none dropped yet')
  t.equal((await runCli(['status', '--store', s.store])).code, 0, 'status OK')
  // someone boots the mirror itself: QEMU writes through its descriptor (new CID); the points chained on it now read the boot's data
  await exec('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0xcd 2M 2M', join(s.store, 'pboot', 'pboot.vmdk')])
  await simulateGuestWrites(vm.vmxPath, { bytes: 512 * 1024, writeSize: 32 * 1024, seed: 20 })
  const view = await expectedView(vm.vmxPath, join(dir, 'v4.raw'))
  // the agent's operator hears it too (protocol v6 PointsDropped): the report, the terminal, a webhook that asked for failures only
  const hook = await endpoint(t)
  await writeFile(join(dir, 'hook.secret'), 'webhook-secret-0123456789\n')
  const hookArgs = ['--webhook', hook.url, '--webhook-secret-file', join(dir, 'hook.secret'), '--webhook-on', 'failure']
  const r4 = await cycle(t, s, vm.vmxPath, 'resync', 'after the boot', hookArgs)
  t.match(r4.report?.vms[0], {
    ok: true,
    pointsDropped: { count: 2, oldest: 1, newest: 2, broken: true, reason: /modified mirror/ },
    warnings: [
      {
        code: 'W_POINTS_DROPPED',
        message:
          /^the receiver dropped 2 restore points \(cycles 1 to 2\) at the commit of cycle 4: they could not be kept \(.*modified mirror.*\)\. The mirror can be restored to cycle 4 and later only/,
      },
    ],
  })
  t.match(r4.stdout, /^WARN pboot cycle 4/m, 'the summary says WARN')
  t.match(r4.stdout, /^ {2}WARN W_POINTS_DROPPED: the receiver dropped 2 restore points/m)
  t.equal(hook.hits.length, 1, 'a "failure" webhook fired for the warning')
  t.equal(hook.hits[0]?.event, 'run.warning')
  t.match(JSON.parse(hook.hits[0]?.body ?? '{}'), { event: 'run.warning', report: { ok: true, vms: [{ vm: 'pboot', warnings: [{ code: 'W_POINTS_DROPPED' }] }] } })
  t.equal(await firstDifference(join(s.store, 'pboot', 'pboot-flat.vmdk'), view), -1, 'the mirror is the frozen source again')
  t.same(
    (await listed(s, 'pboot')).points.map((p) => [p.cycle, p.current]),
    [[4, true]],
    'only the mirror is left: no point built on the booted mirror is offered',
  )
  t.ok(
    s.receiver.lines.some((l) => l.includes('restore points dropped') && l.includes('modified mirror')),
    'the receiver logged which points it dropped and why',
  )
  // and says so where an operator looks, after the log has rotated: /metrics and status (WARNING for a week)
  const after = await metrics(s)
  t.equal(promSample(after, 'grainline_restore_points', { vm: 'pboot' }), 0)
  t.equal(promSample(after, 'grainline_restore_point_oldest_timestamp_seconds', { vm: 'pboot' }), undefined)
  const droppedAt = promSample(after, 'grainline_restore_points_dropped_timestamp_seconds', { vm: 'pboot', broken: 'true' }) ?? 0
  t.ok(Math.abs(droppedAt - Date.now() / 1000) < 600, `/metrics dates the drop (${droppedAt})`)
  const status = await runCli(['status', '--store', s.store])
  t.equal(status.code, 1, 'status WARNING')
  t.match(status.stdout, /restore points 1, 2 dropped by the commit of cycle 4 \d+ s ago: .*modified mirror.*; the VM can be restored to cycle 4 and later only/)
  // the next cycle builds points again
  await simulateGuestWrites(vm.vmxPath, { bytes: 512 * 1024, writeSize: 32 * 1024, seed: 21 })
  const r5 = await cycle(t, s, vm.vmxPath, 'incremental', 'next cycle', hookArgs)
  t.equal(r5.report?.vms[0]?.warnings, undefined, 'an ordinary cycle warns nothing')
  t.equal(hook.hits.length, 1, 'and a clean run is no failure: no POST')
  t.same(
    (await listed(s, 'pboot')).points.map((p) => p.cycle),
    [4, 5],
  )
  t.equal(promSample(await metrics(s), 'grainline_restore_points', { vm: 'pboot' }), 1, '/metrics: point 4 again')
})

t.test('the receiver dies right after a commit that dropped the points: the agent reconnects, learns the commit, and still reports the drop (protocol v7)', async (t) => {
  const dir = scratchDir(t, 'grainline-points-lost-')
  const s = await site(dir)
  t.teardown(() => s.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'plost', disks: [{ sizeBytes: 16 * MiB }], seed: 43 })
  for (let c = 1; c <= 2; c++) {
    if (c > 1) await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, writeSize: 32 * 1024, seed: 30 + c, zeroFraction: 0.2 })
    await cycle(t, s, vm.vmxPath, c === 1 ? 'seed' : 'incremental', `cycle ${c}`)
  }
  // the mirror booted behind the receiver's back: the next commit (a resync) drops point 1
  await exec('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0xcd 1M 1M', join(s.store, 'plost', 'plost.vmdk')])
  await simulateGuestWrites(vm.vmxPath, { bytes: 512 * 1024, writeSize: 32 * 1024, seed: 33 })
  const view = await expectedView(vm.vmxPath, join(dir, 'v3.raw'))
  // a receiver that SIGKILLs itself once that commit is durable, before its PointsDropped and Committed go out
  const base = s.receiver.init
  const port = s.receiver.port
  await s.receiver.stop()
  s.receiver = await startReceiverProcess({ ...base, port, env: { ...base.env, GRAINLINE_RECEIVER_FAULT: 'commit-after-state:1' } })
  const run = replicateCli(s, vm.vmxPath, ['--trivial-mb', '0', '--give-up', '120'])
  const died = await s.receiver.exited
  t.equal(died.signal, 'SIGKILL', 'the receiver died at the durable commit')
  t.match(await readFile(join(s.store, 'plost', '.grainline', 'state.json'), 'utf8'), /"pointsDropped"/, 'and the drop is recorded with it')
  s.receiver = await startReceiverProcess({ ...base, port })
  const r = await run
  t.equal(r.code, 0, `the run ends well: ${r.stderr.slice(-1500)}`)
  const v = r.report?.vms[0]
  t.ok((v?.reconnects ?? 0) >= 1, 'after a reconnect')
  t.equal(v?.cycle, 3)
  t.match(v, {
    ok: true,
    pointsDropped: { count: 1, oldest: 1, newest: 1, broken: true, reason: /modified mirror/ },
    warnings: [{ code: 'W_POINTS_DROPPED', message: /^the receiver dropped restore point 1 at the commit of cycle 3: they could not be kept/ }],
  })
  t.equal(v?.warnings?.length, 1, 'one warning')
  t.match(r.stdout, /^WARN plost cycle 3/m, 'the summary says WARN')
  t.equal(await firstDifference(join(s.store, 'plost', 'plost-flat.vmdk'), view), -1, 'the mirror is the frozen source')
  // the next cycle is an ordinary one: no warning, and it is not told again
  await simulateGuestWrites(vm.vmxPath, { bytes: 512 * 1024, writeSize: 32 * 1024, seed: 34 })
  const r4 = await cycle(t, s, vm.vmxPath, 'incremental', 'next cycle')
  t.equal(r4.report?.vms[0]?.warnings, undefined, 'an ordinary cycle warns nothing')
})
