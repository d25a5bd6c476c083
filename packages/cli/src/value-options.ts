/**
 * Options that take a value (string, number and choices options of every
 * command, the global `--log-level` / `--log-file` too) refuse, while
 * parsing and before anything runs, the forms yargs would otherwise turn into
 * a value nobody gave:
 *
 * - the negation yargs derives for every option: `--no-state-dir` is `false`
 *   (the word "false" once made a string: a state dir or a restore folder
 *   named `false` in the working folder), `--no-point` is `0`;
 * - an occurrence without a value: `--to=`, blanks only, a trailing `--to`, or
 *   `--to` followed by another flag (yargs makes a string `""` and drops a
 *   number); a next word that starts with "-" and is no flag of the command
 *   (`--to -weird`: yargs reads it as flags) is told to be given as
 *   `--to=-weird`;
 * - a number option given something that is not a number (`--keep ten`:
 *   yargs makes it NaN).
 *
 * Each is a {@link UsageError} (exit 2) naming the flag as written and what it
 * takes. Boolean options keep their `--no-` form. An option whose help shows
 * the empty form (`--display-suffix= for none`) documents what an empty value
 * means, and may be given one.
 *
 * One mechanism for all commands: `main.ts` wraps every command's builder
 * with {@link refuseValuelessOptions}, which reads the options the builder
 * declared (so a new option is covered without code of its own) and adds a
 * middleware that checks the words of the command line as yargs-parser reads
 * them. It runs after the options' own coerce (repeatable-option.ts refuses
 * the same forms of a repeatable option in its own words) and before yargs'
 * validation.
 */
import type { Argv } from 'yargs'
import { UsageError } from './exit-codes.ts'

/** An option that takes a value, as declared to yargs. */
export interface ValueOption {
  /** the option's key (its first name) */
  readonly key: string
  /** what it takes, for messages: `a value`, `a number`, `one of human, json` */
  readonly takes: string
  /** the value in a usage example: `VALUE`, `NUMBER`, `human|json` */
  readonly meta: string
  readonly number: boolean
  /** demanded by yargs: leaving it out is no way out */
  readonly required: boolean
  /** its help shows `--KEY=`: an empty value means something documented */
  readonly emptyAllowed: boolean
}

/** What yargs keeps of the declared options (`getOptions()`, not in its typings). */
interface DeclaredOptions {
  readonly string: readonly string[]
  readonly number: readonly string[]
  readonly boolean: readonly string[]
  readonly array: readonly string[]
  readonly count: readonly string[]
  readonly choices: Readonly<Record<string, readonly unknown[]>>
  readonly alias: Readonly<Record<string, readonly string[]>>
  readonly demandedOptions: Readonly<Record<string, unknown>>
}

interface Introspectable {
  getOptions(): DeclaredOptions
  getInternalMethods(): { getUsageInstance(): { getDescriptions(): Record<string, string | undefined> } }
}

// yargs-parser's negative number (a word yargs takes as a value although it starts with "-")
const NEGATIVE = /^-([0-9]+(\.[0-9]+)?|\.[0-9]+)$/

const camel = (k: string): string => k.replace(/-+([a-z0-9])/g, (_, c: string) => c.toUpperCase())

/** Every value-taking option `y` declares, by each name it answers to (`--to`, `-o`, `--metrics-listen`, `--stateDir`). */
export function valueOptions(y: Argv): Map<string, ValueOption> {
  const i = y as unknown as Introspectable
  const o = i.getOptions()
  const descriptions = i.getInternalMethods().getUsageInstance().getDescriptions()
  const aliasOf = new Map<string, string>()
  for (const [k, as] of Object.entries(o.alias)) for (const a of as) aliasOf.set(a, k)
  const flagless = new Set([...o.boolean, ...o.array, ...o.count].map((n) => aliasOf.get(n) ?? n))
  const keys = new Set([...o.string, ...o.number, ...Object.keys(o.choices)].map((n) => aliasOf.get(n) ?? n).filter((k) => !flagless.has(k)))
  const byName = new Map<string, ValueOption>()
  for (const key of keys) {
    const choices = o.choices[key]
    const number = o.number.includes(key)
    const names = [key, ...(o.alias[key] ?? [])]
    const emptyAllowed = names.some((n) => new RegExp(`--${n}=(?:[\\s);,]|$)`).test(descriptions[key] ?? ''))
    const option: ValueOption = {
      key,
      takes: choices !== undefined ? `one of ${choices.join(', ')}` : number ? 'a number' : 'a value',
      meta: choices !== undefined ? choices.join('|') : number ? 'NUMBER' : 'VALUE',
      number,
      required: Object.hasOwn(o.demandedOptions, key),
      emptyAllowed,
    }
    for (const n of names) {
      byName.set(n, option)
      byName.set(camel(n), option)
    }
  }
  return byName
}

/** Every name `y` declares an option by (booleans, arrays, counts, `help` and `version` too; camel-case forms). */
export function declaredFlags(y: Argv): Set<string> {
  const o = (y as unknown as Introspectable).getOptions()
  const names = [...o.string, ...o.number, ...o.boolean, ...o.array, ...o.count, ...Object.keys(o.choices), ...Object.entries(o.alias).flat(2)]
  return new Set(names.flatMap((n) => [n, camel(n)]))
}

/**
 * The usage error of the first word of `words` that negates a value option, gives it no value, or a number option no number; undefined when none.
 * @param known every flag name the command declares ({@link declaredFlags}): a value option followed by a word
 *   that starts with "-" and is none of them (`--to -weird`) is told to write `--to=-weird`
 */
export function valuelessOptionError(words: readonly string[], options: ReadonlyMap<string, ValueOption>, known: ReadonlySet<string> = new Set()): UsageError | undefined {
  const leaveOut = (o: ValueOption): string => (o.required ? '' : ', or leave the flag out')
  const check = (flag: string, o: ValueOption, value: string | undefined, next?: string): UsageError | undefined => {
    if (value === undefined || value.trim() === '') {
      if (o.emptyAllowed && value !== undefined && value.length === 0) return undefined
      // `--to -weird`: yargs reads the next word as flags, never as the value; the way to give it is `--to=-weird`
      const name = next?.replace(/^--?(?:no-)?/, '').replace(/=[\s\S]*$/, '')
      const dashed = value === undefined && next !== undefined && next !== '--' && next.startsWith('-') && !options.has(name as string) && !known.has(name as string)
      const asAssigned = dashed ? `; a value that starts with "-" is given as ${flag}=${next}` : ''
      return new UsageError(`${flag}: no value given${dashed ? ` (${next} is read as a flag)` : ''}: write ${flag} ${o.meta}${leaveOut(o)}${asAssigned}`)
    }
    if (o.number && !Number.isFinite(Number(value))) return new UsageError(`${flag} ${value}: not a number: write ${flag} ${o.meta}${leaveOut(o)}`)
    return undefined
  }
  for (let w = 0; w < words.length; w++) {
    const word = words[w] as string
    if (word === '--') break // the rest is positionals
    const negated = /^--no-([^=]+)(?:=[\s\S]*)?$/.exec(word)
    if (negated !== null && !options.has(`no-${negated[1]}`)) {
      const o = options.get(negated[1] as string)
      if (o !== undefined) {
        const flag = `--${negated[1]}`
        return new UsageError(`--no-${negated[1]}: ${flag} takes ${o.takes} and has nothing to turn off: ${o.required ? '' : 'leave the flag out, or '}give ${flag} ${o.meta}`)
      }
      continue
    }
    // `--to=VALUE`, `-o=VALUE`
    const assigned = /^(--[^=]+|-[^-=])=([\s\S]*)$/.exec(word)
    if (assigned !== null) {
      const flag = assigned[1] as string
      const o = options.get(flag.replace(/^--?/, ''))
      const e = o === undefined ? undefined : check(flag, o, assigned[2])
      if (e !== undefined) return e
      continue
    }
    // `--to VALUE`, `-o VALUE`: the next word is the value unless it is a flag (yargs-parser's own rule, which differs for a short flag)
    const spaced = /^(--.+|-[^-])$/.exec(word)
    if (spaced === null || NEGATIVE.test(word)) continue
    const o = options.get(word.replace(/^--?/, ''))
    if (o === undefined) continue
    const next = words[w + 1]
    const isValue = next !== undefined && (!(word.startsWith('--') ? /^-/ : /^(-|--)[^-]/).test(next) || NEGATIVE.test(next))
    const e = check(word, o, isValue ? next : undefined, next)
    if (e !== undefined) return e
    if (isValue) w++
  }
  return undefined
}

/**
 * `y` with a middleware refusing the valueless forms of its value-taking
 * options in `words` (the command line as given to yargs). Apply it to the
 * yargs of a command once its builder declared the options.
 */
export function refuseValuelessOptions(y: Argv, words: readonly string[]): Argv {
  return y.middleware(() => {
    const e = valuelessOptionError(words, valueOptions(y), declaredFlags(y))
    if (e !== undefined) throw e
  }, true)
}
