/**
 * How a command shows long work on the operator's terminal — a restore, an
 * archive upload, the merges of dropped restore points: one line rewritten
 * in place on a TTY, a line per report otherwise (a log file, a pipe), a
 * `{"event":"progress",…}` object per report on stdout with `--output json`;
 * at most one a second, and always the last one.
 */
import type { CliContext } from './command.ts'

/** A progress report: `done` of `total`, in whatever unit `line` renders. */
export interface ProgressDisplay<P> {
  /** show `p` (skipped when the last one was shown under a second ago, unless `done` reached `total`) */
  readonly report: (p: P) => void
  /** end the display: a TTY's line is closed with a newline when anything was shown */
  readonly end: () => void
}

/** How often a report is shown at most, ms. */
export const PROGRESS_DISPLAY_MS = 1000

/**
 * A display for reports `p`: `line(p)` is what the operator reads; `fields(p)`
 * what the JSON event carries; `finished(p)` whether it is the last one (always shown).
 */
export function progressDisplay<P>(
  ctx: CliContext,
  json: boolean,
  line: (p: P) => string,
  fields: (p: P) => Readonly<Record<string, unknown>>,
  finished: (p: P) => boolean,
  now: () => number = () => performance.now(),
): ProgressDisplay<P> {
  let last = -Infinity
  let shown = false
  return {
    report: (p) => {
      const t = now()
      if (t - last < PROGRESS_DISPLAY_MS && !finished(p)) return
      last = t
      if (json) ctx.write(JSON.stringify({ event: 'progress', ...fields(p) }) + '\n')
      else if (ctx.stderr.isTTY === true) {
        ctx.stderr.write(`\r${line(p)}\u001b[K`)
        shown = true
      } else ctx.error(line(p))
    },
    end: () => {
      if (shown) ctx.stderr.write('\n')
      shown = false
    },
  }
}
