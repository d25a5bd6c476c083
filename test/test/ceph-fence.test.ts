// Fencing on the Ceph store (issue #18, docs/CEPH.md "Locks, several
// receivers and fencing"): a real one-node cluster, real receiver and agent
// processes. Receiver A stalls (it and its Ceph helpers SIGSTOPped, as a
// host that froze or lost the cluster) at its commit point — the lease
// checked, the state object's write not yet sent — and stays stopped past
// its lease. Receiver B takes the VM over (blocklisting A's clients first),
// the agent resumes the cycle into B, and B commits. A is then continued: its
// commit write, in flight since before its lease ran out, must change
// nothing — the state object, the snapshots and the image read as B left
// them — and A's process reports the fencing error. Without the fencing the
// state write lands and names a snapshot B removed.
import t from 'tap'
import { readdirSync, readFileSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { type CephCluster, failIfLingering, firstDifference, haveCeph, pollUntil, scratchDir, startCephCluster, startReceiverProcess } from '@grainline/test-utils'
import { startSite, replicateCli, runCli, type Site, frozenView } from '@grainline/e2e'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const MiB = 1024 * 1024
const POOL = 'glfence'
const LEASE = 6
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-mgr ceph-common)'

/** The children of `pid` (its Ceph helpers), from /proc. */
function children(pid: number): number[] {
  const out: number[] = []
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8')
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(e))
    } catch {
      // ended meanwhile
    }
  }
  return out
}

/** The state of process `pid` (its main thread): R running, S sleeping, T stopped … */
function procState(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
}

const signal = (pid: number, sig: NodeJS.Signals): void => {
  try {
    process.kill(pid, sig)
  } catch {
    // gone
  }
}

async function objectNamed(ceph: CephCluster, prefix: string): Promise<string> {
  const out = (await ceph.run('rados', ['-p', POOL, 'ls'])).stdout.split('\n')
  const o = out.find((x) => x.startsWith(prefix))
  if (o === undefined) throw new Error(`no ${prefix}* object in ${out.join(' ')}`)
  return o
}

t.test('a receiver stalled past its lease is fenced by the one that takes its VM over: its late commit changes nothing', { skip }, async (t) => {
  const dir = scratchDir(t, 'grainline-ceph-fence-')
  const ceph = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const config = join(dir, 'receiver.json')
  await mkdir(dir, { recursive: true })
  await writeFile(config, JSON.stringify({ retention: { keep: 5 }, cephLeaseSeconds: LEASE }))
  const args = ['--config', config, '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf]
  const seeder = await startSite(join(dir, 'seed'), ['*'], [], args)
  t.teardown(() => seeder.receiver.stop())
  const name = 'vm-fence'
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes: 8 * MiB, fill: 'random' }], seed: 17 })
  const state = ['--state-dir', join(dir, 'agent-state'), '--compress', 'none']
  t.equal((await replicateCli(seeder, vm.vmxPath, state)).code, 0, 'cycle 1 (seed) committed')
  await seeder.receiver.stop()

  // A stops itself and its helpers at its commit point (the lease checked, the state write next); B is a plain receiver
  const tls = { cert: seeder.cert, key: seeder.key }
  const a = await startReceiverProcess({ store: join(dir, 'a-unused'), tokens: seeder.tokens, tls, args, env: { GRAINLINE_RECEIVER_FAULT: 'ceph-commit-state:1:stop' } })
  let frozen: number[] = []
  t.teardown(async () => {
    for (const p of frozen) signal(p, 'SIGCONT')
    signal(a.proc.pid as number, 'SIGCONT')
    await a.kill9()
  })
  const b = await startReceiverProcess({ store: join(dir, 'b-unused'), tokens: seeder.tokens, tls, args })
  t.teardown(() => b.stop())
  const siteA: Site = { ...seeder, receiver: a }
  const siteB: Site = { ...seeder, receiver: b }

  await simulateGuestWrites(vm.vmxPath, { bytes: 2 * MiB, writeSize: 64 * 1024, seed: 3, zeroFraction: 0 })
  const exp = await frozenView(vm.vmxPath, join(dir, 'exp-2'))
  let agentA: import('node:child_process').ChildProcess | undefined
  const runA = replicateCli(siteA, vm.vmxPath, state, { onSpawn: (p) => (agentA = p) })
  await a.waitForLine((_l, j) => j?.['event'] === 'fault-stop')
  const pidA = a.proc.pid as number
  await pollUntil(async () => (procState(pidA) === 'T' ? true : undefined), { intervalMs: 50 })
  frozen = children(pidA)
  t.ok(frozen.length > 0, `A's Ceph helpers are stopped with it (${frozen.length})`)
  // A holds the lease while stopped; once it ran out (cls_lock drops an expired locker) B may take the VM
  const lockObj = await objectNamed(ceph, 'grainline.lock.')
  await pollUntil(
    async () => {
      const info = JSON.parse((await ceph.run('rados', ['-p', POOL, 'lock', 'info', lockObj, 'grainline', '--format', 'json'])).stdout) as { lockers?: unknown[] }
      return (info.lockers ?? []).length === 0 ? true : undefined
    },
    { intervalMs: 500 },
  )
  agentA?.kill('SIGKILL')
  await runA

  // the agent's next run goes to B: B fences A, resumes the cycle (same identity) and commits
  const r = await replicateCli(siteB, vm.vmxPath, ['--give-up', '60', ...state])
  t.equal(r.code, 0, `B takes the VM over and commits cycle 2: ${r.stderr.slice(-1500)}`)
  const fenceLine = await b.waitForLine((_l, j) => typeof j?.['msg'] === 'string' && /blocklisted \(fenced\)/.test(j['msg'] as string))
  t.ok(((JSON.parse(fenceLine) as { fenced?: string[] }).fenced ?? []).length >= 1, `B blocklisted A's clients before writing: ${fenceLine}`)
  const blocklist = (await ceph.run('ceph', ['osd', 'blocklist', 'ls'])).stdout + (await ceph.run('ceph', ['osd', 'blocklist', 'ls'])).stderr
  t.match(blocklist, /127\.0\.0\.1:\d+\/\d+/, 'the cluster lists the blocklisted addresses')

  const stObj = await objectNamed(ceph, 'grainline.vm.')
  const before = (await ceph.run('rados', ['-p', POOL, 'get', stObj, '-'])).stdout
  const rec = JSON.parse(before) as { committedCycle: number; disks: Record<string, { image: string; snap: string }> }
  t.equal(rec.committedCycle, 2, 'the state object names cycle 2, committed by B')
  const disk = Object.values(rec.disks)[0] as { image: string; snap: string }
  const snaps = async (): Promise<string> => (await ceph.run('rbd', ['snap', 'ls', '--format', 'json', `${POOL}/${disk.image}`])).stdout
  const snapsBefore = await snaps()
  const exportTo = async (spec: string, file: string): Promise<string> => {
    await ceph.run('rbd', ['export', '--no-progress', `${POOL}/${spec}`, file])
    return file
  }
  const expected = exp[0] as string
  t.equal(await firstDifference(await exportTo(`${disk.image}@${disk.snap}`, join(dir, 'b-snap.raw')), expected), -1, "B's snapshot of cycle 2 equals the frozen source")

  // A continues: the state write it was about to send, and anything after it, must be refused. A's event loop
  // runs first until it sleeps again (the write handed to its stopped session client, in the pipe), then its
  // helpers continue: the write reaches the cluster before the client's next lease renewal can stop it
  signal(pidA, 'SIGCONT')
  await pollUntil(async () => (procState(pidA) === 'S' ? true : undefined), { intervalMs: 20 })
  for (const p of frozen) signal(p, 'SIGCONT')
  const outcome = await a.waitForLine((_l, j) => typeof j?.['msg'] === 'string' && /^(fenced|lost the Ceph lease)/.test(j['msg'] as string))
  t.match(JSON.parse(outcome), { msg: new RegExp(`^fenced: another receiver took VM ${name} over`), code: 'E_BUSY' }, `A's process reports the fencing, naming the VM: ${outcome}`)
  const ended = await pollUntil(async () => (children(pidA).some((p) => frozen.includes(p)) ? undefined : true), { intervalMs: 200 })
  t.ok(ended, "A's session client is gone (the session ended)")

  t.equal((await ceph.run('rados', ['-p', POOL, 'get', stObj, '-'])).stdout, before, "the state object is byte for byte B's")
  t.equal(await snaps(), snapsBefore, "the image's snapshots are B's")
  t.equal(await firstDifference(await exportTo(`${disk.image}@${disk.snap}`, join(dir, 'b-snap-after.raw')), expected), -1, "B's snapshot still equals the frozen source")
  t.equal(await firstDifference(await exportTo(disk.image, join(dir, 'head-after.raw')), expected), -1, 'the head (rbd export) equals it too')

  // the mirror goes on through B
  await simulateGuestWrites(vm.vmxPath, { bytes: MiB, writeSize: 64 * 1024, seed: 4, zeroFraction: 0 })
  const exp3 = await frozenView(vm.vmxPath, join(dir, 'exp-3'))
  const r3 = await replicateCli(siteB, vm.vmxPath, ['--give-up', '60', ...state])
  t.equal(r3.code, 0, `cycle 3 through B: ${r3.stderr.slice(-1500)}`)
  const st = JSON.parse((await runCli(['status', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--output', 'json'])).stdout) as {
    vms: { committedCycle: number; disks: { snapshot: string }[] }[]
  }
  t.equal(st.vms[0]?.committedCycle, 3, 'cycle 3 committed')
  const snap3 = (st.vms[0]?.disks[0]?.snapshot ?? '').slice(POOL.length + 1)
  t.equal(await firstDifference(await exportTo(snap3, join(dir, 'c3.raw')), exp3[0] as string), -1, 'cycle 3 equals its frozen source')
})
