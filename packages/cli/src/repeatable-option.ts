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
 */
import type { Options } from 'yargs'

export interface RepeatableSpec {
  /** each value must be one of these (checked by yargs after the split) */
  readonly choices?: readonly string[]
  /** a value may be a comma-separated list */
  readonly commaList?: boolean
}

const listOf = (v: unknown): string[] => (Array.isArray(v) ? v : [v]).map((x) => String(x))
const splitList = (v: unknown): string[] => listOf(v).flatMap((x) => x.split(',').map((s) => s.trim()))

/** The yargs definition of a repeatable single-value option; the help says how to give several. */
export function repeatableOption(describe: string, spec: RepeatableSpec = {}): Options {
  return {
    type: 'string',
    describe: `${describe}; ${spec.commaList === true ? 'repeat the flag or give a comma-separated list for several' : 'repeat the flag for several'}`,
    ...(spec.choices === undefined ? {} : { choices: [...spec.choices] }),
    coerce: spec.commaList === true ? splitList : listOf,
  }
}
