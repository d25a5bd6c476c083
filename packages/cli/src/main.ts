import yargs, { type Argv } from 'yargs'
import { infoCommand, mapCommand } from './commands/disk-info.ts'
import { parsePathMap } from './util.ts'

/** Exit codes of the `grainline` command. */
export const ExitCode = { Ok: 0, Failed: 1, Usage: 2, Interrupted: 130 } as const

const write = (text: string): void => { process.stdout.write(text) }

/** Build the yargs parser (exported so tests and the README reference use the same one). */
export function buildCli (argv: readonly string[]): Argv {
  return yargs([...argv])
    .scriptName('grainline')
    .usage('$0 <command> [options]\n\nReplicate running VMware ESXi VMs to a DR site, block by block, from snapshot deltas.')
    .strict()
    .demandCommand(1, 'name a command')
    .recommendCommands()
    .option('log-level', { type: 'string', choices: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'], default: 'info', describe: 'log level of the JSON logs (stderr)' })
    .option('log-file', { type: 'string', describe: 'write JSON logs to this file instead of stderr' })
    .command('info <disk>', 'describe a VMDK: createType, capacity, CIDs, extents and the whole chain', (y) => y
      .positional('disk', { type: 'string', demandOption: true, describe: 'descriptor (.vmdk) of any layer' })
      .option('output', { alias: 'o', choices: ['json', 'human'] as const, default: 'human' as const })
      .option('path-map', { type: 'string', array: true, describe: 'DATASTORE=LOCALPATH for absolute /vmfs/volumes/... parent hints' }),
    async (args) => {
      await infoCommand({ disk: args.disk, output: args.output, pathMap: parsePathMap(args['path-map']), write })
    })
    .command('map <disk>', 'list what each layer of the chain holds (same meaning as qemu-img map --output=json)', (y) => y
      .positional('disk', { type: 'string', demandOption: true })
      .option('output', { alias: 'o', choices: ['json', 'human'] as const, default: 'human' as const })
      .option('path-map', { type: 'string', array: true, describe: 'DATASTORE=LOCALPATH for absolute parent hints' }),
    async (args) => {
      await mapCommand({ disk: args.disk, output: args.output, pathMap: parsePathMap(args['path-map']), write })
    })
    .help()
    .version('0.1.0')
    .wrap(Math.min(110, process.stdout.columns ?? 100))
}

/** Run the CLI; returns the exit code. */
export async function main (argv: readonly string[]): Promise<number> {
  let failed: Error | undefined
  const cli = buildCli(argv).fail((msg, err, y) => {
    if (err !== undefined && err !== null) { failed = err; return }
    process.stderr.write(`${y.help !== undefined ? '' : ''}grainline: ${msg}\nRun "grainline --help" for usage.\n`)
    process.exitCode = ExitCode.Usage
  })
  try {
    await cli.parseAsync()
  } catch (err) {
    failed = err as Error
  }
  if (failed !== undefined) {
    const code = (failed as { code?: unknown }).code
    process.stderr.write(`grainline: ${failed.message}${typeof code === 'string' ? ` [${code}]` : ''}\n`)
    return ExitCode.Failed
  }
  return typeof process.exitCode === 'number' ? process.exitCode : ExitCode.Ok
}
