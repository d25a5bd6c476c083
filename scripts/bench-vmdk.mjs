#!/usr/bin/env node
// Benchmark of @grainline/vmdk (issue #2 performance targets), each against a
// baseline timed in the same invocation:
//  1. map() of an SEsparse delta on a 2 TiB virtual disk holding 100,000
//     scattered 4 KiB grains (most grain tables in use): target < 1 s
//     (issue #17; it was < 2 s) and < 200 MB RSS. Baselines: (a) a raw sequential fs.read of the same number
//     of grain-table bytes from the same extent file (the I/O floor: the bytes
//     any reader has to pull out of the page cache), and (b) `qemu-img map
//     --output=json` of the same delta (an independent implementation), once
//     over its sparse flat parent and once with the parent cut off, each run
//     once under a time limit (qemuSeconds, default 30; if it runs out, the
//     share of the disk qemu had mapped is printed, and the whole-disk time
//     extrapolated from it is labelled as such).
//  2. reading a delta's changed data through the chain from the page cache:
//     target >= 1 GB/s. Baseline: a raw sequential fs.read of the same number
//     of bytes from the extent's grains area, with the same 16 MiB buffer.
// Ours and the fs.read baselines run interleaved (A B A B …, ROUNDS each, each
// in a fresh child process so its RSS is its own, after one warm-up run of
// each); medians are reported, ratios are ours/baseline, verdicts come from
// the medians (time) and the largest max RSS of any round (memory).
// Usage: npm run build && node scripts/bench-vmdk.mjs [workdir] [rounds] [qemuSeconds]
// (needs ~4 GiB of disk; a given workdir is kept and its disks reused.)
// GRAINLINE_VMDK_DIST=<folder with index.js> measures another build of the
// package (e.g. an older commit's packages/vmdk/dist/src) with the same method.
// GRAINLINE_VMDK_BASELINE_DIST=<folder> adds a third side to the map comparison:
// that build's map() of the same delta, interleaved (ours, raw, theirs, …), with
// the ratio ours/theirs. BENCH_ONLY=map stops after the map comparison.
import { spawnSync } from 'node:child_process'
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync } from 'node:fs'
import { cpus, loadavg, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const distOf = (d) => new URL(`file://${d.replace(/\/?$/, '/')}index.js`).href
// a child started with `--child map-baseline` measures GRAINLINE_VMDK_BASELINE_DIST's build
const vmdk = await import(
  process.argv[3] === 'map-baseline'
    ? distOf(process.env.GRAINLINE_VMDK_BASELINE_DIST)
    : process.env.GRAINLINE_VMDK_DIST !== undefined
      ? distOf(process.env.GRAINLINE_VMDK_DIST)
      : new URL('../packages/vmdk/dist/src/index.js', import.meta.url).href
)
const GiB = 1024 ** 3
const MiB = 1024 ** 2
const self = fileURLToPath(import.meta.url)

function prng(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** the SEsparse extent file of a one-extent delta descriptor, and its header figures in bytes */
function seSparseInfo(top) {
  const m = /SESPARSE\s+"([^"]+)"/.exec(readFileSync(top, 'utf8'))
  if (!m) throw new Error(`${top}: no SESPARSE extent line`)
  const file = join(dirname(top), m[1])
  const fd = openSync(file, 'r')
  try {
    const b = Buffer.alloc(512)
    readSync(fd, b, 0, 512, 0)
    const h = vmdk.parseSeSparseHeader(b, file)
    readSync(fd, b, 0, 512, h.volatileHeaderOffset * 512)
    const v = vmdk.parseSeSparseVolatileHeader(b, file)
    return { file, gtBytes: v.freeGtNumber * h.grainTableSize * 512, gts: v.freeGtNumber, gtStart: h.grainTablesOffset * 512, grainsStart: h.grainsOffset * 512 }
  } finally {
    closeSync(fd)
  }
}

const rss = () => process.resourceUsage().maxRSS / 1024

async function measureMap(top) {
  const c0 = process.cpuUsage()
  const t0 = performance.now()
  const chain = await vmdk.openChain(top)
  let entries = 0
  for await (const _e of chain.map()) entries++
  const tMap = performance.now() - t0
  const cpu = process.cpuUsage(c0)
  const user = cpu.user / 1e6
  const sys = cpu.system / 1e6
  // grain-table reads issued (builds that count them)
  const stats = chain.layers[0]?.extents[0]?.tableStats
  await chain.close()
  return { seconds: tMap / 1000, cpuSeconds: (cpu.user + cpu.system) / 1e6, user, sys, entries, maxRssMB: rss(), tableReads: stats?.reads, tableBytes: stats?.bytes }
}

async function measureChanged(top) {
  const t0 = performance.now()
  const chain = await vmdk.openChain(top)
  let ranges = 0
  let bytes = 0
  for await (const r of chain.changedRanges(0)) {
    ranges++
    bytes += r.length
  }
  const s = (performance.now() - t0) / 1000
  await chain.close()
  return { seconds: s, ranges, changedBytes: bytes, maxRssMB: rss() }
}

/** read the delta's changed data range by range, `inflight` ranges at a time (1 = one after the other) */
async function measureRead(top, inflight = 1) {
  const chain = await vmdk.openChain(top)
  const ranges = []
  for await (const r of chain.changedRanges(0)) if (!r.zero) ranges.push(r)
  let bytes = 0
  let next = 0
  const t0 = performance.now()
  const worker = async () => {
    const buf = Buffer.allocUnsafe(16 * MiB)
    while (next < ranges.length) {
      const r = ranges[next++]
      for (let p = 0; p < r.length; p += buf.length) {
        const n = Math.min(buf.length, r.length - p)
        await chain.readInto(buf, 0, r.offset + p, n)
        bytes += n
      }
    }
  }
  await Promise.all(Array.from({ length: inflight }, worker))
  const s = (performance.now() - t0) / 1000
  await chain.close()
  return { bytes, seconds: s, ranges: ranges.length, maxRssMB: rss() }
}

/** baseline: sequential fs.read of `bytes` bytes of `file` from `start`, `chunk` bytes at a time */
function measureRaw(file, start, bytes, chunk) {
  const buf = Buffer.allocUnsafe(chunk)
  const t0 = performance.now()
  const fd = openSync(file, 'r')
  let done = 0
  while (done < bytes) {
    const n = readSync(fd, buf, 0, Math.min(chunk, bytes - done), start + done)
    if (n <= 0) throw new Error(`${file}: short read at ${start + done}`)
    done += n
  }
  closeSync(fd)
  return { bytes: done, seconds: (performance.now() - t0) / 1000, maxRssMB: rss() }
}

if (process.argv[2] === '--child') {
  const [, , , what, ...a] = process.argv
  const res =
    what === 'map' || what === 'map-baseline'
      ? await measureMap(a[0])
      : what === 'changed'
        ? await measureChanged(a[0])
        : what === 'read'
          ? await measureRead(a[0], Number(a[1] ?? 1))
          : measureRaw(a[0], Number(a[1]), Number(a[2]), Number(a[3]))
  process.stdout.write(JSON.stringify(res))
  process.exit(0)
}

function child(...args) {
  const r = spawnSync(process.execPath, [self, '--child', ...args.map(String)], { encoding: 'utf8', maxBuffer: 64 * MiB })
  if (r.status !== 0) throw new Error(r.stderr)
  return JSON.parse(r.stdout)
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const n = s.length
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
}
const load = () =>
  `load average ${loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')} on ${cpus().length} CPUs`
/** interleave two child measurements A B A B … after one warm-up of each; returns the rounds */
function interleave(a, b, rounds) {
  child(...a)
  child(...b)
  const ra = []
  const rb = []
  for (let i = 0; i < rounds; i++) {
    ra.push(child(...a))
    rb.push(child(...b))
  }
  return [ra, rb]
}
const list = (rs, f) =>
  rs
    .map(f)
    .map((x) => x.toFixed(2))
    .join(' ')

const dir = process.argv[2] ?? mkdtempSync(join(tmpdir(), 'bench-vmdk-'))
const ROUNDS = Math.max(3, Number(process.argv[3] ?? 5))
const QEMU_SECONDS = Number(process.argv[4] ?? 30)
mkdirSync(dir, { recursive: true })
const verdicts = []
try {
  console.log(`node ${process.version}; ${load()}; ${ROUNDS} interleaved rounds per comparison`)
  const rand = prng(42)
  // 1. 2 TiB SEsparse delta with 100,000 scattered grains
  const base = join(dir, 'big.vmdk')
  const top = join(dir, 'big-000001.vmdk')
  let t0 = performance.now()
  if (!existsSync(top)) {
    await vmdk.createFlatDisk(base, 2 * 1024 * GiB)
    await vmdk.createDelta(base, top, { format: 'sesparse' })
    const w = await vmdk.openWriter(top)
    const grains = (2 * 1024 * GiB) / 4096
    const g = Buffer.alloc(4096, 0xab)
    const picked = new Set()
    while (picked.size < 100000) picked.add(Math.floor(rand() * grains))
    for (const k of picked) await w.write(k * 4096, g)
    await w.close()
    console.log(`setup: 100,000 scattered 4 KiB grains written into a 2 TiB SEsparse delta in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  } else {
    for (let i = 0; i < 100000; i++) rand() // keep the second disk's layout independent of whether the first was reused
  }
  const big = seSparseInfo(top)
  console.log(`delta: ${big.gts} grain tables in use = ${(big.gtBytes / MiB).toFixed(0)} MiB of grain tables`)

  const [maps, raws] = interleave(['map', top], ['raw', big.file, big.gtStart, big.gtBytes, 4 * MiB], ROUNDS)
  const mapS = median(maps.map((r) => r.seconds))
  const rawS = median(raws.map((r) => r.seconds))
  const mapRss = Math.max(...maps.map((r) => r.maxRssMB))
  console.log(
    `map (2 TiB, 100k grains, fresh process): median ${mapS.toFixed(2)} s wall (rounds ${list(maps, (r) => r.seconds)}), ${median(maps.map((r) => r.cpuSeconds)).toFixed(2)} s CPU (rounds ${list(maps, (r) => r.cpuSeconds)}), ${maps[0].entries} entries, max RSS ${mapRss.toFixed(0)} MB (largest of the rounds)${maps[0].tableReads !== undefined ? `; ${maps[0].tableReads} grain-table reads, ${(maps[0].tableBytes / MiB).toFixed(0)} MiB` : ''}`,
  )
  console.log(
    `baseline: sequential fs.read of the same ${(big.gtBytes / MiB).toFixed(0)} MiB of grain tables in 4 MiB reads: median ${rawS.toFixed(2)} s (rounds ${list(raws, (r) => r.seconds)}), max RSS ${Math.max(...raws.map((r) => r.maxRssMB)).toFixed(0)} MB`,
  )
  console.log(`ratio map/raw grain-table read: ${(mapS / rawS).toFixed(2)} (time; >1 = slower than the raw read)`)
  console.log(
    `map CPU split: user ${list(maps, (r) => r.user)} s, system ${list(maps, (r) => r.sys)} s (rounds; system = the kernel's copies out of the page cache, thread-pool hand-offs, page faults)`,
  )
  if (process.env.GRAINLINE_VMDK_BASELINE_DIST !== undefined) {
    // ours again against the other build, interleaved in their own pairs
    const [ours, theirs] = interleave(['map', top], ['map-baseline', top], ROUNDS)
    const oS = median(ours.map((r) => r.seconds))
    const tS = median(theirs.map((r) => r.seconds))
    const oC = median(ours.map((r) => r.cpuSeconds))
    const tC = median(theirs.map((r) => r.cpuSeconds))
    console.log(
      `map, this build vs ${process.env.GRAINLINE_VMDK_BASELINE_DIST} (interleaved pairs): wall ${oS.toFixed(2)} vs ${tS.toFixed(2)} s (ratio ${(oS / tS).toFixed(2)}; rounds ${list(ours, (r) => r.seconds)} / ${list(theirs, (r) => r.seconds)}), CPU ${oC.toFixed(2)} vs ${tC.toFixed(2)} s (ratio ${(oC / tC).toFixed(2)}; user ${list(ours, (r) => r.user)} / ${list(theirs, (r) => r.user)}), max RSS ${Math.max(...ours.map((r) => r.maxRssMB)).toFixed(0)} vs ${Math.max(...theirs.map((r) => r.maxRssMB)).toFixed(0)} MB; ${load()}`,
    )
  }
  if (process.env.BENCH_ONLY === 'map') {
    console.log(`(${load()})`)
    console.log(
      `target: map of the 2 TiB / 100k-grain delta < 1 s: ${mapS < 1 ? 'met' : 'NOT met'} (median ${mapS.toFixed(2)} s wall, ${median(maps.map((r) => r.cpuSeconds)).toFixed(2)} s CPU, ${load()})`,
    )
    if (process.argv[2] === undefined) rmSync(dir, { recursive: true, force: true })
    process.exit(0)
  }
  const ch = child('changed', top)
  console.log(`changedRanges(0) alone, fresh process: ${ch.seconds.toFixed(2)} s, ${ch.ranges} ranges, ${(ch.changedBytes / MiB).toFixed(0)} MiB`)
  console.log(`(${load()})`)

  // qemu-img map of the same delta: as opened normally (its descriptor names the sparse flat
  // 2 TiB parent, which qemu then probes for every grain the delta lacks), and with the parent
  // cut off (backing: null: only the delta's own grain tables)
  const qemuMap = (what, target) => {
    const t = performance.now()
    const q = spawnSync('qemu-img', ['map', '--output=json', target], { encoding: 'utf8', timeout: QEMU_SECONDS * 1000, maxBuffer: 512 * MiB })
    const qs = (performance.now() - t) / 1000
    if (q.error && q.error.code !== 'ETIMEDOUT') throw q.error
    if (q.status !== 0 && q.signal === null) throw new Error(`qemu-img map failed: ${q.stderr}`)
    const lines = (q.stdout ?? '').split('\n').filter((l) => l.includes('"start"'))
    let reached = 0
    let qData = 0
    for (const l of lines) {
      const m = /"start": (\d+), "length": (\d+), "depth": (\d+), "present": (true|false), "zero": (true|false), "data": (true|false)/.exec(l)
      if (!m) continue
      reached = Number(m[1]) + Number(m[2])
      if (m[3] === '0' && m[6] === 'true') qData++
    }
    if (q.status === 0) {
      console.log(`baseline: qemu-img map --output=json, ${what}: ${qs.toFixed(2)} s, ${lines.length} entries (${qData} data from the delta); ratio map/qemu-img ${(mapS / qs).toFixed(3)}`)
    } else {
      const frac = reached / (2 * 1024 * GiB)
      console.log(
        `baseline: qemu-img map --output=json, ${what}: did NOT finish in ${QEMU_SECONDS} s (stopped); it had mapped ${(reached / GiB).toFixed(0)} GiB of 2048 GiB (${(frac * 100).toFixed(1)} %, ${qData} data entries from the delta) = ${(reached / GiB / qs).toFixed(2)} GiB/s; at that rate the whole disk would take ~${(qs / frac).toFixed(0)} s (extrapolated, not measured); ratio map/qemu-img < ${(mapS / qs).toFixed(3)}`,
      )
    }
  }
  qemuMap('the delta over its sparse flat parent', top)
  qemuMap('the delta alone (backing: null)', `json:${JSON.stringify({ driver: 'vmdk', file: { driver: 'file', filename: top }, backing: null })}`)
  console.log(`(${load()})`)
  verdicts.push(`map of the 2 TiB / 100k-grain delta < 1 s: ${mapS < 1 ? 'met' : 'NOT met'} (median ${mapS.toFixed(2)} s wall, ${median(maps.map((r) => r.cpuSeconds)).toFixed(2)} s CPU)`)
  verdicts.push(`map of the 2 TiB / 100k-grain delta < 200 MB RSS: ${mapRss < 200 ? 'met' : 'NOT met'} (largest ${mapRss.toFixed(0)} MB)`)

  // scattered 4 KiB grains read range by range (no target; shows per-range cost)
  const [rs, rsRaw] = interleave(['read', top], ['raw', big.file, big.grainsStart, 100000 * 4096, 16 * MiB], ROUNDS)
  const rsG = median(rs.map((r) => r.bytes / r.seconds / 1e9))
  const rsRawG = median(rsRaw.map((r) => r.bytes / r.seconds / 1e9))
  console.log(
    `read the 100,000 scattered grains through the chain, range by range: median ${rsG.toFixed(2)} GB/s (rounds ${list(rs, (r) => r.bytes / r.seconds / 1e9)}; ${(rs[0].bytes / MiB).toFixed(0)} MiB in ${rs[0].ranges} ranges)`,
  )
  console.log(
    `baseline: sequential fs.read of the same ${(rs[0].bytes / MiB).toFixed(0)} MiB from the grains area, 16 MiB reads: median ${rsRawG.toFixed(2)} GB/s (rounds ${list(rsRaw, (r) => r.bytes / r.seconds / 1e9)}); ratio ${(rsG / rsRawG).toFixed(2)}`,
  )
  // the same with 16 ranges in flight, as a consumer with read-ahead (the agent) reads them
  const [rs16, rs16Raw] = interleave(['read', top, 16], ['raw', big.file, big.grainsStart, 100000 * 4096, 16 * MiB], ROUNDS)
  const rs16G = median(rs16.map((r) => r.bytes / r.seconds / 1e9))
  const rs16RawG = median(rs16Raw.map((r) => r.bytes / r.seconds / 1e9))
  console.log(
    `read the 100,000 scattered grains through the chain, 16 ranges in flight: median ${rs16G.toFixed(2)} GB/s (rounds ${list(rs16, (r) => r.bytes / r.seconds / 1e9)}); same baseline: median ${rs16RawG.toFixed(2)} GB/s; ratio ${(rs16G / rs16RawG).toFixed(2)}`,
  )

  // 2. a delta with 1 GiB of changed data in 8 MiB runs, on a 64 GiB disk
  const base2 = join(dir, 'seq.vmdk')
  const top2 = join(dir, 'seq-000001.vmdk')
  if (!existsSync(top2)) {
    await vmdk.createFlatDisk(base2, 64 * GiB)
    await vmdk.createDelta(base2, top2, { format: 'sesparse' })
    t0 = performance.now()
    const w2 = await vmdk.openWriter(top2)
    const chunk = Buffer.alloc(8 * MiB, 0xcd)
    for (let i = 0; i < 128; i++) await w2.write(Math.floor(rand() * ((64 * GiB) / (8 * MiB))) * 8 * MiB, chunk)
    await w2.close()
    console.log(`setup: 128 runs of 8 MiB (random positions, overlaps possible) written in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  }
  const seq = seSparseInfo(top2)
  const probe = child('read', top2)
  const [r2, r2Raw] = interleave(['read', top2], ['raw', seq.file, seq.grainsStart, probe.bytes, 16 * MiB], ROUNDS)
  const r2G = median(r2.map((r) => r.bytes / r.seconds / 1e9))
  const r2RawG = median(r2Raw.map((r) => r.bytes / r.seconds / 1e9))
  console.log(
    `read changed data through the chain (page cache): median ${r2G.toFixed(2)} GB/s (rounds ${list(r2, (r) => r.bytes / r.seconds / 1e9)}; ${(probe.bytes / MiB).toFixed(0)} MiB in ${probe.ranges} ranges), max RSS ${Math.max(...r2.map((r) => r.maxRssMB)).toFixed(0)} MB`,
  )
  console.log(
    `baseline: sequential fs.read of the same ${(probe.bytes / MiB).toFixed(0)} MiB from the grains area, 16 MiB reads: median ${r2RawG.toFixed(2)} GB/s (rounds ${list(r2Raw, (r) => r.bytes / r.seconds / 1e9)}); ratio ours/baseline ${(r2G / r2RawG).toFixed(2)}`,
  )
  verdicts.push(`read a delta's changed data through the chain >= 1 GB/s: ${r2G >= 1 ? 'met' : 'NOT met'} (median ${r2G.toFixed(2)} GB/s)`)
  console.log(`(${load()})`)
  for (const v of verdicts) console.log(`target: ${v}`)
} finally {
  if (process.argv[2] === undefined) rmSync(dir, { recursive: true, force: true })
}
