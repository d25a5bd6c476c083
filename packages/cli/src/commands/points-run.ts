/**
 * `grainline points`: the restore points of a mirror (cycle, time, size,
 * checks recorded at that cycle, held), and `points prune` (by a retention
 * policy: the receiver config's, or flags) / `points drop --point K`, and
 * `points archive` / `points archived` (copies in an S3 bucket, docs/ARCHIVE.md).
 */
import { formatBytes, formatDuration, parseByteSize, parseDuration } from '@grainline/protocol/units'
import type { Logger } from 'pino'
import { join } from 'node:path'
import {
  archivePoints,
  cephArchivePoints,
  cephClosePoint,
  cephOpenPoint,
  cephListPoints,
  cephPrunePoints,
  cephRestorePoint,
  isCephStore,
  closePoint,
  closeCommand,
  listArchivedPoints,
  checkArchivedPoint,
  type ArchivedPointCheck,
  KEEP_NONE_NEEDS_VM,
  pruneArchive,
  type ArchivePruneResult,
  listPoints,
  loadReceiverConfig,
  openPoint,
  parseGfs,
  prunePoints,
  retentionFor,
  type ArchiveOptions,
  type ArchiveProgress,
  type PointInfo,
  type RetentionPolicy,
} from '@grainline/receiver'
import { bucketFrom, despiteLockFrom, lockFrom } from './archive-options.ts'
import { cephTargetFrom } from './ceph-options.ts'
import type { CliContext, GlobalArgs } from '../command.ts'
import { ExitCode, UsageError } from '../exit-codes.ts'
import { loggerFor } from '../logger-args.ts'
import { progressDisplay } from '../progress-display.ts'
import { table } from '../util.ts'

function check(r: { ok: boolean; algorithm: string } | null): string {
  return r === null ? '-' : `${r.algorithm} ${r.ok ? 'ok' : 'MISMATCH'}`
}

/** The text of `grainline points`. */
export function renderPoints(vm: string, points: readonly PointInfo[], inflightCycle: number): string {
  const rows = points.map((p) => [
    p.current ? `${p.cycle} (mirror)` : String(p.cycle),
    p.committedAt,
    p.current
      ? '-'
      : `${formatBytes(p.bytes)}${
          p.disks.some((d) => d.base === true)
            ? ` (whole ${p.disks
                .filter((d) => d.base === true)
                .map((d) => d.name)
                .join(', ')})`
            : ''
        }`,
    p.disks.map((d) => check(d.trivial)).join(' '),
    p.disks.map((d) => check(d.certify)).join(' '),
    p.held ? 'held' : '-',
  ])
  const lines = [`${vm}: ${points.length - 1} restore point(s) and the mirror`, '', table(['point', 'committed', 'size', 'trivial', 'certify', 'held'], rows)]
  // points older than a resync of a diverged mirror read what it repaired as the damaged mirror held it (points.ts divergedResyncUnder)
  const groups = new Map<string, Array<{ cycle: number; certified: boolean; disk: string; resync: { cycle: number; reason: string } }>>()
  for (const p of points)
    for (const d of p.disks) {
      if (d.divergedResync === undefined) continue
      const key = `${d.name}\0${d.divergedResync.cycle}`
      const list = groups.get(key) ?? []
      list.push({ cycle: p.cycle, certified: d.certify?.ok === true, disk: d.name, resync: d.divergedResync })
      groups.set(key, list)
    }
  for (const group of groups.values()) {
    const first = group[0] as (typeof group)[number]
    const unproven = group.filter((x) => !x.certified).map((x) => x.cycle)
    lines.push(
      '',
      `point(s) ${group.map((x) => x.cycle).join(', ')} predate the resync at cycle ${first.resync.cycle} that repaired the mirror of ${first.disk} (marked diverged: ${first.resync.reason}): they read the blocks it rewrote as the mirror held them then, which may be the damage it repaired. ${
        unproven.length === 0
          ? 'Each has a whole-disk certify digest, which a restore checks.'
          : `A restore of point(s) ${unproven.join(', ')} cannot prove that disk (no whole-disk certify digest at that cycle): prefer a point at or after cycle ${first.resync.cycle}.`
      }`,
    )
  }
  if (inflightCycle !== 0) lines.push('', `cycle ${inflightCycle} is in flight: points cannot be restored or pruned until it commits or is rolled back`)
  return lines.join('\n') + '\n'
}

/** The policy of the flags (`--keep`, `--max-age`, `--max-bytes`, `--gfs`), or the receiver config's for the VM. */
async function policyOf(args: Record<string, unknown>, vm: string): Promise<RetentionPolicy> {
  const p: { keep?: number; maxAgeMs?: number; maxBytes?: number; gfs?: RetentionPolicy['gfs'] } = {}
  try {
    if (args['keep'] !== undefined) p.keep = Number(args['keep'])
    if (args['max-age'] !== undefined) p.maxAgeMs = parseDuration(String(args['max-age']), '--max-age')
    if (args['max-bytes'] !== undefined) p.maxBytes = parseByteSize(String(args['max-bytes']), '--max-bytes')
    if (args['gfs'] !== undefined) p.gfs = parseGfs(String(args['gfs']))
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  if (Object.keys(p).length > 0) return p
  if (args['config'] === undefined) throw new UsageError('points prune needs a policy: --keep, --max-age, --max-bytes, --gfs, or --config (the receiver config with "retention")')
  const init = await loadReceiverConfig(String(args['config']))
  const r = retentionFor(init, vm)
  if (r === undefined) throw new UsageError(`${String(args['config'])} sets no retention for VM ${vm}`)
  return r
}

/** `points`'s run (loaded by commands/points.ts only when the command runs). */
export async function runPoints(args: GlobalArgs & Record<string, unknown>, ctx: CliContext): Promise<number> {
  const store = String(args['store'])
  const vm = String(args['vm'])
  const json = args['output'] === 'json'
  const action = String(args['action'] ?? 'list')
  if (action === 'archive-prune') return await archivePruneAction(args, ctx, loggerFor(args, ctx, 'warn'))
  if (isCephStore(store)) {
    const target = cephTargetFrom(store, args)
    if (action === 'list') {
      const r = await cephListPoints(target, vm)
      ctx.write(json ? JSON.stringify(r, null, 1) + '\n' : renderPoints(vm, r.points, r.inflightCycle))
      return ExitCode.Ok
    }
    if (action === 'export') {
      if (args['to'] === undefined) throw new UsageError('points export needs --to DIR')
      const k = typeof args['point'] === 'number' ? args['point'] : (await cephListPoints(target, vm)).committedCycle
      const r = await cephRestorePoint(target, vm, k, String(args['to']))
      ctx.write(json ? JSON.stringify({ vm, cycle: k, disks: r.disks }) + '\n' : r.disks.map((d) => `${vm}: ${d.snapshot} → ${d.file}`).join('\n') + '\n')
      return ExitCode.Ok
    }
    if (action === 'drop' || action === 'prune') {
      const what = action === 'drop' ? { cycles: [pointArg(args)] } : await policyOf(args, vm)
      return prunedReport(await cephPrunePoints(target, vm, what, { logger: loggerFor(args, ctx, 'warn') }), json, ctx)
    }
    if (action === 'close') {
      if (args['to'] === undefined && args['all'] !== true) throw new UsageError('points close needs --to DIR or --all')
      const dropped = await cephClosePoint(target, vm, {
        logger: loggerFor(args, ctx, 'warn'),
        ...(args['to'] === undefined ? {} : { dir: String(args['to']) }),
        all: args['all'] === true,
        failover: args['failover'] === true,
      })
      return closedReport(vm, dropped, json, ctx)
    }
    if (action === 'open') {
      if (args['to'] !== undefined) throw new UsageError('points open on a Ceph store makes RBD clones, not a folder: leave out --to (points close --to takes the name it prints)')
      const k = typeof args['point'] === 'number' ? args['point'] : undefined
      const r = await cephOpenPoint(target, vm, k, { logger: loggerFor(args, ctx, 'warn') })
      ctx.write(
        json
          ? JSON.stringify({ vm, cycle: r.cycle, name: r.name, clones: r.clones, boot: r.boot }) + '\n'
          : [
              `${vm}: point ${r.cycle} opened as ${r.name}: an RBD clone of each disk's snapshot (copy-on-write; the point itself never changes)`,
              ...r.clones.map((c) => `  ${c.disk}: ${target.pool}/${c.image} (clone of ${c.snapshot}), QEMU: ${c.qemu}`),
              `Boot it (no NIC: it must not meet its source's network): ${r.boot}`,
              `The mirror is held: no cycle is applied and no point dropped until "${closeCommand(store, vm, r.name)}" (which deletes the clones).`,
            ].join('\n') + '\n',
      )
      return ExitCode.Ok
    }
    // the actions left (yargs choices): archive, archived
    return await archiveAction(action as 'archive' | 'archived', store, vm, args, ctx, loggerFor(args, ctx, 'warn'))
  }
  if (action === 'export') throw new UsageError('points export reads a ceph:POOL store; on a folder store use points open or restore')
  if (action === 'list') {
    const r = await listPoints(store, vm)
    ctx.write(json ? JSON.stringify(r, null, 1) + '\n' : renderPoints(vm, r.points, r.inflightCycle))
    return ExitCode.Ok
  }
  const log = loggerFor(args, ctx, 'warn')
  if (action === 'archive' || action === 'archived') return await archiveAction(action, store, vm, args, ctx, log)
  if (action === 'open') {
    const k = typeof args['point'] === 'number' ? args['point'] : (await listPoints(store, vm)).committedCycle
    const to = args['to'] === undefined ? join(store, '.open', `${vm}-point-${k}`) : String(args['to'])
    const r = await openPoint(store, vm, k, to, { logger: log, format: args['format'] === 'vmfssparse' ? 'vmfssparse' : 'sesparse', latest: typeof args['point'] !== 'number' })
    ctx.write(
      json
        ? JSON.stringify({ vm, cycle: k, dir: r.hold.dir, vmx: r.vmx, disks: r.disks }) + '\n'
        : `${vm}: point ${k} opened in ${r.hold.dir} (${r.vmx}); NICs do not connect at power-on. The mirror is held: no cycle is applied until "${closeCommand(store, vm, r.hold.dir)}"\n`,
    )
    return ExitCode.Ok
  }
  if (action === 'close') {
    if (args['to'] === undefined && args['all'] !== true) throw new UsageError('points close needs --to DIR or --all')
    const dropped = await closePoint(store, vm, { logger: log, ...(args['to'] === undefined ? {} : { dir: String(args['to']) }), all: args['all'] === true, failover: args['failover'] === true })
    return closedReport(vm, dropped, json, ctx)
  }
  const what: RetentionPolicy | { cycles: number[] } = action === 'drop' ? { cycles: [pointArg(args)] } : await policyOf(args, vm)
  const display = mergeDisplay(vm, json, ctx)
  let r: Awaited<ReturnType<typeof prunePoints>>
  try {
    r = await prunePoints(store, vm, what, { logger: log, onProgress: display.report })
  } finally {
    display.end()
  }
  return prunedReport(r, json, ctx)
}

/**
 * What `points drop` / `points prune` show while the receiver merges the
 * increments of dropped points (a point in the middle; the long part):
 * the bytes merged of the total and the time left.
 */
function mergeDisplay(vm: string, json: boolean, ctx: CliContext): { report: (doneBytes: number, totalBytes: number) => void; end: () => void } {
  // the merges' clock starts at their first report (after the lock, the state and the checks)
  let t0: number | undefined
  const d = progressDisplay<{ doneBytes: number; totalBytes: number; etaMs: number | undefined }>(
    ctx,
    json,
    (p) => `${vm}: merging the dropped points' increments: ${formatBytes(p.doneBytes)} of ${formatBytes(p.totalBytes)}${p.etaMs === undefined ? '' : `, ${formatDuration(p.etaMs)} left`}`,
    (p) => ({ vm, step: 'merge-points', ...p }),
    (p) => p.doneBytes >= p.totalBytes,
  )
  return {
    report: (doneBytes, totalBytes) => {
      t0 ??= performance.now()
      const ms = performance.now() - t0
      d.report({ doneBytes, totalBytes, etaMs: doneBytes > 0 && doneBytes < totalBytes ? Math.round((ms * (totalBytes - doneBytes)) / doneBytes) : undefined })
    },
    end: d.end,
  }
}

/** `--point K` of `points drop`. */
function pointArg(args: Record<string, unknown>): number {
  const k = args['point']
  if (typeof k !== 'number' || !Number.isSafeInteger(k)) throw new UsageError('points drop needs --point K')
  return k
}

/** The report of `points drop` / `points prune` (either store). */
function prunedReport(r: { vm: string; dropped: number[]; kept: number[] }, json: boolean, ctx: CliContext): number {
  ctx.write(
    json ? JSON.stringify(r) + '\n' : `${r.vm}: ${r.dropped.length === 0 ? 'no point dropped' : `dropped point(s) ${r.dropped.join(', ')}`}; kept ${r.kept.join(', ') || 'none'} and the mirror\n`,
  )
  return ExitCode.Ok
}

/** The report of `points close` (either store). */
function closedReport(vm: string, dropped: ReadonlyArray<{ cycle: number; dir: string }>, json: boolean, ctx: CliContext): number {
  ctx.write(json ? JSON.stringify({ vm, released: dropped }) + '\n' : `${vm}: released ${dropped.map((h) => `point ${h.cycle} (${h.dir})`).join(', ')}\n`)
  return ExitCode.Ok
}

/** A duration option of archive-prune (the parser of --retain, --max-age). */
function durationArg(args: Record<string, unknown>, name: string): number | undefined {
  if (args[name] === undefined) return undefined
  try {
    return parseDuration(String(args[name]), `--${name}`)
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
}

/** `points archive-prune`: exit 1 when a selected manifest was kept (Object Lock). */
async function archivePruneAction(args: Record<string, unknown>, ctx: CliContext, log: Logger): Promise<number> {
  const json = args['output'] === 'json'
  const url = String(args['archive'])
  const keepLast = args['keep-last']
  if (keepLast !== undefined && (typeof keepLast !== 'number' || !Number.isSafeInteger(keepLast) || keepLast < 0)) throw new UsageError('--keep-last must be a whole number ≥ 0')
  const olderThanMs = durationArg(args, 'older-than')
  if (keepLast === undefined && olderThanMs === undefined) throw new UsageError('points archive-prune needs --keep-last N and/or --older-than DURATION (which manifests to delete)')
  const graceMs = durationArg(args, 'grace') ?? 24 * 3600_000
  const vm = args['vm'] === undefined ? undefined : String(args['vm'])
  if (keepLast === 0 && vm === undefined) throw new UsageError(KEEP_NONE_NEEDS_VM)
  const { bucket, prefix } = await bucketFrom(url, args)
  let r: ArchivePruneResult
  try {
    r = await pruneArchive({
      logger: log,
      bucket,
      prefix,
      ...(vm === undefined ? {} : { vm }),
      ...(typeof keepLast === 'number' ? { keepLast } : {}),
      ...(olderThanMs === undefined ? {} : { olderThanMs }),
      graceMs,
      dryRun: args['dry-run'] === true,
    })
  } finally {
    bucket.close()
  }
  if (json) ctx.write(JSON.stringify({ event: 'archive-pruned', archive: url, ...r }) + '\n')
  else {
    const verb = r.dryRun ? 'would delete' : 'deleted'
    const lines = [
      `${url}${r.dryRun ? ' (dry run: nothing deleted)' : ''}: ${r.manifests.examined} manifest(s) examined, ${verb} ${r.manifests.deleted.length}; ${r.chunks.listed} chunk(s) listed, ${r.chunks.referenced} referenced, ${verb} ${r.chunks.deleted}${r.chunks.young > 0 ? `, ${r.chunks.young} unreferenced but younger than --grace` : ''}; ${formatBytes(r.bytesFreed)} ${r.dryRun ? 'would be ' : ''}freed`,
      ...r.manifests.hidden.map((k) => `  ${k} is hidden behind a delete marker (a plain DELETE): restore --from reads through it, so it counts as a point`),
      ...r.manifests.deleted.map((m) => `  ${verb} ${m.vm} point ${m.cycle} (archived ${m.archivedAt})`),
      ...r.manifests.keptLocked.map((k) => `  kept ${k.key}: ${k.until === undefined ? 'S3 refused the deletion (Object Lock or policy)' : `locked until ${k.until}`}`),
      ...(r.chunks.keptLocked.length > 0 ? [`  kept ${r.chunks.keptLocked.length} unreferenced chunk(s) still locked (deleted by a later run once their lock ends)`] : []),
    ]
    ctx.write(lines.join('\n') + '\n')
  }
  return r.manifests.keptLocked.length > 0 ? ExitCode.Failed : ExitCode.Ok
}

/** `points archive` and `points archived`. */
async function archiveAction(action: 'archive' | 'archived', store: string, vm: string, args: Record<string, unknown>, ctx: CliContext, log: Logger): Promise<number> {
  const json = args['output'] === 'json'
  const url = String(args['archive'])
  const { bucket, prefix } = await bucketFrom(url, args)
  try {
    if (action === 'archived') {
      // a point hidden behind a delete marker is listed (restore --from reads it, archive-prune counts it), marked
      const points = await listArchivedPoints(bucket, prefix, vm, (err) =>
        log.warn(
          { err: (err as Error).message },
          `S3 refused to list the versions under ${url} (403: the credentials lack s3:ListBucketVersions): the current points are listed, a point hidden behind a delete marker (still restorable) is not`,
        ),
      )
      const cycles = points.map((p) => p.cycle)
      const hidden = points.filter((p) => p.hidden).map((p) => `  point ${p.cycle}: hidden behind a delete marker (restorable; delete every version to remove it)\n`)
      // --check: every chunk each manifest names is in the bucket (a point naming a missing one does not restore)
      const checks: ArchivedPointCheck[] = []
      if (args['check'] === true) for (const p of points) checks.push(await checkArchivedPoint(bucket, prefix, vm, p.cycle))
      const broken = checks.filter((c) => c.missing.length > 0)
      const checked =
        args['check'] !== true
          ? ''
          : checks
              .map((c) =>
                c.missing.length === 0
                  ? `  point ${c.cycle}: checked, its ${c.chunks} chunk(s) and file(s) are all in the bucket\n`
                  : `  point ${c.cycle}: E_ARCHIVE_CHUNK_MISSING: its manifest s3://${bucket.bucket}/${c.manifest} names ${c.missing.length} of its ${c.chunks} chunk(s) and file(s) that are not in the bucket, so its restore --from fails: ${c.missing
                      .slice(0, 5)
                      .map((m) => `s3://${bucket.bucket}/${m.key} (${m.holds})`)
                      .join(
                        ', ',
                      )}${c.missing.length > 5 ? ', …' : ''}. Delete that manifest (every version; under --retain once its retention ends) and archive the point again while the store keeps it\n`,
              )
              .join('')
      ctx.write(
        json
          ? JSON.stringify({ vm, archive: url, cycles, points, ...(args['check'] === true ? { checks } : {}) }) + '\n'
          : `${vm}: ${cycles.length === 0 ? 'no point' : `point(s) ${points.map((p) => `${p.cycle}${p.hidden ? ' (hidden)' : ''}`).join(', ')}`} in ${url}\n${hidden.join('')}${checked}`,
      )
      return broken.length === 0 ? ExitCode.Ok : ExitCode.Failed
    }
    const k = args['point']
    if (k !== undefined && (typeof k !== 'number' || !Number.isSafeInteger(k) || k < 1)) throw new UsageError('--point must be a cycle number')
    const lock = lockFrom(args)
    const despite = despiteLockFrom(args, prefix)
    const display = progressDisplay<ArchiveProgress>(
      ctx,
      json,
      (p) => `point ${p.cycle}, ${p.disk}: ${formatBytes(p.bytes)} of ${formatBytes(p.total)}${p.etaMs === undefined ? '' : `, ${formatDuration(p.etaMs)} left`}`,
      (p) => ({ ...p }),
      (p) => p.bytes >= p.total,
    )
    const archive = isCephStore(store)
      ? (c: readonly number[] | undefined, o: ArchiveOptions) => cephArchivePoints(cephTargetFrom(store, args), vm, c, o)
      : (c: readonly number[] | undefined, o: ArchiveOptions) => archivePoints(store, vm, c, o)
    const done = await archive(typeof k === 'number' ? [k] : undefined, {
      logger: log,
      bucket,
      prefix,
      ...(lock === undefined ? {} : { lock }),
      ...despite,
      onProgress: display.report,
    })
    display.end()
    if (json) ctx.write(JSON.stringify({ event: 'archived', vm, archive: url, lock: lock === undefined ? null : { mode: lock.mode, until: lock.until.toISOString() }, points: done }) + '\n')
    else {
      const lines = done.map((p) =>
        p.archived ? `  point ${p.cycle}: ${p.uploaded} chunk(s) uploaded (${formatBytes(p.uploadedBytes)}), ${p.present} already there, ${p.zero} zero` : `  point ${p.cycle}: already archived`,
      )
      ctx.write(`${vm}: archived to ${url}${lock === undefined ? '' : ` (locked, ${lock.mode.toLowerCase()}, until ${lock.until.toISOString()})`}\n${lines.join('\n')}\n`)
    }
    return ExitCode.Ok
  } finally {
    bucket.close()
  }
}
