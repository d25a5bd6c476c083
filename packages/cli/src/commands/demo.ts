import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, rm, stat, writeFile, open } from 'node:fs/promises'
import { join, resolve, dirname } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { createSampleVm, simulateGuestWrites, replicate, type ReplicationReport, type VmReport } from '@grainline/agent'
import type { Logger } from 'pino'
import { createCliLogger } from '../logger.ts'
import { generateSelfSignedTls, generateToken, writeTokensFile } from '../tls-setup.ts'
import { formatBytes, table } from '../util.ts'

/** Options of `grainline demo`. */
export interface DemoOptions {
  /** working folder (recreated). @default ./demo-run */
  readonly dir?: string
  /** incremental cycles after the seed. @default 3 */
  readonly cycles?: number
  /** size of the first disk, bytes (the second is half). @default 2 GiB */
  readonly diskBytes?: number
  /** bytes the simulated guest writes per disk per cycle. @default 48 MiB */
  readonly guestBytes?: number
  /** delta format of the local snapshots. @default 'sesparse' */
  readonly deltaFormat?: 'sesparse' | 'vmfssparse' | 'hosted'
  readonly write: (s: string) => void
  readonly signal?: AbortSignal
}

const MARKER = '.grainline-demo'
const bin = join(dirname(fileURLToPath(import.meta.url)), '..', 'bin.js')

interface CycleRow { label: string, vm: VmReport, seconds: number }

/**
 * The main job on an embedded default: a sample VM, a local TLS receiver with a
 * generated token, a seed, incremental cycles with a guest writing, certify.
 */
export async function demoCommand (opts: DemoOptions): Promise<boolean> {
  const dir = resolve(opts.dir ?? 'demo-run')
  const cycles = opts.cycles ?? 3
  const diskBytes = opts.diskBytes ?? 2 * 1024 ** 3
  const guestBytes = opts.guestBytes ?? 48 * 1024 ** 2
  const say = opts.write
  // recreate the working folder, but only if it is ours
  try {
    await stat(join(dir, MARKER))
    await rm(dir, { recursive: true, force: true })
  } catch {
    try { await stat(dir); throw new Error(`${dir} exists and is not a grainline demo folder; choose another --dir`) } catch (err) { if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err }
  }
  await mkdir(join(dir, 'logs'), { recursive: true })
  await writeFile(join(dir, MARKER), 'created by grainline demo\n')
  const logFile = join(dir, 'logs', 'agent.log')
  const logger: Logger = createCliLogger({ file: logFile, level: 'info' })

  say(`grainline demo in ${dir}\n`)
  const t0 = Date.now()
  say(`- creating sample VM "Demo VM" (two disks: ${formatBytes(diskBytes)} and ${formatBytes(diskBytes / 2)}, real content and zero regions)\n`)
  const vm = await createSampleVm(join(dir, 'source'), {
    name: 'Demo VM',
    disks: [{ sizeBytes: diskBytes }, { sizeBytes: Math.floor(diskBytes / 2 / 512) * 512 }],
    seed: 7,
  })

  say('- generating a TLS certificate and a token, starting the receiver on 127.0.0.1\n')
  const tls = await generateSelfSignedTls(join(dir, 'receiver'))
  const token = generateToken()
  const tokens = await writeTokensFile(join(dir, 'receiver', 'tokens.json'), [{ name: 'demo-proxy', token, vms: ['Demo VM'] }])
  const store = join(dir, 'mirrors')
  const receiverLog = join(dir, 'logs', 'receiver.log')
  const receiver = await startReceiverProcess(['receive', '--listen', '127.0.0.1:0', '--store', store, '--tokens', tokens,
    '--tls-cert', tls.cert, '--tls-key', tls.key, '--log-file', receiverLog])
  const stopReceiver = async (): Promise<void> => {
    if (receiver.proc.exitCode === null && receiver.proc.signalCode === null) {
      receiver.proc.kill('SIGTERM')
      await once(receiver.proc, 'exit')
    }
  }
  // Ctrl-C / SIGTERM: abort the cycle in flight, stop the receiver, exit
  const abort = new AbortController()
  opts.signal?.addEventListener('abort', () => abort.abort(opts.signal?.reason), { once: true })
  const onSignal = (): void => {
    say('\ninterrupted: aborting the cycle and stopping the receiver\n')
    abort.abort(new Error('interrupted'))
    receiver.proc.kill('SIGTERM')
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  const rows: CycleRow[] = []
  let ok = true
  try {
    const base = {
      vm: vm.vmxPath,
      to: `wss://127.0.0.1:${receiver.port}`,
      token,
      caFile: tls.cert,
      // the agent's record per VM lives with the demo's other files
      stateDir: join(dir, 'agent-state'),
      deltaFormat: opts.deltaFormat ?? 'sesparse',
      trivialMiB: 16,
      signal: abort.signal,
    } as const
    for (let c = 0; c <= cycles && ok && !abort.signal.aborted; c++) {
      const last = c === cycles
      const label = c === 0 ? 'seed' : `incremental ${c}`
      say(`- cycle ${c}: ${label}; meanwhile the guest writes ${formatBytes(guestBytes)} per disk into its new delta\n`)
      const started = Date.now()
      let guest: Promise<unknown> = Promise.resolve()
      const report: ReplicationReport = await replicate({ logger }, {
        ...base,
        certify: last ? 'xxh64' : 'none',
        // the guest keeps writing into the new running delta while the frozen one ships;
        // its writes settle before the older snapshot is removed (as ESXi serializes them)
        afterSnapshot: async () => { guest = simulateGuestWrites(vm.vmxPath, { bytes: guestBytes, seed: 100 + c, zeroFraction: 0.1 }) },
        beforeRemove: async () => { await guest },
      })
      await guest
      const vr = report.vms[0]
      if (vr === undefined) throw new Error('replicate returned no VM report')
      rows.push({ label, vm: vr, seconds: (Date.now() - started) / 1000 })
      if (abort.signal.aborted) { ok = false; break }
      if (!report.ok) {
        ok = false
        say(`  cycle ${c} FAILED: ${vr.error?.code ?? ''} ${vr.error?.message ?? vr.disks.map((d) => d.error?.message).filter(Boolean).join('; ')}\n`)
      }
    }
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    await stopReceiver()
  }

  if (abort.signal.aborted) {
    say(`interrupted; the work folder stays in ${dir} (run the demo again to start over)\n`)
    process.exitCode = 130
    return false
  }
  const out: string[][] = []
  for (const r of rows) {
    const changed = r.vm.disks.reduce((s, d) => s + d.dataBytes + d.zeroBytes, 0)
    const sent = r.vm.disks.reduce((s, d) => s + d.wireBytes, 0)
    const trivial = r.vm.disks.every((d) => d.trivial?.ok === true) ? 'ok' : (r.vm.disks.some((d) => d.trivial !== undefined && !d.trivial.ok) ? 'MISMATCH' : '-')
    const cert = r.vm.disks.every((d) => d.certify === undefined) ? '-' : (r.vm.disks.every((d) => d.certify?.ok === true) ? `${r.vm.disks[0]?.certify?.algorithm ?? ''} ok` : 'MISMATCH')
    out.push([String(r.vm.cycle), r.label, formatBytes(changed), formatBytes(sent), `${r.seconds.toFixed(1)} s`,
      `${formatBytes(sent / Math.max(r.seconds, 0.001))}/s`, trivial, cert, r.vm.ok ? 'committed' : `FAILED ${r.vm.error?.code ?? ''}`])
  }
  say('\n' + table(['cycle', 'kind', 'changed', 'sent', 'time', 'rate', 'trivial', 'certify', 'result'], out) + '\n\n')
  say(`source VM:  ${vm.vmxPath}\n`)
  say(`mirror:     ${join(store, 'Demo VM')}\n`)
  say(`logs:       ${logFile}, ${receiverLog}\n`)
  say(`total time: ${((Date.now() - t0) / 1000).toFixed(1)} s — ${ok ? 'all cycles committed and verified' : 'FAILED (see the logs)'}\n`)
  return ok
}

async function startReceiverProcess (args: string[]): Promise<{ proc: ChildProcess, port: number }> {
  const errLog = await open(join(dirname(args[args.indexOf('--log-file') + 1] ?? '.'), 'receiver.stderr'), 'w')
  const proc = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', errLog.fd] })
  process.once('exit', () => { proc.kill('SIGKILL') })
  const port = await new Promise<number>((resolve, reject) => {
    const rl = createInterface({ input: proc.stdout! })
    rl.on('line', (line) => {
      try {
        const ev = JSON.parse(line) as { event?: string, port?: number }
        if (ev.event === 'listening' && typeof ev.port === 'number') resolve(ev.port)
      } catch { /* not ours */ }
    })
    proc.once('exit', (code) => { reject(new Error(`the receiver exited with code ${code} before listening; see receiver.stderr in the logs folder`)) })
  })
  proc.once('exit', () => { errLog.close().catch(() => {}) })
  return { proc, port }
}
