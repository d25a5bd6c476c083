/**
 * `grainline restore`: a restore point (or the mirror) as a standalone,
 * consolidated VM folder (.vmx + createType="vmfs" descriptor + flat per
 * disk), verified against the digests recorded at that cycle; or, with
 * `--from s3://…`, a point archived by `points archive`, from the bucket
 * alone, every chunk and disk checked against the archive's sha256. With
 * `--store ceph:POOL`, a point of the Ceph store (docs/CEPH.md "Restore").
 *
 * This module holds the flags; what the command does is in restore-run.ts,
 * imported only when it runs (so `--help`, `--version` and the other
 * commands do not load its dependencies).
 */
import type { Argv } from 'yargs'
import type { CliCommand } from '../command.ts'
import { UsageError } from '../exit-codes.ts'
import { withCephOptions, withS3Options } from './store-flags.ts'

export const restoreCommand: CliCommand = {
  command: 'restore',
  describe: 'restore a point of a mirror into a new standalone VM folder, verified against the digests recorded at that cycle',
  builder: (y: Argv) =>
    withCephOptions(withS3Options(y))
      .option('store', { type: 'string', describe: 'folder holding the mirrors, or ceph:POOL' })
      .option('from', {
        type: 'string',
        describe:
          'restore from an archive instead: s3://BUCKET[/PREFIX] (see points archive); it holds a run lock under PREFIX/locks/ (refused while a points archive-prune runs; with read-only credentials it restores without the lock, and warns)',
      })
      .option('despite-lock', {
        type: 'string',
        describe:
          'with --from: the key of one points archive-prune lock (PREFIX/locks/prune-…, as the refusal printed it) to restore beside, once certain that prune is dead (warned; any other prune lock still refuses; a prune alive after all makes the restore fail and remove what it wrote)',
      })
      .check((a) => {
        if ((a['store'] === undefined) === (a['from'] === undefined)) throw new UsageError('restore needs exactly one of --store DIR and --from s3://BUCKET[/PREFIX]')
        if (a['despite-lock'] !== undefined && a['from'] === undefined) throw new UsageError('--despite-lock goes with --from s3://…: a restore from the store takes no archive lock')
        return true
      })
      .option('vm', { type: 'string', demandOption: true, describe: 'the VM (its mirror folder name)' })
      .option('point', { type: 'number', demandOption: true, describe: 'the point (cycle) to restore; the committed cycle restores the mirror itself' })
      .option('to', { type: 'string', demandOption: true, describe: 'a new (or empty) folder' })
      .option('output', { alias: 'o', choices: ['human', 'json'] as const, default: 'human' as const }),
  async run(args, ctx) {
    const { runRestore } = await import('./restore-run.ts')
    return await runRestore(args, ctx)
  },
}
