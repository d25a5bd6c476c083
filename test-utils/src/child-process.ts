/**
 * Child processes of a test: every one is SIGKILLed when the test process
 * exits, and a node script runs to completion with its output collected.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { writeSync } from 'node:fs'

const live = new Set<ChildProcess>()
let exitHookInstalled = false

/**
 * Register a child to be SIGKILLed if it is still running when this process
 * exits (a failed assertion must not leave a receiver or an agent behind).
 * A test process killed by a signal runs no exit hook: children that must not
 * outlive it also need their own guard (the receiver's `--exit-with-stdin`).
 */
export function killOnExit<P extends ChildProcess>(proc: P): P {
  if (!exitHookInstalled) {
    exitHookInstalled = true
    process.on('exit', () => {
      for (const p of live) p.kill('SIGKILL')
    })
  }
  live.add(proc)
  proc.once('exit', () => live.delete(proc))
  return proc
}

const reported = new Map<ChildProcess, () => string>()
let timeoutHookInstalled = false

/**
 * When tap times this test file out, write `describe()` of `proc` to stderr
 * if it is still running (its command and the last lines of its output), so
 * a CI log names what a hung test was waiting on: tap itself prints only the
 * open handles. tap announces the timeout by an IPC message (`tapAbort`)
 * before it kills the process; the channel stays unreferenced, as tap leaves it.
 */
export function reportOnTimeout(proc: ChildProcess, describe: () => string): void {
  if (!timeoutHookInstalled && process.channel !== undefined) {
    timeoutHookInstalled = true
    process.on('message', (msg: unknown) => {
      if (typeof msg !== 'object' || msg === null || (msg as { tapAbort?: unknown }).tapAbort !== 'timeout') return
      writeTimeoutReport()
    })
    process.channel.unref()
  }
  reported.set(proc, describe)
  proc.once('exit', () => reported.delete(proc))
}

/** What {@link reportOnTimeout} writes: every registered child still running. */
export function writeTimeoutReport(): void {
  for (const [proc, describe] of reported) {
    let text: string
    try {
      text = describe()
    } catch (err) {
      text = `(cannot describe: ${(err as Error).message})`
    }
    writeSync(2, `\n--- still running at the timeout: pid ${proc.pid ?? '?'} ${proc.spawnargs.slice(0, 6).join(' ')}${proc.spawnargs.length > 6 ? ' …' : ''}\n${text}\n`)
  }
}

/** The last `n` lines of `text`, for {@link reportOnTimeout}. */
export function lastLines(text: string, n = 30): string {
  return text.split('\n').slice(-n).join('\n')
}

/** How a child ended. */
export interface ExitStatus {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

/** Resolves when `proc` has exited (at once when it already has). */
export function whenExited(proc: ChildProcess): Promise<ExitStatus> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve({ code: proc.exitCode, signal: proc.signalCode })
  return (once(proc, 'exit') as Promise<[number | null, NodeJS.Signals | null]>).then(([code, signal]) => ({ code, signal }))
}

/** Merge `env` over this process's environment; a key set to `undefined` is removed. */
export function childEnv(env: Readonly<Record<string, string | undefined>> = {}): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...process.env }
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) delete out[k]
    else out[k] = v
  }
  return out
}

/** Output and status of a finished child. */
export interface RunResult extends ExitStatus {
  readonly stdout: string
  readonly stderr: string
  /** the `timeoutMs` watchdog ended it */
  readonly timedOut?: boolean
}

/** Options of {@link runNode}. */
export interface RunNodeOptions {
  /** variables over this process's environment (`undefined` removes one) */
  readonly env?: Readonly<Record<string, string | undefined>>
  /** working directory @default process.cwd() */
  readonly cwd?: string
  /** called with the child right after spawning (to signal it at a chosen event) */
  readonly onSpawn?: (proc: ChildProcess) => void
  /**
   * A watchdog: a child still running after this many ms gets SIGTERM, and
   * SIGKILL 10 s later; the result says `timedOut` and keeps its output, so a
   * hung child fails its test with what it printed instead of stalling the
   * file until tap's timeout. @default none
   */
  readonly timeoutMs?: number
}

/**
 * Run `node script ...args` to completion and collect stdout and stderr
 * (stdin is closed). Resolves after the child exited and both pipes ended.
 */
export async function runNode(script: string, args: readonly string[], opts: RunNodeOptions = {}): Promise<RunResult> {
  const proc = killOnExit(
    spawn(process.execPath, [script, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: childEnv(opts.env),
      ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    }),
  )
  let stdout = ''
  let stderr = ''
  proc.stdout.setEncoding('utf8').on('data', (d: string) => {
    stdout += d
  })
  proc.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d
  })
  reportOnTimeout(proc, () => `stdout:\n${lastLines(stdout)}\nstderr:\n${lastLines(stderr)}`)
  opts.onSpawn?.(proc)
  let timedOut = false
  const timers: NodeJS.Timeout[] = []
  if (opts.timeoutMs !== undefined) {
    timers.push(
      setTimeout(() => {
        timedOut = true
        proc.kill('SIGTERM')
        timers.push(setTimeout(() => proc.kill('SIGKILL'), 10_000))
      }, opts.timeoutMs),
    )
  }
  // 'close' comes after 'exit' and after both pipes ended: no output is lost
  const [code, signal] = (await once(proc, 'close')) as [number | null, NodeJS.Signals | null]
  for (const timer of timers) clearTimeout(timer)
  return timedOut ? { code, signal, stdout, stderr, timedOut } : { code, signal, stdout, stderr }
}
