/**
 * The real receiver as a child process (`main.js` of `@grainline/receiver`):
 * started on loopback, ready once it printed its `listening` line, stopped
 * with SIGTERM or SIGKILL, restarted on the same port.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { childEnv, killOnExit, reportOnTimeout, whenExited, type ExitStatus } from './child-process.ts'
import { receiverMain } from './package-files.ts'

/** How to start a receiver process. */
export interface ReceiverProcessInit {
  /** the store folder (`--store`) */
  readonly store: string
  /** the tokens file (`--tokens`) */
  readonly tokens: string
  /** certificate and key (`--tls-cert`, `--tls-key`); without them, add `--insecure` to `args` */
  readonly tls?: { readonly cert: string; readonly key: string }
  /**
   * port to listen on (0: any free port)
   * @default 0
   */
  readonly port?: number
  /**
   * address to listen on
   * @default '127.0.0.1'
   */
  readonly host?: string
  /** more command-line arguments (`--batch-bytes`, `--log-level`, `--config` …) */
  readonly args?: readonly string[]
  /** variables over this process's environment; `undefined` removes one (e.g. `GRAINLINE_RECEIVER_FAULT`) */
  readonly env?: Readonly<Record<string, string | undefined>>
  /**
   * the script to run
   * @default receiverMain()
   */
  readonly main?: string
}

/** A running receiver process. */
export interface ReceiverProcess {
  readonly init: ReceiverProcessInit
  readonly proc: ChildProcess
  readonly port: number
  /** `wss://127.0.0.1:PORT` (`ws://` without `tls`) */
  readonly url: string
  /** every line of stdout and stderr (pino JSON logs go to stderr), in arrival order */
  readonly lines: string[]
  /** stderr as text */
  stderr(): string
  /** resolves when the process exited */
  readonly exited: Promise<ExitStatus>
  /**
   * Resolves with the first line (already seen or still to come) that
   * `match` accepts; `json` is the line parsed when it is JSON. Rejects when
   * the process exits first.
   */
  waitForLine(match: (line: string, json: Record<string, unknown> | undefined) => boolean): Promise<string>
  /** SIGTERM (graceful) and wait for the exit */
  stop(): Promise<ExitStatus>
  /** SIGKILL (no shutdown at all) and wait for the exit */
  kill9(): Promise<ExitStatus>
  /** stop (if running) and start a new process with the same settings on the same port */
  restart(): Promise<ReceiverProcess>
}

const parse = (line: string): Record<string, unknown> | undefined => {
  if (!line.startsWith('{')) return undefined
  try {
    return JSON.parse(line) as Record<string, unknown>
  } catch {
    return undefined
  }
}

/**
 * Start the receiver and resolve once it listens. It runs with
 * `--exit-with-stdin`: it exits when our end of its stdin closes, so it dies
 * with a test process killed by a tap timeout (which runs no exit hook).
 * Rejects with the receiver's last output when it exits before listening.
 */
export async function startReceiverProcess(init: ReceiverProcessInit): Promise<ReceiverProcess> {
  const host = init.host ?? '127.0.0.1'
  const args = [init.main ?? receiverMain(), '--listen', `${host}:${init.port ?? 0}`, '--store', init.store, '--tokens', init.tokens]
  if (init.tls !== undefined) args.push('--tls-cert', init.tls.cert, '--tls-key', init.tls.key)
  args.push('--exit-with-stdin', ...(init.args ?? []))
  const proc = killOnExit(spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'], env: childEnv(init.env) }))
  const exited = whenExited(proc)
  const lines: string[] = []
  const watchers = new Set<(line: string) => void>()
  let stderr = ''
  const onLine = (line: string): void => {
    lines.push(line)
    for (const w of [...watchers]) w(line)
  }
  createInterface({ input: proc.stdout }).on('line', onLine)
  proc.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d
  })
  createInterface({ input: proc.stderr }).on('line', onLine)
  reportOnTimeout(proc, () => lines.slice(-40).join('\n'))

  const waitForLine = (match: (line: string, json: Record<string, unknown> | undefined) => boolean): Promise<string> =>
    new Promise((resolve, reject) => {
      const seen = lines.find((l) => match(l, parse(l)))
      if (seen !== undefined) {
        resolve(seen)
        return
      }
      const watch = (line: string): void => {
        if (!match(line, parse(line))) return
        watchers.delete(watch)
        resolve(line)
      }
      watchers.add(watch)
      exited.then(
        (st) => {
          if (!watchers.has(watch)) return
          watchers.delete(watch)
          reject(new Error(`receiver exited (${JSON.stringify(st)}) before the awaited line; last output:\n${lines.slice(-10).join('\n')}`))
        },
        () => {},
      )
    })

  const listening = await waitForLine((_l, j) => j?.['event'] === 'listening' && typeof j['port'] === 'number')
  const port = (parse(listening) as { port: number }).port
  const signal = async (sig: NodeJS.Signals): Promise<ExitStatus> => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill(sig)
    return await exited
  }
  const rp: ReceiverProcess = {
    init,
    proc,
    port,
    url: `${init.tls !== undefined ? 'wss' : 'ws'}://${host}:${port}`,
    lines,
    stderr: () => stderr,
    exited,
    waitForLine,
    stop: () => signal('SIGTERM'),
    kill9: () => signal('SIGKILL'),
    async restart() {
      await rp.stop()
      return await startReceiverProcess({ ...init, port })
    },
  }
  return rp
}
