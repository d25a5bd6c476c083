// Faults, end to end with real processes: the connection cut at random points,
// the receiver killed (SIGKILL) during apply and restarted, the agent killed
// during a cycle and run again, the receiver's disk filling up.
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { writeFile, rm, mkdtemp, readdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createLocalDriver, createSampleVm, simulateGuestWrites, prng } from '@grainline/agent'
import { failIfLingering, firstDifference, pollUntil, scratchDir, startCuttingProxy, startReceiverProcess } from '@grainline/test-utils'
import { startSite, replicateCli, runCli, inflightResumeSeq, frozenView } from '@grainline/e2e'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const exec = promisify(execFile)
const MiB = 1024 * 1024

/**
 * Wait until the receiver's store shows a durable in-flight point past seq 0
 * for this VM. Call it while a proxy holds the stream: the cycle then cannot
 * finish (and the point vanish) before we look, however loaded the machine.
 */
async function waitInflight(store: string, vm: string): Promise<number> {
  return await pollUntil(
    async () => {
      const seq = await inflightResumeSeq(store, vm)
      return seq > 0 ? seq : undefined
    },
    { intervalMs: 100 },
  )
}

/**
 * Run a cycle of `vmx` through a proxy that holds the connection after 16 MiB of its (~40 MiB) change, and SIGKILL the
 * agent once the receiver has some of it durable in flight: killed mid-cycle, never after it. Returns that resume seq.
 */
async function killAgentMidCycle(t: Test, site: Awaited<ReturnType<typeof startSite>>, vmx: string, vm: string): Promise<number> {
  const proxy = await startCuttingProxy(site.receiver.port)
  t.teardown(() => proxy.close())
  proxy.plan = [{ holdAfter: 16 * MiB }]
  let durable = 0
  const killed = await replicateCli(site, vmx, ['--bwlimit', '8M', '--compress', 'none'], {
    port: proxy.port,
    onSpawn: (p) => {
      proxy
        .waitForHolds(1)
        .then(() => waitInflight(site.store, vm))
        .then(
          (seq) => {
            durable = seq
            p.kill('SIGKILL')
          },
          () => p.kill('SIGKILL'),
        )
    },
  })
  t.equal(killed.signal, 'SIGKILL', 'the agent was killed mid-cycle')
  return durable
}

async function mirrorMatches(t: Test, mirrorFlats: string[], raws: string[], what: string): Promise<void> {
  for (const [i, raw] of raws.entries()) {
    t.equal(await firstDifference(mirrorFlats[i] as string, raw), -1, `${what}: mirror disk ${i} equals the frozen view`)
  }
}

t.test('connection cut at random points: the agent resumes and the mirror ends correct', async (t) => {
  const dir = scratchDir(t, 'grainline-e2e-')
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'cut', disks: [{ sizeBytes: 64 * MiB, fill: 'random' }], seed: 5 })
  const proxy = await startCuttingProxy(site.receiver.port)
  t.teardown(() => proxy.close())
  const rnd = prng(99)
  const flats = [join(site.store, 'cut', 'cut-flat.vmdk')]
  for (let cycle = 1; cycle <= 3; cycle++) {
    if (cycle > 1) await simulateGuestWrites(vm.vmxPath, { bytes: 24 * MiB, seed: cycle, zeroFraction: 0 })
    const expected = await frozenView(vm.vmxPath, join(dir, `exp-${cycle}`))
    // three cuts at random points of the stream, then a clean link
    proxy.plan = [0, 1, 2].map(() => Math.floor((2 + rnd() * 14) * MiB))
    const r = await replicateCli(site, vm.vmxPath, ['--certify', 'xxh64'], { port: proxy.port })
    t.equal(r.code, 0, `cycle ${cycle} survives the cuts: ${r.stderr.slice(-1500)}`)
    t.equal(r.report?.vms[0]?.ok, true)
    await mirrorMatches(t, flats, expected, `cycle ${cycle} after cuts`)
  }
  t.ok(proxy.cuts >= 3, `the link was really cut (${proxy.cuts} cuts)`)
})

t.test('receiver killed with SIGKILL during apply, restarted: the agent resumes', async (t) => {
  const dir = scratchDir(t, 'grainline-e2e-')
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'rk', disks: [{ sizeBytes: 64 * MiB, fill: 'random' }], seed: 6 })
  const flats = [join(site.store, 'rk', 'rk-flat.vmdk')]
  const seedExp = await frozenView(vm.vmxPath, join(dir, 'exp-1'))
  t.equal((await replicateCli(site, vm.vmxPath)).code, 0, 'seed')
  await mirrorMatches(t, flats, seedExp, 'seed')
  await simulateGuestWrites(vm.vmxPath, { bytes: 40 * MiB, seed: 2, zeroFraction: 0 })
  const exp = await frozenView(vm.vmxPath, join(dir, 'exp-2'))
  // the proxy holds the stream at 16 MiB of the ~40 MiB change, so the kill
  // lands mid-apply; a rate limit makes the receiver apply (and journal its
  // resume point) in many small batches before that
  const proxy = await startCuttingProxy(site.receiver.port)
  t.teardown(() => proxy.close())
  proxy.plan = [{ holdAfter: 16 * MiB }]
  const run = replicateCli(site, vm.vmxPath, ['--bwlimit', '8M', '--give-up', '60', '--compress', 'none'], { port: proxy.port })
  await proxy.waitForHolds(1)
  const durable = await waitInflight(site.store, 'rk')
  await site.receiver.kill9()
  // the held connection died with the receiver; the agent reconnects through the proxy to the restarted one
  await site.restart()
  const r = await run
  t.equal(r.code, 0, `the cycle completes after the receiver restart: ${r.stderr.slice(-1500)}`)
  const d = r.report?.vms[0]?.disks[0]
  t.ok((r.report?.vms[0]?.reconnects ?? 0) >= 1, 'the agent reconnected')
  t.ok((d?.resumedFrom.length ?? 0) >= 2 && (d?.resumedFrom.at(-1) ?? 0) >= durable, `resumed from the durable point (${durable}), not from 0 (${JSON.stringify(d?.resumedFrom)})`)
  await mirrorMatches(t, flats, exp, 'after receiver SIGKILL + resume')
})

t.test('agent killed during a cycle and run again: the mirror ends correct', async (t) => {
  const dir = scratchDir(t, 'grainline-e2e-')
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'ak', disks: [{ sizeBytes: 64 * MiB, fill: 'random' }], seed: 7 })
  const flats = [join(site.store, 'ak', 'ak-flat.vmdk')]
  t.equal((await replicateCli(site, vm.vmxPath)).code, 0, 'seed')
  await simulateGuestWrites(vm.vmxPath, { bytes: 40 * MiB, seed: 3, zeroFraction: 0 })
  const exp = await frozenView(vm.vmxPath, join(dir, 'exp-2'))
  const durable = await killAgentMidCycle(t, site, vm.vmxPath, 'ak')
  // the guest keeps writing into the new running delta; the rerun must still ship exactly the frozen view
  await simulateGuestWrites(vm.vmxPath, { bytes: 8 * MiB, seed: 33, zeroFraction: 0.2 })
  const r = await replicateCli(site, vm.vmxPath, ['--certify', 'sha1'])
  t.equal(r.code, 0, `the rerun completes: ${r.stderr.slice(-1500)}`)
  t.equal(r.report?.vms[0]?.cycle, 2, 'the rerun finishes cycle 2 (it reuses the snapshot it left)')
  t.ok((r.report?.vms[0]?.disks[0]?.resumedFrom[0] ?? 0) >= durable && durable > 0, `the rerun resumed at the durable point ${durable} (${JSON.stringify(r.report?.vms[0]?.disks[0]?.resumedFrom)})`)
  await mirrorMatches(t, flats, exp, 'after agent SIGKILL + rerun')
  const next = await frozenView(vm.vmxPath, join(dir, 'exp-3'))
  t.equal((await replicateCli(site, vm.vmxPath)).code, 0, 'a further cycle')
  await mirrorMatches(t, flats, next, 'cycle 3')
})

t.test("the in-flight snapshot removed on the host after the agent was killed: the rerun rolls the receiver's cycle back, hears the undo as VmProgress (protocol v5), and ends correct", async (t) => {
  const dir = scratchDir(t, 'grainline-e2e-')
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'rb', disks: [{ sizeBytes: 64 * MiB, fill: 'random' }], seed: 17 })
  const flats = [join(site.store, 'rb', 'rb-flat.vmdk')]
  t.equal((await replicateCli(site, vm.vmxPath)).code, 0, 'seed')
  await simulateGuestWrites(vm.vmxPath, { bytes: 40 * MiB, seed: 5, zeroFraction: 0 })
  await killAgentMidCycle(t, site, vm.vmxPath, 'rb')
  // someone removes the agent's in-flight snapshot on the host: the cycle cannot resume, its changes merge into the
  // older snapshot's delta
  const driver = createLocalDriver()
  const handle = await driver.openVm(vm.vmxPath)
  const snaps = await driver.listSnapshots(handle)
  const inflight = snaps.find((s) => s.name === 'grainline-2')
  t.ok(inflight !== undefined, `the in-flight snapshot exists (${snaps.map((s) => s.name).join(', ')})`)
  await driver.removeSnapshot(handle, inflight as NonNullable<typeof inflight>)
  const exp = await frozenView(vm.vmxPath, join(dir, 'exp-2'))
  const r = await replicateCli(site, vm.vmxPath, ['--certify', 'xxh64'], { logLevel: 'info' })
  t.equal(r.code, 0, `the rerun completes: ${r.stderr.slice(-1500)}`)
  const lines = r.stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg?: string; step?: string; doneBytes?: number; totalBytes?: number })
  t.ok(
    lines.some((l) => l.msg === 'rolled back an abandoned in-flight cycle'),
    'the agent rolled the abandoned cycle back',
  )
  const heard = lines.filter((l) => l.step === 'undo')
  t.ok(heard.length >= 2, `the agent heard the undo (${heard.length} reports)`)
  t.match(heard[0], { msg: 'the receiver rolls back the interrupted cycle (writing back what it overwrote)', doneBytes: 0 }, 'from its start')
  const total = heard[0]?.totalBytes ?? 0
  t.ok(total >= (16 * MiB) / 2, `to its end: the bytes the cycle had overwritten (${total})`)
  t.match(heard.at(-1), { doneBytes: total, totalBytes: total })
  await mirrorMatches(t, flats, exp, 'after the rollback and a new cycle')
})

t.test('the receiver disk fills up: a clean, reported failure; the mirror stays at its last commit', async (t) => {
  const dir = scratchDir(t, 'grainline-e2e-')
  // outside the test dir: tap removes the test dir before our teardown unmounts
  const mnt = await mkdtemp(join(tmpdir(), 'grainline-small-store-'))
  // a 48 MiB file system for the store (CI runs as root)
  await exec('mount', ['-t', 'tmpfs', '-o', 'size=48m', 'tmpfs', mnt])
  t.teardown(async () => {
    await exec('umount', ['-l', mnt]).catch(() => {})
    await rm(mnt, { recursive: true, force: true })
  })
  const site = await startSite(join(dir, 'dr'))
  await site.receiver.stop()
  site.receiver = await startReceiverProcess({ store: join(mnt, 'store'), tokens: site.tokens, tls: { cert: site.cert, key: site.key } })
  t.teardown(() => site.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'full', disks: [{ sizeBytes: 32 * MiB, fill: 'random' }], seed: 8 })
  const flat = join(mnt, 'store', 'full', 'full-flat.vmdk')
  const seedExp = await frozenView(vm.vmxPath, join(dir, 'exp-1'))
  t.equal((await replicateCli(site, vm.vmxPath)).code, 0, 'seed fits')
  t.equal(await firstDifference(flat, seedExp[0] as string), -1, 'seed correct')
  // leave ~2 MiB free, then ship 12 MiB of change (the undo journal needs room)
  const { stdout } = await exec('df', ['-B1', '--output=avail', mnt])
  const avail = Number(stdout.trim().split('\n').at(-1))
  await writeFile(join(mnt, 'ballast'), Buffer.alloc(Math.max(0, avail - 2 * MiB)))
  await simulateGuestWrites(vm.vmxPath, { bytes: 12 * MiB, seed: 4, zeroFraction: 0 })
  const exp2 = await frozenView(vm.vmxPath, join(dir, 'exp-2'))
  const failed = await replicateCli(site, vm.vmxPath, ['--give-up', '5'])
  t.not(failed.code, 0, 'the cycle fails')
  const code = failed.report?.vms[0]?.error?.code ?? failed.report?.vms[0]?.disks[0]?.error?.code ?? ''
  t.match(`${code} ${failed.stdout} ${failed.stderr}`, /NO_SPACE|ENOSPC|no space/i, 'the failure says the disk is full')
  t.equal(failed.report?.vms[0]?.vm, 'full', 'the report names the VM')
  // the receiver stays up and the mirror is still exactly the last committed point
  t.equal(site.receiver.proc.exitCode, null, 'the receiver is still running')
  const st = JSON.parse((await runCli(['status', '--store', join(mnt, 'store'), '--output', 'json'])).stdout) as { vms: { vm: string; committedCycle: number; inflightCycle: number }[] }
  t.match(st.vms[0], { vm: 'full', committedCycle: 1, inflightCycle: 0 }, 'status: the failed cycle was rolled back, committed cycle 1')
  t.equal(await firstDifference(flat, seedExp[0] as string), -1, 'mirror still equals the seed after the failure')
  // free the space: the next run completes the cycle
  await rm(join(mnt, 'ballast'))
  const ok = await replicateCli(site, vm.vmxPath, ['--certify', 'xxh64'])
  t.equal(ok.code, 0, `after freeing space the cycle completes: ${ok.stderr.slice(-1500)}`)
  t.equal(await firstDifference(flat, exp2[0] as string), -1, 'mirror correct after the retry')
  t.same(
    (await readdir(join(mnt, 'store', 'full'))).filter((f) => f.endsWith('.seed')),
    [],
    'no stray files',
  )
})
