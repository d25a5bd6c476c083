/**
 * SIGINT and SIGTERM for a long command: the first one stops the work
 * gracefully (an `AbortSignal` whose reason is `E_ABORTED` "interrupted by
 * SIGINT"); the command finishes the durable step in flight, writes its
 * report and exits 130 (SIGINT) or 143 (SIGTERM). A second signal exits at
 * once with the same code.
 */
import { AgentError } from '@grainline/agent/run'
import { ExitCode } from './exit-codes.ts'

/** A stop controller bound to the process signals until `dispose()`. */
export interface StopOnSignals {
  readonly signal: AbortSignal
  /** the signal received, if any */
  readonly received: () => NodeJS.Signals | undefined
  /** the exit code for the signal received (130, 143), or undefined */
  readonly exitCode: () => number | undefined
  dispose(): void
}

/** Listen for SIGINT/SIGTERM. `onStop` hears the first (to say what happens now). */
export function stopOnSignals(onStop: (signal: NodeJS.Signals) => void = () => {}): StopOnSignals {
  const ac = new AbortController()
  let got: NodeJS.Signals | undefined
  const codeOf = (s: NodeJS.Signals): number => (s === 'SIGINT' ? ExitCode.Interrupted : ExitCode.Terminated)
  const handler = (s: NodeJS.Signals): void => {
    if (got !== undefined) {
      // a second signal: the operator does not want to wait
      process.exit(codeOf(got))
    }
    got = s
    onStop(s)
    ac.abort(new AgentError('E_ABORTED', `interrupted by ${s}`))
  }
  process.on('SIGINT', handler)
  process.on('SIGTERM', handler)
  return {
    signal: ac.signal,
    received: () => got,
    exitCode: () => (got === undefined ? undefined : codeOf(got)),
    dispose() {
      process.off('SIGINT', handler)
      process.off('SIGTERM', handler)
    },
  }
}
