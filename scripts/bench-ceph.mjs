#!/usr/bin/env node
/**
 * Benchmark of the Ceph store's apply (issue #18 "Measured").
 *
 *   node scripts/bench-ceph.mjs [--size-mib 128] [--change-mib 32] [--extent-kib 64] [--rounds 3]
 *
 * A one-node Ceph cluster (memstore OSD, test-utils) and an in-process
 * receiver per store kind, driven over TLS on loopback by the protocol
 * harness of the receiver's tests. Per round, interleaved:
 *
 *   folder  an incremental of `change-mib` in `extent-kib` extents applied
 *           into the folder store (undo journal, fdatasync, state.json)
 *   ceph    the same incremental into `--store ceph:POOL` (librbd writes
 *           through the disk's helper, flush + RADOS extent log append per
 *           batch, snapshot + state object at commit)
 *   import  `rbd import` of the same changed bytes as one raw file (the
 *           baseline: what moving these bytes into RBD costs at all)
 *
 * Each timed step is one whole cycle (Hello … Committed) for the two stores.
 * Medians and ratios are printed with the load average (the machine may be shared).
 * Needs: built packages (npx tsc -b) and the Ceph daemons (ceph-mon ceph-osd ceph-common).
 */
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { parseArgs } from 'node:util'
import { startCephCluster } from '../test-utils/dist/src/index.js'
import { Agent, MiB, TOKEN, evolve, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver } from '../packages/receiver/dist/test/helpers.js'

const exec = promisify(execFile)
const { values } = parseArgs({ options: { 'size-mib': { type: 'string' }, 'change-mib': { type: 'string' }, 'extent-kib': { type: 'string' }, rounds: { type: 'string' } } })
const sizeMiB = Number(values['size-mib'] ?? 128)
const changeMiB = Number(values['change-mib'] ?? 32)
const extentKiB = Number(values['extent-kib'] ?? 64)
const rounds = Number(values.rounds ?? 3)
const POOL = 'bench'
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const load = () =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')
const cid = (n) => n.toString(16).padStart(32, '0')

const dir = await mkdtemp(join(tmpdir(), 'grainline-bench-ceph-'))
const ceph = await startCephCluster({ pools: [POOL], osdBytes: 4 * 1024 * MiB })
try {
  const folderEnv = makeEnv(join(dir, 'folder'))
  const cephEnv = makeEnv(join(dir, 'ceph'))
  const folder = await startReceiver(folderEnv)
  const rbd = await startReceiver(cephEnv, { store: `ceph:${POOL}`, cephConf: ceph.conf })
  const img1 = pattern(sizeMiB * MiB, 1)
  // scattered extents: every (size/change)-th extent-sized slot
  const n = Math.floor((changeMiB * 1024) / extentKiB)
  const stride = Math.floor((sizeMiB * MiB) / (n * extentKiB * 1024)) * extentKiB * 1024
  const ranges = Array.from({ length: n }, (_, i) => ({ offset: i * stride, length: extentKiB * 1024 }))
  const img2 = evolve(img1, 2, ranges)
  const changed = Buffer.concat(ranges.map((r) => img2.subarray(r.offset, r.offset + r.length)))
  const rawChange = join(dir, 'change.raw')
  await writeFile(rawChange, changed)
  const times = { folder: [], ceph: [], import: [] }
  const cycle = async (env, url, vm, c, plan) => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const t0 = performance.now()
    await runCycle(a, vm, c, [plan])
    const ms = performance.now() - t0
    a.close()
    return ms
  }
  for (let r = 0; r < rounds; r++) {
    const vm = `vm-bench-${r}`
    for (const [env, url] of [
      [folderEnv, folder.url],
      [cephEnv, rbd.url],
    ]) {
      await cycle(env, url, vm, 1, seedPlan(1, 'b.vmdk', img1, cid(r * 10 + 1)))
    }
    const inc = () => incPlan(1, 'b.vmdk', img2, 1, cid(r * 10 + 2), ranges, 'b-000001.vmdk', 'b-000002.vmdk')
    times.folder.push(await cycle(folderEnv, folder.url, vm, 2, inc()))
    times.ceph.push(await cycle(cephEnv, rbd.url, vm, 2, inc()))
    const t0 = performance.now()
    await exec('rbd', ['--conf', ceph.conf, 'import', '--no-progress', rawChange, `${POOL}/import-${r}`])
    times.import.push(performance.now() - t0)
    console.log(`round ${r + 1}: folder ${times.folder[r].toFixed(0)} ms, ceph ${times.ceph[r].toFixed(0)} ms, rbd import ${times.import[r].toFixed(0)} ms (load ${load()})`)
  }
  const m = { folder: median(times.folder), ceph: median(times.ceph), import: median(times.import) }
  console.log(`incremental of ${changeMiB} MiB in ${n} extents of ${extentKiB} KiB on a ${sizeMiB} MiB disk, ${rounds} rounds, medians:`)
  console.log(`  folder store ${m.folder.toFixed(0)} ms (${((changeMiB / m.folder) * 1000).toFixed(1)} MiB/s)`)
  console.log(`  ceph store   ${m.ceph.toFixed(0)} ms (${((changeMiB / m.ceph) * 1000).toFixed(1)} MiB/s)`)
  console.log(`  rbd import   ${m.import.toFixed(0)} ms (${((changeMiB / m.import) * 1000).toFixed(1)} MiB/s)`)
  console.log(`  ratios: ceph/folder ${(m.ceph / m.folder).toFixed(2)}, ceph/rbd-import ${(m.ceph / m.import).toFixed(2)} (load ${load()})`)
  await folder.receiver.close()
  await rbd.receiver.close()
} finally {
  await ceph.stop()
  await rm(dir, { recursive: true, force: true })
}
