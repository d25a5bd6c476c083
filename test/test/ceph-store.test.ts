// The Ceph RBD store (issue #18, docs/CEPH.md) end to end: a real one-node
// Ceph cluster (mon, mgr, memstore OSD) on loopback, real receiver processes
// with `--store ceph:POOL` and real agent processes. Each mirror disk is an
// RBD image, each committed cycle a snapshot; after every cycle QEMU's
// reading of the frozen source equals `rbd export` of the committed
// snapshot, and every kept point read back equals the frozen source of its
// cycle. A receiver killed with SIGKILL mid-cycle is restarted and the agent
// resumes from the durable point. Two receivers on one pool: the second
// cannot take a VM the first holds (E_BUSY naming the holder) and takes it
// over once the first is gone. Blocks changed behind the store's back in a
// committed snapshot are found by `--verify changed` and repaired by a
// resync (`--resync`, or the next cycle) that sends only the differing blocks.
// Through the CLI: points drop/prune remove the points' snapshots (never the
// mirror); a failover restores the mirror as a runnable VM folder and holds
// the VM (the agent is refused E_HELD) until `points close`. (points archive
// and points open on Ceph: ceph-points-s3.test.ts.)
import t, { type Test } from 'tap'
import { existsSync } from 'node:fs'
import { mkdir, writeFile, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createSampleVm, simulateGuestWrites, VmxConfig, vmxDisks } from '@grainline/agent'
import { firstDifference, haveCeph, pollUntil, qemuRaw, scratchDir, startCephCluster, startCuttingProxy, startReceiverProcess, type CephCluster } from '@grainline/test-utils'
import { startSite, replicateCli, runCli, type Site, frozenView } from '@grainline/e2e'

const MiB = 1024 * 1024
const POOL = 'glrbd'
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-mgr ceph-common)'

interface CephStatusJson {
  vms: { vm: string; committedCycle: number; points: number[]; disks: { name: string; committedCycle: number; snapshot: string; inflight: { cycle: number; resumeSeq: number } | null }[] }[]
}

async function cephStatus(ceph: CephCluster): Promise<CephStatusJson> {
  const r = await runCli(['status', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--output', 'json'])
  // a monitoring plugin's exit codes: 0 OK, 1 WARNING (a cycle in flight, a hold), 2 CRITICAL (diverged); 3 and up are failures
  if (r.code === null || r.code > 2) throw new Error(`grainline status failed (${r.code}): ${r.stderr}`)
  return JSON.parse(r.stdout) as CephStatusJson
}

/** `grainline points export` of point `cycle` into `dir`, then compare each disk with the frozen view. */
async function pointMatches(t: Test, ceph: CephCluster, vm: string, cycle: number, dir: string, expected: string[], what: string): Promise<void> {
  const r = await runCli(['points', 'export', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--vm', vm, '--point', String(cycle), '--to', dir, '--output', 'json'])
  t.equal(r.code, 0, `${what}: points export: ${r.stderr}`)
  const out = JSON.parse(r.stdout) as { disks: { name: string; file: string; snapshot: string }[] }
  t.equal(out.disks.length, expected.length, `${what}: every disk exported`)
  for (const [i, d] of out.disks.entries()) t.equal(await firstDifference(d.file, expected[i] as string), -1, `${what}: ${d.snapshot} (rbd export) equals the frozen source of disk ${i}`)
}

/** The committed snapshot of every disk as QEMU's rbd driver reads it (an oracle independent of `rbd export`), when QEMU has it. */
async function qemuReadsSnapshots(t: Test, ceph: CephCluster, vm: string, dir: string, expected: string[], what: string): Promise<void> {
  const st = await cephStatus(ceph)
  const v = st.vms.find((x) => x.vm === vm)
  for (const [i, d] of (v?.disks ?? []).entries()) {
    const out = join(dir, `qemu-${i}.raw`)
    await qemuRaw(`rbd:${d.snapshot}:conf=${ceph.conf}`, out, { format: 'raw' })
    t.equal(await firstDifference(out, expected[i] as string), -1, `${what}: QEMU reading ${d.snapshot} equals the frozen source of disk ${i}`)
  }
}

/** Write `data` at `offset` into the committed snapshot `spec` (POOL/IMG@SNAP) behind the store's back: the head (equal to it between cycles) is written with librbd and the snapshot taken again under its name. */
async function rotSnapshot(ceph: CephCluster, spec: string, offset: number, data: Buffer): Promise<void> {
  const [pi] = spec.split('@') as [string, string]
  await ceph.writeImage(POOL, pi.slice(POOL.length + 1), offset, data)
  await ceph.run('rbd', ['snap', 'rm', '--no-progress', spec])
  await ceph.run('rbd', ['snap', 'create', '--no-progress', spec])
}

async function qemuHasRbd(): Promise<boolean> {
  const { execFile } = await import('node:child_process')
  return await new Promise((resolve) => execFile('qemu-img', ['--help'], (_e, stdout) => resolve(/\brbd\b/.test(String(stdout)))))
}

async function cephSite(dir: string, ceph: CephCluster, extra: object = {}): Promise<Site> {
  const config = join(dir, 'receiver.json')
  await mkdir(dir, { recursive: true })
  await writeFile(config, JSON.stringify({ retention: { keep: 5 }, ...extra }))
  return await startSite(dir, ['*'], [], ['--config', config, '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf])
}

t.test('Ceph store: seed, incrementals, a receiver SIGKILL mid-cycle, points as snapshots', { skip }, async (t) => {
  const dir = scratchDir(t, 'grainline-ceph-e2e-')
  const ceph = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const site = await cephSite(join(dir, 'dr'), ceph)
  t.teardown(() => site.receiver.stop())
  const name = 'rbd app'
  const vm = await createSampleVm(join(dir, 'src'), {
    name,
    disks: [
      { sizeBytes: 48 * MiB, fill: 'random' },
      { sizeBytes: 16 * MiB, node: 'sata0:1', fill: 'sparse' },
    ],
    seed: 21,
  })
  const qemuRbd = await qemuHasRbd()
  const expected: string[][] = []
  for (let cycle = 1; cycle <= 4; cycle++) {
    if (cycle > 1) await simulateGuestWrites(vm.vmxPath, { bytes: (cycle === 3 ? 24 : 2) * MiB, writeSize: 64 * 1024, seed: cycle * 7, zeroFraction: 0.2 })
    expected[cycle] = await frozenView(vm.vmxPath, join(dir, `exp-${cycle}`))
    if (cycle !== 3) {
      const r = await replicateCli(site, vm.vmxPath, ['--trivial-mb', '4'])
      t.equal(r.code, 0, `cycle ${cycle}: ${r.stderr.slice(-1500)}`)
      t.equal(r.report?.vms[0]?.disks[0]?.trivial?.ok, true, `cycle ${cycle}: the trivial check read the snapshot back`)
    } else {
      // held at 8 MiB of the ~24 MiB change: the kill lands mid-apply, after durable batches
      const proxy = await startCuttingProxy(site.receiver.port)
      t.teardown(() => proxy.close())
      proxy.plan = [{ holdAfter: 8 * MiB }]
      const run = replicateCli(site, vm.vmxPath, ['--bwlimit', '8M', '--give-up', '120', '--compress', 'none'], { port: proxy.port })
      await proxy.waitForHolds(1)
      const durable = await pollUntil(
        async () => {
          const seq = (await cephStatus(ceph)).vms.find((v) => v.vm === name)?.disks.find((d) => d.inflight !== null)?.inflight?.resumeSeq ?? 0
          return seq > 0 ? seq : undefined
        },
        { intervalMs: 200 },
      )
      await site.receiver.kill9()
      await site.restart()
      const r = await run
      t.equal(r.code, 0, `cycle 3 completes after the receiver SIGKILL: ${r.stderr.slice(-1500)}`)
      t.ok((r.report?.vms[0]?.reconnects ?? 0) >= 1, 'the agent reconnected')
      const resumed = r.report?.vms[0]?.disks.flatMap((d) => d.resumedFrom) ?? []
      t.ok(
        resumed.some((s) => s >= durable),
        `resumed from the durable point ${durable} logged in RADOS, not from 0 (${JSON.stringify(resumed)})`,
      )
    }
    const st = await cephStatus(ceph)
    const v = st.vms.find((x) => x.vm === name)
    t.equal(v?.committedCycle, cycle, `cycle ${cycle} committed (grainline status)`)
    t.ok(
      v?.disks.every((d) => d.inflight === null && d.snapshot.includes(`@c${cycle}-`)),
      `cycle ${cycle}: each disk's committed point is a snapshot of cycle ${cycle}`,
    )
    await pointMatches(t, ceph, name, cycle, join(dir, `mirror-${cycle}`), expected[cycle] as string[], `cycle ${cycle}`)
    if (qemuRbd) await qemuReadsSnapshots(t, ceph, name, join(dir, `mirror-${cycle}`), expected[cycle] as string[], `cycle ${cycle}`)
  }
  if (!qemuRbd) t.comment('qemu-img has no rbd driver here (qemu-block-extra): snapshots compared through rbd export only')

  // every cycle is a point: 1..3 kept by keep=5, 4 is the mirror; each reads back as its cycle's frozen source
  const pts = await runCli(['points', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--vm', name, '--output', 'json'])
  t.equal(pts.code, 0, pts.stderr)
  const list = JSON.parse(pts.stdout) as { committedCycle: number; points: { cycle: number; current: boolean }[] }
  t.same(
    list.points.map((p) => [p.cycle, p.current]),
    [
      [1, false],
      [2, false],
      [3, false],
      [4, true],
    ],
    'points 1-3 and the mirror',
  )
  for (const k of [1, 2, 3]) await pointMatches(t, ceph, name, k, join(dir, `point-${k}`), expected[k] as string[], `point ${k}`)
  const human = await runCli(['points', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--vm', name])
  t.match(human.stdout, /mirror/i, 'points lists in human form too')

  // restore: point 2 as a standalone VM folder (descriptor + thin flat per disk, the .vmx rewritten to them),
  // read by QEMU through the descriptor (an oracle independent of rbd) equal to cycle 2's frozen source
  const to = join(dir, 'restored-2')
  const rs = await runCli(['restore', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--vm', name, '--point', '2', '--to', to, '--output', 'json'])
  t.equal(rs.code, 0, `restore of point 2 from the pool: ${rs.stderr}`)
  const restored = JSON.parse(rs.stdout.trim().split('\n').at(-1) as string) as { disks: { name: string; descriptor: string; verified: string }[]; vmxDropped?: unknown[] }
  t.equal(restored.disks.length, 2, 'both disks restored')
  for (const [i, d] of restored.disks.entries()) {
    t.equal(d.verified, 'snapshot', `${d.name}: compared with its snapshot read again`)
    const raw = join(dir, `restored-2-${i}.raw`)
    await qemuRaw(d.descriptor, raw)
    t.equal(await firstDifference(raw, (expected[2] as string[])[i] as string), -1, `restored ${d.name} (QEMU through the descriptor) equals the frozen source of cycle 2`)
  }
  const vmxText = await readFile(join(to, `${name}.vmx`), 'utf8')
  t.match(vmxText, /displayName = ".*\(point 2\)"/, 'the .vmx is marked with the point')
  for (const d of restored.disks) t.match(vmxText, new RegExp(`"${d.descriptor.split('/').at(-1)?.replace(/[.]/g, '\\.')}"`), `the .vmx boots from ${d.name}'s restored descriptor`)
  const again = await runCli(['restore', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--vm', name, '--point', '2', '--to', to])
  t.not(again.code, 0, 'a restore into a folder that is not empty is refused')
  t.match(again.stderr, /not empty/)
  const missing = await runCli(['restore', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--vm', name, '--point', '9', '--to', join(dir, 'restored-9')])
  t.not(missing.code, 0, 'a point the pool does not have is refused')
  t.match(missing.stderr, /no point 9/)
  // points archive and points open on a Ceph store: test/test/ceph-points-s3.test.ts (its own cluster: this file's time bound)

  // points drop / prune: the snapshots go with the point; the mirror (the resync base) is never dropped
  const cli = async (args: string[]) => await runCli([...args, '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--vm', name])
  const snapsOf = async (): Promise<string[]> => {
    const out: string[] = []
    for (const d of (await cephStatus(ceph)).vms.find((v) => v.vm === name)?.disks ?? []) {
      const image = d.snapshot.slice(POOL.length + 1).split('@')[0] as string
      const ls = await ceph.run('rbd', ['snap', 'ls', '--format', 'json', `${POOL}/${image}`])
      out.push(...(JSON.parse(ls.stdout) as { name: string }[]).map((x) => x.name))
    }
    return out.sort()
  }
  t.equal((await snapsOf()).filter((x) => x.startsWith('c1-')).length, 2, 'point 1 is a snapshot of each disk')
  const drop1 = await cli(['points', 'drop', '--point', '1', '--output', 'json'])
  t.equal(drop1.code, 0, `points drop --point 1: ${drop1.stderr}`)
  t.same(JSON.parse(drop1.stdout), { vm: name, dropped: [1], kept: [2, 3] }, 'point 1 dropped')
  t.same(
    (await snapsOf()).filter((x) => x.startsWith('c1-')),
    [],
    "point 1's snapshots are removed from both images",
  )
  const dropMirror = await cli(['points', 'drop', '--point', '4'])
  t.not(dropMirror.code, 0, 'the mirror (the committed cycle, the resync base) is not dropped')
  t.match(dropMirror.stderr, /no point 4/)
  const prune = await cli(['points', 'prune', '--keep', '1', '--output', 'json'])
  t.equal(prune.code, 0, `points prune --keep 1: ${prune.stderr}`)
  t.same(JSON.parse(prune.stdout), { vm: name, dropped: [2], kept: [3] }, 'prune keeps the newest point')
  t.same(
    (await snapsOf()).map((x) => x.replace(/-.*/, '')),
    ['c3', 'c3', 'c4', 'c4'],
    'left: point 3 and the mirror, on both disks',
  )
  await pointMatches(t, ceph, name, 3, join(dir, 'point-3-after-prune'), expected[3] as string[], 'point 3 after the prune')

  // failover: the mirror as a runnable VM folder; the VM is held (the agent's next cycle is refused E_HELD) until points close
  const fo = join(dir, 'failover')
  const f = await cli(['mirror', 'failover', '--to', fo, '--network', 'VM Network=DR Network', '--output', 'json'])
  t.equal(f.code, 0, `mirror failover: ${f.stderr}`)
  const fr = JSON.parse(f.stdout) as { cycle: number; dir: string; vmx: string }
  t.equal(fr.cycle, 4, 'the newest committed point (the mirror) by default')
  const fvmx = await readFile(fr.vmx, 'utf8')
  t.match(fvmx, /displayName = ".*\(grainline failover\)"/, 'the failover .vmx is marked')
  t.match(fvmx, /ethernet0\.startConnected = "FALSE"/, 'its NIC does not connect at power-on')
  t.match(fvmx, /ethernet0\.networkName = "DR Network"/, 'its network is mapped')
  t.match(fvmx, /uuid\.bios = /, 'a new uuid.bios')
  for (const [i, d] of vmxDisks(VmxConfig.parse(fvmx, fr.vmx)).entries()) {
    const raw = join(dir, `failover-${i}.raw`)
    await qemuRaw(join(fo, d.fileName), raw)
    t.equal(await firstDifference(raw, (expected[4] as string[])[i] as string), -1, `failover disk ${i} (QEMU through the .vmx's descriptor) equals cycle 4's frozen source`)
  }
  const heldStatus = await runCli(['status', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf])
  t.match(heldStatus.stdout, /HELD \(failover point 4\)/, 'status shows the VM held by the failover')
  await simulateGuestWrites(vm.vmxPath, { bytes: 2 * MiB, writeSize: 64 * 1024, seed: 99, zeroFraction: 0 })
  const refused = await replicateCli(site, vm.vmxPath, ['--give-up', '10'])
  t.not(refused.code, 0, 'the agent of a failed-over VM is refused')
  t.match(JSON.stringify(refused.report ?? {}) + refused.stderr, /E_HELD/, 'with E_HELD, as on the folder store')
  const heldDrop = await cli(['points', 'drop', '--point', '3'])
  t.not(heldDrop.code, 0, 'no drop while failed over')
  t.match(heldDrop.stderr, /held by 1 failover/)
  const close = await cli(['points', 'close', '--to', fo, '--output', 'json'])
  t.equal(close.code, 0, `points close: ${close.stderr}`)
  t.equal((JSON.parse(close.stdout) as { released: unknown[] }).released.length, 1, 'the hold released (failback)')
  t.notOk(existsSync(fo), 'the failover folder is removed')
  const e5 = await frozenView(vm.vmxPath, join(dir, 'exp-5'))
  const r5 = await replicateCli(site, vm.vmxPath, [])
  t.equal(r5.code, 0, `after points close the agent's cycle goes through: ${r5.stderr.slice(-1500)}`)
  t.equal((await cephStatus(ceph)).vms.find((v) => v.vm === name)?.committedCycle, 5, 'cycle 5 committed')
  await pointMatches(t, ceph, name, 5, join(dir, 'mirror-5'), e5, 'cycle 5 after the failback')
})

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
  t.match(busy.stderr + JSON.stringify(busy.report ?? {}), /receiver .* pid \d+/, 'the error names the holder')
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

t.test('Ceph store: --resync sends only the blocks that differ; --verify changed finds a rotten block and the next cycle resyncs exactly it', { skip }, async (t) => {
  const dir = scratchDir(t, 'grainline-ceph-resync-')
  const ceph = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const site = await cephSite(join(dir, 'dr'), ceph)
  t.teardown(() => site.receiver.stop())
  const name = 'rbd resync'
  const BLOCK = MiB
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes: 32 * MiB, fill: 'random' }], seed: 41 })
  const qemuRbd = await qemuHasRbd()
  const snapshot = async (): Promise<string> => (await cephStatus(ceph)).vms.find((v) => v.vm === name)?.disks[0]?.snapshot ?? ''
  const mirrorEquals = async (expected: string[], what: string): Promise<void> => {
    const cycle = (await cephStatus(ceph)).vms.find((v) => v.vm === name)?.committedCycle ?? 0
    await pointMatches(t, ceph, name, cycle, join(dir, `m-${what.replace(/\W+/g, '-')}`), expected, what)
    if (qemuRbd) await qemuReadsSnapshots(t, ceph, name, join(dir, `m-${what.replace(/\W+/g, '-')}`), expected, what)
  }
  const seed = await replicateCli(site, vm.vmxPath, ['--compress', 'none'])
  t.equal(seed.code, 0, `seed: ${seed.stderr.slice(-1500)}`)
  // two blocks rot in the committed snapshot (beyond the trivial prefix); the source is unchanged
  await rotSnapshot(ceph, await snapshot(), 9 * BLOCK + 4096, Buffer.alloc(4096, 0xee))
  await rotSnapshot(ceph, await snapshot(), 21 * BLOCK, Buffer.alloc(512, 0x11))
  const e2 = await frozenView(vm.vmxPath, join(dir, 'exp-2'))
  const r2 = await replicateCli(site, vm.vmxPath, ['--resync', '--trivial-mb', '4', '--compress', 'none'])
  const d2 = r2.report?.vms[0]?.disks[0]
  t.equal(r2.code, 0, `--resync: ${r2.stderr.slice(-1500)}`)
  t.equal(d2?.mode, 'resync', '--resync compared the mirror block by block')
  t.same(d2?.resync, { blockSize: BLOCK, blocks: 32, differing: 2, mapBytes: 32 * 8 }, 'the map of the committed snapshot differs in the 2 rotten blocks')
  t.equal(d2?.wireBytes, 2 * BLOCK, 'only those 2 blocks travelled (raw payload)')
  t.equal(d2?.trivial?.ok, true, 'trivial check')
  await mirrorEquals(e2, 'after --resync')
  // bit rot in a block the next cycle writes only in part: --verify changed finds it
  const writes = await simulateGuestWrites(vm.vmxPath, { bytes: 512 * 1024, writeSize: 64 * 1024, seed: 6, zeroFraction: 0 })
  const written = new Set(writes.flatMap((w) => [Math.floor(w.offset / BLOCK), Math.floor((w.offset + 64 * 1024 - 1) / BLOCK)]))
  const victim = writes.find((w) => w.offset >= 4 * MiB) as { offset: number }
  const block = Math.floor(victim.offset / BLOCK)
  const clear = (o: number): boolean => writes.every((w) => o + 4096 <= w.offset || o >= w.offset + 64 * 1024)
  let rot = block * BLOCK
  while (!clear(rot)) rot += 4096
  t.ok(rot < (block + 1) * BLOCK, `a 4 KiB range of block ${block} the guest did not write: ${rot}`)
  await rotSnapshot(ceph, await snapshot(), rot, Buffer.alloc(4096, 0xee))
  const r3 = await replicateCli(site, vm.vmxPath, ['--trivial-mb', '4', '--compress', 'none', '--verify', 'changed'])
  const d3 = r3.report?.vms[0]?.disks[0]
  t.equal(r3.code, 1, 'the run reports the failed check')
  t.equal(d3?.mode, 'incremental')
  t.same(d3?.blockCheck, { ok: false, blockSize: BLOCK, blocks: written.size, mismatched: 1 }, `every block the cycle wrote (${written.size}) read back from the snapshot; the rotten one differs`)
  const e4 = await frozenView(vm.vmxPath, join(dir, 'exp-4'))
  const r4 = await replicateCli(site, vm.vmxPath, ['--trivial-mb', '4', '--compress', 'none', '--verify', 'changed'])
  const d4 = r4.report?.vms[0]?.disks[0]
  t.equal(r4.code, 0, `the next cycle: ${r4.stderr.slice(-1500)}`)
  t.equal(d4?.mode, 'resync', `the next cycle resyncs (${d4?.fallbackReason ?? ''})`)
  t.equal(d4?.resync?.differing, 1, 'exactly the rotten block travelled')
  t.equal(d4?.wireBytes, BLOCK, 'one block of payload')
  t.same(d4?.blockCheck, { ok: true, blockSize: BLOCK, blocks: 1, mismatched: 0 }, 'the block the resync wrote checks out')
  await mirrorEquals(e4, 'after the repair')
})
