// Offline seeding end to end, real receiver and agent processes over TLS on
// loopback: the first cycle seeds into a receiver next to the proxy (site A),
// its store is carried whole to the DR receiver (site B, another certificate
// and token), and the next cycle to B is an incremental — the carried store
// keeps the generation the agent recorded (SPEC §5.8), so no re-seed crosses
// the slow link — with the mirror equal to the frozen source view.
import t from 'tap'
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { replicateCli, startSeedSites, expectedView } from '@grainline/e2e'
import { failIfLingering, firstDifference, scratchDir } from '@grainline/test-utils'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const exec = promisify(execFile)
const MiB = 1024 * 1024

t.test('seed locally, carry the store to the DR receiver, continue with incrementals', async (t) => {
  const dir = scratchDir(t)
  const { local, dr } = await startSeedSites(t, dir)
  const vm = await createSampleVm(join(dir, 'src'), { name: 'app01', disks: [{ sizeBytes: 24 * MiB }] })
  const stateDir = join(dir, 'agent-state')
  const flat = (store: string) => join(store, 'app01', 'app01-flat.vmdk')

  const seedView = await expectedView(vm.vmxPath, join(dir, 'seed.raw'))
  const seed = await replicateCli(local, vm.vmxPath, ['--state-dir', stateDir, '--trivial-mb', '4'])
  t.equal(seed.code, 0, seed.stderr.slice(-1500))
  t.equal(seed.report?.vms[0]?.disks[0]?.mode, 'seed')
  t.equal(await firstDifference(flat(local.store), seedView), -1, 'local mirror == the seeded view')

  // carry the store whole: both receivers stopped while it is copied (as a disk shipped by courier would be)
  await local.receiver.stop()
  await dr.receiver.stop()
  await exec('cp', ['-a', `${local.store}/.`, dr.store])
  await dr.restart()

  await simulateGuestWrites(vm.vmxPath, { bytes: 2 * MiB, seed: 11, zeroFraction: 0.1 })
  const incView = await expectedView(vm.vmxPath, join(dir, 'inc.raw'))
  const inc = await replicateCli(dr, vm.vmxPath, ['--state-dir', stateDir, '--trivial-mb', '4', '--certify', 'sha256'])
  t.equal(inc.code, 0, inc.stderr.slice(-1500))
  const d = inc.report?.vms[0]?.disks[0]
  t.equal(d?.mode, 'incremental', `the carried store continues incrementally${d?.fallbackReason === undefined ? '' : ` (fell back: ${d.fallbackReason})`}`)
  t.equal(inc.report?.vms[0]?.cycle, 2)
  t.ok((d?.dataBytes ?? Infinity) + (d?.zeroBytes ?? 0) < 8 * MiB, `only the change travelled (${d?.dataBytes} data + ${d?.zeroBytes} zero bytes of a 24 MiB disk)`)
  t.equal(d?.trivial?.ok, true)
  t.equal(d?.certify?.ok, true, 'certified against the frozen source')
  t.equal(await firstDifference(flat(dr.store), incView), -1, 'DR mirror == the frozen view of cycle 2')
})
