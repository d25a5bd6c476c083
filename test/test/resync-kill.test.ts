// A resync killed with SIGKILL at random points resumes and ends exact (issue
// #13), real receiver and agent processes over TLS on loopback: the agent
// killed twice (early, then once extents are durable) and run again; the
// receiver killed twice in one run and restarted while the agent reconnects.
// The kill points are drawn from a seeded generator and reached through the
// cutting proxy's hold (an event), never a sleep. Then the kept block map:
// after an incremental, a `--resync` reads only the mirror blocks written
// since the last full read (the receiver's `disk sealed` log), and `grainline
// status` shows the disk proven by that full-read resync.
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createSampleVm, prng, simulateGuestWrites } from '@grainline/agent'
import { expectedView, inflightResumeSeq, replicateCli, runCli, startSite, type RunReport, type Site } from '@grainline/e2e'
import { failIfLingering, firstDifference, pollUntil, scratchDir, startCuttingProxy } from '@grainline/test-utils'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const exec = promisify(execFile)
const MiB = 1024 * 1024
const CAPACITY = 48 * MiB
const ARGS = ['--trivial-mb', '4', '--compress', 'none', '--bwlimit', '16M']

const flatOf = (site: Site): string => join(site.store, 'kr', 'kr-flat.vmdk')

/** Overwrite `[from, from + length)` MiB of the mirror through QEMU (its CID changes): the next cycle must resync. */
async function damage(site: Site, from: number, length: number, byte: number): Promise<void> {
  await exec('qemu-io', ['-f', 'vmdk', '-c', `write -P ${byte} ${from}M ${length}M`, join(site.store, 'kr', 'kr.vmdk')])
}

/** Resolve when the proxy holds its `n`th connection; reject if the run ends first (the hold point was past the cycle). */
async function held(proxy: Awaited<ReturnType<typeof startCuttingProxy>>, n: number, run: Promise<unknown>): Promise<void> {
  await Promise.race([
    proxy.waitForHolds(n),
    run.then(() => {
      throw new Error(`the run ended before hold ${n}`)
    }),
  ])
}

/** The in-flight resume point once it reaches `seq` (from `grainline status`); rejects if the run ends first. */
async function untilDurable(site: Site, seq: number, run: Promise<unknown>): Promise<number> {
  let ended = false
  const end = (): void => {
    ended = true
  }
  void run.then(end, end)
  return await pollUntil(
    async () => {
      if (ended) throw new Error(`the run ended before seq ${seq} was durable`)
      const s = await inflightResumeSeq(site.store, 'kr')
      return s >= seq ? s : undefined
    },
    { intervalMs: 50 },
  )
}

async function exact(t: Test, site: Site, expected: string, what: string): Promise<void> {
  t.equal(await firstDifference(flatOf(site), expected), -1, `${what}: mirror == qemu-img convert of the frozen source view`)
}

t.test('a resync killed at random points (agent, receiver; SIGKILL) resumes and ends exact; the next resync reads only what changed', async (t) => {
  const rnd = prng(1313)
  const dir = scratchDir(t)
  // one durable batch per extent: the resume point moves with every extent applied
  const site = await startSite(join(dir, 'dr'), ['*'], [], ['--batch-bytes', String(MiB)])
  t.teardown(() => site.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'kr', disks: [{ sizeBytes: CAPACITY, fill: 'random' }], seed: 41 })
  t.equal((await replicateCli(site, vm.vmxPath, ARGS)).code, 0, 'seed')
  const proxy = await startCuttingProxy(site.receiver.port)
  t.teardown(() => proxy.close())

  // 1. the agent, killed twice at holds of the link: early (handshake / block map), then mid-extents once some are durable
  await damage(site, 0, 32, 0x5a)
  const e1 = await expectedView(vm.vmxPath, join(dir, 'e1.raw'))
  let durable = 0
  for (const [i, holdAfter] of [Math.floor(2048 + rnd() * 16384), Math.floor((0.1 + 0.5 * rnd()) * 32 * MiB)].entries()) {
    // every connection of the run holds there (a first one may meet the receiver still busy with the killed run's session)
    proxy.plan = Array.from({ length: 8 }, () => ({ holdAfter }))
    const before = proxy.holds
    const killed = await replicateCli(site, vm.vmxPath, ARGS, {
      port: proxy.port,
      onSpawn: (p) => {
        const exited = new Promise((resolve) => p.once('exit', resolve))
        held(proxy, before + 1, exited)
          .then(async () => {
            if (i === 1) durable = await untilDurable(site, 1, exited)
          })
          .finally(() => p.kill('SIGKILL'))
          .catch(() => {})
      },
    })
    t.equal(killed.signal, 'SIGKILL', `agent killed at a hold after ${holdAfter} bytes upstream`)
  }
  proxy.plan = []
  t.ok(durable > 0, `part of the resync was durable when the agent was killed mid-extents (seq ${durable})`)
  const r1 = await replicateCli(site, vm.vmxPath, ARGS)
  const d1 = r1.report?.vms[0]?.disks[0]
  t.equal(r1.code, 0, `the rerun completes: ${r1.stderr.slice(-1500)}`)
  t.equal(d1?.mode, 'resync', 'still the resync')
  t.equal(r1.report?.vms[0]?.reusedSnapshot, true, 'with the snapshot of the killed runs')
  t.ok((d1?.resumedFrom[0] ?? 0) >= durable, `resumed at the durable point ${durable} or later (${JSON.stringify(d1?.resumedFrom)}), not from 0`)
  await exact(t, site, e1, 'after two agent kills')

  // 2. the receiver, killed twice in one run at holds of the link (early, then mid-extents once some are durable) and restarted
  await damage(site, 8, 32, 0x77)
  const e2 = await expectedView(vm.vmxPath, join(dir, 'e2.raw'))
  const [early2, mid2] = [Math.floor(2048 + rnd() * 16384), Math.floor((0.1 + 0.5 * rnd()) * 32 * MiB)]
  const holds = proxy.holds
  proxy.plan = [{ holdAfter: early2 }]
  const run = replicateCli(site, vm.vmxPath, [...ARGS, '--give-up', '120'], { port: proxy.port })
  await held(proxy, holds + 1, run)
  // the reconnections while the receiver is down fail before any hold; the first that gets through holds mid-extents
  proxy.plan = Array.from({ length: 64 }, () => ({ holdAfter: mid2 }))
  await site.receiver.kill9()
  await site.restart()
  await held(proxy, holds + 2, run)
  const seq2 = await untilDurable(site, 1, run)
  proxy.plan = []
  await site.receiver.kill9()
  await site.restart()
  const r2 = await run
  const v2 = r2.report?.vms[0]
  t.equal(r2.code, 0, `the run completes across two receiver kills (the second at seq ${seq2}): ${r2.stderr.slice(-1500)}`)
  t.equal(v2?.disks[0]?.mode, 'resync')
  t.ok((v2?.reconnects ?? 0) >= 2, `the agent reconnected (${v2?.reconnects})`)
  t.ok((v2?.disks[0]?.resumedFrom.at(-1) ?? 0) >= seq2, `the last connection resumed at the durable point ${seq2} or later (${JSON.stringify(v2?.disks[0]?.resumedFrom)})`)
  await exact(t, site, e2, 'after two receiver kills')
  const resynced = v2?.disks[0]?.resync?.differing ?? 0
  t.ok(resynced >= 32, `the resync rewrote the damaged blocks (${resynced})`)

  // 3. the kept map: an incremental, then --resync reads only the blocks written since the full read
  const writes = await simulateGuestWrites(vm.vmxPath, { bytes: MiB, writeSize: 64 * 1024, seed: 9 })
  const incBlocks = new Set(writes.flatMap((w) => [Math.floor(w.offset / MiB), Math.floor((w.offset + 64 * 1024 - 1) / MiB)])).size
  const e3 = await expectedView(vm.vmxPath, join(dir, 'e3.raw'))
  t.equal((await replicateCli(site, vm.vmxPath, ARGS)).report?.vms[0]?.disks[0]?.mode, 'incremental', 'an incremental')
  const r3 = await replicateCli(site, vm.vmxPath, [...ARGS, '--resync'])
  const d3 = r3.report?.vms[0]?.disks[0] as RunReport['vms'][number]['disks'][number] | undefined
  t.equal(r3.code, 0, `--resync: ${r3.stderr.slice(-1500)}`)
  t.same(d3?.resync?.differing, 0, 'nothing differs')
  await exact(t, site, e3, 'after --resync')
  // the receiver's log line of the --resync (the last disk sealed: it committed before the run ended)
  const line = site.receiver.lines.filter((l) => l.includes('"disk sealed"')).at(-1) ?? '{}'
  const sealed = JSON.parse(line) as { mapMirrorBytes: number; mapKeptBlocks: number }
  const stale = sealed.mapMirrorBytes / MiB
  t.equal(stale + sealed.mapKeptBlocks, CAPACITY / MiB, 'every block either read or taken from the kept map')
  t.ok(stale > 0 && stale <= resynced + incBlocks, `read only the ${stale} blocks written since the full read (≤ ${resynced} resync + ${incBlocks} incremental), not ${CAPACITY / MiB}`)
  const st = JSON.parse((await runCli(['status', '--store', site.store, '--output', 'json'])).stdout) as { vms: Array<{ disks: Array<{ proven: { kind: string } | null }> }> }
  t.match(st.vms[0]?.disks[0]?.proven, { kind: 'resync' }, 'status: proven by the resync that read every block')
})
