/**
 * `grainline points`: the restore points of a mirror (cycle, time, size,
 * checks recorded at that cycle, held), and `points prune` (by a retention
 * policy: the receiver config's, or flags) / `points drop --point K`, and
 * `points archive` / `points archived` / `points archive-prune` (copies in
 * an S3 bucket and their retention, docs/ARCHIVE.md).
 *
 * This module holds the flags; what the command does is in points-run.ts,
 * imported only when it runs (so `--help`, `--version` and the other
 * commands do not load its dependencies).
 */
import type { Argv } from 'yargs'
import type { CliCommand } from '../command.ts'
import { UsageError } from '../exit-codes.ts'
import { withCephOptions, withS3Options } from './store-flags.ts'

const POINTS_ACTIONS = ['list', 'prune', 'drop', 'open', 'close', 'archive', 'archived', 'archive-prune', 'export'] as const

export const pointsCommand: CliCommand = {
  command: 'points [action]',
  describe: 'restore points of a mirror: list (default), prune by a retention policy, drop one, open one as a runnable VM (held), close it',
  actions: POINTS_ACTIONS,
  builder: (y: Argv) =>
    withCephOptions(withS3Options(y))
      .positional('action', {
        choices: POINTS_ACTIONS,
        default: 'list',
        describe:
          'list: the points; prune: apply a retention policy now; drop: drop --point K (a middle point is merged into its neighbour); open: --point K as a runnable VM folder (a writable child over the point, NICs not connected at power-on, new uuid.bios) that holds the mirror — on ceph:POOL an RBD clone of each disk snapshot, booted by QEMU as rbd:POOL/CLONE; close: release a hold (--to DIR, or the name open printed on ceph:POOL, or --all); archive: copy points (--point K, default every kept point and the mirror) to --archive s3://BUCKET/PREFIX, locked with --retain; archived: the points in --archive (one whose manifest a delete marker hides is restorable: listed, marked hidden); archive-prune: delete the manifests of --archive that --keep-last / --older-than select (--vm, or every VM), then the chunks no manifest references (older than --grace); export (ceph:POOL store): --point K (default the mirror) as raw disk files in --to DIR',
      })
      .option('store', { type: 'string', describe: 'folder holding the mirrors, or ceph:POOL (all actions but archived, archive-prune)' })
      .option('vm', { type: 'string', describe: 'the VM (its mirror folder name); required but for archive-prune (default: every VM in --archive)' })
      .option('point', { type: 'number', describe: 'drop, open: the point (cycle); open without it opens the mirror itself' })
      .option('to', {
        type: 'string',
        describe:
          'open: the new VM folder (default STORE/.open/VM-point-K; not on ceph:POOL); close: the folder (ceph:POOL: or the open-… name) to release; a relative one is found from here or, failing that, inside the store (the form the agent is told)',
      })
      .option('all', { type: 'boolean', describe: 'close: release every hold of the VM (a failover hold also needs --failover)' })
      .option('failover', {
        type: 'boolean',
        describe:
          'close: also release failover holds, deleting the failover folder — only once the VM failed back and its DR copy is off (a folder that shows a powered-on VM, .lck-* or *.vswp, is refused anyway)',
      })
      .option('format', {
        choices: ['sesparse', 'vmfssparse'] as const,
        default: 'sesparse' as const,
        describe:
          'open: format of the writable child disks: sesparse (ESXi; QEMU only reads it) or vmfssparse (≤ 2 TiB; QEMU writes it too, slowly on first writes: its grain tables are laid out up front)',
      })
      .option('keep', { type: 'number', describe: 'prune: keep the newest N points' })
      .option('max-age', { type: 'string', describe: 'prune: keep points younger than this: 12h, 30d' })
      .option('max-bytes', { type: 'string', describe: 'prune: the points may take at most this: 200G' })
      .option('gfs', { type: 'string', describe: 'prune: grandfather-father-son, e.g. hourly=24,daily=7,weekly=4,monthly=12' })
      .option('config', { type: 'string', describe: 'prune: take the policy of this receiver config file (retention, retentionVms)' })
      .option('archive', { type: 'string', describe: 'archive, archived, archive-prune: the S3 archive, s3://BUCKET[/PREFIX]' })
      .option('keep-last', {
        type: 'number',
        describe: "archive-prune: per VM, keep the manifests of the newest N archived points (default 1: age alone never deletes a VM's newest; 0 only with --vm)",
      })
      .option('older-than', { type: 'string', describe: 'archive-prune: delete manifests archived longer ago than this: 180d' })
      .option('grace', { type: 'string', default: '24h', describe: 'archive-prune: delete an unreferenced chunk only once it is this old (an archive in progress uploads chunks before its manifest)' })
      .option('dry-run', { type: 'boolean', describe: 'archive-prune: list what would be deleted and the bytes freed; delete nothing' })
      .option('retain', { type: 'string', describe: 'archive: lock every object written or reused (S3 Object Lock) for this long: 90d' })
      .option('lock-mode', {
        choices: ['governance', 'compliance'] as const,
        default: 'governance' as const,
        describe: 'archive: Object Lock mode (compliance: nobody, not even the bucket owner, can shorten it)',
      })
      .option('despite-lock', {
        type: 'string',
        describe:
          'archive: the key of one points archive-prune lock (PREFIX/locks/prune-…, as the refusal printed it) to archive beside. You assert that prune is dead (killed, its host lost; a lock of a process gone from this host is ignored without it): a live prune could delete chunks this archive relies on, so every chunk is uploaded (the whole point on the wire, not its changes) and checked before and after the manifest is written (one gone is uploaded again, warned; one gone after 3 uploads fails the run with no manifest left). Warned; any other prune lock still refuses',
      })
      .option('check', {
        type: 'boolean',
        describe:
          "archived: check that every chunk and file each point's manifest names is in the bucket (a HEAD each, not their contents: a restore checks those); a point naming a missing one is reported (E_ARCHIVE_CHUNK_MISSING, the chunk and what it holds: its restore would fail) and the exit code is 1",
      })
      .option('output', { alias: 'o', choices: ['human', 'json'] as const, default: 'human' as const })
      .check((a) => {
        if (a['despite-lock'] !== undefined && a['action'] !== 'archive')
          throw new UsageError(`--despite-lock goes with points archive (and restore --from), not points ${String(a['action'])}: only they refuse beside a prune's lock`)
        if (a['check'] === true && a['action'] !== 'archived') throw new UsageError(`--check goes with points archived, not points ${String(a['action'])}`)
        const s3Only = a['action'] === 'archived' || a['action'] === 'archive-prune'
        if (a['action'] !== 'archive-prune' && a['vm'] === undefined) throw new UsageError('--vm is required')
        if (!s3Only && a['store'] === undefined) throw new UsageError('--store is required')
        if ((a['action'] === 'archive' || s3Only) && a['archive'] === undefined) throw new UsageError(`points ${String(a['action'])} needs --archive s3://BUCKET[/PREFIX]`)
        return true
      }),
  async run(args, ctx) {
    const { runPoints } = await import('./points-run.ts')
    return await runPoints(args, ctx)
  },
}
