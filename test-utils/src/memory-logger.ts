/**
 * A pino logger writing JSON lines into memory: tests assert logs through a
 * sink (STYLE §17), never by patching `console`.
 */
import { Writable } from 'node:stream'
import { pino, type Logger, type LevelWithSilent } from 'pino'

/** One parsed log line (`level`, `time`, `msg` and the merged fields). */
export type LogLine = Record<string, unknown>

/**
 * Which lines to find: a string matches `msg` exactly, a RegExp tests `msg`,
 * an object matches lines having each of its fields equal (deep, JSON), a
 * function decides.
 */
export type LogMatch = string | RegExp | Readonly<Record<string, unknown>> | ((line: LogLine) => boolean)

/** A logger and what it wrote. */
export interface MemoryLog {
  /** hand this to the code under test (`logger.child(...)` lines land here too) */
  readonly logger: Logger
  /** every line written so far, parsed */
  readonly lines: LogLine[]
  /** everything written, as text */
  text(): string
  /** the first line that matches, or undefined */
  find(match: LogMatch): LogLine | undefined
  /** every line that matches */
  filter(match: LogMatch): LogLine[]
  /** resolves with the first matching line, written already or later */
  waitFor(match: LogMatch): Promise<LogLine>
}

/** Options of {@link memoryLogger}. */
export interface MemoryLoggerOptions {
  /**
   * lowest level recorded
   * @default 'debug'
   */
  readonly level?: LevelWithSilent
}

/** Turn a {@link LogMatch} into a predicate. */
export function logMatcher(match: LogMatch): (line: LogLine) => boolean {
  if (typeof match === 'function') return match
  if (typeof match === 'string') return (l) => l['msg'] === match
  if (match instanceof RegExp) return (l) => typeof l['msg'] === 'string' && match.test(l['msg'])
  const want = Object.entries(match).map(([k, v]) => [k, JSON.stringify(v)] as const)
  return (l) => want.every(([k, v]) => JSON.stringify(l[k]) === v)
}

/** A pino logger collecting JSON lines in memory. */
export function memoryLogger(opts: MemoryLoggerOptions = {}): MemoryLog {
  const lines: LogLine[] = []
  const chunks: string[] = []
  const waiters = new Set<(l: LogLine) => void>()
  let partial = ''
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const s = chunk.toString('utf8')
      chunks.push(s)
      const parts = (partial + s).split('\n')
      partial = parts.pop() ?? ''
      for (const p of parts) {
        if (p === '') continue
        const line = JSON.parse(p) as LogLine
        lines.push(line)
        for (const w of [...waiters]) w(line)
      }
      cb()
    },
  })
  const find = (match: LogMatch): LogLine | undefined => lines.find(logMatcher(match))
  return {
    logger: pino({ level: opts.level ?? 'debug' }, sink),
    lines,
    text: () => chunks.join(''),
    find,
    filter: (match) => lines.filter(logMatcher(match)),
    waitFor: (match) =>
      new Promise((resolve) => {
        const pred = logMatcher(match)
        const seen = lines.find(pred)
        if (seen !== undefined) {
          resolve(seen)
          return
        }
        const w = (l: LogLine): void => {
          if (pred(l)) {
            waiters.delete(w)
            resolve(l)
          }
        }
        waiters.add(w)
      }),
  }
}
