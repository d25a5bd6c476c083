/**
 * A repeatable single-value option: `--mail-to a@x.net --mail-to b@x.net`.
 *
 * Never a yargs `array` option: an array takes every word up to the next
 * flag, so `grainline replicate --mail-to ops@x.net vm.vmx` would make the VM
 * a second address and lose it. Each occurrence takes exactly one value; with
 * `commaList` a value may also be a comma-separated list
 * (`--mail-on warning,failure`), split and trimmed (for values that cannot
 * hold a comma: addresses, event names; never paths or labels). The parsed
 * value is always an array of strings (absent: undefined), and `choices` are
 * checked by yargs on each element (exit 2 naming the flag). An empty element
 * (`--mail-to a@x.net,`) is kept for the validation to refuse, never dropped.
 *
 * An occurrence with no value at all (`--datastore-root=`, a trailing
 * `--mail-to`, blanks only) and the negation yargs derives for every option
 * (`--no-mail-to`, which it hands over as `false`) are refused while parsing,
 * with a {@link UsageError} (exit 2) naming the flag and what it takes: they
 * would otherwise reach the validation as `""` or the word "false".
 */
import type { Options } from 'yargs'
import { UsageError } from './exit-codes.ts'

export interface RepeatableSpec {
  /** each value must be one of these (checked by yargs after the split) */
  readonly choices?: readonly string[]
  /** a value may be a comma-separated list */
  readonly commaList?: boolean
  /** what one value is, for messages (`DIR`, `ADDRESS`). @default 'VALUE' */
  readonly value?: string
}

/** The yargs definition of the repeatable single-value option `--<flag>`; the help says how to give several. */
export function repeatableOption(flag: string, describe: string, spec: RepeatableSpec = {}): Options {
  const value = `${spec.value ?? 'VALUE'}${spec.choices === undefined ? '' : ` (one of ${spec.choices.join(', ')})`}`
  const listOf = (v: unknown): string[] =>
    (Array.isArray(v) ? v : [v]).map((x: unknown) => {
      if (x === false) throw new UsageError(`--no-${flag}: --${flag} takes a value and has nothing to turn off: leave the flag out for none, or give --${flag} ${value}`)
      const s = String(x)
      if (s.trim() === '') throw new UsageError(`--${flag}: no value given: write --${flag} ${value}, or leave the flag out`)
      return s
    })
  const splitList = (v: unknown): string[] => listOf(v).flatMap((x) => x.split(',').map((s) => s.trim()))
  return {
    type: 'string',
    describe: `${describe}; ${spec.commaList === true ? 'repeat the flag or give a comma-separated list for several' : 'repeat the flag for several'}`,
    ...(spec.choices === undefined ? {} : { choices: [...spec.choices] }),
    coerce: spec.commaList === true ? splitList : listOf,
  }
}
