#!/usr/bin/env node
// Benchmark of @grainline/vmdk (issue #2 performance targets):
//  1. map() and changedRanges() of an SEsparse delta on a 2 TiB virtual disk holding
//     100,000 scattered 4 KiB grains (most grain tables in use): target < 2 s, < 200 MB RSS.
//  2. reading a delta's changed data through the chain from the page cache: target >= 1 GB/s.
// Usage: npm run build && node scripts/bench-vmdk.mjs [workdir]   (needs ~1 GiB free disk)
// Each measurement runs in a fresh child process so its RSS is its own.
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const vmdk = await import(new URL('../packages/vmdk/dist/src/index.js', import.meta.url).href)
const GiB = 1024 ** 3
const MiB = 1024 ** 2
const self = fileURLToPath(import.meta.url)

function prng (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

async function measureMap (top) {
  const c0 = process.cpuUsage()
  const t0 = performance.now()
  const chain = await vmdk.openChain(top)
  let entries = 0
  for await (const e of chain.map()) entries++
  const tMap = performance.now() - t0
  const cpu = process.cpuUsage(c0)
  const t1 = performance.now()
  let ranges = 0
  let bytes = 0
  for await (const r of chain.changedRanges(0)) { ranges++; bytes += r.length }
  const tChanged = performance.now() - t1
  await chain.close()
  return { mapSeconds: tMap / 1000, mapCpuSeconds: (cpu.user + cpu.system) / 1e6, mapEntries: entries, changedSeconds: tChanged / 1000, ranges, changedBytes: bytes, maxRssMB: process.resourceUsage().maxRSS / 1024 }
}

async function measureRead (top) {
  const chain = await vmdk.openChain(top)
  const ranges = []
  for await (const r of chain.changedRanges(0)) if (!r.zero) ranges.push(r)
  const buf = Buffer.allocUnsafe(16 * MiB)
  let bytes = 0
  const t0 = performance.now()
  for (const r of ranges) {
    for (let p = 0; p < r.length; p += buf.length) {
      const n = Math.min(buf.length, r.length - p)
      await chain.readInto(buf, 0, r.offset + p, n)
      bytes += n
    }
  }
  const s = (performance.now() - t0) / 1000
  await chain.close()
  return { readBytes: bytes, readSeconds: s, GBps: bytes / s / 1e9, ranges: ranges.length, maxRssMB: process.resourceUsage().maxRSS / 1024 }
}

if (process.argv[2] === '--child') {
  const [, , , what, top] = process.argv
  const res = what === 'map' ? await measureMap(top) : await measureRead(top)
  process.stdout.write(JSON.stringify(res))
  process.exit(0)
}

function child (what, top) {
  // read twice: the first pass warms the page cache
  const r = spawnSync(process.execPath, [self, '--child', what, top], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(r.stderr)
  return JSON.parse(r.stdout)
}

const dir = process.argv[2] ?? mkdtempSync(join(tmpdir(), 'bench-vmdk-'))
mkdirSync(dir, { recursive: true })
try {
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
  }
  child('map', top)
  const m = child('map', top)
  console.log(`map (2 TiB, 100k grains, cold table cache): ${m.mapSeconds.toFixed(2)} s wall, ${m.mapCpuSeconds.toFixed(2)} s CPU, ${m.mapEntries} entries; then changedRanges: ${m.changedSeconds.toFixed(2)} s, ${m.ranges} ranges; max RSS ${m.maxRssMB.toFixed(0)} MB  [target < 2 s, < 200 MB]`)
  console.log(`(load average now ${(await import('node:os')).loadavg().map(x => x.toFixed(1)).join(' ')} on ${(await import('node:os')).cpus().length} CPUs)`)
  const rs = child('read', top)
  console.log(`read scattered changed grains through the chain: ${(rs.readBytes / MiB).toFixed(0)} MiB in ${rs.readSeconds.toFixed(2)} s = ${rs.GBps.toFixed(2)} GB/s (${rs.ranges} ranges)`)

  // 2. a delta with 1 GiB of changed data in 8 MiB runs, on a 64 GiB disk
  const base2 = join(dir, 'seq.vmdk')
  const top2 = join(dir, 'seq-000001.vmdk')
  if (!existsSync(top2)) {
    await vmdk.createFlatDisk(base2, 64 * GiB)
    await vmdk.createDelta(base2, top2, { format: 'sesparse' })
    t0 = performance.now()
    const w2 = await vmdk.openWriter(top2)
    const chunk = Buffer.alloc(8 * MiB, 0xcd)
    for (let i = 0; i < 128; i++) await w2.write(Math.floor(rand() * (64 * GiB / (8 * MiB))) * 8 * MiB, chunk)
    await w2.close()
    console.log(`setup: 1 GiB in 128 runs of 8 MiB written in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  }
  child('read', top2)
  const r2 = child('read', top2)
  console.log(`read changed data through the chain (page cache): ${(r2.readBytes / MiB).toFixed(0)} MiB in ${r2.readSeconds.toFixed(2)} s = ${r2.GBps.toFixed(2)} GB/s, max RSS ${r2.maxRssMB.toFixed(0)} MB  [target >= 1 GB/s]`)
} finally {
  if (process.argv[2] === undefined) rmSync(dir, { recursive: true, force: true })
}
