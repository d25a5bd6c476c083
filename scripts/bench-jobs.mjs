#!/usr/bin/env node
/**
 * Many VMs per proxy (issue #15): a job of N small VMs run by the real CLI
 * against a real receiver process over TLS on loopback.
 *
 *   node scripts/bench-jobs.mjs [--vms 20] [--vm-mib 32] [--parallel 4] [--rounds 3] [--bwlimit 8M] [--dir DIR]
 *
 * 1. Time: the same job (N fresh VMs, seeds into a fresh store) with
 *    `parallel: 1` (the baseline) and `parallel: P`, interleaved, `rounds`
 *    times; medians and the ratio parallel/sequential (target ≤ 0.40).
 * 2. Shared bandwidth: the job with `parallel: P` and `bwlimit` runs through a
 *    counting TCP proxy; the bytes forwarded are sampled every 250 ms and the
 *    busiest 10 s window is compared with the limit (target ≤ +5 %). The bytes
 *    counted are TLS records on the wire, a little more than the payload the
 *    limiter meters.
 * Needs: built packages (npx tsc -b), openssl.
 */
import { execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { cliBin, startCuttingProxy, startReceiverProcess } from '@grainline/test-utils'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { createSampleVm } = await import(join(root, 'packages/agent/dist/src/index.js'))
const { parseRate, formatBytes } = await import(join(root, 'protocol/dist/src/index.js'))

const { values } = parseArgs({
  options: {
    vms: { type: 'string', default: '20' },
    'vm-mib': { type: 'string', default: '32' },
    parallel: { type: 'string', default: '4' },
    rounds: { type: 'string', default: '3' },
    bwlimit: { type: 'string', default: '8M' },
    dir: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
})
const MiB = 1024 * 1024
const nVms = Number(values.vms)
const vmBytes = Number(values['vm-mib']) * MiB
const parallel = Number(values.parallel)
const rounds = Number(values.rounds)
const limit = parseRate(values.bwlimit, '--bwlimit')
const base = values.dir ?? process.env.BENCH_DIR ?? tmpdir()
mkdirSync(base, { recursive: true })
const dir = mkdtempSync(join(base, 'grainline-bench-jobs-'))
const log = (...a) => process.stderr.write(a.join(' ') + '\n')
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const load = () => loadavg()[0].toFixed(1)

const key = join(dir, 'k.pem')
const cert = join(dir, 'c.pem')
execFileSync(
  'openssl',
  ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1', '-days', '1', '-keyout', key, '-out', cert],
  {
    stdio: 'ignore',
  },
)
const token = 'bench-token-0123456789abcdef0123'
writeFileSync(join(dir, 'tokens.json'), JSON.stringify({ tokens: [{ name: 'bench', token, vms: ['*'], maxSessions: 64 }] }))
writeFileSync(join(dir, 'token'), token + '\n')

let run = 0
/** One job run of `nVms` fresh VMs into a fresh store; resolves with seconds and the receiver's bytes. */
async function jobRun(p, opts = {}) {
  const r = join(dir, `run-${++run}`)
  const store = join(r, 'store')
  mkdirSync(store, { recursive: true })
  const rx = await startReceiverProcess({ store, tokens: join(dir, 'tokens.json'), tls: { cert, key }, args: ['--log-level', 'warn'] })
  const proxy = opts.proxy ? await startCuttingProxy({ target: rx.port }) : undefined
  try {
    const vms = []
    for (let i = 0; i < nVms; i++) {
      const vm = await createSampleVm(join(r, 'vms'), { name: `vm-${String(i).padStart(2, '0')}`, disks: [{ sizeBytes: vmBytes }] })
      vms.push({ vm: vm.vmxPath })
    }
    const job = {
      to: `wss://127.0.0.1:${proxy?.port ?? rx.port}`,
      tokenFile: join(dir, 'token'),
      caFile: cert,
      stateDir: join(r, 'state'),
      parallel: p,
      trivialMiB: 1,
      ...(opts.bwlimit === undefined ? {} : { bwlimit: opts.bwlimit }),
      vms,
    }
    writeFileSync(join(r, 'job.json'), JSON.stringify(job))
    const samples = []
    const t0 = performance.now()
    const timer = proxy === undefined ? undefined : setInterval(() => samples.push([performance.now() - t0, proxy.forwarded]), 250)
    const agent = spawn(process.execPath, [cliBin(), 'replicate', '--job', join(r, 'job.json'), '--log-level', 'warn', '--report', join(r, 'report.json')], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    agent.stderr.on('data', (d) => {
      stderr += d
    })
    const [code] = await once(agent, 'exit')
    const seconds = (performance.now() - t0) / 1000
    if (timer !== undefined) clearInterval(timer)
    if (code !== 0) throw new Error(`job with parallel ${p} exited ${code}: ${stderr.slice(-2000)}`)
    if (proxy !== undefined) samples.push([performance.now() - t0, proxy.forwarded])
    return { seconds, samples }
  } finally {
    await proxy?.close()
    await rx.stop()
    if (!values.keep) rmSync(r, { recursive: true, force: true })
  }
}

try {
  log(`${nVms} VMs of ${formatBytes(vmBytes)} (sample content), parallel 1 vs ${parallel}, ${rounds} rounds interleaved; load ${load()}`)
  const seq = []
  const par = []
  for (let i = 0; i < rounds; i++) {
    const a = await jobRun(1)
    const b = await jobRun(parallel)
    seq.push(a.seconds)
    par.push(b.seconds)
    log(`  round ${i + 1}: parallel 1 ${a.seconds.toFixed(2)} s, parallel ${parallel} ${b.seconds.toFixed(2)} s (load ${load()})`)
  }
  const ratio = median(par) / median(seq)
  console.log(
    `job of ${nVms} VMs: parallel 1 ${median(seq).toFixed(2)} s, parallel ${parallel} ${median(par).toFixed(2)} s → ${(ratio * 100).toFixed(0)} % of sequential (target ≤ 40 %: ${ratio <= 0.4 ? 'met' : 'NOT met'})`,
  )

  const { samples, seconds } = await jobRun(parallel, { proxy: true, bwlimit: values.bwlimit })
  // busiest 10 s window (or the whole run if shorter), from the 250 ms samples
  let worst = 0
  let worstAt = 0
  for (let i = 0; i < samples.length; i++) {
    const [t1, b1] = samples[i]
    let j = i
    while (j + 1 < samples.length && samples[j + 1][0] - t1 <= 10_000) j++
    const [t2, b2] = samples[j]
    if (t2 - t1 < Math.min(10_000, samples.at(-1)[0] - samples[0][0]) - 300) continue
    const rate = ((b2 - b1) * 1000) / (t2 - t1)
    if (rate > worst) {
      worst = rate
      worstAt = t1
    }
  }
  const total = samples.at(-1)[1]
  const excess = worst / limit - 1
  console.log(
    `shared bwlimit ${values.bwlimit}/s over ${nVms} VMs, parallel ${parallel}: ${formatBytes(total)} in ${seconds.toFixed(1)} s (mean ${formatBytes(total / seconds)}/s); busiest 10 s window from ${(worstAt / 1000).toFixed(1)} s: ${formatBytes(worst)}/s = ${(excess * 100).toFixed(1)} % over the limit (target ≤ +5 %: ${excess <= 0.05 ? 'met' : 'NOT met'}); load ${load()}`,
  )
} finally {
  if (!values.keep) rmSync(dir, { recursive: true, force: true })
}
