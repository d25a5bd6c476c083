/**
 * `grainline mirror rollback`: discard an interrupted cycle; the mirror
 * returns to its last commit. `grainline mirror failover`: prepare the
 * mirror (or a point) to run, optionally registered on the DR ESXi host.
 * Both on a folder store and on a `ceph:POOL` store. `grainline mirror
 * import`: a VM seeded offline into a folder store becomes a mirror in a
 * `ceph:POOL` store, with its lineage (docs/CEPH.md "Offline seeding").
 * `grainline mirror remove`: a VM no longer replicated leaves the store,
 * with its restore points, its history and its place under its token's
 * `maxVms` and quota (receiver mirror-remove.ts, ceph-remove.ts).
 */
import { cephImportVm, cephRemoveMirror, cephRollbackMirror, closeCommand, isCephStore, removeMirror, rollbackMirror } from '@grainline/receiver'
import { formatBytes } from '@grainline/protocol/units'
import { cephTargetFrom } from './ceph-options.ts'
import type { CliContext, GlobalArgs } from '../command.ts'
import { ExitCode, UsageError } from '../exit-codes.ts'
import { loggerFor } from '../logger-args.ts'
import { failover, parseNetworkMap } from './failover.ts'

/** `mirror`'s run (loaded by commands/mirror.ts only when the command runs). */
export async function runMirror(args: GlobalArgs & Record<string, unknown>, ctx: CliContext): Promise<number> {
  const store = String(args['store'])
  const ceph = isCephStore(store) ? cephTargetFrom(store, args) : undefined
  if (args['action'] === 'import') {
    if (ceph === undefined) throw new UsageError('mirror import writes into a Ceph store: --store ceph:POOL (a folder store is carried whole: README "Seeding offline")')
    if (args['from'] === undefined) throw new UsageError('mirror import needs --from DIR: the folder store the VM was seeded into')
    const r = await cephImportVm(ceph, String(args['from']), String(args['vm']), { logger: loggerFor(args, ctx, 'warn') })
    if (args['output'] === 'json') ctx.write(JSON.stringify(r) + '\n')
    else {
      ctx.write(`${r.vm}: cycle ${r.cycle} imported into ${store}, every disk read back equal to its flat (sha256)\n`)
      for (const d of r.disks) ctx.write(`  ${d.name} → ${d.snapshot}\n`)
      ctx.write('the next cycle to a receiver on this pool is an ordinary incremental\n')
    }
    return ExitCode.Ok
  }
  if (args['action'] === 'remove') {
    const vm = String(args['vm'])
    if (args['yes'] !== true) throw new UsageError(`mirror remove deletes the mirror of VM ${vm} in ${store} with its restore points and history, and cannot be undone: add --yes`)
    const log = loggerFor(args, ctx, 'info')
    const r = ceph === undefined ? await removeMirror(store, vm, log) : await cephRemoveMirror(ceph, vm, log)
    if (args['output'] === 'json') ctx.write(JSON.stringify(r) + '\n')
    else {
      const points = r.points.length === 0 ? 'no restore point' : `${r.points.length} restore point(s) (${r.points.join(', ')})`
      if (r.resumed) {
        // run again after a removal of this VM was interrupted: it was already gone for every reader
        ctx.write(`${r.vm}: finished its interrupted removal from ${store} — ${formatBytes(r.bytes)} freed\n`)
        if (r.leftovers > 1) ctx.write(`also finished ${r.leftovers - 1} other interrupted removal(s)\n`)
      } else {
        ctx.write(`${r.vm}: removed from ${store} — committed cycle ${r.committedCycle}, ${r.disks.length} disk(s), ${points}, ${formatBytes(r.bytes)} freed\n`)
        if (r.leftovers > 0) ctx.write(`also finished ${r.leftovers} removal(s) interrupted before\n`)
      }
      ctx.write('archives of its points, if any, are kept (points archive); an agent still replicating it seeds it again\n')
    }
    return ExitCode.Ok
  }
  if (args['action'] === 'failover') {
    const r = await failover(
      {
        store,
        ...(ceph === undefined ? {} : { ceph }),
        vm: String(args['vm']),
        ...(typeof args['point'] === 'number' ? { point: args['point'] } : {}),
        ...(args['to'] === undefined ? {} : { to: String(args['to']) }),
        ...(args['register'] === undefined ? {} : { register: String(args['register']) }),
        networks: parseNetworkMap((args['network'] as string[] | undefined) ?? []),
        connectNics: args['connect-nics'] === true,
        format: args['format'] === 'vmfssparse' ? 'vmfssparse' : 'sesparse',
      },
      loggerFor(args, ctx, 'warn'),
    )
    if (args['output'] === 'json') ctx.write(JSON.stringify(r) + '\n')
    else {
      ctx.write(`${r.vm}: point ${r.cycle} prepared to run in ${r.dir}${r.registered === undefined ? '' : `, registered as vmid ${r.registered.vmid} "${r.registered.name}" (${r.registered.path})`}\n`)
      ctx.write(
        `the mirror is held (no replication) until the VM fails back (README "Fail back"); then, with the VM powered off, "${closeCommand(store, r.vm, r.dir, true)}" releases it and removes the folder\n`,
      )
    }
    return ExitCode.Ok
  }
  const r = ceph === undefined ? await rollbackMirror(store, String(args['vm']), loggerFor(args, ctx, 'info')) : await cephRollbackMirror(ceph, String(args['vm']), loggerFor(args, ctx, 'info'))
  ctx.write(r.rolledBack ? `${r.vm}: interrupted cycle rolled back; mirror at committed cycle ${r.committedCycle}\n` : `${r.vm}: nothing in flight; mirror at committed cycle ${r.committedCycle}\n`)
  return ExitCode.Ok
}
