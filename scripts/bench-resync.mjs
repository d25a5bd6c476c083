#!/usr/bin/env node
/**
 * Benchmark of a resync by block digests (issue #13 "Measured").
 *
 *   node scripts/bench-resync.mjs [--size-gib 16] [--percent 1] [--rounds 3] [--fill sparse|realistic] [--dir DIR] [--cold] [--scenario booted|kept|verify]
 *
 * A sample VM with one disk is seeded to a real receiver process over TLS on
 * loopback. Then, per round, `percent`% of the mirror's 1 MiB blocks are
 * overwritten behind the receiver's back through its descriptor (QEMU: a
 * booted mirror, new CID), and, interleaved in the same round:
 *
 *   resync  the grainline cycle end to end (snapshot, the refused incremental,
 *           the resync: both block maps, the differing blocks, journalled apply,
 *           commit, trivial check, consolidation), in its own agent process
 *   rsync   rsync --inplace --no-whole-file -I from the source's frozen view
 *           (qemu-img convert -O raw) to a copy of the mirror as it was before
 *   cat     reading both disks once (`cat src > /dev/null`, `cat mirror > /dev/null`)
 *
 * `--scenario kept` measures the receiver's kept block map instead: the
 * mirror stays intact, per round `percent`% of the source's blocks are
 * written by a guest and a `--resync` cycle ships them, interleaved with and
 * without the kept map (`.grainline/bench.map` removed first: the receiver
 * reads the whole mirror); the receiver's mirror bytes read come from its
 * `disk sealed` log line.
 *
 * `--scenario verify` measures the cost of checking after the commit
 * (issue #13 targets): per round, interleaved, four incremental cycles with
 * `percent`% of the blocks written by a guest — plain, `--verify changed`
 * (target ≤ +15 %), `--scrub 32` and `--certify xxh64` (a scrub's extra time
 * against 1/32 of a certify's extra time, target ≤ 1.10).
 *
 * With --cold the page cache is dropped before each timed step (needs root:
 * echo 3 > /proc/sys/vm/drop_caches; said so when not permitted). Medians
 * and ratios are printed, with the load average.
 * Needs: built packages (npx tsc -b), qemu-img, qemu-io, rsync, openssl.
 */
import { execFile, execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { parseArgs, promisify } from 'node:util'
import { pino } from 'pino'
import { receiverMain } from '@grainline/test-utils'

const exec = promisify(execFile)
const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { replicate, createSampleVm, prng } = await import(join(root, 'packages/agent/dist/src/index.js'))

const { values } = parseArgs({
  options: {
    'size-gib': { type: 'string', default: '16' },
    percent: { type: 'string', default: '1' },
    rounds: { type: 'string', default: '3' },
    fill: { type: 'string', default: 'sparse' },
    dir: { type: 'string' },
    cold: { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
    scenario: { type: 'string', default: 'booted' },
  },
})
const GiB = 1024 ** 3
const MiB = 1024 ** 2
const size = Number(values['size-gib']) * GiB
const percent = Number(values.percent)
const rounds = Number(values.rounds)
const base = values.dir ?? process.env.BENCH_DIR ?? tmpdir()
mkdirSync(base, { recursive: true })
const dir = mkdtempSync(join(base, 'grainline-bench-resync-'))
const log = (...a) => process.stderr.write(a.join(' ') + '\n')
const sec = (ms) => (ms / 1000).toFixed(2)
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}
const load = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')
let canDrop = false
const dropCaches = () => {
  if (!values.cold) return
  try {
    execFileSync('sync')
    writeFileSync('/proc/sys/vm/drop_caches', '3\n')
    canDrop = true
  } catch (err) {
    if (!canDrop) log(`cannot drop the page cache (${err.code ?? err.message}): the "cold" figures are warm`)
  }
}

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
// BENCH_PROF_DIR=DIR: CPU profiles of the receiver and of each agent process (node --cpu-prof)
const profArgs = process.env.BENCH_PROF_DIR === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_PROF_DIR]
const rx = spawn(
  process.execPath,
  [...profArgs, receiverMain(), '--listen', '127.0.0.1:0', '--store', store, '--tokens', join(dir, 'tokens.json'), '--tls-cert', cert, '--tls-key', key, '--log-level', 'info'],
  {
    stdio: ['ignore', 'pipe', 'pipe'],
  },
)
// the receiver's 'disk sealed' lines (mirror bytes read for a resync's map); other lines are dropped
const sealed = []
// the receiver's 'block check' lines (where a BlockCheck's time went: readMs, recordMs)
const checks = []
createInterface({ input: rx.stderr }).on('line', (l) => {
  const into = l.includes('"disk sealed"') ? sealed : l.includes('"block check"') || l.includes('"msg":"certify"') || l.includes('"msg":"trivial check"') ? checks : undefined
  if (into === undefined) return
  try {
    into.push(JSON.parse(l))
  } catch {}
})
const port = await new Promise((resolve, reject) => {
  createInterface({ input: rx.stdout }).on('line', (l) => {
    try {
      const ev = JSON.parse(l)
      if (ev.event === 'listening') resolve(ev.port)
    } catch {}
  })
  rx.once('exit', (c) => reject(new Error(`receiver exited ${c}`)))
})
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
const report = await replicate({ logger: pino({ level: process.env.BENCH_AGENT_LOG ?? 'warn' }, pino.destination(2)) }, init)
clearInterval(timer)
process.stdout.write(JSON.stringify({ report, maxRssKiB: process.resourceUsage().maxRSS, peak }))
`,
)
const init = {
  to: `wss://127.0.0.1:${port}`,
  token,
  ca: readFileSync(cert),
  stateDir: join(dir, 'agent-state'),
  deltaFormat: 'sesparse',
  progress: 'none',
  trivialMiB: 16,
  compress: process.env.BENCH_COMPRESS ?? 'lz4',
}

try {
  log(`# ${values['size-gib']} GiB disk (${values.fill}), ${percent}% of the blocks differ, ${rounds} rounds, ${values.cold ? 'cold' : 'warm'} cache, dir ${dir}; load ${load()}`)
  let t0 = performance.now()
  const vm = await createSampleVm(dir, { name: 'bench', disks: [{ sizeBytes: size, fill: values.fill }], seed: 1 })
  log(`sample VM created in ${sec(performance.now() - t0)} s`)
  t0 = performance.now()
  const seed = await replicate({ logger }, { ...init, vm: vm.vmxPath })
  if (!seed.ok) throw new Error(`seed failed: ${JSON.stringify(seed.vms[0]?.error)}`)
  log(`seed: ${sec(performance.now() - t0)} s`)
  const mirrorDir = join(store, 'bench')
  const mirror = join(mirrorDir, 'bench-flat.vmdk')
  const top = join(
    vm.dir,
    execFileSync('sh', ['-c', `grep -i 'scsi0:0.fileName' "${vm.vmxPath}" | sed 's/.*= "\\(.*\\)"/\\1/'`])
      .toString()
      .trim(),
  )
  // no guest writes: every later cycle ships this same view
  const src = join(dir, 'src.raw')
  await exec('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', top, src])
  const blocks = Math.ceil(size / MiB)
  const rows = []
  if (values.scenario === 'kept') {
    const { simulateGuestWrites } = await import(join(root, 'packages/agent/dist/src/index.js'))
    // a first --resync reads the whole mirror and leaves the kept map
    await replicate({ logger }, { ...init, vm: vm.vmxPath, resync: true })
    const kept = []
    for (let round = 0; round < 2 * rounds; round++) {
      const withMap = round % 2 === 0
      await simulateGuestWrites(vm.vmxPath, { bytes: Math.round((size * percent) / 100 / MiB) * MiB, writeSize: MiB, seed: 500 + round, zeroFraction: 0 })
      if (!withMap) rmSync(join(mirrorDir, '.grainline', 'bench.map'), { force: true })
      dropCaches()
      t0 = performance.now()
      const { stdout } = await exec(process.execPath, [...profArgs, worker, JSON.stringify({ ...init, ca: cert, vm: vm.vmxPath, resync: true })], { maxBuffer: 64 << 20 })
      const processMs = performance.now() - t0
      const { report: r } = JSON.parse(stdout)
      if (!r.ok || r.vms[0].disks[0].mode !== 'resync') throw new Error(`cycle failed: ${JSON.stringify(r.vms[0]?.error ?? r.vms[0]?.disks)}`)
      const line = sealed.at(-1) ?? {}
      kept.push({ withMap, cycleMs: r.vms[0].durationMs, read: line.mapMirrorBytes ?? Number.NaN })
      log(
        `${withMap ? 'kept map' : 'no map  '}: ${sec(r.vms[0].durationMs)} s (agent process ${sec(processMs)} s), ${r.vms[0].disks[0].resync.differing} blocks differed, receiver read ${((line.mapMirrorBytes ?? 0) / MiB).toFixed(0)} MiB of the mirror for the map; ms ${JSON.stringify(r.vms[0].timings)}; load ${load()}`,
      )
    }
    const mk = (w, k) => median(kept.filter((x) => x.withMap === w).map((x) => x[k]))
    console.log(`\n| ${values['size-gib']} GiB, ${percent}% written at the source, --resync | with kept map | without | without / with | mirror read with / without | load |`)
    console.log('| --- | --- | --- | --- | --- | --- |')
    console.log(
      `| median of ${rounds} each, interleaved | ${sec(mk(true, 'cycleMs'))} s | ${sec(mk(false, 'cycleMs'))} s | ${(mk(false, 'cycleMs') / mk(true, 'cycleMs')).toFixed(2)}× | ${(mk(true, 'read') / MiB).toFixed(0)} / ${(mk(false, 'read') / MiB).toFixed(0)} MiB | ${load()} |`,
    )
  }
  if (values.scenario === 'verify') {
    // incremental cycles with percent% of the blocks written by a guest, interleaved per round:
    // plain, --verify changed, --scrub 32, --certify xxh64 (the baseline of the scrub target)
    const { simulateGuestWrites } = await import(join(root, 'packages/agent/dist/src/index.js'))
    const variants = [
      ['plain', {}],
      ['verify', { verify: 'changed' }],
      ['scrub', { scrub: 32 }],
      ['certify', { certify: 'xxh64' }],
    ]
    const times = Object.fromEntries(variants.map(([k]) => [k, []]))
    // the checks' own time (the cycle's check and record laps): the rest of a cycle varies by seconds on a loaded machine
    const checkTimes = Object.fromEntries(variants.map(([k]) => [k, []]))
    for (let round = 0; round < rounds; round++) {
      for (const [name, over] of variants) {
        await simulateGuestWrites(vm.vmxPath, {
          bytes: Math.round((size * percent) / 100 / MiB) * MiB,
          writeSize: MiB,
          seed: 900 + round * 8 + variants.findIndex(([k]) => k === name),
          zeroFraction: 0,
        })
        dropCaches()
        const seen = checks.length
        const { stdout, stderr } = await exec(process.execPath, [...profArgs, worker, JSON.stringify({ ...init, ca: cert, vm: vm.vmxPath, ...over })], {
          maxBuffer: 64 << 20,
          env: { ...process.env, BENCH_AGENT_LOG: process.env.BENCH_AGENT_LOG ?? 'info' },
        })
        const { report: r } = JSON.parse(stdout)
        const d = r.vms[0]?.disks[0]
        if (!r.ok || d.mode !== 'incremental') throw new Error(`${name} cycle failed: ${JSON.stringify(r.vms[0]?.error ?? r.vms[0]?.disks)}`)
        times[name].push(r.vms[0].durationMs)
        checkTimes[name].push((r.vms[0].timings.check ?? 0) + (r.vms[0].timings.record ?? 0))
        // where the checks' time went: the agent's frozen-view read and its wait for answers, the receiver's read and verify record
        const agentChecks = stderr
          .split('\n')
          .filter(
            (l) =>
              l.includes('"scrub ok"') ||
              l.includes('"block check ok"') ||
              l.includes('"digests of the written blocks taken while shipping"') ||
              l.includes('"digests of the scrub slices taken while shipping"') ||
              // debug (BENCH_AGENT_LOG=debug): how long the slice's digests took while shipping
              l.includes('"scrub: digests of the slice taken while shipping"'),
          )
          .map((l) => {
            const o = JSON.parse(l)
            if (o.msg.startsWith('digests of the written')) return `written blocks' digests (taken while shipping): waited ${o.waitMs} ms after the commit`
            if (o.msg.startsWith('scrub: digests of the slice')) return `scrub slice digested while shipping: ${o.ms} ms, ${((o.holeBytes ?? 0) / MiB).toFixed(0)} MiB of holes not read`
            if (o.msg.startsWith('digests of the scrub')) return `scrub slice's digests (taken while shipping): waited ${o.waitMs} ms after the commit`
            return `${o.msg}: agent read ${o.readMs} ms${o.listMs === undefined ? '' : ` (of which listing the blocks ${o.listMs} ms)`}${o.ready === true ? ' (digests ready)' : ''}, waited for answers ${o.waitMs} ms (${o.messages} msg)`
          })
        // the receiver's read of the blocks, per byte read against its certify's (issue #13: the slice as fast as certify)
        const perByte = (o) => (o.bytes - (o.holeBytes ?? 0) > 0 && o.readMs > 0 ? `, ${((o.bytes - (o.holeBytes ?? 0)) / MiB / (o.readMs / 1000)).toFixed(0)} MiB/s read` : '')
        const rxChecks = checks
          .slice(seen)
          .map((o) =>
            o.msg === 'certify'
              ? `receiver certify: read ${o.readMs} ms for ${(o.bytes / MiB).toFixed(0)} MiB${perByte(o)}`
              : o.msg === 'trivial check'
                ? `receiver trivial check: ${o.ms} ms${o.deferred ? " (verdict written with the block checks')" : ''}`
                : `receiver: read ${o.readMs} ms for ${(o.bytes / MiB).toFixed(0)} MiB (${((o.holeBytes ?? 0) / MiB).toFixed(0)} MiB holes)${perByte(o)}, record ${o.recordMs} ms${o.deferred ? ' (deferred)' : ''}`,
          )
        log(
          `round ${round + 1} ${name.padEnd(7)}: ${sec(r.vms[0].durationMs)} s; ms ${JSON.stringify(r.vms[0].timings)}${d.blockCheck ? `; checked ${d.blockCheck.blocks} blocks` : ''}${d.scrub ? `; scrubbed ${d.scrub.from}–${d.scrub.to}` : ''}; load ${load()}${[...agentChecks, ...rxChecks].map((x) => `\n    ${x}`).join('')}`,
        )
      }
    }
    const md = (k) => median(times[k])
    const scrubBudget = md('plain') + ((md('certify') - md('plain')) / 32) * 1.1
    console.log(`\n| ${values['size-gib']} GiB, ${percent}% written, incremental | plain | --verify changed | verify / plain | --scrub 32 | --certify | scrub extra / (certify extra / 32) | load |`)
    console.log('| --- | --- | --- | --- | --- | --- | --- | --- |')
    console.log(
      `| median of ${rounds} each, interleaved | ${sec(md('plain'))} s | ${sec(md('verify'))} s | ${(md('verify') / md('plain')).toFixed(3)} (target ≤ 1.15) | ${sec(md('scrub'))} s | ${sec(md('certify'))} s | ${((md('scrub') - md('plain')) / ((md('certify') - md('plain')) / 32)).toFixed(2)} (target ≤ 1.10; budget ${sec(scrubBudget)} s) | ${load()} |`,
    )
    const mc = (k) => median(checkTimes[k])
    console.log(
      `| check + record laps only (medians) | ${sec(mc('plain'))} s | ${sec(mc('verify'))} s | +${sec(mc('verify') - mc('plain'))} s = ${(((mc('verify') - mc('plain')) / md('plain')) * 100).toFixed(1)} % of plain's cycle | ${sec(mc('scrub'))} s | ${sec(mc('certify'))} s | ${((mc('scrub') - mc('plain')) / ((mc('certify') - mc('plain')) / 32)).toFixed(2)} | ${load()} |`,
    )
  }
  for (let round = 0; values.scenario === 'booted' && round < rounds; round++) {
    // the mirror is booted: percent% of its blocks are overwritten through QEMU (its CID changes)
    const rnd = prng(100 + round)
    const pick = new Set()
    while (pick.size < Math.max(1, Math.round((blocks * percent) / 100))) pick.add(Math.floor(rnd() * blocks))
    const cmds = [...pick].flatMap((b) => ['-c', `write -P ${1 + (round % 250)} ${b * MiB} ${MiB}`])
    for (let k = 0; k < cmds.length; k += 400) await exec('qemu-io', ['-f', 'vmdk', ...cmds.slice(k, k + 400), join(mirrorDir, 'bench.vmdk')], { maxBuffer: 64 << 20 })
    const dst = join(dir, 'dst.raw')
    await exec('cp', ['--sparse=always', mirror, dst])
    log(`\n## round ${round + 1}: ${pick.size} blocks of ${blocks} overwritten in the mirror; load ${load()}`)

    dropCaches()
    t0 = performance.now()
    const { stdout, stderr } = await exec(process.execPath, [...profArgs, worker, JSON.stringify({ ...init, ca: cert, vm: vm.vmxPath })], { maxBuffer: 64 << 20 })
    const processMs = performance.now() - t0
    if (process.env.BENCH_AGENT_LOG !== undefined) log(stderr.trim())
    const { report: r, maxRssKiB } = JSON.parse(stdout)
    if (!r.ok) throw new Error(`cycle failed: ${JSON.stringify(r.vms[0]?.error ?? r.vms[0]?.disks)}`)
    const d = r.vms[0].disks[0]
    if (d.mode !== 'resync') throw new Error(`expected a resync, got ${d.mode} (${d.fallbackReason})`)
    const cycleMs = r.vms[0].durationMs
    const differingBytes = d.resync.differing * MiB
    log(
      `resync: ${sec(cycleMs)} s (agent process ${sec(processMs)} s) — ${d.resync.differing} of ${d.resync.blocks} blocks differed, ${(d.wireBytes / MiB).toFixed(1)} MiB payload + ${(d.resync.mapBytes / 1024).toFixed(0)} KiB of maps; agent peak RSS ${(maxRssKiB / 1024).toFixed(0)} MiB; ms ${JSON.stringify(r.vms[0].timings)}`,
    )
    dropCaches()
    t0 = performance.now()
    await exec('rsync', ['--inplace', '--no-whole-file', '-I', src, dst], { maxBuffer: 1 << 20 })
    const rsyncMs = performance.now() - t0
    const rxLine = sealed.at(-1) ?? {}
    log(
      `receiver: mirror bytes read for the map ${((rxLine.mapMirrorBytes ?? 0) / MiB).toFixed(1)} MiB, holes not read ${((rxLine.mapHoleBytes ?? 0) / MiB).toFixed(1)} MiB, kept blocks ${rxLine.mapKeptBlocks ?? 0}`,
    )
    log(`rsync: ${sec(rsyncMs)} s`)
    dropCaches()
    t0 = performance.now()
    await exec('sh', ['-c', `cat "${src}" > /dev/null; cat "${mirror}" > /dev/null`])
    const catMs = performance.now() - t0
    log(`cat both: ${sec(catMs)} s`)
    rmSync(dst, { force: true })
    rows.push({ cycleMs, rsyncMs, catMs, wire: d.wireBytes, maps: d.resync.mapBytes, differingBytes })
  }
  const m = (k) => median(rows.map((r) => r[k]))
  if (rows.length > 0)
    console.log(
      `\n| ${values['size-gib']} GiB, ${percent}% differ, ${values.cold && canDrop ? 'cold' : 'warm'} | grainline resync | rsync -I --inplace | cat both disks | rsync / resync | resync / cat | wire / (differing + maps) | load |`,
    )
  if (rows.length > 0) console.log('| --- | --- | --- | --- | --- | --- | --- | --- |')
  if (rows.length > 0)
    console.log(
      `| median of ${rounds} | ${sec(m('cycleMs'))} s | ${sec(m('rsyncMs'))} s | ${sec(m('catMs'))} s | ${(m('rsyncMs') / m('cycleMs')).toFixed(2)}× | ${(m('cycleMs') / m('catMs')).toFixed(2)}× | ${(Math.max(...rows.map((r) => r.wire / (r.differingBytes + r.maps)))).toFixed(3)} (max) | ${load()} |`,
    )
} finally {
  await cleanup()
}
