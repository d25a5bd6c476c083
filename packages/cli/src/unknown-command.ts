/**
 * An unknown command (or a mirror/points action) is a usage error whether or
 * not --help or --version is given: yargs alone prints the top-level help
 * and exits 0 for `grainline replicat --help`, and a script goes on as if it
 * had worked. The command is found as yargs finds it (its own parser: an
 * option before the command takes the next word as its value).
 */
import { Parser } from 'yargs/helpers'
import type { CliCommand } from './command.ts'
import { UsageError } from './exit-codes.ts'

/** The nearest of `names` to `word` (edit distance at most a third of its length, at least 1; or a name it begins or ends), if any. */
export function nearestName(word: string, names: readonly string[]): string | undefined {
  const w = word.toLowerCase()
  let best: { name: string; d: number } | undefined
  for (const name of names) {
    const d = name.startsWith(w) || w.startsWith(name) ? 1 : editDistance(w, name)
    if (best === undefined || d < best.d) best = { name, d }
  }
  return best !== undefined && best.d <= Math.max(1, Math.floor(word.length / 3)) ? best.name : undefined
}

/** Levenshtein distance, a transposition of two neighbours counting one (Damerau's optimal string alignment). */
function editDistance(a: string, b: string): number {
  const w = b.length + 1
  const d = new Array<number>((a.length + 1) * w).fill(0)
  const at = (i: number, j: number): number => d[i * w + j] ?? 0
  for (let i = 0; i <= a.length; i++) d[i * w] = i
  for (let j = 0; j <= b.length; j++) d[j] = j
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++) {
      let v = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + (a[i - 1] === b[j - 1] ? 0 : 1))
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, at(i - 2, j - 2) + 1)
      d[i * w + j] = v
    }
  return at(a.length, b.length)
}

function unknown(what: string, word: string, names: readonly string[]): UsageError {
  const near = nearestName(word, names)
  return new UsageError(near !== undefined ? `unknown ${what} '${word}' — did you mean '${near}'?` : `unknown ${what} '${word}' — one of: ${names.join(', ')}`)
}

/**
 * The usage error for an unknown command, or an unknown action of a command
 * that takes one (CliCommand.actions), in `argv`; undefined when the command
 * (and action) is known or none is named.
 */
export function unknownCommand(argv: readonly string[], commands: readonly CliCommand[]): UsageError | undefined {
  const [word, action] = Parser([...argv], { boolean: ['help', 'version', 'h'], configuration: { 'parse-positional-numbers': false } })._.map(String)
  if (word === undefined) return undefined
  const nameOf = (c: CliCommand): string => c.command.split(' ', 1)[0] ?? c.command
  const command = commands.find((c) => nameOf(c) === word)
  if (command === undefined) return unknown('command', word, commands.map(nameOf))
  if (command.actions !== undefined && action !== undefined && !command.actions.includes(action)) return unknown(`${word} action`, action, command.actions)
  return undefined
}

/**
 * yargs' `Unknown argument: hlep` (or `Unknown arguments: a, b`; it drops
 * the dashes) with the nearest option of the command for each one given as
 * an option in `argv`: `--hlep: unknown option — did you mean --help?`. Any
 * other message, or one with no near option, as it is.
 */
export function unknownOptionText(message: string, options: readonly string[], argv: readonly string[]): string {
  const m = /^Unknown arguments?: (.+)$/.exec(message)
  if (m?.[1] === undefined) return message
  const names = options.filter((o) => o.length > 1 && o !== '$0')
  const asOption = (word: string): string | undefined => argv.map((a) => /^(-{1,2})([^=]*)/.exec(a)).find((o) => o?.[2] === word)?.[0]
  const listed = m[1].split(', ')
  const kebab = (w: string): string => w.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)
  // yargs lists --max-aeg twice, as max-aeg and its camel-case maxAeg
  const words = listed
    .filter((w) => kebab(w) === w || !listed.includes(kebab(w)))
    .map((word) => {
      const given = asOption(word)
      return { given: given ?? word, near: given === undefined ? undefined : nearestName(word, names) }
    })
  if (words.every((w) => w.near === undefined)) return message
  return words.map((w) => (w.near === undefined ? `${w.given}: unknown ${w.given.startsWith('-') ? 'option' : 'argument'}` : `${w.given}: unknown option — did you mean --${w.near}?`)).join('; ')
}
