/** `grainline info` and `grainline map`: a VMDK's chain, and what each layer holds (disk-info.ts, imported when the command runs). */
import type { Argv } from 'yargs'
import type { CliCommand } from '../command.ts'
import { ExitCode, UsageError } from '../exit-codes.ts'
import { repeatableOption } from '../repeatable-option.ts'
import { parsePathMap } from '../util.ts'

const pathMapOf = (v: unknown): Record<string, string> => {
  try {
    return parsePathMap(v as string[] | undefined)
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
}

export const infoCommand: CliCommand = {
  command: 'info <disk>',
  describe: 'describe a VMDK: createType, capacity, CIDs, extents and the whole chain',
  builder: (y: Argv) =>
    y
      .positional('disk', { type: 'string', demandOption: true, describe: 'descriptor (.vmdk) of any layer' })
      .option('output', { alias: 'o', choices: ['json', 'human'] as const, default: 'human' as const })
      .option('path-map', repeatableOption('path-map', 'DATASTORE=LOCALPATH for absolute /vmfs/volumes/... parent hints', { value: 'DATASTORE=LOCALPATH' })),
  async run(args, ctx) {
    const { infoCommand: describeDisk } = await import('./disk-info.ts')
    await describeDisk({ disk: String(args['disk']), output: args['output'] === 'json' ? 'json' : 'human', pathMap: pathMapOf(args['path-map']), write: ctx.write })
    return ExitCode.Ok
  },
}

export const mapCommand: CliCommand = {
  command: 'map <disk>',
  describe: 'list what each layer of the chain holds (same meaning as qemu-img map --output=json)',
  builder: (y: Argv) =>
    y
      .positional('disk', { type: 'string', demandOption: true })
      .option('output', { alias: 'o', choices: ['json', 'human'] as const, default: 'human' as const })
      .option('path-map', repeatableOption('path-map', 'DATASTORE=LOCALPATH for absolute parent hints', { value: 'DATASTORE=LOCALPATH' })),
  async run(args, ctx) {
    const { mapCommand: mapDisk } = await import('./disk-info.ts')
    await mapDisk({ disk: String(args['disk']), output: args['output'] === 'json' ? 'json' : 'human', pathMap: pathMapOf(args['path-map']), write: ctx.write })
    return ExitCode.Ok
  },
}
