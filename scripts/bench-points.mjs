#!/usr/bin/env node
// Restore-point benchmark (issue #12). Same run, same file system, medians:
//  1. incremental-cycle time with points (reverse increments, retention keep 100)
//     vs without (the baseline: no retention) at 0.1 %, 1 % and 5 % changed of a
//     BENCH_GIB (16) GiB disk — the receiver's apply path (digest check, stage 1,
//     stage 2, fsyncs, commit with links and pruning), interleaved A B / B A;
//  2. space: bytes a point takes vs the bytes it holds (changed 4 KiB grains);
//  3. restore of a point vs `qemu-img convert -O raw` of the same chain;
//  4. dropping the oldest point (O(1)) and merging a middle point (O(size)) at two sizes.
// Prints JSON with the ratios and the load average.
//
//   node scripts/bench-points.mjs                 # 16 GiB, 3 rounds, ./bench-out/points
//   BENCH_GIB=2 BENCH_ROUNDS=1 node scripts/bench-points.mjs
import { execFileSync } from 'node:child_process'
import { mkdirSync, rmSync, statSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { loadavg } from 'node:os'
import { randomFillSync } from 'node:crypto'
import { CycleDigest, createDigest, cycleIdentity, initDigests } from '@grainline/protocol'

const MiB = 1024 * 1024
const GiB = 1024 * MiB
const CAP = Number(process.env.BENCH_GIB ?? 16) * GiB
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const EXT = 256 * 1024
const dir = resolve(process.env.BENCH_DIR ?? 'bench-out', 'points')
rmSync(dir, { recursive: true, force: true })
mkdirSync(dir, { recursive: true })
const dist = (f) => new URL(`../packages/receiver/dist/src/${f}`, import.meta.url).href
const { VmMirror } = await import(dist('vm-mirror.js'))
const { restorePoint, prunePoints } = await import(dist('points-admin.js'))
const log = (await import('pino')).pino({ level: 'warn' })
await initDigests()
const compat = { hwVersion: 14, datastoreType: 'local', guestOS: 'otherlinux-64' }
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const stores = { base: join(dir, 'base'), points: join(dir, 'points') }
const retention = { base: undefined, points: { keep: 100 } }
const cycles = { base: 0, points: 0 }

// deterministic pseudo-random extent offsets per (round, pct)
function plan(seed, pct) {
  const n = Math.max(1, Math.round((CAP * pct) / 100 / EXT))
  const slots = CAP / EXT
  const set = new Set()
  let x = (seed * 2654435761) >>> 0 || 1
  while (set.size < n) {
    // xorshift32: exact in 32-bit integers
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    set.add(x % slots)
  }
  return [...set].sort((a, b) => a - b).map((s) => s * EXT)
}

async function cycle(which, mode, offsets, fill) {
  const c = ++cycles[which]
  const m = await VmMirror.acquire(stores[which], 'bench', log)
  const source = { layers: [{ file: `bench-${c}.vmdk`, cid: '00000001', parentCid: 'ffffffff' }], successor: `bench-${c + 1}.vmdk` }
  const base = { name: 'bench.vmdk', capacity: CAP, cycle: c, mode, baseCycle: c - 1, source }
  const baseGeneration = mode === 'seed' ? '' : m.state.generation
  if (mode === 'incremental') {
    // the previous successor is this cycle's first layer
    source.layers[0].file = m.state.disks['bench.vmdk'].source.successor
  }
  const req = { ...base, baseGeneration, cycleId: cycleIdentity({ vm: 'bench', ...base, baseGeneration }), ddb: {}, algorithm: 'xxh64' }
  const r = await m.openDisk(req, { compat, ...(retention[which] === undefined ? {} : { retention: retention[which] }) })
  if (r.apply === undefined) throw new Error(`refused ${r.reason}: ${r.message}`)
  const a = r.apply
  const cd = new CycleDigest('xxh64')
  const buf = Buffer.alloc(EXT)
  const t0 = performance.now()
  let batch = []
  let bytes = 0
  let writing
  const flush = async () => {
    await a.prepareBatch(batch)
    await writing
    writing = a.writeBatch(batch)
    batch = []
    bytes = 0
  }
  let seq = 0
  for (const off of offsets) {
    const zero = mode === 'seed'
    const data = zero ? undefined : Buffer.from(randomFillSync(buf))
    const len = zero ? CAP : EXT
    const digest = zero ? new Uint8Array(0) : createDigest('xxh64').update(data).digest()
    cd.add({ offset: off, length: len, zero, digest })
    batch.push(a.accept({ seq: seq++, offset: off, length: len, zero, data, digest }))
    bytes += a.cost(batch.at(-1))
    if (bytes >= 32 * MiB) await flush()
  }
  await flush()
  await writing
  await a.end({ ...a.counts, digest: cd.digest() })
  await m.commit(c, [a], '', compat, retention[which] === undefined ? {} : { retention: retention[which] })
  const ms = performance.now() - t0
  const state = m.state
  m.release()
  if (fill) await fill()
  return { ms, state }
}

/** Give the ranges a cycle will overwrite old data (not timed): a fresh sparse flat would make every old grain a zero grain. */
async function prefill(which, offsets) {
  const fh = await open(join(stores[which], 'bench', 'bench-flat.vmdk'), 'r+')
  const b = Buffer.alloc(EXT)
  for (const off of offsets) await fh.write(randomFillSync(b), 0, EXT, off)
  await fh.datasync()
  await fh.close()
}

const t00 = performance.now()
for (const w of ['base', 'points']) await cycle(w, 'seed', [0])
const results = {}
const space = []
for (const pct of [0.1, 1, 5]) {
  const ratios = []
  const times = { base: [], points: [] }
  for (let r = 0; r < ROUNDS; r++) {
    const offs = plan(r * 10 + pct * 100, pct)
    const order = r % 2 === 0 ? ['base', 'points'] : ['points', 'base']
    for (const w of order) await prefill(w, offs)
    const got = {}
    for (const w of order) {
      const { ms, state } = await cycle(w, 'incremental', offs)
      got[w] = ms
      times[w].push(ms)
      if (w === 'points') {
        const p = state.points.at(-1)
        const held = offs.length * EXT
        space.push({ pct, pointBytes: p.disks['bench.vmdk'].bytes, changedBytes: held, overheadPct: +((100 * (p.disks['bench.vmdk'].bytes - held)) / held).toFixed(2) })
      }
    }
    ratios.push(got.points / got.base)
  }
  results[`${pct}%`] = {
    changedMiB: +((CAP * pct) / 100 / MiB).toFixed(0),
    baseMs: times.base.map((x) => Math.round(x)),
    pointsMs: times.points.map((x) => Math.round(x)),
    medianRatio: +median(ratios).toFixed(3),
    target: '≤ 1.10',
    met: median(ratios) <= 1.1,
    load: loadavg()[0].toFixed(1),
  }
  console.error(JSON.stringify({ pct, ...results[`${pct}%`] }))
}

// restore of the newest point vs qemu-img convert of the same chain (interleaved, 2 each)
const lm = await VmMirror.acquire(stores.points, 'bench', log)
const st = lm.state
lm.release()
const newest = st.points.at(-1)
const desc = join(stores.points, 'bench', '.grainline', 'points', newest.disks['bench.vmdk'].file)
const rest = { ours: [], qemu: [] }
for (let i = 0; i < 2; i++) {
  const q = join(dir, `q-${i}.raw`)
  let t0 = performance.now()
  execFileSync('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', desc, q])
  rest.qemu.push(performance.now() - t0)
  rmSync(q)
  const to = join(dir, `restore-${i}`)
  t0 = performance.now()
  await restorePoint(stores.points, 'bench', newest.cycle, to, { logger: log })
  rest.ours.push(performance.now() - t0)
  rmSync(to, { recursive: true })
}
const restore = {
  point: newest.cycle,
  gib: CAP / GiB,
  oursMs: rest.ours.map(Math.round),
  qemuImgConvertMs: rest.qemu.map(Math.round),
  oursGiBs: +(CAP / GiB / (median(rest.ours) / 1000)).toFixed(2),
  qemuGiBs: +(CAP / GiB / (median(rest.qemu) / 1000)).toFixed(2),
  ratioSpeed: +(median(rest.qemu) / median(rest.ours)).toFixed(2),
  target: 'ours ≥ qemu-img (ratio ≥ 1)',
  met: median(rest.ours) <= median(rest.qemu),
  load: loadavg()[0].toFixed(1),
}
console.error(JSON.stringify({ restore }))

// pruning: the oldest point (O(1)) and a middle merge (O(size)), small (0.1 %) and large (5 %) neighbours
// points now: [seed-cycle(1) .. ] with cycles in order 0.1 % ×R, 1 % ×R, 5 % ×R
const pts = st.points.map((p) => ({ cycle: p.cycle, bytes: p.disks['bench.vmdk'].bytes }))
const timeDrop = async (cycles) => {
  const t0 = performance.now()
  await prunePoints(stores.points, 'bench', { cycles }, { logger: log })
  return Math.round(performance.now() - t0)
}
const small = pts.slice(0, ROUNDS)
const large = pts.slice(2 * ROUNDS)
const prune = {
  dropOldestSmallMs: await timeDrop([pts[0].cycle]),
  dropOldestLargeMs: undefined,
  mergeSmall: { cycle: small[1]?.cycle, bytes: small[1]?.bytes, ms: small.length > 2 ? await timeDrop([small[1].cycle]) : undefined },
  mergeLarge: { cycle: large[1]?.cycle, bytes: large[1]?.bytes, ms: large.length > 2 ? await timeDrop([large[1].cycle]) : undefined },
}
// drop oldest until the oldest is a large point, then time its drop
{
  const m = await VmMirror.acquire(stores.points, 'bench', log)
  const left = m.state.points.map((p) => p.cycle)
  m.release()
  const before = left.filter((c) => c < large[0].cycle)
  if (before.length > 0) await timeDrop(before)
  prune.dropOldestLargeMs = await timeDrop([large[0].cycle])
  prune.dropOldestLargeBytes = large[0].bytes
}
console.error(JSON.stringify({ prune }))
const out = {
  gib: CAP / GiB,
  rounds: ROUNDS,
  extentKiB: EXT / 1024,
  cycles: results,
  space,
  restore,
  prune,
  totalS: Math.round((performance.now() - t00) / 1000),
  load: loadavg().map((x) => +x.toFixed(1)),
}
console.log(JSON.stringify(out, null, 1))
rmSync(dir, { recursive: true, force: true })
void statSync
