// The Ceph RBD store (issue #18, docs/CEPH.md) end to end: a real one-node
// Ceph cluster (mon, mgr, memstore OSD) on loopback, real receiver processes
// with `--store ceph:POOL` and real agent processes. Each mirror disk is an
// RBD image, each committed cycle a snapshot; after every cycle QEMU's
// reading of the frozen source equals `rbd export` of the committed
// snapshot, and every kept point read back equals the frozen source of its
// cycle. A receiver killed with SIGKILL mid-cycle is restarted and the agent
// resumes from the durable point. Through the CLI: points drop/prune remove
// the points' snapshots (never the mirror); a failover restores the mirror as
// a runnable VM folder and holds the VM (the agent is refused E_HELD) until
// `points close`. (Two receivers on one pool: ceph-takeover.test.ts; fencing:
// ceph-fence.test.ts; resync and --verify changed: ceph-resync.test.ts;
// points archive and points open on Ceph: ceph-points-s3.test.ts. Each file
// starts its own cluster, so tap runs them side by side, each within its
// own timeout.)
import t from 'tap'
import { existsSync } from 'node:fs'
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createSampleVm, simulateGuestWrites, VmxConfig, vmxDisks } from '@grainline/agent'
import { failIfLingering, firstDifference, haveCeph, pollUntil, qemuRaw, scratchDir, startCephCluster, startCuttingProxy, startEsxiHarness, type EsxiHarness } from '@grainline/test-utils'
import { CEPH_POOL, cephSite, cephStatus, frozenView, pointMatches, qemuHasRbd, qemuReadsSnapshots, replicateCli, runCli } from '@grainline/e2e'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const MiB = 1024 * 1024
const POOL = CEPH_POOL
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-mgr ceph-common)'

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
    // the VM's memory raised before cycle 4: older points keep the .vmx they had (ceph-point-config.ts)
    if (cycle === 4) await writeFile(vm.vmxPath, (await readFile(vm.vmxPath, 'utf8')).replace(/^memSize = "\d+"$/m, 'memSize = "3072"'))
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
  t.match(vmxText, /^memSize = "1024"$/m, 'point 2 restores with the memory it had (its own .vmx), not the 3072 MiB set before cycle 4')
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
  t.match(fvmx, /^memSize = "3072"$/m, 'the failover (the latest cycle) runs with the .vmx of that cycle')
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
  const notYet = await cli(['points', 'close', '--to', fo, '--output', 'json'])
  t.not(notYet.code, 0, 'a failover hold is not closed without --failover')
  t.match(notYet.stderr, /failover folder/)
  const close = await cli(['points', 'close', '--to', fo, '--failover', '--output', 'json'])
  t.equal(close.code, 0, `points close: ${close.stderr}`)
  t.equal((JSON.parse(close.stdout) as { released: unknown[] }).released.length, 1, 'the hold released (failback)')
  t.notOk(existsSync(fo), 'the failover folder is removed')
  const e5 = await frozenView(vm.vmxPath, join(dir, 'exp-5'))
  const r5 = await replicateCli(site, vm.vmxPath, [])
  t.equal(r5.code, 0, `after points close the agent's cycle goes through: ${r5.stderr.slice(-1500)}`)
  t.equal((await cephStatus(ceph)).vms.find((v) => v.vm === name)?.committedCycle, 5, 'cycle 5 committed')
  await pointMatches(t, ceph, name, 5, join(dir, 'mirror-5'), e5, 'cycle 5 after the failback')

  // a failover whose registration on the DR host fails is undone as on the folder store: into a folder that was
  // there (an operator's, a datastore's mount point), only what the failover wrote goes and the folder stays;
  // a folder it made goes whole with the parents it made (before, the Ceph undo removed the operator's folder too)
  const h = await startEsxiHarness()
  t.teardown(() => h.stop())
  await writeFile(join(dir, 'id_dr'), h.userKey, { mode: 0o600 })
  const esxi = join(dir, 'esxi.json')
  await writeFile(
    esxi,
    JSON.stringify({
      ssh: { host: '127.0.0.1', port: h.port, username: h.user, privateKeyFile: join(dir, 'id_dr'), hostKeyFingerprint: h.hostKeyFingerprint },
      datastores: { datastore1: h.datastore },
    }),
  )
  const hs = await h.readState()
  // a VM registered there already at each path: the host refuses the registration (AlreadyExists)
  for (const p of ['pre-made', 'fresh/dr']) hs.vms.push({ id: String(40 + hs.vms.length), name: 'other', vmx: `[datastore1] ${p}/${name}.vmx` })
  await h.writeState(hs as Parameters<EsxiHarness['writeState']>[0])
  const preMade = join(h.datastore, 'pre-made')
  await mkdir(preMade)
  const undone1 = await cli(['mirror', 'failover', '--to', preMade, '--register', esxi])
  t.equal(undone1.code, 1, undone1.stderr)
  t.match(undone1.stderr, /the failover was undone: VM .* is no longer held, the files written into .*pre-made removed\. Fix the cause, then run the failover again \[E_REGISTER\]/s)
  t.same(await readdir(preMade), [], 'the folder that was there stays, emptied of what the failover wrote')
  const undone2 = await cli(['mirror', 'failover', '--to', join(h.datastore, 'fresh', 'dr'), '--register', esxi])
  t.equal(undone2.code, 1, undone2.stderr)
  t.match(undone2.stderr, /the failover was undone: VM .* is no longer held, .*fresh\/dr removed.*\[E_REGISTER\]/s)
  t.notOk(existsSync(join(h.datastore, 'fresh')), 'the folders the failover made are gone')
  t.ok(existsSync(h.datastore), 'the datastore stays')
  t.notMatch((await runCli(['status', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf])).stdout, /HELD/, 'the mirror is not held')
})
