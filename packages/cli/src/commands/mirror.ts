/**
 * `grainline mirror rollback`: discard an interrupted cycle; the mirror
 * returns to its last commit. `grainline mirror failover`: prepare the
 * mirror (or a point) to run, optionally registered on the DR ESXi host.
 * Both on a folder store and on a `ceph:POOL` store. `grainline mirror
 * import`: a VM seeded offline into a folder store becomes a mirror in a
 * `ceph:POOL` store, with its lineage (docs/CEPH.md "Offline seeding").
 * `grainline mirror remove`: a VM no longer replicated leaves the store,
 * with its restore points (its archives are kept).
 *
 * This module holds the flags; what the command does is in mirror-run.ts,
 * imported only when it runs (so `--help`, `--version` and the other
 * commands do not load its dependencies).
 */
import type { Argv } from 'yargs'
import type { CliCommand } from '../command.ts'
import { repeatableOption } from '../repeatable-option.ts'
import { withCephOptions } from './store-flags.ts'

const MIRROR_ACTIONS = ['rollback', 'failover', 'import', 'remove'] as const

export const mirrorCommand: CliCommand = {
  command: 'mirror <action>',
  describe: 'act on a mirror in a store',
  actions: MIRROR_ACTIONS,
  builder: (y: Argv) =>
    withCephOptions(y)
      .positional('action', {
        choices: MIRROR_ACTIONS,
        demandOption: true,
        describe:
          'rollback: discard an interrupted cycle; failover: prepare the mirror (or --point K) to run at the DR site, held until "grainline points close"; import: a VM seeded offline into the folder store --from becomes a mirror in --store ceph:POOL; remove: a VM no longer replicated leaves the store with its restore points (--yes; archives are kept)',
      })
      .option('store', { type: 'string', demandOption: true, describe: 'folder holding the mirrors, or ceph:POOL (failover, rollback, remove; import: the ceph:POOL written)' })
      .option('from', { type: 'string', describe: 'import: the folder store holding the VM seeded offline (its receiver stopped)' })
      .option('vm', { type: 'string', demandOption: true, describe: 'the VM (its mirror folder name)' })
      .option('point', { type: 'number', describe: 'failover: run this restore point instead of the mirror' })
      .option('to', { type: 'string', describe: 'failover: the VM folder to prepare (default STORE/.failover/VM-point-K); on a datastore of --register' })
      .option('network', repeatableOption('network', "failover: map a network label, 'VM Network=DR Network'", { value: "'SOURCE LABEL=DR LABEL'" }))
      .option('connect-nics', { type: 'boolean', default: false, describe: 'failover: connect the NICs at power-on (default: not connected)' })
      .option('register', {
        type: 'string',
        describe:
          'failover: esxi driver settings (esxi.json) of the DR host: register the VM there with vim-cmd solo/registervm over SSH (the host is reached first; a failed registration undoes the failover)',
      })
      .option('format', { choices: ['sesparse', 'vmfssparse'] as const, default: 'sesparse' as const, describe: 'failover: format of the writable child disks' })
      .option('yes', { type: 'boolean', default: false, describe: 'remove: confirm that the mirror and its restore points are deleted (cannot be undone)' })
      .option('output', { alias: 'o', choices: ['human', 'json'] as const, default: 'human' as const }),
  async run(args, ctx) {
    const { runMirror } = await import('./mirror-run.ts')
    return await runMirror(args, ctx)
  },
}
