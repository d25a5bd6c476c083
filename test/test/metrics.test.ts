/**
 * Prometheus metrics of a real receiver process (`--metrics-listen`), scraped
 * over HTTP while a real agent process replicates: the mirror's last commit
 * and age, its checks, the bytes applied, the cycle durations, sessions and
 * refused connections. Off by default; only GET /metrics answers.
 */
import t from 'tap'
import { join } from 'node:path'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { failIfLingering, httpCall, scratchDir } from '@grainline/test-utils'
import { promSample, replicateCli, startSite } from '@grainline/e2e'
import { readFile } from 'node:fs/promises'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const MiB = 1024 * 1024

let CA: Buffer | undefined

/** Scrape the receiver's HTTP listener: https with the site's certificate (the receiver has one). */
async function scrape(port: number, path = '/metrics'): Promise<{ status: number; type: string; text: string }> {
  const r = await httpCall(`https://127.0.0.1:${port}${path}`, CA === undefined ? {} : { ca: CA })
  return { status: r.status, type: String(r.headers['content-type'] ?? ''), text: r.text }
}

/** The metrics port from the receiver's `listening` line (stdout). */
function metricsPort(lines: readonly string[]): number | undefined {
  for (const l of lines) {
    try {
      const j = JSON.parse(l) as { event?: string; metricsPort?: number }
      if (j.event === 'listening') return j.metricsPort
    } catch {}
  }
  return undefined
}

t.test('metrics are off unless asked for', async (t) => {
  const site = await startSite(join(scratchDir(t), 'dr'))
  t.teardown(() => site.receiver.stop())
  t.equal(metricsPort(site.receiver.lines), undefined, 'no metrics port announced')
  t.notOk(
    site.receiver.lines.some((l) => l.includes('metrics listening')),
    'no metrics listener',
  )
})

t.test('a receiver process with --metrics-listen: mirror state, traffic, cycles, sessions, refusals', async (t) => {
  const dir = scratchDir(t)
  const site = await startSite(join(dir, 'dr'), ['web-*'], [], ['--metrics-listen', '127.0.0.1:0'])
  t.teardown(() => site.receiver.stop())
  CA = await readFile(site.cert)
  const port = metricsPort(site.receiver.lines)
  t.type(port, 'number', 'the listening line names the metrics port')
  const mp = port as number

  const empty = await scrape(mp)
  t.equal(empty.status, 200)
  t.match(empty.type, /^text\/plain; version=0\.0\.4/)
  t.equal(promSample(empty.text, 'grainline_sessions'), 0)
  t.equal(promSample(empty.text, 'grainline_mirror_committed_cycle', { vm: 'web-01' }), undefined, 'no mirror yet')
  t.equal((await scrape(mp, '/')).status, 303, 'the dashboard asks for a login; metrics need none')

  const vm = await createSampleVm(join(dir, 'src'), { name: 'web-01', disks: [{ sizeBytes: 8 * MiB }] })
  const before = Date.now() / 1000
  const seed = await replicateCli(site, vm.vmxPath, ['--certify', 'sha256'])
  t.equal(seed.code, 0, seed.stderr)
  await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, seed: 3, zeroFraction: 0 })
  const inc = await replicateCli(site, vm.vmxPath)
  t.equal(inc.code, 0, inc.stderr)
  const incDisk = inc.report?.vms[0]?.disks[0]
  t.equal(incDisk?.mode, 'incremental')

  const m = await scrape(mp)
  t.equal(m.status, 200)
  const text = m.text
  t.equal(promSample(text, 'grainline_mirror_committed_cycle', { vm: 'web-01' }), 2, 'committed cycle 2')
  const last = promSample(text, 'grainline_mirror_last_commit_timestamp_seconds', { vm: 'web-01' }) as number
  t.ok(last >= before - 1 && last <= Date.now() / 1000 + 1, `last commit at ${last}`)
  const age = promSample(text, 'grainline_mirror_age_seconds', { vm: 'web-01' }) as number
  t.ok(age >= 0 && age < 120, `RPO age ${age} s`)
  t.equal(promSample(text, 'grainline_mirror_cycle_in_flight', { vm: 'web-01' }), 0)
  t.equal(promSample(text, 'grainline_disk_capacity_bytes', { vm: 'web-01', disk: 'web-01.vmdk' }), 8 * MiB)
  t.equal(promSample(text, 'grainline_disk_diverged', { vm: 'web-01', disk: 'web-01.vmdk' }), 0)
  t.equal(promSample(text, 'grainline_disk_check_ok', { vm: 'web-01', disk: 'web-01.vmdk', check: 'trivial' }), 1)
  t.equal(promSample(text, 'grainline_checks_total', { vm: 'web-01', disk: 'web-01.vmdk', check: 'certify', result: 'ok' }), 1, 'the seed was certified')
  t.equal(promSample(text, 'grainline_checks_total', { vm: 'web-01', disk: 'web-01.vmdk', check: 'trivial', result: 'ok' }), 2)
  // bytes applied = what the two cycles covered (the seed's whole disk as data or zero, then the increment)
  const seedDisk = seed.report?.vms[0]?.disks[0]
  const data = promSample(text, 'grainline_applied_bytes_total', { vm: 'web-01', disk: 'web-01.vmdk', kind: 'data' })
  const zero = promSample(text, 'grainline_applied_bytes_total', { vm: 'web-01', disk: 'web-01.vmdk', kind: 'zero' })
  t.equal(data, (seedDisk?.dataBytes ?? 0) + (incDisk?.dataBytes ?? 0), 'data bytes applied = data bytes the agent sent')
  t.equal(zero, (seedDisk?.zeroBytes ?? 0) + (incDisk?.zeroBytes ?? 0))
  t.equal(promSample(text, 'grainline_cycle_duration_seconds_count', { vm: 'web-01' }), 2, 'two committed cycles timed')
  t.ok((promSample(text, 'grainline_cycle_duration_seconds_sum', { vm: 'web-01' }) ?? 0) > 0)
  t.equal(promSample(text, 'grainline_sessions_total', { peer: 'proxy-a' }), 2, 'one session per run')
  t.equal(promSample(text, 'grainline_sessions'), 0, 'none open now')
  t.equal(promSample(text, 'grainline_connections_refused_total', { reason: 'auth' }), undefined, 'nothing refused yet')
  t.ok((promSample(text, 'grainline_receiver_process_resident_memory_bytes') ?? 0) > 0, 'process metrics')

  // a wrong token on a real upgrade is counted as refused (auth)
  const WebSocket = (await import('ws')).default
  const ws = new WebSocket(`wss://127.0.0.1:${site.receiver.port}`, 'grainline.v2', { headers: { Authorization: 'Bearer wrong-token' }, rejectUnauthorized: false })
  await new Promise<void>((resolve) => {
    ws.on('unexpected-response', () => resolve())
    ws.on('error', () => resolve())
  })
  ws.terminate()
  const after = await scrape(mp)
  t.equal(promSample(after.text, 'grainline_connections_refused_total', { reason: 'auth' }), 1, 'the refused token is counted')
})
