/**
 * `grainline replicate`: one cycle of each VM named (or of every VM of a job
 * file), `parallel` at a time. Every value is validated before the first
 * snapshot or connection (exit 2 naming the flag or key); on a terminal a
 * progress display, otherwise JSON logs with progress lines; SIGINT/SIGTERM
 * finish the durable step in flight, keep its snapshot for the next run,
 * write the report with the interruption and exit 130/143.
 *
 * This module holds the flags; what the command does is in replicate-run.ts,
 * imported only when it runs (so `--help`, `--version` and the other
 * commands do not load its dependencies).
 */
import type { Argv } from 'yargs'
import type { CliCommand } from '../command.ts'
import { REPLICATE_FLAGS } from './replicate-options.ts'

export const replicateCommand: CliCommand = {
  command: 'replicate [vm..]',
  describe: 'run one replication cycle of each VM named (or of every VM in a job file), in parallel',
  builder: (y: Argv) => {
    let out = y.positional('vm', { type: 'string', array: true, describe: '.vmx path (local driver) or VM name/id (esxi driver); several may be given' })
    for (const f of REPLICATE_FLAGS) out = out.option(f.flag, f.yargs)
    return out
  },
  async run(args, ctx) {
    const { runReplicate } = await import('./replicate-run.ts')
    return await runReplicate(args, ctx)
  },
}
