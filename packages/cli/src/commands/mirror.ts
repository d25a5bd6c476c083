/** `grainline mirror rollback`: discard an interrupted cycle; the mirror returns to its last commit. */
import type { Argv } from 'yargs'
import { rollbackMirror } from '@grainline/receiver'
import type { CliCommand } from '../command.ts'
import { ExitCode } from '../exit-codes.ts'
import { loggerFor } from '../logger-args.ts'

export const mirrorCommand: CliCommand = {
  command: 'mirror <action>',
  describe: 'act on a mirror in a store',
  builder: (y: Argv) =>
    y
      .positional('action', { choices: ['rollback'] as const, demandOption: true, describe: 'rollback: discard an interrupted cycle' })
      .option('store', { type: 'string', demandOption: true, describe: 'folder holding the mirrors' })
      .option('vm', { type: 'string', demandOption: true, describe: 'the VM (its mirror folder name)' }),
  async run(args, ctx) {
    const r = await rollbackMirror(String(args['store']), String(args['vm']), loggerFor(args, ctx, 'info'))
    ctx.write(r.rolledBack ? `${r.vm}: interrupted cycle rolled back; mirror at committed cycle ${r.committedCycle}\n` : `${r.vm}: nothing in flight; mirror at committed cycle ${r.committedCycle}\n`)
    return ExitCode.Ok
  },
}
