#!/usr/bin/env node
/**
 * Benchmark of an incremental cycle (issue #5 "Performance").
 *
 *   node scripts/bench-cycle.mjs [--size-gib 16] [--rates 0.1,1,5] [--dir DIR] [--format sesparse]
 *
 * A sample VM with one sparse disk (mostly holes, ~2% data) is seeded to a real
 * receiver process over TLS on loopback. Then, per change rate, a simulated
 * guest writes rate% of the disk in 64 KiB writes at random offsets into the
 * running delta, and three things are timed in the same invocation:
 *
 *   cycle   grainline incremental cycle end to end: snapshot, ship, apply
 *           (journalled), commit, trivial check, consolidate
 *   rsync   rsync --inplace --no-whole-file -I from the equivalent source flat
 *           image to a copy of the mirror as it was before the cycle
 *   floor   the I/O floor of a crash-safe apply: the changed bytes written
 *           twice (journal, then in place) with fdatasync
 *
 * and the agent's peak RSS during the cycle is sampled (this process), and the
 * receiver's CPU time (user + system, /proc) for the seed and each cycle.
 * `GRAINLINE_RECEIVER_MAIN=<main.js>` runs another receiver build (an A/B).
 * Needs: built packages (npx tsc -b), qemu-img, rsync, openssl.
 */
import { execFile, execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { loadavg, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { parseArgs, promisify } from 'node:util'
import { pino } from 'pino'
import { receiverMain } from '@grainline/test-utils'

const exec = promisify(execFile)
const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { replicate, createSampleVm, simulateGuestWrites, prng } = await import(join(root, 'packages/agent/dist/src/index.js'))

const { values } = parseArgs({
  options: {
    'size-gib': { type: 'string', default: '16' },
    rates: { type: 'string', default: '0.1,1,5' },
    dir: { type: 'string' },
    format: { type: 'string', default: 'sesparse' },
    keep: { type: 'boolean', default: false },
    'skip-rsync': { type: 'boolean', default: false },
  },
})
const GiB = 1024 ** 3
const MiB = 1024 ** 2
const size = Number(values['size-gib']) * GiB
const rates = values.rates.split(',').map(Number)
const base = values.dir ?? process.env.BENCH_DIR ?? tmpdir()
mkdirSync(base, { recursive: true })
const dir = mkdtempSync(join(base, 'grainline-bench-'))
const log = (...a) => process.stderr.write(a.join(' ') + '\n')
const sec = (ms) => (ms / 1000).toFixed(2)

// receiver process with TLS
const key = join(dir, 'k.pem')
const cert = join(dir, 'c.pem')
execFileSync(
  'openssl',
  ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1', '-days', '1', '-keyout', key, '-out', cert],
  { stdio: 'ignore' },
)
const token = 'bench-token-0123456789abcdef0123'
writeFileSync(join(dir, 'tokens.json'), JSON.stringify({ tokens: [{ name: 'bench', token, vms: ['*'] }] }))
const store = join(dir, 'store')
mkdirSync(store)
const rx = spawn(
  process.execPath,
  [
    ...(process.env.BENCH_PROFILE_DIR ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_PROFILE_DIR] : []),
    receiverMain(),
    '--listen',
    '127.0.0.1:0',
    '--store',
    store,
    '--tokens',
    join(dir, 'tokens.json'),
    '--tls-cert',
    cert,
    '--tls-key',
    key,
    '--log-level',
    'warn',
  ],
  {
    stdio: ['ignore', 'pipe', 'inherit'],
  },
)
const port = await new Promise((resolve, reject) => {
  createInterface({ input: rx.stdout }).on('line', (l) => {
    try {
      const ev = JSON.parse(l)
      if (ev.event === 'listening') resolve(ev.port)
    } catch {}
  })
  rx.once('exit', (c) => reject(new Error(`receiver exited ${c}`)))
})
// for attaching a profiler (perf record -p, strace -c -p)
log(`receiver: pid ${rx.pid} (${receiverMain()})`)
// the receiver process's CPU seconds so far, user + system (/proc, Linux)
const TICK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim())
const rxCpu = () => {
  const f = readFileSync(`/proc/${rx.pid}/stat`, 'utf8')
  const v = f.slice(f.lastIndexOf(')') + 2).split(' ')
  return (Number(v[11]) + Number(v[12])) / TICK
}
const cleanup = async () => {
  rx.kill('SIGTERM')
  await once(rx, 'exit').catch(() => {})
  if (!values.keep) rmSync(dir, { recursive: true, force: true })
}
process.on('SIGINT', () => {
  void cleanup().then(() => process.exit(130))
})

const logger = pino({ level: 'warn' })
const worker = join(dir, 'agent-worker.mjs')
writeFileSync(
  worker,
  `
import { readFileSync } from 'node:fs'
import { pino } from ${JSON.stringify(import.meta.resolve('pino'))}
import { replicate } from ${JSON.stringify(new URL('../packages/agent/dist/src/index.js', import.meta.url).href)}
const init = JSON.parse(process.argv[2])
init.ca = readFileSync(init.ca)
const peak = { rss: 0, heapUsed: 0, external: 0, arrayBuffers: 0 }
const sample = () => { const m = process.memoryUsage(); for (const k of Object.keys(peak)) peak[k] = Math.max(peak[k], m[k]) }
const timer = setInterval(sample, 20)
const report = await replicate({ logger: pino({ level: 'warn' }, pino.destination(2)) }, init)
clearInterval(timer)
process.stdout.write(JSON.stringify({ report, maxRssKiB: process.resourceUsage().maxRSS, peak }))
`,
)
const init = {
  to: `wss://127.0.0.1:${port}`,
  token,
  ca: readFileSync(cert),
  stateDir: join(dir, 'agent-state'),
  deltaFormat: values.format,
  progress: 'none',
  trivialMiB: 16,
  compress: process.env.BENCH_COMPRESS ?? 'lz4',
}

try {
  log(`# ${values['size-gib']} GiB disk, ${values.format} deltas, dir ${dir}`)
  let t0 = performance.now()
  const vm = await createSampleVm(dir, { name: 'bench', disks: [{ sizeBytes: size, fill: 'sparse' }], seed: 1 })
  log(`sample VM created in ${sec(performance.now() - t0)} s`)
  t0 = performance.now()
  const seedCpu0 = rxCpu()
  const seed = await replicate({ logger }, { ...init, vm: vm.vmxPath })
  if (!seed.ok) throw new Error(`seed failed: ${JSON.stringify(seed.vms[0]?.error)}`)
  const sd = seed.vms[0].disks[0]
  const seedCpu = rxCpu() - seedCpu0
  log(
    `seed: ${sec(performance.now() - t0)} s (${(sd.dataBytes / MiB).toFixed(0)} MiB data, ${(sd.zeroBytes / GiB).toFixed(1)} GiB zero); receiver CPU ${seedCpu.toFixed(2)} s (${(seedCpu / (sd.dataBytes / GiB)).toFixed(2)} s per GiB of data)`,
  )
  const mirror = join(store, 'bench', 'bench-flat.vmdk')
  const rows = []
  for (const [i, rate] of rates.entries()) {
    const bytes = Math.round((size * rate) / 100 / 65536) * 65536
    t0 = performance.now()
    const writes = await simulateGuestWrites(vm.vmxPath, { bytes, writeSize: 65536, seed: 10 + i, zeroFraction: 0 })
    log(`\n## ${rate}% changed: ${(bytes / MiB).toFixed(0)} MiB in ${writes.length} writes of 64 KiB (guest writes took ${sec(performance.now() - t0)} s)`)
    // the equivalent flat images for rsync: source = the view the cycle will ship; target = the mirror before the cycle
    const src = join(dir, 'src.raw')
    const dst = join(dir, 'dst.raw')
    const top = join(
      vm.dir,
      execFileSync('sh', ['-c', `grep -i 'scsi0:0.fileName' "${vm.vmxPath}" | sed 's/.*= "\\(.*\\)"/\\1/'`])
        .toString()
        .trim(),
    )
    if (!values['skip-rsync']) {
      await exec('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', top, src])
      await exec('cp', ['--sparse=always', mirror, dst])
    }
    execFileSync('sync')

    // the cycle runs in a fresh agent process so that its peak RSS is the agent's alone
    const cpu0 = rxCpu()
    t0 = performance.now()
    const { stdout } = await exec(
      process.execPath,
      [...(process.env.BENCH_PROFILE_DIR ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_PROFILE_DIR] : []), worker, JSON.stringify({ ...init, ca: cert, vm: vm.vmxPath })],
      { maxBuffer: 64 << 20 },
    )
    const processMs = performance.now() - t0
    const rxCpuS = rxCpu() - cpu0
    const { report: r, maxRssKiB, peak: mem } = JSON.parse(stdout)
    log(
      `agent memory peaks (MiB): ${Object.entries(mem)
        .map(([k, v]) => `${k} ${(v / MiB).toFixed(0)}`)
        .join(', ')}`,
    )
    // replicate() end to end inside the agent (node start-up and module loading excluded; printed apart)
    const cycleMs = r.vms[0].durationMs
    log(`agent process wall time ${sec(processMs)} s (includes node start-up)`)
    const peak = maxRssKiB * 1024
    if (!r.ok) throw new Error(`cycle failed: ${JSON.stringify(r.vms[0]?.error ?? r.vms[0]?.disks)}`)
    const d = r.vms[0].disks[0]
    log(
      `cycle: ${sec(cycleMs)} s — ${d.extents} extents, ${(d.dataBytes / MiB).toFixed(1)} MiB data, ${(d.wireBytes / MiB).toFixed(1)} MiB on the wire, trivial ${d.trivial?.ok}; ms ${JSON.stringify(r.vms[0].timings)}`,
    )

    t0 = performance.now()
    if (!values['skip-rsync']) await exec('rsync', ['--inplace', '--no-whole-file', '-I', src, dst], { maxBuffer: 1 << 20 })
    const rsyncMs = values['skip-rsync'] ? NaN : performance.now() - t0
    log(`rsync: ${sec(rsyncMs)} s`)

    // I/O floor: changed bytes twice with fdatasync (journal append, then in place at the guest's offsets)
    const floorFile = join(dir, 'floor.raw')
    const j = await open(join(dir, 'floor.journal'), 'w')
    const f = await open(floorFile, 'w')
    await f.truncate(size)
    const buf = Buffer.alloc(65536)
    const rnd = prng(99)
    for (let k = 0; k < buf.length; k += 4) buf.writeUInt32LE(Math.floor(rnd() * 2 ** 32), k)
    execFileSync('sync')
    t0 = performance.now()
    for (let k = 0; k < writes.length; k++) await j.write(buf, 0, buf.length, k * buf.length)
    await j.datasync()
    for (const w of writes) await f.write(buf, 0, buf.length, w.offset)
    await f.datasync()
    const floorMs = performance.now() - t0
    await j.close()
    await f.close()
    rmSync(floorFile)
    rmSync(join(dir, 'floor.journal'))
    log(`floor: ${sec(floorMs)} s`)
    rmSync(src, { force: true })
    rmSync(dst, { force: true })
    // the snapshot operations the cycle cannot avoid: taking the snapshot and removing it (consolidation)
    const snapMs = (r.vms[0].timings?.snapshot ?? 0) + (r.vms[0].timings?.remove ?? 0)
    log(`receiver CPU in the cycle: ${rxCpuS.toFixed(2)} s (${(rxCpuS / (d.dataBytes / GiB)).toFixed(2)} s per GiB of data)`)
    rows.push({ rate, mib: bytes / MiB, cycleMs, rsyncMs, floorMs, snapMs, rssMiB: peak / MiB, rxCpuS, rxCpuPerGiB: rxCpuS / (d.dataBytes / GiB), load: loadavg()[0] })
  }
  console.log(
    `\n| changed | MiB | grainline cycle | rsync -I --inplace | I/O floor (2× + fdatasync) | rsync / cycle | cycle / (2×floor + 0.5 s) | snapshot operations (take + remove) | cycle / (floor + snapshot operations), issue #17 target ≤ 1.3 | agent peak RSS (own process) | receiver CPU (per GiB of data) | load (1 min) |`,
  )
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for (const r of rows) {
    console.log(
      `| ${r.rate}% | ${r.mib.toFixed(0)} | ${sec(r.cycleMs)} s | ${sec(r.rsyncMs)} s | ${sec(r.floorMs)} s | ${(r.rsyncMs / r.cycleMs).toFixed(1)}× | ${(r.cycleMs / (2 * r.floorMs + 500)).toFixed(2)} | ${sec(r.snapMs)} s | ${(r.cycleMs / (r.floorMs + r.snapMs)).toFixed(2)} | ${r.rssMiB.toFixed(0)} MiB | ${r.rxCpuS.toFixed(2)} s (${r.rxCpuPerGiB.toFixed(2)} s) | ${r.load.toFixed(1)} |`,
    )
  }
} finally {
  await cleanup()
}
