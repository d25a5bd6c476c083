/**
 * The `grainline` command: yargs over one module per command
 * (src/commands/). A command's module holds its flags; it imports what the
 * command does (and with it the agent, the receiver and their dependencies)
 * only when the command runs, so `--version`, `--help` and a command pay for
 * their own modules alone (packages/cli/test/lazy-load.test.ts). Usage errors — an unknown command or option, a bad
 * choice, a missing argument, a value the settings schema refuses — print one
 * message and exit 2 before anything happens; a failure prints one line
 * naming the VM, the disk and the code (`[E_CHAIN_CID]`) and exits 1.
 */
import yargs, { type Argv } from 'yargs'
import type { CliCommand, CliContext } from './command.ts'
import { demoCommand } from './commands/demo.ts'
import { infoCommand, mapCommand } from './commands/info.ts'
import { mirrorCommand } from './commands/mirror.ts'
import { receiveCommand } from './commands/receive.ts'
import { replicateCommand } from './commands/replicate.ts'
import { statusCommand } from './commands/status.ts'
import { pointsCommand } from './commands/points.ts'
import { restoreCommand } from './commands/restore.ts'
import { ExitCode, UsageError } from './exit-codes.ts'
import { LOG_LEVELS } from './log-levels.ts'
import { unknownCommand, unknownOptionText } from './unknown-command.ts'
import { refuseValuelessOptions } from './value-options.ts'
import { VERSION } from './version.ts'

export { ExitCode } from './exit-codes.ts'

/** Every command, in the order `--help` lists them. */
export const COMMANDS: readonly CliCommand[] = [infoCommand, mapCommand, receiveCommand, replicateCommand, statusCommand, mirrorCommand, pointsCommand, restoreCommand, demoCommand]

/** Build the yargs parser; `onRun` receives each command's exit code (exported so the reference generator uses the same one). */
export function buildCli(argv: readonly string[], ctx: CliContext = defaultContext(), onRun: (code: number) => void = () => {}, onCommand: (command: CliCommand) => void = () => {}): Argv {
  let y = yargs([...argv])
    .scriptName('grainline')
    .usage('$0 <command> [options]\n\nReplicate running VMware ESXi VMs to a DR site, block by block, from snapshot deltas.')
    .strict()
    .demandCommand(1, 'name a command')
    .recommendCommands()
    .option('log-level', { type: 'string', choices: LOG_LEVELS, describe: 'log level (default: info as JSON when stderr is not a terminal; on a terminal only the failure, unless set)' })
    .option('log-file', { type: 'string', describe: 'write JSON logs to this file instead of stderr' })
  for (const c of COMMANDS) {
    // every option that takes a value refuses --no-FLAG and an empty value (value-options.ts)
    y = y.command(
      c.command,
      c.describe,
      (cy: Argv) => {
        // yargs builds only the command it runs: its errors from here on are this command's
        onCommand(c)
        return refuseValuelessOptions(c.builder(cy), argv)
      },
      async (args) => {
        onRun(await c.run(args as never, ctx))
      },
    )
  }
  return y
    .fail((msg, err) => {
      // never let yargs go on after a usage error: the command must not run
      // a parsing error of yargs' own (YError: an option's coerce refused its value, repeatable-option.ts) is a usage error;
      // so is a UsageError thrown by a middleware (value-options.ts)
      if (err !== undefined && err !== null) throw err.name === 'YError' ? new UsageError(err.message) : err
      // the options of the command being parsed (yargs parses it on this same instance)
      throw new UsageError(unknownOptionText(msg, Object.keys((y as unknown as { getOptions(): { key?: Record<string, unknown> } }).getOptions().key ?? {}), argv))
    })
    .help()
    .version(VERSION)
    .wrap(Math.min(110, process.stdout.columns ?? 100))
}

function defaultContext(): CliContext {
  return {
    write: (text) => {
      process.stdout.write(text)
    },
    error: (line) => {
      process.stderr.write(line.endsWith('\n') ? line : line + '\n')
    },
    stderr: process.stderr,
  }
}

/** The one line a failure gets: message and code; a settings error lists every problem. */
function failureText(err: unknown): string {
  const e = err as { message?: unknown; code?: unknown; issues?: unknown }
  const code = typeof e.code === 'string' && e.code !== 'E_USAGE' && e.code !== 'E_CONFIG' ? ` [${e.code}]` : ''
  if (Array.isArray(e.issues) && e.issues.length > 1) return `grainline: ${e.issues.length} problems:\n${e.issues.map((i) => `  ${String(i)}`).join('\n')}\n`
  return `grainline: ${typeof e.message === 'string' ? e.message : String(err)}${code}\n`
}

/** Run the CLI; resolves to the exit code (usage 2, failure 1, the command's own otherwise). */
export async function main(argv: readonly string[], ctx: CliContext = defaultContext()): Promise<number> {
  let code: number | undefined
  let command: CliCommand | undefined
  try {
    // an unknown command is refused even with --help or --version (yargs would show the help and exit 0)
    const unknown = unknownCommand(argv, COMMANDS)
    if (unknown !== undefined) throw unknown
    await buildCli(
      argv,
      ctx,
      (c) => {
        code = c
      },
      (c) => {
        command = c
      },
    ).parseAsync()
  } catch (err) {
    if (command?.failure !== undefined)
      return command.failure(
        failureText(err)
          .replace(/^grainline: /, '')
          .trim(),
        ctx,
      )
    const usage = err instanceof UsageError || (err as { code?: unknown }).code === 'E_CONFIG'
    ctx.error(failureText(err) + (err instanceof UsageError ? 'Run "grainline --help" for usage.\n' : ''))
    return usage ? ExitCode.Usage : ExitCode.Failed
  }
  return code ?? ExitCode.Ok
}
