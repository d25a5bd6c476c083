// The receiver's HTTP listener and the cycle history on a Ceph store (issue
// #18, docs/CEPH.md "Status, metrics and the dashboard"): a real one-node
// cluster, a real receiver process with `--store ceph:POOL --http-listen`
// and real agent processes. After two cycles `/metrics` gives the mirror's
// state read from the pool, `GET /api/v1/status` and `grainline status
// --output json` give the same document (RPO, restore points, space from
// `rbd du`, the last cycle), a VM's page its cycle history — kept in a RADOS
// object, so a restarted receiver still shows it —, the event stream and
// the dashboard page answer a viewer's session, and `grainline status` speaks
// the monitoring-plugin convention as on a folder store.
import t from 'tap'
import { readFile, writeFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { failIfLingering, haveCeph, httpCall, readEvents, scratchDir, startCephCluster } from '@grainline/test-utils'
import { httpPort, promSample, replicateCli, runCli, startSite } from '@grainline/e2e'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const MiB = 1024 * 1024
const POOL = 'glhttp'
const VIEWER = `viewer-${'fedcba9876543210'.repeat(2)}`
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-mgr ceph-common)'

interface Overview {
  store: string
  state: string
  vms: Array<{
    vm: string
    committedCycle: number
    usedBytes: number
    rpo: { targetSeconds: number; state: string }
    restorePoints: Array<{ cycle: number; bytes: number }>
    lastCycle: { cycle: number; dataBytes: number } | null
    disks: Array<{ name: string; committedCycle: number; snapshot: string; trivial: { ok: boolean } | null; certify: { ok: boolean; algorithm: string } | null }>
  }>
}

t.test('Ceph store: /metrics, the dashboard API, the event stream and grainline status read the pool; the cycle history is kept in RADOS', { skip }, async (t) => {
  const dir = scratchDir(t, 'grainline-ceph-http-')
  const ceph = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const dr = join(dir, 'dr')
  await mkdir(dr, { recursive: true })
  const cfg = join(dr, 'receiver.json')
  await writeFile(cfg, JSON.stringify({ retention: { keep: 5 }, rpo: { target: '2h', vms: { 'web-*': '1h' } } }))
  const store = ['--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf]
  const site = await startSite(dr, ['*'], [], ['--config', cfg, ...store, '--http-listen', '127.0.0.1:0'])
  t.teardown(() => site.receiver.stop())
  // a viewer entry beside the agent's token, then the receiver restarted to read it
  const tokens = JSON.parse(await readFile(site.tokens, 'utf8')) as { tokens: unknown[] }
  tokens.tokens.push({ name: 'noc', token: VIEWER, role: 'viewer' })
  await writeFile(site.tokens, JSON.stringify(tokens))
  await site.restart()
  const ca = await readFile(site.cert)
  const base = (): string => `https://127.0.0.1:${httpPort(site.receiver.lines)}`
  const bearer = { Authorization: `Bearer ${VIEWER}` }
  const api = async <T>(path: string): Promise<T> => {
    const r = await httpCall(`${base()}${path}`, { headers: bearer, ca })
    t.equal(r.status, 200, r.status === 200 ? `GET ${path}` : `GET ${path}: ${r.text.slice(0, 300)}`)
    return JSON.parse(r.text) as T
  }

  const empty = await httpCall(`${base()}/metrics`, { ca })
  t.equal(empty.status, 200, 'the HTTP listener serves /metrics with a Ceph store')
  t.equal(promSample(empty.text, 'grainline_mirror_committed_cycle', { vm: 'web-01' }), undefined, 'no mirror yet')

  const vm = await createSampleVm(join(dir, 'src'), { name: 'web-01', disks: [{ sizeBytes: 16 * MiB, fill: 'random' }], seed: 8 })
  const seed = await replicateCli(site, vm.vmxPath, ['--certify', 'sha256'])
  t.equal(seed.code, 0, `seed: ${seed.stderr.slice(-1500)}`)
  await simulateGuestWrites(vm.vmxPath, { bytes: 2 * MiB, seed: 9, zeroFraction: 0 })
  const inc = await replicateCli(site, vm.vmxPath, ['--certify', 'sha256'])
  t.equal(inc.code, 0, `cycle 2: ${inc.stderr.slice(-1500)}`)
  const incData = inc.report?.vms[0]?.disks[0]?.dataBytes ?? -1

  // /metrics: the mirror's state from the pool's state object, what this process applied
  const m = (await httpCall(`${base()}/metrics`, { ca })).text
  t.equal(promSample(m, 'grainline_mirror_committed_cycle', { vm: 'web-01' }), 2, 'committed cycle 2 (read from the state object)')
  t.equal(promSample(m, 'grainline_mirror_cycle_in_flight', { vm: 'web-01' }), 0, 'nothing in flight')
  t.equal(promSample(m, 'grainline_mirror_state_unreadable', { vm: 'web-01' }), 0)
  t.equal(promSample(m, 'grainline_disk_capacity_bytes', { vm: 'web-01', disk: 'web-01.vmdk' }), 16 * MiB)
  t.equal(promSample(m, 'grainline_disk_check_ok', { vm: 'web-01', disk: 'web-01.vmdk', check: 'certify' }), 1, "cycle 2's certify recorded ok")
  t.equal(promSample(m, 'grainline_disk_diverged', { vm: 'web-01', disk: 'web-01.vmdk' }), 0)
  t.ok((promSample(m, 'grainline_mirror_age_seconds', { vm: 'web-01' }) ?? -1) >= 0, 'an age')
  t.ok((promSample(m, 'grainline_applied_bytes_total', { vm: 'web-01', disk: 'web-01.vmdk', kind: 'data' }) ?? 0) > 0, 'bytes applied by this process')

  // the API and `grainline status --output json` serve the same document
  const o = await api<Overview>('/api/v1/status')
  const cli = await runCli(['status', ...store, '--config', cfg, '--output', 'json'])
  t.equal(cli.code, 0, `grainline status: OK, exit 0 (${cli.stderr})`)
  const offline = JSON.parse(cli.stdout) as Overview
  const shape = (x: Overview) =>
    x.vms.map((v) => ({
      vm: v.vm,
      cycle: v.committedCycle,
      rpo: v.rpo.targetSeconds,
      state: v.rpo.state,
      points: v.restorePoints.map((p) => p.cycle),
      last: v.lastCycle?.cycle,
      snapshot: v.disks[0]?.snapshot,
    }))
  t.same(shape(offline), shape(o), '`grainline status --output json` = GET /api/v1/status')
  t.equal(o.store, `ceph:${POOL}`)
  t.equal(o.state, 'OK')
  const v = o.vms[0]
  t.same(shape(o), [{ vm: 'web-01', cycle: 2, rpo: 3600, state: 'ok', points: [1], last: 2, snapshot: v?.disks[0]?.snapshot }], 'cycle 2, point 1, the RPO target of web-*')
  t.match(v?.disks[0]?.snapshot, new RegExp(`^${POOL}/gl\\.[0-9a-f]{24}\\.[0-9a-f]{24}\\.[0-9a-f]+@c2-`), "the disk's committed snapshot")
  t.same(v?.disks[0]?.certify && { ok: v.disks[0].certify.ok, algorithm: v.disks[0].certify.algorithm }, { ok: true, algorithm: 'sha256' }, 'the certify as the folder store records it')
  t.ok((v?.usedBytes ?? 0) >= 16 * MiB, `the VM's images take ${v?.usedBytes} bytes (rbd du)`)
  t.ok((v?.restorePoints[0]?.bytes ?? 0) > 0, "point 1's bytes: what cycle 2 wrote over it (rbd du)")
  t.equal(v?.lastCycle?.dataBytes, incData, "the last cycle's data bytes are the agent's")
  const text = await runCli(['status', ...store])
  t.equal(text.code, 0)
  t.match(text.stdout, /^GRAINLINE OK - 1 mirror OK, oldest commit .* ago \| 'web-01_age'=\d+s;;/, 'the monitoring-plugin summary line and perfdata')
  t.match(text.stdout, /web-01\.vmdk .*glhttp\/gl\./, 'and the snapshot of each disk')
  t.equal((await runCli(['status', '--store', 'ceph:nosuchpool', '--ceph-conf', ceph.conf])).code, 3, 'a pool that does not exist: UNKNOWN (3)')

  // a VM's page: its history (both cycles, with their modes), kept in a RADOS object
  type Detail = { vm: { vm: string }; history: Array<{ cycle: number; modes: string[]; dataBytes: number }>; errors: unknown[] }
  const d = await api<Detail>(`/api/v1/vms/${encodeURIComponent('web-01')}`)
  t.same(
    d.history.map((h) => [h.cycle, h.modes]),
    [
      [1, ['seed']],
      [2, ['incremental']],
    ],
    'the cycle history of both cycles',
  )
  const objects = (await ceph.run('rados', ['-p', POOL, 'ls'])).stdout.split('\n')
  t.ok(
    objects.some((x) => /^grainline\.hist\.[0-9a-f]{24}$/.test(x)),
    'the history is a RADOS object of the pool',
  )

  // the event stream and the dashboard page
  const ev = await readEvents(`${base()}/api/v1/events`, 1, { headers: bearer, ca })
  t.equal(ev.status, 200)
  t.equal(ev.events[0]?.event, 'status', 'the event stream sends the status')
  t.equal((JSON.parse(ev.events[0]?.data ?? '{}') as Overview).vms[0]?.committedCycle, 2)
  const login = await httpCall(`${base()}/login`, { method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: `token=${VIEWER}`, ca })
  t.equal(login.status, 303, 'a viewer logs in')
  const cookie = String(login.headers['set-cookie'] ?? '').split(';')[0] as string
  const page = await httpCall(`${base()}/`, { headers: { Cookie: cookie }, ca })
  t.equal(page.status, 200, 'the dashboard page')
  t.match(page.text, /<html/i)
  t.equal((await httpCall(`${base()}/api/v1/status`, { headers: { Authorization: `Bearer ${site.token}` }, ca })).status, 403, "an agent's token reads no dashboard")

  // a restarted receiver (another process) reads the history from the pool
  await site.restart()
  const again = await api<Detail>(`/api/v1/vms/${encodeURIComponent('web-01')}`)
  t.same(
    again.history.map((h) => h.cycle),
    [1, 2],
    'after a restart the history is still there (RADOS, not memory)',
  )
  await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, seed: 10, zeroFraction: 0 })
  t.equal((await replicateCli(site, vm.vmxPath)).code, 0, 'cycle 3')
  const after = await api<Overview>('/api/v1/status')
  t.same([after.vms[0]?.committedCycle, after.vms[0]?.lastCycle?.cycle, after.vms[0]?.restorePoints.map((p) => p.cycle)], [3, 3, [1, 2]], 'cycle 3 appended; points 1 and 2')
})
