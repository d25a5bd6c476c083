/**
 * The CLI's logger: pino, objects first. Where the lines go depends on who
 * reads them:
 *
 * - `--log-file FILE`: JSON lines to the file (level `info` unless set);
 * - stderr is not a terminal (systemd, cron, a pipe): JSON lines (level `info` unless set);
 * - stderr is a terminal: human lines (pino-pretty), and by default only
 *   what the command says it needs (`replicate`: nothing, the progress
 *   display and the one-line failure speak; `receive`: info) unless
 *   `--log-level` is given.
 *
 * Tokens and `Authorization` headers are redacted everywhere.
 */
import { createRequire } from 'node:module'
import { pino, type Logger, type LevelWithSilent, type DestinationStream } from 'pino'
import { Writable } from 'node:stream'
import type PinoPrettyModule from 'pino-pretty'

export { LOG_LEVELS } from './log-levels.ts'

/** pino-pretty, loaded only for human lines on a terminal (a timer-run agent writes JSON and never needs it). */
const loadPinoPretty = (): typeof PinoPrettyModule => createRequire(import.meta.url)('pino-pretty') as typeof PinoPrettyModule

/** Options for the CLI logger. */
export interface CliLoggerOptions {
  /** the level asked for (`--log-level`); undefined = the default for the destination */
  readonly level?: LevelWithSilent
  /** write JSON logs to this file instead of stderr */
  readonly file?: string
  /** level on a terminal when none is asked for. @default 'info' */
  readonly ttyDefault?: LevelWithSilent
  /** the stderr to judge and write (tests). @default process.stderr */
  readonly stderr?: NodeJS.WriteStream
  /** human lines go through this (the progress display prints them above its block) */
  readonly print?: (text: string) => void
}

const REDACT = { paths: ['token', '*.token', 'authorization', '*.authorization', 'headers.authorization', 'pass', '*.pass', 'secret', '*.secret'], censor: '[redacted]' }

/** The file descriptor of a stream (a tty.WriteStream has one; 2 otherwise). */
const fdOf = (s: NodeJS.WriteStream): number => ((s as { fd?: unknown }).fd as number | undefined) ?? 2

/** Whether the CLI logger writes human lines (stderr is a terminal and no log file). */
export function humanLogs(opts: Pick<CliLoggerOptions, 'file' | 'stderr'> = {}): boolean {
  return opts.file === undefined && (opts.stderr ?? process.stderr).isTTY === true
}

/** The CLI's pino logger (see the module comment for where lines go). */
export function createCliLogger(opts: CliLoggerOptions = {}): Logger {
  if (opts.file !== undefined) {
    return pino({ level: opts.level ?? 'info', base: { pid: process.pid }, redact: REDACT }, pino.destination({ dest: opts.file, mkdir: true, sync: true }))
  }
  const stderr = opts.stderr ?? process.stderr
  if (stderr.isTTY !== true) {
    return pino({ level: opts.level ?? 'info', base: { pid: process.pid }, redact: REDACT }, pino.destination({ fd: fdOf(stderr), sync: true }))
  }
  const print = opts.print
  const destination: NodeJS.WritableStream | number =
    print === undefined
      ? fdOf(stderr)
      : new Writable({
          write(chunk: Buffer, _enc, cb) {
            print(chunk.toString('utf8'))
            cb()
          },
        })
  const pretty = loadPinoPretty()({ colorize: stderr.hasColors?.() ?? false, sync: true, destination, ignore: 'pid,hostname', translateTime: 'SYS:HH:MM:ss', singleLine: true })
  return pino({ level: opts.level ?? opts.ttyDefault ?? 'info', redact: REDACT }, pretty as DestinationStream)
}
