/**
 * Metrics (in process, scripted agent), store health (pure, table-driven) and
 * the config keys that select them.
 */
import t from 'tap'
import { createServer } from 'node:net'
import { once } from 'node:events'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import WebSocket from 'ws'
import { SUBPROTOCOL } from '@grainline/protocol'
import { ReceiverMetrics, assessMirror, assessStore, loadReceiverConfig, resolveReceiverInit, storeHealth, storeStatus, type VmStatus } from '../src/index.ts'
import { Agent, MiB, TOKEN, makeEnv, pattern, runCycle, seedPlan, startReceiver } from './helpers.ts'
import { httpCall, scratchDir } from '@grainline/test-utils'

function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (m === null || m[1] !== name) continue
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]))
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3])
  }
  return undefined
}

t.test('metrics of an in-process receiver: a committed cycle, bytes, sessions, refusals; closed with the receiver', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { metricsListen: { host: '127.0.0.1', port: 0 }, rpo: { targetMs: 3_600_000, vms: { 'db-*': 60_000 } } })
  let open = true
  t.teardown(() => (open ? receiver.close() : undefined))
  const m = receiver.metricsAddress
  t.ok(m !== undefined && m.port > 0, 'metrics address once listening')
  // the receiver has a certificate: its HTTP listener speaks https with it
  const base = `https://127.0.0.1:${m?.port}`
  const get = (path: string, method = 'GET') => httpCall(`${base}${path}`, { method, ca: env.tls.ca })
  const img = Buffer.concat([pattern(1 * MiB, 1), Buffer.alloc(1 * MiB)])
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-01', 1, [seedPlan(0, 'web-01.vmdk', img, 'aa01aa01aa01aa01')])
  a.ws.close()
  // a wrong token on a real upgrade
  const ws = new WebSocket(url, SUBPROTOCOL, { headers: { Authorization: 'Bearer wrong' }, ca: env.tls.ca })
  await new Promise<void>((resolve) => {
    ws.on('unexpected-response', () => resolve())
    ws.on('error', () => resolve())
  })
  ws.terminate()
  const r = await get('/metrics')
  t.equal(r.status, 200)
  const text = r.text
  t.equal(sample(text, 'grainline_mirror_committed_cycle', { vm: 'web-01' }), 1)
  t.equal(sample(text, 'grainline_disk_capacity_bytes', { vm: 'web-01', disk: 'web-01.vmdk' }), 2 * MiB)
  t.equal(sample(text, 'grainline_disk_diverged', { vm: 'web-01', disk: 'web-01.vmdk' }), 0)
  t.equal(sample(text, 'grainline_disk_modified', { vm: 'web-01', disk: 'web-01.vmdk' }), 0)
  t.equal(sample(text, 'grainline_mirror_state_unreadable', { vm: 'web-01' }), 0)
  t.equal(sample(text, 'grainline_disk_check_ok', { vm: 'web-01', disk: 'web-01.vmdk', check: 'trivial' }), undefined, 'never checked: absent')
  // the receiver's RPO setting, as the dashboard reads it
  t.equal(sample(text, 'grainline_mirror_rpo_target_seconds', { vm: 'web-01' }), 3600)
  t.equal(sample(text, 'grainline_mirror_rpo_state', { vm: 'web-01' }), 0, 'committed just now: OK')
  const data = sample(text, 'grainline_applied_bytes_total', { vm: 'web-01', disk: 'web-01.vmdk', kind: 'data' }) ?? 0
  const zero = sample(text, 'grainline_applied_bytes_total', { vm: 'web-01', disk: 'web-01.vmdk', kind: 'zero' }) ?? 0
  t.equal(data + zero, 2 * MiB, 'the whole seed applied, as data or zero')
  t.ok(data >= 1 * MiB)
  t.equal(sample(text, 'grainline_cycle_duration_seconds_count', { vm: 'web-01' }), 1)
  t.equal(sample(text, 'grainline_sessions_total', { peer: 'proxy-a' }), 1)
  t.equal(sample(text, 'grainline_connections_refused_total', { reason: 'auth' }), 1)
  t.equal((await get('/other')).status, 404)
  t.equal((await get('/metrics', 'POST')).status, 405)
  await t.rejects(fetch(`http://127.0.0.1:${m?.port}/metrics`), 'no plain HTTP when the receiver has a certificate')
  await receiver.close()
  open = false
  await t.rejects(get('/metrics'), 'the metrics listener closes with the receiver')
})

t.test('a metrics address in use is a configuration error at listen', async (t) => {
  const busy = createServer()
  busy.listen(0, '127.0.0.1')
  await once(busy, 'listening')
  t.teardown(() => new Promise((r) => busy.close(r)))
  const port = (busy.address() as { port: number }).port
  const env = makeEnv(scratchDir(t))
  await t.rejects(startReceiver(env, { metricsListen: { host: '127.0.0.1', port } }), { code: 'E_CONFIG', message: /cannot serve HTTP \(metrics, dashboard\) on 127\.0\.0\.1:\d+/ })
})

t.test('httpListen (and its old name metricsListen) in the config file and as a flag; every config error names its key', async (t) => {
  const dir = scratchDir(t)
  const cfg = join(dir, 'r.json')
  writeFileSync(cfg, JSON.stringify({ store: 'm', tokens: 't.json', metricsListen: '127.0.0.1:9464' }))
  t.same((await loadReceiverConfig(cfg)).httpListen, { host: '127.0.0.1', port: 9464 }, 'the old name still works')
  writeFileSync(cfg, JSON.stringify({ store: 'm', tokens: 't.json', httpListen: '127.0.0.1:9465', metricsListen: '127.0.0.1:9464' }))
  t.same((await loadReceiverConfig(cfg)).httpListen, { host: '127.0.0.1', port: 9465 }, 'the new name wins')
  const over = await resolveReceiverInit({ config: cfg, metricsListen: '[::1]:9000' })
  t.same(over.httpListen, { host: '::1', port: 9000 }, 'the flag (old name) wins')
  t.same((await resolveReceiverInit({ config: cfg, httpListen: '127.0.0.2:9001' })).httpListen, { host: '127.0.0.2', port: 9001 })
  const bad = async (json: unknown, message: RegExp, what: string): Promise<void> => {
    writeFileSync(cfg, typeof json === 'string' ? json : JSON.stringify(json))
    await t.rejects(loadReceiverConfig(cfg), { code: 'E_CONFIG', message }, what)
  }
  await bad({ store: 'm', tokens: 't.json', metricsListen: 9464 }, /r\.json: metricsListen: .*expected string/, 'a number is not an address')
  await bad({ store: 'm', tokens: 't.json', httpListen: 'x:99999' }, /httpListen: "x:99999" is not HOST:PORT/, 'port out of range')
  await bad({ store: 'm', tokens: 't.json', listen: 7 }, /listen: /, 'listen')
  // a file without a store: the flag gives it (flags win); without either, the receiver refuses to start
  writeFileSync(cfg, JSON.stringify({ tokens: 't.json', retention: { keep: 3 } }))
  t.match(await resolveReceiverInit({ config: cfg, store: '/srv/m' }), { store: '/srv/m', retention: { keep: 3 } }, '--store completes a config file without one')
  await t.rejects(resolveReceiverInit({ config: cfg }), { code: 'E_CONFIG', message: /--store \(or "store" in --config\) is required/ }, 'store is required somewhere')
  await bad({ store: 'm', insecure: 'yes' }, /insecure: .*expected boolean/, 'insecure')
  await bad({ store: 'm', displaySuffix: 3 }, /displaySuffix: /, 'displaySuffix')
  await bad({ store: '', tokens: 't.json' }, /store: /, 'an empty path')
  await bad({ store: 'm', windowBytes: -1 }, /windowBytes: .*>=0|windowBytes: /, 'a negative size')
  await bad({ store: 'm', wat: 1 }, /wat: unknown setting/, 'an unknown key')
  await bad({ store: 'm', rpo: { target: 'soon' } }, /rpo\.target: "soon" is not a duration/, 'an RPO target')
  await bad({ store: 'm', rpo: { vms: { 'db-*': 0 } } }, /rpo\.vms\["db-\*"\]: 0 is not a duration above 0/, 'a per-VM RPO target names its glob')
  await bad({ store: 'm', rpo: { targets: '1h' } }, /rpo\.targets: unknown setting/, 'an unknown rpo key')
  await bad({ store: 'm', retention: { keep: -1 } }, /retention: keep must be/, 'retention')
  await bad({ store: 'm', retentionVms: { 'db-*': { nope: 1 } } }, /retentionVms\["db-\*"\]: unknown retention key nope/, 'retention by glob')
  await bad({ store: 'm', retentionLimits: { minKeep: 5, maxKeep: 2 } }, /retentionLimits: minKeep 5 is above maxKeep 2/, 'retention limits')
  await bad({ store: 3, insecure: 'no' }, /2 problems:\n {2}.*store: .*\n {2}.*insecure: /, 'every problem at once')
  await bad('[1]', /expected a JSON object/, 'not an object')
  await bad('{', /cannot read config/, 'not JSON')
  writeFileSync(cfg, JSON.stringify({ store: 'm', tokens: 't.json', listen: '0.0.0.0:7443', rpo: { target: '2h', vms: { 'db-*': '15m' } }, retentionLimits: { minKeep: 2 } }))
  t.match(await loadReceiverConfig(cfg), {
    host: '0.0.0.0',
    port: 7443,
    tokensFile: join(dir, 't.json'),
    store: join(dir, 'm'),
    rpo: { targetMs: 7_200_000, vms: { 'db-*': 900_000 } },
    retentionLimits: { minKeep: 2 },
  })
  await t.rejects(resolveReceiverInit({ tokens: 't.json' }), { code: 'E_CONFIG', message: /--store/ })
  await t.rejects(resolveReceiverInit({ store: 'm' }), { code: 'E_CONFIG', message: /--tokens/ })
  const flags = await resolveReceiverInit({
    store: 's',
    tokens: 't',
    listen: '0.0.0.0:7443',
    tlsCert: 'c',
    tlsKey: 'k',
    insecure: true,
    displaySuffix: ' (DR)',
    trivialMiB: 4,
    batchBytes: 1024,
  })
  t.match(flags, { store: 's', tokensFile: 't', host: '0.0.0.0', port: 7443, tlsCert: 'c', tlsKey: 'k', insecure: true, displaySuffix: ' (DR)', trivialMiB: 4, batchBytes: 1024 })
})

const NOW = Date.parse('2026-06-01T12:00:00Z')
function vmStatus(over: Partial<VmStatus> & { disk?: Record<string, unknown> } = {}): VmStatus {
  const { disk, ...rest } = over
  return {
    vm: 'web-01',
    committedCycle: 3,
    committedAt: '2026-06-01T11:50:00Z',
    generation: 'ab'.repeat(16),
    inflightCycle: 0,
    needsRecovery: false,
    vmxDropped: [],
    disks: [
      {
        name: 'web-01.vmdk',
        committedCycle: 3,
        committedAt: '2026-06-01T11:50:00Z',
        capacity: MiB,
        size: MiB,
        mirrorCid: '0000abcd',
        modified: false,
        trivial: null,
        certify: null,
        diverged: null,
        inflight: null,
        ...disk,
      } as VmStatus['disks'][number],
    ],
    ...rest,
  }
}

t.test('store health: each case, its state and the words an operator reads', async (t) => {
  const check = (ok: boolean) => ({ ok, at: '2026-06-01T11:51:00Z', algorithm: 'sha256' as const, digest: '00', bytes: MiB })
  const cases: Array<[string, VmStatus, number | undefined, string, RegExp | undefined]> = [
    ['fresh, checked', vmStatus({ disk: { trivial: check(true) } }), 30 * 60_000, 'OK', undefined],
    ['stale against --max-age', vmStatus(), 5 * 60_000, 'CRITICAL', /stale: last commit 10 min ago \(max 5 min\)/],
    ['trivial mismatch', vmStatus({ disk: { trivial: check(false) } }), undefined, 'CRITICAL', /trivial check MISMATCH on web-01\.vmdk/],
    ['certify mismatch', vmStatus({ disk: { certify: check(false) } }), undefined, 'CRITICAL', /certify \(sha256\) MISMATCH/],
    ['diverged', vmStatus({ disk: { diverged: { reason: 'trivial check of cycle 3 failed', at: 'x' } } }), undefined, 'CRITICAL', /DIVERGED from its source: trivial check of cycle 3 failed/],
    ['modified', vmStatus({ disk: { modified: true } }), undefined, 'CRITICAL', /modified since its last commit/],
    [
      'modified, flat missing',
      vmStatus({ disk: { modified: true, size: 0 } }),
      undefined,
      'CRITICAL',
      /web-01\.vmdk modified since its last commit \(its mirror flat is missing or empty: deleted or truncated behind the store\)/,
    ],
    [
      'modified, flat of another size',
      vmStatus({ disk: { modified: true, size: 4096 } }),
      undefined,
      'CRITICAL',
      /modified since its last commit \(booted or edited: its mirror flat is 4096 bytes, the disk 1048576\)/,
    ],
    ['modified, same size', vmStatus({ disk: { modified: true } }), undefined, 'CRITICAL', /modified since its last commit \(booted or edited\)$/],
    ['unreadable', vmStatus({ error: 'bad json' }), undefined, 'CRITICAL', /state unreadable: bad json/],
    ['never committed', vmStatus({ committedCycle: 0, committedAt: null }), undefined, 'WARNING', /never committed/],
    ['in flight', vmStatus({ needsRecovery: true, inflightCycle: 4 }), undefined, 'WARNING', /cycle 4 in flight/],
    ['commit to roll forward', vmStatus({ needsRecovery: true, inflightCycle: 0 }), undefined, 'WARNING', /roll forward/],
    [
      'restore points broken and dropped 2 days ago',
      vmStatus({ pointsDropped: { cycle: 3, at: '2026-05-30T12:00:00Z', cycles: [1, 2], why: 'disk web-01.vmdk was applied without a reverse increment', broken: true } }),
      undefined,
      'WARNING',
      /restore points 1, 2 dropped by the commit of cycle 3 2 d 00 h ago: disk web-01\.vmdk was applied without a reverse increment; the VM can be restored to cycle 3 and later only/,
    ],
    [
      'many restore points dropped: the range',
      vmStatus({ pointsDropped: { cycle: 30, at: '2026-06-01T11:00:00Z', cycles: [10, 11, 12, 13, 29], why: 'w', broken: true } }),
      undefined,
      'WARNING',
      /restore points 10–29 \(5\) dropped by the commit of cycle 30 60 min ago/,
    ],
    [
      'restore points dropped 8 days ago: a week of WARNING is over',
      vmStatus({ pointsDropped: { cycle: 3, at: '2026-05-24T11:59:00Z', cycles: [1, 2], why: 'w', broken: true } }),
      undefined,
      'OK',
      undefined,
    ],
    [
      'a drop dated in the future (a hostile store, a skewed clock): no week-long warning from it',
      vmStatus({ pointsDropped: { cycle: 3, at: '2026-07-01T12:00:00Z', cycles: [1, 2], why: 'w', broken: true } }),
      undefined,
      'OK',
      undefined,
    ],
    [
      "a Ceph mirror's committed snapshot missing: the newest point newer than every damaged one is named, and the removal",
      vmStatus({
        points: [1, 2, 3],
        damagedPoints: [{ cycle: 1, disk: 'web-01.vmdk', file: 'p/gl.a@c1', problem: 'is missing' }],
        damagedMirror: [{ disk: 'web-01.vmdk', cycle: 3, file: 'p/gl.a@c3-x', problem: 'is missing (rbd snap ls does not list it: removed behind the store)' }],
      }),
      undefined,
      'CRITICAL',
      /mirror snapshot DAMAGED \(disk web-01\.vmdk: p\/gl\.a@c3-x is missing \(rbd snap ls.*\)\): the mirror's latest cycle 3 cannot be restored or failed over, and the next cycle cannot build on it .*; restore or fail over point 3 instead \(grainline restore --store STORE --vm web-01 --point 3 --to DIR, or grainline mirror failover --store STORE --vm web-01 --point 3\); archive the points to keep .*, then remove the mirror \(grainline mirror remove --store STORE --vm web-01 --yes\): the next run seeds the VM anew/,
    ],
    [
      "a Ceph mirror's image missing and no whole point: the removal only",
      vmStatus({
        points: [1],
        damagedPoints: [{ cycle: 1, disk: 'web-01.vmdk', file: 'p/gl.a@c1', problem: 'is missing' }],
        damagedMirror: [{ disk: 'web-01.vmdk', cycle: 3, file: 'p/gl.a@c3-x', problem: 'is missing: its image p/gl.a does not exist (removed behind the store)' }],
      }),
      undefined,
      'CRITICAL',
      /its image p\/gl\.a does not exist .*no whole restore point is kept to restore instead; remove the mirror \(grainline mirror remove --store STORE --vm web-01 --yes\)/,
    ],
    [
      "a Ceph mirror's snapshot of a disk removed from the VM: not the latest cycle's, CRITICAL all the same",
      vmStatus({ damagedMirror: [{ disk: 'old.vmdk', cycle: 2, file: 'p/gl.b@c2-y', problem: "is 4096 bytes, smaller than the disk's capacity 8192 (the image was shrunk)", removed: 3 }] }),
      undefined,
      'CRITICAL',
      /mirror snapshot DAMAGED \(disk old\.vmdk \(removed from the VM at cycle 3\): p\/gl\.b@c2-y is 4096 bytes.*\): the latest cycle does not read it \(no longer in the VM\); were the disk attached again, the next cycle could not build on it: then remove the mirror/,
    ],
    ['an empty damagedMirror (a whole Ceph mirror)', vmStatus({ damagedMirror: [] }), undefined, 'OK', undefined],
    [
      'restore points dropped because the VM keeps none any more: the operator chose it',
      vmStatus({ pointsDropped: { cycle: 3, at: '2026-06-01T11:50:00Z', cycles: [1, 2], why: 'w', broken: false } }),
      undefined,
      'OK',
      undefined,
    ],
  ]
  for (const [what, vm, maxAgeMs, state, words] of cases) {
    const h = assessMirror(vm, { now: NOW, ...(maxAgeMs === undefined ? {} : { maxAgeMs }) })
    t.equal(h.state, state, what)
    if (words !== undefined) t.match(h.problems.join('; '), words, what)
    else t.same(h.problems, [], what)
  }
  t.equal(assessMirror(vmStatus(), { now: NOW }).ageSeconds, 600)
  // the store is the worst of its mirrors, with one summary line and perfdata
  const s = assessStore({ store: '/s', vms: [vmStatus(), vmStatus({ vm: "it's=2", disk: { modified: true } })] }, { now: NOW, maxAgeMs: 3_600_000 })
  t.equal(s.state, 'CRITICAL')
  t.equal(s.exitCode, 2)
  t.match(s.summary, /^GRAINLINE CRITICAL - 1 of 2 mirrors not OK: it's=2 CRITICAL \(web-01\.vmdk modified/)
  t.equal(s.perfdata, "'web-01_age'=600s;;3600 'it''s_2_age'=600s;;3600")
  const ok = assessStore({ store: '/s', vms: [vmStatus(), vmStatus({ vm: 'db', committedAt: '2026-06-01T09:00:00Z' })] }, { now: NOW })
  t.equal(ok.summary, 'GRAINLINE OK - 2 mirrors OK, oldest commit 3 h 00 min ago')
  t.equal(ok.maxAgeSeconds, null)
  const long = assessStore({ store: '/s', vms: [vmStatus({ committedAt: '2026-05-20T12:00:00Z' })] }, { now: NOW })
  t.match(long.summary, /oldest commit 12 d 00 h ago/)
  const none = assessStore({ store: '/s', vms: [] }, { now: NOW })
  t.equal(none.state, 'UNKNOWN')
  t.equal(none.summary, 'GRAINLINE UNKNOWN - no mirrors in /s')
  const dir = t.testdir({ file: 'x' })
  await t.rejects(storeHealth(join(dir, 'missing')), { code: 'E_NOT_FOUND', message: /does not exist/ })
  await t.rejects(storeHealth(join(dir, 'file')), { code: 'E_NOT_FOUND', message: /not a folder/ })
  t.equal((await storeHealth(dir)).state, 'UNKNOWN')
})

t.test("the age against each VM's RPO target, as the dashboard shows it: OK, WARNING past 80 %, CRITICAL past it or never committed", async (t) => {
  const store = scratchDir(t)
  const ago = (ms: number): string => new Date(Date.now() - ms).toISOString()
  const state = (vm: string, cycle: number, committedAt: string | null): void => {
    mkdirSync(join(store, vm, '.grainline'), { recursive: true })
    writeFileSync(
      join(store, vm, '.grainline', 'state.json'),
      JSON.stringify({ format: 1, vm, compat: null, committedCycle: cycle, committedAt, displaySuffix: '', disks: {}, inflight: null, pending: null }),
    )
  }
  state('web', 3, ago(10 * 60_000))
  state('web-late', 3, ago(50 * 60_000))
  state('web-stale', 3, ago(2 * 3_600_000))
  state('db-1', 3, ago(2 * 60_000))
  state('never', 0, null)
  const text = await new ReceiverMetrics(store, () => 0, { targetMs: 3_600_000, vms: { 'db-*': 60_000 } }).registry.metrics()
  t.equal(sample(text, 'grainline_mirror_rpo_target_seconds', { vm: 'web' }), 3600, 'the default target')
  t.equal(sample(text, 'grainline_mirror_rpo_target_seconds', { vm: 'db-1' }), 60, 'a VM glob')
  t.equal(sample(text, 'grainline_mirror_rpo_state', { vm: 'web' }), 0, '10 min of 1 h: OK')
  t.equal(sample(text, 'grainline_mirror_rpo_state', { vm: 'web-late' }), 1, '50 min of 1 h: WARNING')
  t.equal(sample(text, 'grainline_mirror_rpo_state', { vm: 'web-stale' }), 2, '2 h of 1 h: CRITICAL')
  t.equal(sample(text, 'grainline_mirror_rpo_state', { vm: 'db-1' }), 2, '2 min of 1 min: CRITICAL')
  t.equal(sample(text, 'grainline_mirror_rpo_state', { vm: 'never' }), 2, 'never committed: CRITICAL')
  t.equal(sample(text, 'grainline_mirror_age_seconds', { vm: 'never' }), undefined)
  // without an rpo setting: 24 h, as the dashboard
  const plain = await new ReceiverMetrics(store, () => 0).registry.metrics()
  t.equal(sample(plain, 'grainline_mirror_rpo_target_seconds', { vm: 'web' }), 86_400)
  t.equal(sample(plain, 'grainline_mirror_rpo_state', { vm: 'web-stale' }), 0)
})

t.test('restore points and holds from the store at each scrape; a hostile state file is read, never trusted', async (t) => {
  const store = scratchDir(t)
  const state = (vm: string, extra: Record<string, unknown>): void => {
    mkdirSync(join(store, vm, '.grainline'), { recursive: true })
    writeFileSync(
      join(store, vm, '.grainline', 'state.json'),
      JSON.stringify({ format: 1, vm, compat: null, committedCycle: 5, committedAt: '2026-06-01T11:50:00Z', displaySuffix: '', disks: {}, inflight: null, pending: null, ...extra }),
    )
  }
  const point = (cycle: number, committedAt: unknown) => ({ cycle, committedAt, generation: '', disks: {} })
  state('kept', {
    points: [point(2, '2026-05-29T12:00:00Z'), point(3, '2026-05-30T12:00:00Z'), point(4, '2026-05-31T12:00:00Z')],
    holds: [{ kind: 'open', cycle: 3, dir: '/x', at: '2026-06-01T11:00:00Z' }],
  })
  state('dropped', { points: [], pointsDropped: { cycle: 5, at: '2026-06-01T11:50:00Z', cycles: [1, 2, 3, 4], why: 'disk a.vmdk was applied without a reverse increment', broken: true } })
  state('recent', { points: [], pointsDropped: { cycle: 5, at: new Date().toISOString(), cycles: [4], why: 'w', broken: true } })
  // every field of the record and of the points the wrong type or absurd: no metric from them, no failed scrape
  state('hostile', { points: [point(1, 42), point(2, 'not a date'), point(3, null)], pointsDropped: { cycle: '5', at: [], cycles: 'x', why: 7, broken: 'yes' }, holds: [] })
  // holds that are no list, or no records; a cycle that is no number: that VM unreadable, never a failed scrape
  state('hostile-holds', { holds: {} })
  state('hostile-holds2', { holds: [null, 1, 'x'] })
  state('hostile-cycle', { committedCycle: 'five' })
  state('hostile2', { points: [], pointsDropped: { cycle: 5, at: '2026-06-01T11:50:00Z', cycles: [1, 'two'], why: 'w', broken: true } })
  const m = new ReceiverMetrics(store, () => 0)
  const text = await m.registry.metrics()
  t.equal(sample(text, 'grainline_restore_points', { vm: 'kept' }), 3)
  t.equal(sample(text, 'grainline_mirror_holds', { vm: 'hostile-holds' }), 0, 'holds that are no list: none')
  t.equal(sample(text, 'grainline_mirror_holds', { vm: 'hostile-holds2' }), 0, 'holds that are no records: none')
  t.equal(sample(text, 'grainline_mirror_state_unreadable', { vm: 'hostile-cycle' }), 1, 'a cycle that is no number: that VM unreadable')
  t.equal(sample(text, 'grainline_mirror_health', { vm: 'hostile-cycle' }), 2)
  t.equal(sample(text, 'grainline_restore_point_oldest_timestamp_seconds', { vm: 'kept' }), Date.parse('2026-05-29T12:00:00Z') / 1000, 'how far back the VM can be restored')
  t.equal(sample(text, 'grainline_restore_point_newest_timestamp_seconds', { vm: 'kept' }), Date.parse('2026-05-31T12:00:00Z') / 1000)
  t.equal(sample(text, 'grainline_mirror_holds', { vm: 'kept' }), 1)
  t.equal(sample(text, 'grainline_restore_points_dropped_timestamp_seconds', { vm: 'kept' }), undefined, 'never dropped: absent')
  t.equal(sample(text, 'grainline_restore_points', { vm: 'dropped' }), 0)
  t.equal(sample(text, 'grainline_restore_point_oldest_timestamp_seconds', { vm: 'dropped' }), undefined, 'no point: absent')
  t.equal(sample(text, 'grainline_restore_points_dropped_timestamp_seconds', { vm: 'dropped', broken: 'true' }), Date.parse('2026-06-01T11:50:00Z') / 1000)
  t.equal(sample(text, 'grainline_mirror_holds', { vm: 'dropped' }), 0)
  // one gauge for every problem status names (0 OK, 1 WARNING, 2 CRITICAL): held, points broken this week
  t.equal(sample(text, 'grainline_mirror_health', { vm: 'kept' }), 1, 'held by an opened point: WARNING')
  t.equal(sample(text, 'grainline_mirror_health', { vm: 'hostile' }), 0)
  t.equal(sample(text, 'grainline_mirror_health', { vm: 'recent' }), 1, 'points broken and dropped this week: WARNING')
  t.equal(sample(text, 'grainline_mirror_health', { vm: 'dropped' }), 0, 'dropped months ago: OK')
  t.equal(sample(text, 'grainline_restore_points', { vm: 'hostile' }), 3, 'the points are counted')
  t.equal(sample(text, 'grainline_restore_point_oldest_timestamp_seconds', { vm: 'hostile' }), undefined, 'no valid time: no timestamp')
  t.equal(sample(text, 'grainline_restore_points_dropped_timestamp_seconds', { vm: 'hostile' }), undefined, 'a malformed record is ignored')
  t.equal(sample(text, 'grainline_restore_points_dropped_timestamp_seconds', { vm: 'hostile2' }), undefined, 'a record with a malformed cycle list is ignored')
  const st = await storeStatus(store)
  t.equal(st.vms.find((v) => v.vm === 'hostile')?.pointsDropped, undefined)
  t.equal(
    assessMirror(st.vms.find((v) => v.vm === 'hostile') as VmStatus, { now: NOW }).problems.some((p) => p.includes('dropped')),
    false,
  )
  t.same(st.vms.find((v) => v.vm === 'dropped')?.pointsDropped?.cycles, [1, 2, 3, 4])
})
