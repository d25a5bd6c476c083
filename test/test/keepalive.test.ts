// Liveness over long silences and slow links, real receiver and agent
// processes over TLS on loopback.
import t from 'tap'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { replicateCli, startSite } from '@grainline/e2e'
import { failIfLingering, scratchDir, startSlowLink } from '@grainline/test-utils'

failIfLingering(t)
const MiB = 1024 * 1024

t.test('an agent digesting a large view for certify after its commit keeps its session: it pings while it sends nothing', async (t) => {
  const dir = scratchDir(t)
  const cfg = join(dir, 'receiver.json')
  // the receiver ends a session that sends nothing for 600 ms; the agent's digest of the 2 GiB view (≥ 1.2 s at 1.7 GB/s) goes on longer than that after the commit
  await writeFile(cfg, JSON.stringify({ idleTimeoutMs: 600, pingIntervalMs: 400 }))
  const site = await startSite(join(dir, 'dr'), ['*'], [], ['--config', cfg])
  t.teardown(() => site.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'big', disks: [{ sizeBytes: 2048 * MiB }], seed: 31 })
  const r1 = await replicateCli(site, vm.vmxPath, ['--trivial-mb', '1'])
  t.equal(r1.code, 0, `seed ${r1.stderr.slice(-1500)}`)
  for (const [c, keepalive] of [
    [2, '150ms'],
    [3, '0'],
    [4, '150ms'],
  ] as const) {
    await simulateGuestWrites(vm.vmxPath, { bytes: MiB, writeSize: 64 * 1024, seed: c })
    const r = await replicateCli(site, vm.vmxPath, ['--trivial-mb', '1', '--certify', 'sha256', '--keepalive', keepalive])
    const d = r.report?.vms[0]?.disks[0]
    if (keepalive === '0') {
      // the control: without pings the receiver's deadline ends the session while the agent digests
      t.not(r.code, 0, `cycle ${c} without keep-alive fails`)
      t.match(r.stderr, /E_TIMEOUT nothing received for 600 ms/, 'on the E_TIMEOUT of the silent session')
      continue
    }
    t.equal(r.code, 0, `cycle ${c}, keep-alive ${keepalive}: exit 0 ${r.stderr.slice(-1500)}`)
    t.equal(r.report?.vms[0]?.reconnects, 0, 'no reconnect')
    t.equal(d?.certify?.ok, true, 'certified')
    t.notMatch(r.stderr, /E_TIMEOUT/)
  }
})

t.test('a slow uplink: the receiver does not cut an agent whose pong waits behind its own queued extents', async (t) => {
  const dir = scratchDir(t)
  const cfg = join(dir, 'receiver.json')
  // a ping every 400 ms; at 4 MiB/s the agent's queued megabytes (its 4 MiB high-water mark and the kernel's send buffer) delay its pongs by seconds
  await writeFile(cfg, JSON.stringify({ pingIntervalMs: 400 }))
  const site = await startSite(join(dir, 'dr'), ['*'], [], ['--config', cfg])
  t.teardown(() => site.receiver.stop())
  const link = await startSlowLink({ target: site.receiver.port, bytesPerSecond: 4 * MiB })
  t.teardown(() => link.close())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'slow', disks: [{ sizeBytes: 32 * MiB }], seed: 32 })
  const r = await replicateCli(site, vm.vmxPath, ['--trivial-mb', '1', '--compress', 'none', '--give-up', '60s'], { port: link.port })
  t.equal(r.code, 0, `seed over the slow link ${r.stderr.slice(-1500)}`)
  t.equal(r.report?.vms[0]?.reconnects, 0, 'no reconnect')
  t.notMatch(r.stderr, /missed a pong|connection lost/)
  t.ok(link.carried > 8 * MiB, `the seed crossed the link (${link.carried} bytes)`)
})
