/** The logger of a command from its `--log-level` / `--log-file` arguments. */
import type { Logger, LevelWithSilent } from 'pino'
import type { CliContext, GlobalArgs } from './command.ts'
import { createCliLogger } from './logger.ts'

/** A command's logger; `ttyDefault` is its level on a terminal when `--log-level` is not given. */
export function loggerFor(args: GlobalArgs, ctx: Pick<CliContext, 'stderr'>, ttyDefault: LevelWithSilent): Logger {
  return createCliLogger({
    ...(args['log-level'] === undefined ? {} : { level: args['log-level'] as LevelWithSilent }),
    ...(args['log-file'] === undefined ? {} : { file: args['log-file'] }),
    ttyDefault,
    stderr: ctx.stderr,
  })
}
