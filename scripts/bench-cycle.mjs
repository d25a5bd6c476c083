#!/usr/bin/env node
/**
 * Benchmark of an incremental cycle (issue #5 "Performance").
 *
 *   node scripts/bench-cycle.mjs [--size-gib 16] [--rates 0.1,1,5] [--dir DIR] [--format sesparse]
 *
 * A sample VM with one sparse disk (mostly holes, ~2% data) is seeded to a real
 * receiver process over TLS on loopback, timed against `cp --sparse=always` +
 * `sync` of the same base flat in the same run (a seed reads only the data
 * ranges, as that copy does). Then, per change rate, a simulated
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
 * `BENCH_AGENT_ENV_B="NAME=VALUE[,NAME=VALUE]"` runs every second cycle's agent
 * with those variables (e.g. `GRAINLINE_EXTENT_WORKER=0`: an interleaved A/B in
 * one build; give a rate twice or more, `--rates 1,1,1,1,1,1`), and prints the
 * medians of both; `BENCH_AGENT_ENV_A` likewise for the other cycles' agents
 * (not this process nor the receiver: e.g. `UV_THREADPOOL_SIZE=4` vs `=2`).
 * `BENCH_AGENT_DIST=<agent dist/src/index.js>` runs the cycles' agent from
 * another build (with `GRAINLINE_RECEIVER_MAIN`: a whole other build, for an
 * A/B of runs interleaved by scripts/bench-cycle-ab.mjs). Per cycle it prints
 * the CPU of the receiver (user / system) and of the agent (user / system, in
 * `replicate()` and with start-up), and the machine's busy CPU seconds
 * (/proc/stat, every process and the kernel: other work on the machine counts
 * too), the agent's main thread alone in `replicate()` (/proc/thread-self/schedstat) and
 * its minor page faults there; `BENCH_JSON=1` prints the rows as one JSON line at the end.
 * `BENCH_AGENT_LOG=<level>` prints the agent's log lines (at `debug`, a 'disk
 * shipped' line per disk: the time to hand its extents to the socket, the
 * wait for the receiver's DiskEnded, and the agent's CPU over both);
 * `BENCH_RECEIVER_NODE_FLAGS="--max-semi-space-size=32"` passes Node/V8 flags to the receiver process.
 * `BENCH_RECEIVER_ARGS="--batch-bytes 4194304"` passes options to the receiver.
 * `BENCH_RECEIVER_LOG=<level>` runs the receiver at that level (at `debug`,
 * its batches flushed, written and durable; its log goes to stderr).
 * `BENCH_AGENT_PREFIX="strace -f -c -o /tmp/agent-{i}.strace"` runs each
 * cycle's agent process under a command (`{i}`: the cycle's index).
 * Needs: built packages (npx tsc -b), qemu-img, rsync, openssl.
 */
import { execFile, execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { loadavg, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath, pathToFileURL } from 'node:url'
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
    ...(process.env.BENCH_RECEIVER_NODE_FLAGS ? process.env.BENCH_RECEIVER_NODE_FLAGS.split(' ').filter((f) => f !== '') : []),
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
    process.env.BENCH_RECEIVER_LOG ?? 'warn',
    ...(process.env.BENCH_RECEIVER_ARGS ? process.env.BENCH_RECEIVER_ARGS.split(' ').filter((f) => f !== '') : []),
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
const rxCpuSplit = () => {
  const f = readFileSync(`/proc/${rx.pid}/stat`, 'utf8')
  const v = f.slice(f.lastIndexOf(')') + 2).split(' ')
  return { user: Number(v[11]) / TICK, sys: Number(v[12]) / TICK }
}
const rxCpu = () => {
  const c = rxCpuSplit()
  return c.user + c.sys
}
// busy CPU seconds of the whole machine (every process and the kernel; idle and iowait excluded)
const machineBusy = () => {
  const v = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
  return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / TICK
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
import { setFlagsFromString } from 'node:v8'
import { pino } from ${JSON.stringify(import.meta.resolve('pino'))}
const agent = await import(${JSON.stringify(process.env.BENCH_AGENT_DIST ? pathToFileURL(process.env.BENCH_AGENT_DIST).href : new URL('../packages/agent/dist/src/index.js', import.meta.url).href)})
const { replicate } = agent
// as the CLI's replicate does (a build that has it); BENCH_V8_FLAGS: other V8 flags instead (NODE_OPTIONS takes few), 'none' for none
if (process.env.BENCH_V8_FLAGS) { if (process.env.BENCH_V8_FLAGS !== 'none') setFlagsFromString(process.env.BENCH_V8_FLAGS) }
else agent.tuneAgentProcess?.()
const init = JSON.parse(process.argv[2])
init.ca = readFileSync(init.ca)
// BENCH_AGENT_ENV_B="BENCH_AGENT_COMPRESS=none": this cycle's agent offers that compression (an interleaved A/B)
if (process.env.BENCH_AGENT_COMPRESS) init.compress = process.env.BENCH_AGENT_COMPRESS
const peak = { rss: 0, heapUsed: 0, external: 0, arrayBuffers: 0 }
const sample = () => { const m = process.memoryUsage(); for (const k of Object.keys(peak)) peak[k] = Math.max(peak[k], m[k]) }
const timer = setInterval(sample, 20)
// the main thread's own CPU (Linux: ns on CPU, /proc/thread-self/schedstat) and the process's minor faults, over replicate()
const mainNs = () => { try { return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]) } catch { return NaN } }
const m0 = mainNs()
const f0 = process.resourceUsage().minorPageFault
const c0 = process.cpuUsage()
const report = await replicate({ logger: pino({ level: process.env.BENCH_AGENT_LOG ?? 'warn' }, pino.destination(2)) }, init)
const c1 = process.cpuUsage(c0)
const mainCpuS = (mainNs() - m0) / 1e9
const minorFaults = process.resourceUsage().minorPageFault - f0
clearInterval(timer)
const ru = process.resourceUsage()
process.stdout.write(JSON.stringify({ report, maxRssKiB: ru.maxRSS, peak, cpuS: (ru.userCPUTime + ru.systemCPUTime) / 1e6, cycleCpu: { user: c1.user / 1e6, sys: c1.system / 1e6 }, mainCpuS, minorFaults }))
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
  const seedMs = performance.now() - t0
  log(
    `seed: ${sec(seedMs)} s (${(sd.dataBytes / MiB).toFixed(0)} MiB data, ${(sd.zeroBytes / GiB).toFixed(1)} GiB zero); receiver CPU ${seedCpu.toFixed(2)} s (${(seedCpu / (sd.dataBytes / GiB)).toFixed(2)} s per GiB of data); ms ${JSON.stringify(seed.vms[0].timings)}`,
  )
  // the seed's baseline in the same run: a sparse-aware local copy of the same base flat, made durable
  // (GNU cp 9 copies only the data ranges: SEEK_DATA / copy_file_range); both read a warm page cache
  const cpDst = join(dir, 'cp-baseline.raw')
  t0 = performance.now()
  execFileSync('sh', ['-c', 'cp --sparse=always "$1" "$2" && sync "$2"', 'cp', join(vm.dir, 'bench-flat.vmdk'), cpDst])
  const cpMs = performance.now() - t0
  rmSync(cpDst, { force: true })
  log(
    `seed baseline: cp --sparse=always + sync of the base flat ${sec(cpMs)} s; seed / cp ${(seedMs / cpMs).toFixed(2)}; the seed skipped ${((sd.holesSkippedBytes ?? 0) / GiB).toFixed(1)} GiB of holes without reading them`,
  )
  const mirror = join(store, 'bench', 'bench-flat.vmdk')
  const allocated = (f) =>
    Number(
      execFileSync('stat', ['-c', '%b*%B', f])
        .toString()
        .trim()
        .split('*')
        .reduce((a, b) => a * Number(b), 1),
    )
  log(`seed: the mirror's flat holds ${(allocated(mirror) / MiB).toFixed(0)} MiB on disk, the source's ${(allocated(join(vm.dir, 'bench-flat.vmdk')) / MiB).toFixed(0)} MiB`)
  const rows = []
  const envOf = (spec) =>
    Object.fromEntries(
      (spec ?? '')
        .split(',')
        .filter((kv) => kv.includes('='))
        .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
    )
  const envB = envOf(process.env.BENCH_AGENT_ENV_B)
  // BENCH_AGENT_ENV_A: variables of the A cycles' agents only (not of this process nor the receiver)
  const envA = envOf(process.env.BENCH_AGENT_ENV_A)
  const ab = Object.keys(envB).length > 0
  for (const [i, rate] of rates.entries()) {
    const variant = ab && i % 2 === 1 ? 'B' : 'A'
    const bytes = Math.round((size * rate) / 100 / 65536) * 65536
    t0 = performance.now()
    const writes = await simulateGuestWrites(vm.vmxPath, { bytes, writeSize: 65536, seed: 10 + i, zeroFraction: 0 })
    log(
      `\n## ${ab ? `${variant} (${variant === 'B' ? JSON.stringify(envB) : 'as is'}), ` : ''}${rate}% changed: ${(bytes / MiB).toFixed(0)} MiB in ${writes.length} writes of 64 KiB (guest writes took ${sec(performance.now() - t0)} s)`,
    )
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
    const cpu0 = rxCpuSplit()
    const busy0 = machineBusy()
    t0 = performance.now()
    // BENCH_AGENT_PREFIX="strace -f -c -o /tmp/agent-{i}.strace": a command the agent process runs under ({i}: the cycle's index)
    const prefix = (process.env.BENCH_AGENT_PREFIX ?? '')
      .split(' ')
      .filter((w) => w !== '')
      .map((w) => w.replaceAll('{i}', String(i)))
    const nodeArgs = [...(process.env.BENCH_PROFILE_DIR ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_PROFILE_DIR] : []), worker, JSON.stringify({ ...init, ca: cert, vm: vm.vmxPath })]
    const { stdout, stderr: agentErr } = await exec(prefix[0] ?? process.execPath, prefix.length > 0 ? [...prefix.slice(1), process.execPath, ...nodeArgs] : nodeArgs, {
      maxBuffer: 64 << 20,
      env: { ...process.env, ...(variant === 'B' ? envB : envA) },
    })
    // BENCH_AGENT_LOG=<level>: the agent's log lines
    if (process.env.BENCH_AGENT_LOG !== undefined) log(agentErr.trim())
    const processMs = performance.now() - t0
    const busyS = machineBusy() - busy0
    const cpu1 = rxCpuSplit()
    const rxUser = cpu1.user - cpu0.user
    const rxSys = cpu1.sys - cpu0.sys
    const rxCpuS = rxUser + rxSys
    const { report: r, maxRssKiB, peak: mem, cpuS: agentCpuS, cycleCpu, mainCpuS, minorFaults } = JSON.parse(stdout)
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
    if (!Number.isNaN(rsyncMs)) log(`rsync: ${sec(rsyncMs)} s`)

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
    log(
      `receiver CPU in the cycle: ${rxCpuS.toFixed(2)} s (user ${rxUser.toFixed(2)}, system ${rxSys.toFixed(2)}; ${(rxCpuS / (d.dataBytes / GiB)).toFixed(2)} s per GiB of data); agent CPU in replicate() ${(cycleCpu.user + cycleCpu.sys).toFixed(2)} s (user ${cycleCpu.user.toFixed(2)}, system ${cycleCpu.sys.toFixed(2)}; main thread ${mainCpuS.toFixed(2)} s; ${minorFaults} minor faults), process ${agentCpuS.toFixed(2)} s (start-up included); machine busy ${busyS.toFixed(2)} CPU s over the agent process's ${sec(processMs)} s`,
    )
    rows.push({
      rxUser,
      rxSys,
      agentCycleCpuS: cycleCpu.user + cycleCpu.sys,
      agentCycleUser: cycleCpu.user,
      agentCycleSys: cycleCpu.sys,
      agentMainCpuS: mainCpuS,
      agentFaults: minorFaults,
      busyS,
      processMs,
      timings: r.vms[0].timings,
      variant,
      agentCpuS,
      ship: r.vms[0].timings?.ship ?? NaN,
      rate,
      mib: bytes / MiB,
      cycleMs,
      rsyncMs,
      floorMs,
      snapMs,
      rssMiB: peak / MiB,
      rxCpuS,
      rxCpuPerGiB: rxCpuS / (d.dataBytes / GiB),
      load: loadavg()[0],
    })
  }
  console.log(
    `\n| ${ab ? 'variant | ' : ''}changed | MiB | grainline cycle | rsync -I --inplace | I/O floor (2× + fdatasync) | rsync / cycle | cycle / (2×floor + 0.5 s) | snapshot operations (take + remove) | cycle / (floor + snapshot operations), issue #17 target ≤ 1.3 | agent peak RSS (own process) | receiver CPU (per GiB of data) | agent CPU (process) | load (1 min) |`,
  )
  console.log(`|${ab ? ' --- |' : ''} --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |`)
  for (const r of rows) {
    console.log(
      `| ${ab ? `${r.variant} | ` : ''}${r.rate}% | ${r.mib.toFixed(0)} | ${sec(r.cycleMs)} s | ${Number.isNaN(r.rsyncMs) ? 'skipped' : `${sec(r.rsyncMs)} s`} | ${sec(r.floorMs)} s | ${Number.isNaN(r.rsyncMs) ? '—' : `${(r.rsyncMs / r.cycleMs).toFixed(1)}×`} | ${(r.cycleMs / (2 * r.floorMs + 500)).toFixed(2)} | ${sec(r.snapMs)} s | ${(r.cycleMs / (r.floorMs + r.snapMs)).toFixed(2)} | ${r.rssMiB.toFixed(0)} MiB | ${r.rxCpuS.toFixed(2)} s (${r.rxCpuPerGiB.toFixed(2)} s) | ${r.agentCpuS.toFixed(2)} s | ${r.load.toFixed(1)} |`,
    )
  }
  if (process.env.BENCH_JSON === '1') console.log(`BENCH_JSON ${JSON.stringify(rows)}`)
  const median = (xs) => {
    const v = [...xs].sort((a, b) => a - b)
    return v.length % 2 === 1 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2
  }
  // the issue #17 figure when every cycle changes the same share: the warm cycles (the first incremental after the seed pays the processes' warm-up)
  const warm = ab || new Set(rows.map((r) => r.rate)).size !== 1 ? [] : rows.slice(1)
  if (warm.length > 0) {
    const ratios = warm.map((r) => r.cycleMs / (r.floorMs + r.snapMs))
    console.log(
      `warm cycles (${warm.length}, the first incremental left out): cycle / (floor + snapshot operations) median ${median(ratios).toFixed(2)} [${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}], target ≤ 1.3: ${median(ratios) <= 1.3 ? 'met' : 'NOT met'}; cycle median ${sec(median(warm.map((r) => r.cycleMs)))} s, floor ${sec(median(warm.map((r) => r.floorMs)))} s, snapshot operations ${sec(median(warm.map((r) => r.snapMs)))} s`,
    )
  }
  if (ab) {
    for (const v of ['A', 'B']) {
      const rs = rows.filter((r) => r.variant === v)
      if (rs.length === 0) continue
      console.log(
        `${v} ${JSON.stringify(v === 'B' ? envB : envA)}: ${rs.length} cycles, medians: cycle ${sec(median(rs.map((r) => r.cycleMs)))} s, ship ${sec(median(rs.map((r) => r.ship)))} s, cycle / (floor + snapshot operations) ${median(rs.map((r) => r.cycleMs / (r.floorMs + r.snapMs))).toFixed(2)}, agent CPU ${median(rs.map((r) => r.agentCpuS)).toFixed(2)} s, receiver CPU ${median(rs.map((r) => r.rxCpuS)).toFixed(2)} s, peak RSS ${median(rs.map((r) => r.rssMiB)).toFixed(0)} MiB, load ${rs.map((r) => r.load.toFixed(1)).join(' / ')}`,
      )
    }
  }
} finally {
  await cleanup()
}
