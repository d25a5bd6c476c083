#!/usr/bin/env node
/**
 * A/B of two builds on whole incremental cycles (issue #17), runs interleaved.
 *
 *   node scripts/bench-cycle-ab.mjs --a /path/to/baseline-checkout --b . [--c …] [--rounds 3] -- [bench-cycle args]
 *
 * Each round runs scripts/bench-cycle.mjs (this checkout's script) once with
 * each build (A, B and optionally C) — the receiver (`GRAINLINE_RECEIVER_MAIN`)
 * and the agent (`BENCH_AGENT_DIST`) both from that build, which must be built
 * (`npx tsc -b`) — the order rotating from round to round. Every run seeds its own
 * receiver, then runs the cycles given (default `--size-gib 4 --rates 1,1,1,1
 * --skip-rsync`). Printed per build: medians over the warm cycles (every
 * cycle but each run's first incremental, which warms a fresh receiver) and
 * over the first ones, of the cycle, its ship lap, the issue's ratio
 * cycle / (floor + snapshot operations), the receiver's and the agent's CPU
 * (user + system; the agent's within `replicate()`, and of it the agent's main
 * thread alone, with the agent's minor page faults there), and the machine's busy
 * CPU seconds over the agent process; with the load average of each run.
 */
import { execFile } from 'node:child_process'
import { loadavg } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs, promisify } from 'node:util'

const exec = promisify(execFile)
const here = dirname(fileURLToPath(import.meta.url))
const { values, positionals } = parseArgs({
  options: { a: { type: 'string' }, b: { type: 'string' }, c: { type: 'string' }, rounds: { type: 'string', default: '3' } },
  allowPositionals: true,
})
if (values.a === undefined || values.b === undefined) throw new Error('--a and --b: the two checkouts (built) to compare')
const builds = { A: resolve(values.a), B: resolve(values.b), ...(values.c === undefined ? {} : { C: resolve(values.c) }) }
const names = Object.keys(builds)
const args = positionals.length > 0 ? positionals : ['--size-gib', '4', '--rates', '1,1,1,1', '--skip-rsync']
const rounds = Number(values.rounds)
const log = (...a) => process.stderr.write(`${a.join(' ')}\n`)

const median = (xs) => {
  const v = xs.filter((x) => Number.isFinite(x)).sort((p, q) => p - q)
  if (v.length === 0) return NaN
  return v.length % 2 === 1 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2
}

const f2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : '–')
const rows = Object.fromEntries(names.map((v) => [v, []]))
const loads = Object.fromEntries(names.map((v) => [v, []]))
for (let round = 0; round < rounds; round++) {
  const order = names.map((_, i) => names[(i + round) % names.length])
  for (const v of order) {
    const root = builds[v]
    const load0 = loadavg()[0]
    log(`round ${round + 1}, ${v} (${root}), load ${load0.toFixed(2)}`)
    const { stdout, stderr } = await exec(process.execPath, [join(here, 'bench-cycle.mjs'), ...args], {
      env: {
        ...process.env,
        GRAINLINE_RECEIVER_MAIN: join(root, 'packages/receiver/dist/src/main.js'),
        BENCH_AGENT_DIST: join(root, 'packages/agent/dist/src/index.js'),
        BENCH_JSON: '1',
      },
      maxBuffer: 64 << 20,
    })
    if (process.env.BENCH_AB_VERBOSE === '1') log(stderr)
    const line = stdout.split('\n').find((l) => l.startsWith('BENCH_JSON '))
    if (line === undefined) throw new Error(`no BENCH_JSON line from run ${v}:\n${stdout}\n${stderr}`)
    const rs = JSON.parse(line.slice('BENCH_JSON '.length))
    rs.forEach((r, i) => {
      r.first = i === 0
      r.round = round + 1
    })
    rows[v].push(...rs)
    loads[v].push(`${load0.toFixed(1)}-${loadavg()[0].toFixed(1)}`)
    for (const r of rs)
      log(
        `  ${v} cycle ${(r.cycleMs / 1000).toFixed(2)} s, ship ${(r.ship / 1000).toFixed(2)} s, ratio ${(r.cycleMs / (r.floorMs + r.snapMs)).toFixed(2)}, receiver ${r.rxCpuS.toFixed(2)} s (${r.rxUser.toFixed(2)} + ${r.rxSys.toFixed(2)}), agent ${r.agentCycleCpuS.toFixed(2)} s (${r.agentCycleUser.toFixed(2)} + ${r.agentCycleSys.toFixed(2)}; main thread ${f2(r.agentMainCpuS)}; ${r.agentFaults ?? '–'} faults; process ${r.agentCpuS.toFixed(2)}), machine busy ${r.busyS.toFixed(2)} s, load ${r.load.toFixed(1)}`,
      )
  }
}

console.log(
  '| build | cycles | cycle | ship | cycle / (floor + snapshot operations) | receiver CPU (user + system) | agent CPU in replicate() (user + system) | agent main thread CPU in replicate() | agent minor faults in replicate() | agent process CPU | machine busy CPU s | load (runs) |',
)
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
for (const v of names) {
  for (const [label, pick] of [
    ['warm', (r) => !r.first],
    ['first', (r) => r.first],
  ]) {
    const rs = rows[v].filter(pick)
    if (rs.length === 0) continue
    const m = (fn) => median(rs.map(fn))
    console.log(
      `| ${v} ${label} | ${rs.length} | ${f2(m((r) => r.cycleMs) / 1000)} s | ${f2(m((r) => r.ship) / 1000)} s | ${f2(m((r) => r.cycleMs / (r.floorMs + r.snapMs)))} | ${f2(m((r) => r.rxCpuS))} s (${f2(m((r) => r.rxUser))} + ${f2(m((r) => r.rxSys))}) | ${f2(m((r) => r.agentCycleCpuS))} s (${f2(m((r) => r.agentCycleUser))} + ${f2(m((r) => r.agentCycleSys))}) | ${f2(m((r) => r.agentMainCpuS))} s | ${m((r) => r.agentFaults ?? NaN).toFixed(0)} | ${f2(m((r) => r.agentCpuS))} s | ${f2(m((r) => r.busyS))} | ${loads[v].join(', ')} |`,
    )
  }
}
// the cycle's laps (its report's timings), warm medians: the fixed laps (connect, plan, commit, check) beside the ship
for (const v of names) {
  const rs = rows[v].filter((r) => !r.first)
  const laps = [...new Set(rs.flatMap((r) => Object.keys(r.timings ?? {})))]
  console.log(`${v} warm laps (ms, medians): ${laps.map((k) => `${k} ${Math.round(median(rs.map((r) => r.timings?.[k] ?? NaN)))}`).join(', ')}`)
}
console.log(`${names.map((v) => `${v} = ${builds[v]}`).join(', ')}; ${rounds} rounds, runs interleaved (order rotating); medians`)
