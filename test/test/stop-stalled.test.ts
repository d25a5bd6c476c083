// An operator's stop (SIGTERM: `systemctl stop`, a unit's TimeoutStartSec=)
// while the link to the receiver is stalled, real receiver and agent processes
// over TLS on loopback: the cutting proxy stops forwarding the agent's bytes
// mid-extents, so the agent's sends wait for a drain that never comes. The
// agent must stop at once (exit 143, the report naming the snapshot kept), not
// when a timeout ends the stalled connection (54 s with the old agent: the
// receiver's idle deadline; up to the agent's 120 s stall timeout); the next
// run resumes with that snapshot and the mirror is exact.
import t from 'tap'
import { join } from 'node:path'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { expectedView, replicateCli, startSite } from '@grainline/e2e'
import { failIfLingering, firstDifference, scratchDir, startCuttingProxy } from '@grainline/test-utils'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const MiB = 1024 * 1024
// no compression and no rate limit: the changed bytes outgrow every buffer between the agent and the stalled proxy
const ARGS = ['--trivial-mb', '4', '--compress', 'none']

t.test('SIGTERM while the link is stalled mid-extents: exit 143 at once, the snapshot kept; the next run resumes and is exact', async (t) => {
  const dir = scratchDir(t)
  const site = await startSite(join(dir, 'dr'), ['*'], [])
  t.teardown(() => site.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'st', disks: [{ sizeBytes: 96 * MiB, fill: 'random' }], seed: 23 })
  t.equal((await replicateCli(site, vm.vmxPath, ARGS)).code, 0, 'seed')
  await simulateGuestWrites(vm.vmxPath, { bytes: 48 * MiB, writeSize: 1024 * 1024, seed: 3 })
  const proxy = await startCuttingProxy(site.receiver.port)
  t.teardown(() => proxy.close())
  // the link stalls after 4 MiB of the cycle's bytes: every connection of the run
  proxy.plan = Array.from({ length: 8 }, () => ({ holdAfter: 4 * MiB }))
  let signalledAt = 0
  const stopped = await replicateCli(site, vm.vmxPath, ARGS, {
    port: proxy.port,
    // a watchdog past the old agent's 120 s wait, so that it fails here rather than hang the file
    timeoutMs: 180_000,
    onSpawn: (p) => {
      proxy
        .waitForHolds(1)
        // let the agent fill what buffers there are and block on the drain
        .then(() => new Promise((resolve) => setTimeout(resolve, 1500)))
        .then(() => {
          signalledAt = performance.now()
          p.kill('SIGTERM')
        })
        .catch(() => {})
    },
  })
  const stopMs = performance.now() - signalledAt
  t.ok(signalledAt > 0, 'the link stalled and the agent was signalled')
  t.equal(stopped.code, 143, `exit 143 after SIGTERM: ${stopped.stderr.slice(-800)}`)
  t.ok(stopMs < 30_000, `stopped ${Math.round(stopMs)} ms after SIGTERM (the old agent waited until a timeout ended the stalled connection: 54 s here)`)
  t.match(stopped.report?.vms[0]?.error, { code: 'E_ABORTED', message: /interrupted by SIGTERM: snapshot grainline-2 is kept and the next run resumes from it/ })
  proxy.plan = []
  proxy.release()

  const expected = await expectedView(vm.vmxPath, join(dir, 'expected.raw'))
  const again = await replicateCli(site, vm.vmxPath, ARGS)
  t.equal(again.code, 0, `the next run completes: ${again.stderr.slice(-800)}`)
  t.equal(again.report?.vms[0]?.reusedSnapshot, true, 'with the snapshot the stopped run kept')
  t.equal(again.report?.vms[0]?.cycle, 2)
  t.equal(await firstDifference(join(site.store, 'st', 'st-flat.vmdk'), expected), -1, 'mirror == qemu-img convert of the frozen source view')
})
