import { pino, type Logger, type LevelWithSilent } from 'pino'

/** Options for the CLI logger. */
export interface CliLoggerOptions {
  /** @default 'info' */
  readonly level?: LevelWithSilent
  /** write JSON logs to this file instead of stderr */
  readonly file?: string
}

/**
 * The CLI's pino logger: structured JSON to stderr (or a file), so stdout stays
 * free for command output (`--output json`) and the progress line.
 */
export function createCliLogger(opts: CliLoggerOptions = {}): Logger {
  const level = opts.level ?? 'info'
  const dest = opts.file !== undefined ? pino.destination({ dest: opts.file, mkdir: true, sync: true }) : pino.destination({ fd: 2, sync: true })
  return pino(
    {
      level,
      base: { pid: process.pid },
      redact: { paths: ['token', '*.token', 'authorization', '*.authorization', 'headers.authorization'], censor: '[redacted]' },
    },
    dest,
  )
}
