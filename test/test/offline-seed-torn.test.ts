// Offline seeding's most common mistake, end to end with real receiver and
// agent processes: the store is copied while a cycle is writing it. A copy
// tool takes one file after the other; here the mirror's flat file is copied
// first and the VM's `.grainline` (state, journal, lock) some extents later,
// as `cp -a` does when the folder lists the flat first. The copy's journal then
// says durable extents the copied flat never received. The DR receiver must
// not resume on it (the agent would skip those extents and the mirror would
// silently differ from its source): the lock file the copy carried has
// another inode than it records, so the VM is marked diverged, its cycle in
// flight rolled back, and the next run resyncs it exactly.
import t from 'tap'
import { execFile } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { mkdir, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { expectedView, inflightResumeSeq, replicateCli, runCli, startSite } from '@grainline/e2e'
import { failIfLingering, firstDifference, pollUntil, scratchDir } from '@grainline/test-utils'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const exec = promisify(execFile)
const MiB = 1024 * 1024

t.test('a store copied while a cycle writes it is not resumed on: the DR mirror is resynced, never left torn', async (t) => {
  const dir = scratchDir(t)
  // one durable batch per extent: the resume point moves with every extent applied
  const local = await startSite(join(dir, 'local'), ['*'], [], ['--batch-bytes', String(MiB)])
  const dr = await startSite(join(dir, 'dr'))
  t.teardown(async () => {
    await local.receiver.stop()
    await dr.receiver.stop()
  })
  const vm = await createSampleVm(join(dir, 'src'), { name: 'app', disks: [{ sizeBytes: 64 * MiB }] })
  const state = ['--state-dir', join(dir, 'agent-state'), '--trivial-mb', '1']
  const seed = await replicateCli(local, vm.vmxPath, state)
  t.equal(seed.code, 0, seed.stderr.slice(-1500))

  // cycle 2 to the local receiver, slowed down; the store is copied in two steps while it runs
  await simulateGuestWrites(vm.vmxPath, { bytes: 40 * MiB, seed: 5, zeroFraction: 0.1 })
  await dr.receiver.stop()
  const vmDir = join(local.store, 'app')
  const carried = join(dr.store, 'app')
  await mkdir(carried, { recursive: true })
  let agent: ChildProcess | undefined
  const run = replicateCli(local, vm.vmxPath, [...state, '--bwlimit', '1M'], { onSpawn: (p) => (agent = p) })
  let ended = false
  void run.finally(() => (ended = true))
  const durable = async (seq: number): Promise<number> =>
    await pollUntil(async () => {
      if (ended) throw new Error(`the cycle ended before extent ${seq} was durable`)
      const s = await inflightResumeSeq(local.store, 'app')
      return s >= seq ? s : undefined
    })
  const first = await durable(20)
  await exec('cp', ['-a', '--sparse=always', join(vmDir, 'app-flat.vmdk'), carried])
  const later = await durable(first + 40)
  for (const e of await readdir(vmDir)) if (e !== 'app-flat.vmdk') await exec('cp', ['-a', join(vmDir, e), carried])
  agent?.kill('SIGKILL')
  const killed = await run
  t.equal(killed.signal, 'SIGKILL', `the agent was stopped mid-cycle (flat copied at extent ${first}, the rest at ${later})`)
  await local.receiver.stop()

  await dr.restart()
  const view = await expectedView(vm.vmxPath, join(dir, 'view.raw'))
  const st = await runCli(['status', '--store', dr.store])
  t.match(st.stdout, /DIVERGED[^\n]*copied while a receiver/, `status says the carried mirror is not to be trusted: ${st.stdout.slice(0, 400)}`)
  const inc = await replicateCli(dr, vm.vmxPath, state)
  t.equal(inc.code, 0, inc.stderr.slice(-1500))
  const d = inc.report?.vms[0]?.disks[0]
  t.equal(d?.mode, 'resync', `the torn copy is resynced, not resumed (${d?.mode}, resumed from ${JSON.stringify(d?.resumedFrom)})`)
  t.equal(await firstDifference(join(dr.store, 'app', 'app-flat.vmdk'), view), -1, 'DR mirror == the frozen view of cycle 2')
  const after = await runCli(['status', '--store', dr.store])
  t.equal(after.code, 0, `status OK after the resync: ${after.stdout.slice(0, 300)}`)
})
