// Two receivers on one Ceph pool (issue #18, docs/CEPH.md): the second
// cannot take a VM the first holds (E_BUSY; its log names the holder, the agent hears no host or pid) and takes it
// over once the first is gone; real cluster, receivers and agents.
import t from 'tap'
import { join } from 'node:path'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { failIfLingering, haveCeph, pollUntil, scratchDir, startCephCluster, startCuttingProxy, startReceiverProcess } from '@grainline/test-utils'
import { CEPH_POOL, cephSite, cephStatus, frozenView, pointMatches, replicateCli, type Site } from '@grainline/e2e'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const MiB = 1024 * 1024
const POOL = CEPH_POOL
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-mgr ceph-common)'

t.test('two receivers on one pool: the second cannot take a VM the first holds, and takes it over once the first is gone', { skip }, async (t) => {
  const dir = scratchDir(t, 'grainline-ceph-2r-')
  const ceph = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const a = await cephSite(join(dir, 'a'), ceph)
  t.teardown(() => a.receiver.stop())
  // receiver B: same pool, same tokens and certificate as A, its own process and port
  const b = await startReceiverProcess({
    store: join(dir, 'b-unused'),
    tokens: a.tokens,
    tls: { cert: a.cert, key: a.key },
    args: ['--config', join(dir, 'a', 'receiver.json'), '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf],
  })
  t.teardown(() => b.stop())
  const siteB: Site = { ...a, receiver: b, restart: async () => b }
  const name = 'shared'
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes: 32 * MiB, fill: 'random' }], seed: 31 })
  const state = ['--state-dir', join(dir, 'agent-state')]
  t.equal((await replicateCli(a, vm.vmxPath, state)).code, 0, 'seed through A')
  await simulateGuestWrites(vm.vmxPath, { bytes: 16 * MiB, writeSize: 64 * 1024, seed: 5, zeroFraction: 0 })
  const exp = await frozenView(vm.vmxPath, join(dir, 'exp-2'))
  // A holds the VM mid-cycle (its stream held by the proxy)
  const proxy = await startCuttingProxy(a.receiver.port)
  t.teardown(() => proxy.close())
  proxy.plan = [{ holdAfter: 4 * MiB }]
  // A's agent reconnects when the held stream times out on a loaded machine: those connections are cut at their
  // first byte, so the cycle cannot complete through A behind the test's back (it did once: B then found cycle 2
  // committed and ran a cycle 3)
  proxy.cutAfter = 0
  let agentA: import('node:child_process').ChildProcess | undefined
  const runA = replicateCli(a, vm.vmxPath, ['--bwlimit', '8M', '--compress', 'none', ...state], { port: proxy.port, onSpawn: (p) => (agentA = p) })
  await proxy.waitForHolds(1)
  const durable = await pollUntil(
    async () => {
      const seq = (await cephStatus(ceph)).vms.find((v) => v.vm === name)?.disks[0]?.inflight?.resumeSeq ?? 0
      return seq > 0 ? seq : undefined
    },
    { intervalMs: 200 },
  )
  // B refuses the VM while A holds it: E_BUSY naming A
  const busy = await replicateCli(siteB, vm.vmxPath, ['--give-up', '3', '--state-dir', join(dir, 'agent-state-b')])
  t.not(busy.code, 0, 'B cannot take the VM A holds')
  t.match(JSON.stringify(busy.report?.vms[0]?.error ?? busy.stderr), /E_BUSY|held by/, `typed error to the agent: ${busy.stderr.slice(-600)}`)
  // the agent hears that another receiver session holds the VM, never the holder's host or pid (SPEC §7): B's log
  // (its operator) names the holder
  const told = busy.stderr + JSON.stringify(busy.report ?? {})
  t.match(told, /another receiver session holds the Ceph lease of VM shared/, 'the agent hears which VM is held')
  t.notMatch(told, /pid \d+/, "the agent does not hear the holder's pid")
  t.match(b.stderr(), /held by receiver .* pid \d+/, "B's log names the holder")
  // A dies (SIGKILL), its agent too: B takes the VM over and the same cycle resumes by its identity
  await a.receiver.kill9()
  agentA?.kill('SIGKILL')
  await runA
  const r = await replicateCli(siteB, vm.vmxPath, ['--give-up', '60', ...state])
  t.equal(r.code, 0, `B takes over and finishes the cycle: ${r.stderr.slice(-1500)}`)
  // the new agent process reuses the recorded in-flight snapshot, so the cycle identity is the same and B
  // resumes from the RADOS extent log A left (at or after the durable point seen under A), not from 0
  const resumedFrom = r.report?.vms[0]?.disks[0]?.resumedFrom ?? []
  t.comment(`takeover: durable point ${durable} under A; B's agent resumed from ${JSON.stringify(resumedFrom)}`)
  t.ok((resumedFrom[0] ?? 0) >= durable, `B resumed A's cycle from its durable point ${durable}, not from the start: ${JSON.stringify(resumedFrom)}`)
  const st = await cephStatus(ceph)
  t.equal(st.vms.find((v) => v.vm === name)?.committedCycle, 2, 'cycle 2 committed through B')
  await pointMatches(t, ceph, name, 2, join(dir, 'mirror-2'), exp, 'after the takeover')
})
