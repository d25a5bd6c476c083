/**
 * The shape of a `grainline` command: its yargs definition (one file per
 * command, so commands and their flags are added without touching the
 * others) and a `run` that returns the exit code. `run` imports the
 * command's implementation (commands/X-run.ts) when it is called, so the
 * definitions load nothing heavy.
 */
import type { Argv } from 'yargs'

/** Options every command has. */
export interface GlobalArgs {
  readonly 'log-level'?: string
  readonly 'log-file'?: string
}

/** What a command may use besides its arguments. */
export interface CliContext {
  /** stdout: command output (`--output json`, reports) */
  readonly write: (text: string) => void
  /** one line for the operator on stderr (a failure, what happens next) */
  readonly error: (line: string) => void
  /** the stderr stream (TTY or not decides the display) */
  readonly stderr: NodeJS.WriteStream
}

/** A command: yargs definition and runner. */
export interface CliCommand {
  /** yargs command string, e.g. `replicate [vm..]` */
  readonly command: string
  readonly describe: string
  /** the choices of its first positional, when that names an action (`mirror <action>`): another word there is refused before --help is shown */
  readonly actions?: readonly string[]
  readonly builder: (y: Argv) => Argv
  /** run with parsed arguments; resolves to the exit code */
  readonly run: (args: GlobalArgs & Record<string, unknown>, ctx: CliContext) => Promise<number>
  /**
   * How the command reports an error of its own (a usage or settings error, a
   * failure): writes what it says and returns the exit code. Absent: one line
   * on stderr, exit 2 (usage) or 1. `status` answers as a monitoring plugin
   * (`GRAINLINE UNKNOWN - …` on stdout, exit 3).
   */
  readonly failure?: (message: string, ctx: CliContext) => number
}
