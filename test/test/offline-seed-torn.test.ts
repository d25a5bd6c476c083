// Offline seeding's most common mistake, end to end with real receiver and
// agent processes: the store is copied while its receiver runs. A copy tool
// takes one file after the other, in the order the folder lists them (cp -a);
// here the mirror's flat file is copied first and the VM's `.grainline`
// (state, journal, lock) later. The DR receiver must not trust such a copy —
// an incremental or a resume on it leaves the mirror silently different from
// its source — so it marks the VM diverged and the next run resyncs it:
// - one VM's folder copied mid-cycle: the copy's journal says durable extents
//   the copied flat never received; the lock file it carried has another
//   inode than it records (vm-lock.ts lockIsCopy);
// - the whole store copied while a whole cycle ran and ended between the flat
//   and its state (no lock left to copy): the store's marker
//   `.grainline-receiver` has another inode than it records (store-marker.ts).
import t from 'tap'
import { execFile } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { access, mkdir, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { expectedView, inflightResumeSeq, replicateCli, runCli, startSeedSites } from '@grainline/e2e'
import { failIfLingering, firstDifference, pollUntil, scratchDir } from '@grainline/test-utils'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const exec = promisify(execFile)
const MiB = 1024 * 1024

t.test('a store copied while a cycle writes it is not resumed on: the DR mirror is resynced, never left torn', async (t) => {
  const dir = scratchDir(t)
  // one durable batch per extent: the resume point moves with every extent applied
  const { local, dr } = await startSeedSites(t, dir, ['--batch-bytes', String(MiB)])
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
  t.match(d?.fallbackReason, /^E_DIVERGED: .*copied while a receiver/, "the report says why: the receiver's words, not the code alone")
  t.equal(await firstDifference(join(dr.store, 'app', 'app-flat.vmdk'), view), -1, 'DR mirror == the frozen view of cycle 2')
  const after = await runCli(['status', '--store', dr.store])
  t.equal(after.code, 0, `status OK after the resync: ${after.stdout.slice(0, 300)}`)
})

t.test('a whole store copied while its receiver ran a cycle between the flat and its state is resynced, never continued', async (t) => {
  const dir = scratchDir(t)
  const { local, dr } = await startSeedSites(t, dir)
  const vm = await createSampleVm(join(dir, 'src'), { name: 'web', disks: [{ sizeBytes: 32 * MiB }] })
  const state = ['--state-dir', join(dir, 'agent-state'), '--trivial-mb', '1']
  t.equal((await replicateCli(local, vm.vmxPath, state)).code, 0, 'seeded')
  await dr.receiver.stop()
  // cp -a of the running store, in an order the folder may list: the store's marker, the flat (cycle 1) …
  const marker = join(local.store, '.grainline-receiver')
  const hasMarker = await access(marker).then(
    () => true,
    () => false,
  )
  if (hasMarker) await exec('cp', ['-a', marker, dr.store])
  const vmDir = join(local.store, 'web')
  const carried = join(dr.store, 'web')
  await mkdir(carried, { recursive: true })
  await exec('cp', ['-a', '--sparse=always', join(vmDir, 'web-flat.vmdk'), carried])
  // … a whole cycle runs and commits meanwhile (its lock gone with its session) …
  await simulateGuestWrites(vm.vmxPath, { bytes: 8 * MiB, seed: 7, zeroFraction: 0.1 })
  const c2 = await replicateCli(local, vm.vmxPath, state)
  t.equal(c2.report?.vms[0]?.disks[0]?.mode, 'incremental', 'cycle 2 committed on the local receiver during the copy')
  // … and the rest: the state of cycle 2 beside the flat of cycle 1
  for (const e of await readdir(vmDir)) if (e !== 'web-flat.vmdk') await exec('cp', ['-a', join(vmDir, e), carried])
  await local.receiver.stop()

  await dr.restart()
  await simulateGuestWrites(vm.vmxPath, { bytes: 2 * MiB, seed: 8, zeroFraction: 0.1 })
  const view = await expectedView(vm.vmxPath, join(dir, 'view.raw'))
  const inc = await replicateCli(dr, vm.vmxPath, state)
  t.equal(inc.code, 0, inc.stderr.slice(-1500))
  const d = inc.report?.vms[0]?.disks[0]
  t.equal(d?.mode, 'resync', `the copy is resynced, not continued (${d?.mode})`)
  t.equal(await firstDifference(join(dr.store, 'web', 'web-flat.vmdk'), view), -1, 'DR mirror == the frozen view of cycle 3')
})
