// An operator's stop (SIGTERM) in the middle of a resync, and the next run,
// real receiver and agent processes over TLS on loopback at 4 MB/s: the
// bytes on the wire of the stopped run and of its resume, counted by the agent
// (its report's per-disk wireBytes) and independently by a proxy in front of
// the receiver (every byte the agent sent, TLS included), against an
// uninterrupted resync of the same change. A walkthrough reported "the resumed
// cycle put all 64 MiB on the wire"; measured here: the resume sends exactly
// the differing blocks from the receiver's durable resume point on, the two
// runs together one resync plus at most the extents in flight at the stop,
// and a mirror whose every block differs (booted, overwritten) legitimately
// needs the whole disk once, not twice. The report's dataBytes covers the
// whole plan (resumed part included), wireBytes only this run's payload.
import t, { type Test } from 'tap'
import { execFile, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createSampleVm, simulateGuestWrites, type SampleVm } from '@grainline/agent'
import { expectedView, inflightResumeSeq, replicateCli, startSite, type RunReport, type Site } from '@grainline/e2e'
import { failIfLingering, firstDifference, pollUntil, scratchDir, startCuttingProxy } from '@grainline/test-utils'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const exec = promisify(execFile)
const MiB = 1024 * 1024
const CAPACITY = 64 * MiB
const ARGS = ['--trivial-mb', '4', '--compress', 'none']
/** the TLS records, frames, Hello, maps and commit of one run: far below one block */
const OVERHEAD = 256 * 1024

type Disk = RunReport['vms'][number]['disks'][number] | undefined

const flatOf = (site: Site): string => join(site.store, 'rs', 'rs-flat.vmdk')

/** Overwrite the whole mirror through QEMU (its CID changes): every block differs, the next cycle must resync. */
async function overwriteMirror(site: Site, byte: number): Promise<void> {
  await exec('qemu-io', ['-f', 'vmdk', '-c', `write -P ${byte} 0 ${CAPACITY / MiB}M`, join(site.store, 'rs', 'rs.vmdk')])
}

/** One run through a fresh proxy: its report's first disk and the bytes the agent sent (proxy count). */
async function run(
  t: Test,
  site: Site,
  vm: SampleVm,
  args: string[],
  onSpawn?: (p: ChildProcess) => void,
): Promise<{ code: number | null; disk: Disk; reused: boolean | undefined; upstream: number; stdout: string }> {
  const proxy = await startCuttingProxy(site.receiver.port)
  t.teardown(() => proxy.close())
  const r = await replicateCli(site, vm.vmxPath, args, { port: proxy.port, ...(onSpawn === undefined ? {} : { onSpawn }) })
  await proxy.close()
  return { code: r.code, disk: r.report?.vms[0]?.disks[0], reused: r.report?.vms[0]?.reusedSnapshot, upstream: proxy.forwarded, stdout: r.stdout }
}

/** SIGTERM to the agent once the receiver's in-flight resume point reaches `seq` (from `grainline status`). */
function stopAtDurable(site: Site, seq: number): (p: ChildProcess) => void {
  return (p) => {
    let ended = false
    p.once('exit', () => {
      ended = true
    })
    pollUntil(
      async () => {
        if (ended) throw new Error(`the run ended before seq ${seq} was durable`)
        return (await inflightResumeSeq(site.store, 'rs')) >= seq ? true : undefined
      },
      { intervalMs: 50 },
    )
      .then(() => p.kill('SIGTERM'))
      .catch(() => {})
  }
}

t.test('a resync stopped by SIGTERM resumes at the durable point: the two runs send one resync, not the disk again', async (t) => {
  const dir = scratchDir(t)
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'rs', disks: [{ sizeBytes: CAPACITY, fill: 'random' }], seed: 5 })
  t.equal((await replicateCli(site, vm.vmxPath, ARGS)).code, 0, 'seed')
  const slow = [...ARGS, '--bwlimit', '4M']

  // 1. the walkthrough's case: a mirror whose every block differs (overwritten behind the receiver's back)
  await overwriteMirror(site, 0x5a)
  const e1 = await expectedView(vm.vmxPath, join(dir, 'e1.raw'))
  const stopped = await run(t, site, vm, slow, stopAtDurable(site, 8))
  t.equal(stopped.code, 143, 'the first run stopped by SIGTERM (exit 143)')
  t.equal(stopped.disk?.mode, 'resync', 'a resync (mirror modified)')
  const durable = await inflightResumeSeq(site.store, 'rs')
  t.ok(durable >= 8, `the receiver kept its resume point after the stop (seq ${durable})`)
  const resumed = await run(t, site, vm, ARGS)
  t.equal(resumed.code, 0, 'the next run completes')
  t.equal(resumed.reused, true, 'with the stopped run’s snapshot')
  t.equal(resumed.disk?.mode, 'resync', 'still the resync')
  t.same(resumed.disk?.resumedFrom, [durable], `resumed at the receiver's durable point ${durable}, not from 0`)
  t.equal(resumed.disk?.resync?.differing, CAPACITY / MiB, 'every block differs (a full resync is legitimate)')
  t.equal(resumed.disk?.dataBytes, CAPACITY, 'dataBytes: the whole plan, the resumed part included')
  t.match(
    resumed.stdout,
    new RegExp(
      `: resync \\(resync: resuming the interrupted resync of this cycle\\), 64\\.0 MiB data, 0 B zero, [0-9.]+ MiB on the wire \\(resumed at extent ${durable} of ${CAPACITY / MiB}: the extents before were durable from an earlier run or connection; data and zero count them, on the wire does not\\)`,
    ),
    'the summary says where it resumed and what the figures count',
  )
  t.equal(resumed.disk?.wireBytes, CAPACITY - durable * MiB, `the resume sent the ${CAPACITY / MiB - durable} blocks from seq ${durable} on, not all ${CAPACITY / MiB}`)
  t.ok(resumed.upstream < CAPACITY - durable * MiB + OVERHEAD, `the proxy saw ${resumed.upstream} bytes from the agent: the blocks not durable and the protocol`)
  t.equal(await firstDifference(flatOf(site), e1), -1, 'mirror == qemu-img convert of the frozen source view')
  const sent = (stopped.disk?.wireBytes ?? 0) + (resumed.disk?.wireBytes ?? 0)
  // the stopped run's payload: what became durable and the extents in flight at the stop (the agent's window)
  t.ok((stopped.disk?.wireBytes ?? 0) >= durable * MiB, `the stopped run sent ${stopped.disk?.wireBytes} bytes, the ${durable} durable blocks among them`)
  // the same change again, uninterrupted: the mirror overwritten the same way, the view unchanged
  await overwriteMirror(site, 0x5a)
  const whole = await run(t, site, vm, ARGS)
  t.equal(whole.code, 0, 'an uninterrupted resync of the same change')
  t.equal(whole.disk?.wireBytes, CAPACITY, `the uninterrupted resync sends ${CAPACITY} bytes`)
  t.equal(
    sent - CAPACITY,
    (stopped.disk?.wireBytes ?? 0) - durable * MiB,
    `stopped + resumed = ${sent}: the uninterrupted ${CAPACITY} plus only the ${sent - CAPACITY} bytes in flight and not durable at the stop`,
  )
  t.ok(stopped.upstream + resumed.upstream < 2 * CAPACITY - durable * MiB + 2 * OVERHEAD, `proxy: ${stopped.upstream} + ${resumed.upstream} bytes, not the disk twice`)

  // 2. `--resync` asked for after guest writes, stopped, then the same command again (an operator repeats it)
  const writes = await simulateGuestWrites(vm.vmxPath, { bytes: 24 * MiB, writeSize: MiB, seed: 3 })
  const e2 = await expectedView(vm.vmxPath, join(dir, 'e2.raw'))
  const stopped2 = await run(t, site, vm, [...slow, '--resync'], stopAtDurable(site, 4))
  t.equal(stopped2.code, 143, 'the --resync stopped by SIGTERM')
  const durable2 = await inflightResumeSeq(site.store, 'rs')
  t.ok(durable2 >= 4, `resume point ${durable2}`)
  const again = await run(t, site, vm, [...ARGS, '--resync'])
  t.equal(again.code, 0, 'the repeated --resync completes')
  t.equal(again.reused, true, 'with the stopped run’s snapshot')
  t.same(again.disk?.resumedFrom, [durable2], `the repeated --resync resumes at ${durable2}: it does not start the resync over`)
  const blocks = new Set(writes.flatMap((w) => [Math.floor(w.offset / MiB), Math.floor((w.offset + MiB - 1) / MiB)])).size
  t.equal(again.disk?.resync?.differing, blocks, `only the ${blocks} blocks the guest wrote differ`)
  const d = again.disk
  // of the durable2 extents below the resume point, at most zeroBytes / MiB were zero extents: the rest were data
  const bound = (d?.dataBytes ?? 0) - Math.max(0, durable2 - (d?.zeroBytes ?? 0) / MiB) * MiB
  t.ok((d?.wireBytes ?? Infinity) <= bound, `the resume sent ${d?.wireBytes} ≤ ${bound} bytes (${d?.dataBytes} bytes of differing data blocks in all)`)
  t.ok(again.upstream < bound + OVERHEAD, `proxy: ${again.upstream} bytes, far from the ${CAPACITY}-byte disk`)
  t.equal(await firstDifference(flatOf(site), e2), -1, 'mirror == qemu-img convert of the frozen source view')
})
