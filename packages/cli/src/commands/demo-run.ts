import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, rm, stat, writeFile, open } from 'node:fs/promises'
import { join, resolve, dirname } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { AgentError, createSampleVm, simulateGuestWrites, replicateMany, TtyProgressView, type ReplicationReport, type VmReport } from '@grainline/agent'
import { formatBytes, formatDuration, parseByteSize } from '@grainline/protocol/units'
import { listPoints } from '@grainline/receiver'
import type { Logger } from 'pino'
import type { CliContext, GlobalArgs } from '../command.ts'
import { ExitCode, UsageError } from '../exit-codes.ts'
import { createCliLogger } from '../logger.ts'
import { generateSelfSignedTls, generateToken, writeTokenFile, writeTokensFile } from '../tls-setup.ts'
import { table } from '../util.ts'
import { shJoin } from '@grainline/protocol'

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
  /** the terminal of the progress display (none when it is not a TTY). @default process.stderr */
  readonly stderr?: NodeJS.WriteStream
}

const MARKER = '.grainline-demo'
const bin = join(dirname(fileURLToPath(import.meta.url)), '..', 'bin.js')

interface CycleRow {
  label: string
  vm: VmReport
  seconds: number
}

/**
 * The main job on an embedded default: a sample VM, a local TLS receiver with a
 * generated token, a seed, incremental cycles with a guest writing, certify.
 */
export async function runDemo(opts: DemoOptions): Promise<boolean> {
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
    try {
      await stat(dir)
      throw new Error(`${dir} exists and is not a grainline demo folder; choose another --dir`)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }
  await mkdir(join(dir, 'logs'), { recursive: true })
  await mkdir(join(dir, 'agent'), { recursive: true })
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
  // the agent's copy of the token, as a proxy keeps it (the commands printed at the end use it)
  const tokenFile = await writeTokenFile(join(dir, 'agent', 'demo.token'), token)
  const store = join(dir, 'mirrors')
  const receiverLog = join(dir, 'logs', 'receiver.log')
  // the DR site keeps restore points (reverse increments): the last 7 committed points of every VM
  const receiverConfig = join(dir, 'receiver', 'receiver.json')
  await writeFile(receiverConfig, `${JSON.stringify({ store, retention: { keep: 7 } }, null, 2)}\n`)
  const receiver = await startReceiverProcess([
    'receive',
    '--config',
    receiverConfig,
    '--listen',
    '127.0.0.1:0',
    '--store',
    store,
    '--tokens',
    tokens,
    '--tls-cert',
    tls.cert,
    '--tls-key',
    tls.key,
    '--log-file',
    receiverLog,
  ])
  const stopReceiver = async (): Promise<void> => {
    if (receiver.proc.exitCode === null && receiver.proc.signalCode === null) {
      receiver.proc.kill('SIGTERM')
      await once(receiver.proc, 'exit')
    }
  }
  // Ctrl-C / SIGTERM: abort the cycle in flight, stop the receiver, exit
  const abort = new AbortController()
  opts.signal?.addEventListener('abort', () => abort.abort(opts.signal?.reason), { once: true })
  let stoppedBy: NodeJS.Signals | undefined
  const onSignal = (signal: NodeJS.Signals): void => {
    stoppedBy = signal
    say(`\n${signal}: stopping the cycle in flight and the receiver\n`)
    abort.abort(new AgentError('E_ABORTED', `interrupted by ${signal}`))
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
    const stderr = opts.stderr ?? process.stderr
    for (let c = 0; c <= cycles && ok && !abort.signal.aborted; c++) {
      const last = c === cycles
      // the receiver's cycle numbers, as status and the reports show them: the seed is cycle 1
      const label = c === 0 ? 'seed' : `incremental ${c}`
      say(`- cycle ${c + 1} (${label}${last ? ', certified' : ''}); meanwhile the guest writes ${formatBytes(guestBytes)} per disk into its new delta\n`)
      const started = Date.now()
      let guest: Promise<unknown> = Promise.resolve()
      const report: ReplicationReport = await replicateMany(
        { logger },
        [
          {
            ...base,
            certify: last ? 'xxh64' : 'none',
            // the guest keeps writing into the new running delta while the frozen one ships;
            // its writes settle before the older snapshot is removed (as ESXi serializes them)
            afterSnapshot: async () => {
              guest = simulateGuestWrites(vm.vmxPath, { bytes: guestBytes, seed: 100 + c, zeroFraction: 0.1 })
            },
            beforeRemove: async () => {
              await guest
            },
          },
        ],
        { parallel: 1, signal: abort.signal, view: stderr.isTTY ? new TtyProgressView(stderr) : 'none' },
      )
      await guest
      const vr = report.vms[0]
      if (vr === undefined) throw new Error('replicate returned no VM report')
      rows.push({ label, vm: vr, seconds: (Date.now() - started) / 1000 })
      if (abort.signal.aborted) {
        ok = false
        break
      }
      if (!report.ok) {
        ok = false
        say(
          `  cycle ${vr.cycle} FAILED: ${vr.error?.code ?? ''} ${
            vr.error?.message ??
            vr.disks
              .map((d) => d.error?.message)
              .filter(Boolean)
              .join('; ')
          }\n`,
        )
      }
    }
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    await stopReceiver()
  }

  if (abort.signal.aborted) {
    say(`interrupted; the work folder stays in ${dir} (run the demo again to start over)\n`)
    process.exitCode = stoppedBy === 'SIGTERM' ? ExitCode.Terminated : ExitCode.Interrupted
    return false
  }
  const out: string[][] = []
  for (const r of rows) {
    const changed = r.vm.disks.reduce((s, d) => s + d.dataBytes + d.zeroBytes, 0)
    const sent = r.vm.disks.reduce((s, d) => s + d.wireBytes, 0)
    const trivial = r.vm.disks.every((d) => d.trivial?.ok === true) ? 'ok' : r.vm.disks.some((d) => d.trivial !== undefined && !d.trivial.ok) ? 'MISMATCH' : '-'
    const cert = r.vm.disks.every((d) => d.certify === undefined) ? '-' : r.vm.disks.every((d) => d.certify?.ok === true) ? `${r.vm.disks[0]?.certify?.algorithm ?? ''} ok` : 'MISMATCH'
    out.push([
      String(r.vm.cycle),
      r.label,
      formatBytes(changed),
      formatBytes(sent),
      formatDuration(r.seconds * 1000),
      `${formatBytes(sent / Math.max(r.seconds, 0.001))}/s`,
      trivial,
      cert,
      r.vm.ok ? 'committed' : `FAILED ${r.vm.error?.code ?? ''}`,
    ])
  }
  say('\n' + table(['cycle', 'kind', 'changed', 'sent', 'time', 'rate', 'trivial', 'certify', 'result'], out) + '\n\n')
  say(`source VM:  ${vm.vmxPath}\n`)
  say(`mirror:     ${join(store, 'Demo VM')}\n`)
  if (ok) {
    const pts = (await listPoints(store, 'Demo VM')).points.filter((p) => !p.current)
    const cost = pts.reduce((n, p) => n + p.bytes, 0)
    say(
      `points:     ${pts.length === 0 ? 'none' : `cycles ${pts.map((p) => p.cycle).join(', ')} (restore points, ${formatBytes(cost)} in all) and the mirror at cycle ${rows.at(-1)?.vm.cycle ?? '?'}`}\n`,
    )
  }
  say(`logs:       ${logFile}, ${receiverLog}\n`)
  say(`total time: ${formatDuration(Date.now() - t0)} — ${ok ? 'all cycles committed and verified' : 'FAILED (see the logs)'}\n`)
  say('\n' + nextSteps({ dir, store, tls, tokens, tokenFile, vmx: vm.vmxPath, receiverConfig }))
  return ok
}

/**
 * What to try next with the demo's files, and how to remove them: each a command line ready to paste, its paths
 * absolute (they work from any folder, not only the one the demo ran in) and every argument quoted for /bin/sh
 * (protocol shJoin, as the receiver's operator commands are: a folder named `it's here` passes through).
 */
function nextSteps(p: { dir: string; store: string; tls: { cert: string; key: string }; tokens: string; tokenFile: string; vmx: string; receiverConfig: string }): string {
  const grainline = (...args: string[]): string => shJoin(['grainline', ...args])
  const store = resolve(p.store)
  const cert = resolve(p.tls.cert)
  return [
    'Try next:',
    `  ${grainline('status', '--store', store, '--max-age', '30m')}     # the mirror's health, as monitoring sees it`,
    `  ${grainline('info', join(store, 'Demo VM', 'Demo VM.vmdk'))}    # the mirror disk`,
    `  ${grainline('points', '--store', store, '--vm', 'Demo VM')}     # restore points: cycle, time, size, checks`,
    `  ${grainline('restore', '--store', store, '--vm', 'Demo VM', '--point', '2', '--to', resolve(p.dir, 'restored-2'))}   # a standalone VM folder of cycle 2`,
    `  ${grainline('receive', '--config', resolve(p.receiverConfig), '--listen', '127.0.0.1:7443', '--store', store, '--tokens', resolve(p.tokens), '--tls-cert', cert, '--tls-key', resolve(p.tls.key))}`,
    `  ${grainline('replicate', resolve(p.vmx), '--to', 'wss://127.0.0.1:7443', '--token-file', resolve(p.tokenFile), '--ca', cert, '--state-dir', resolve(p.dir, 'agent-state'), '--certify', 'sha256')}`,
    '      # (in a second terminal, with the receiver above running: one more incremental cycle)',
    '  (inside the checkout, type npx grainline …)',
    `Remove it all: ${shJoin(['rm', '-rf', resolve(p.dir)])}   (running the demo again recreates it)`,
    '',
  ].join('\n')
}

/** `demo`'s run (loaded by commands/demo.ts only when the command runs). */
export async function runDemoCommand(args: GlobalArgs & Record<string, unknown>, ctx: CliContext): Promise<number> {
  const size = (k: string): number => {
    try {
      return parseByteSize(String(args[k]), `--${k}`)
    } catch (err) {
      throw new UsageError((err as Error).message)
    }
  }
  const cycles = Number(args['cycles'])
  if (!Number.isSafeInteger(cycles) || cycles < 0 || cycles > 100) throw new UsageError(`--cycles: expected a whole number from 0 to 100, got ${String(args['cycles'])}`)
  const ok = await runDemo({
    dir: String(args['dir']),
    cycles,
    diskBytes: size('disk-size'),
    guestBytes: size('guest-write'),
    deltaFormat: args['delta-format'] as 'sesparse',
    write: ctx.write,
    stderr: ctx.stderr,
  })
  if (process.exitCode === ExitCode.Interrupted || process.exitCode === ExitCode.Terminated) return process.exitCode
  return ok ? ExitCode.Ok : ExitCode.Failed
}

async function startReceiverProcess(args: string[]): Promise<{ proc: ChildProcess; port: number }> {
  const errLog = await open(join(dirname(args[args.indexOf('--log-file') + 1] ?? '.'), 'receiver.stderr'), 'w')
  const proc = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', errLog.fd] })
  process.once('exit', () => {
    proc.kill('SIGKILL')
  })
  const stdout = proc.stdout
  if (stdout === null) throw new Error('the receiver process has no stdout pipe')
  const port = await new Promise<number>((resolve, reject) => {
    const rl = createInterface({ input: stdout })
    rl.on('line', (line) => {
      try {
        const ev = JSON.parse(line) as { event?: string; port?: number }
        if (ev.event === 'listening' && typeof ev.port === 'number') resolve(ev.port)
      } catch {
        /* not ours */
      }
    })
    proc.once('exit', (code) => {
      reject(new Error(`the receiver exited with code ${code} before listening; see receiver.stderr in the logs folder`))
    })
  })
  proc.once('exit', () => {
    errLog.close().catch(() => {})
  })
  return { proc, port }
}
