/**
 * `grainline restore`: a restore point (or the mirror) as a standalone,
 * consolidated VM folder (.vmx + createType="vmfs" descriptor + flat per
 * disk), verified against the digests recorded at that cycle; or, with
 * `--from s3://…`, a point archived by `points archive`, from the bucket
 * alone, every chunk and disk checked against the archive's sha256. With
 * `--store ceph:POOL`, a point of the Ceph store (docs/CEPH.md "Restore").
 */
import { formatBytes, formatDuration } from '@grainline/protocol/units'
import { cephRestoreVm, isCephStore, restoreFromArchive, restorePoint, type RestoreProgress } from '@grainline/receiver'
import { bucketFrom, despiteLockFrom } from './archive-options.ts'
import { cephTargetFrom } from './ceph-options.ts'
import type { CliContext, GlobalArgs } from '../command.ts'
import { ExitCode, UsageError } from '../exit-codes.ts'
import { loggerFor } from '../logger-args.ts'
import { progressDisplay } from '../progress-display.ts'

/** A restore's progress: the bytes and total are the whole VM's (every disk's capacity), the disk the one being written. */
export function restoreProgressLine(p: Pick<RestoreProgress, 'disk' | 'bytes' | 'total' | 'etaMs'>): string {
  const pct = p.total === 0 ? 100 : Math.floor((p.bytes / p.total) * 100)
  const eta = p.etaMs === undefined ? '' : `, ${formatDuration(p.etaMs)} left`
  return `restoring ${p.disk}: ${formatBytes(p.bytes)} of ${formatBytes(p.total)} of the VM's disks (${pct} %${eta})`
}

/** `restore`'s run (loaded by commands/restore.ts only when the command runs). */
export async function runRestore(args: GlobalArgs & Record<string, unknown>, ctx: CliContext): Promise<number> {
  const k = args['point']
  if (typeof k !== 'number' || !Number.isSafeInteger(k) || k < 1) throw new UsageError('--point must be a cycle number')
  const json = args['output'] === 'json'
  const display = progressDisplay<Pick<RestoreProgress, 'disk' | 'bytes' | 'total' | 'etaMs'>>(
    ctx,
    json,
    restoreProgressLine,
    (p) => ({ ...p }),
    (p) => p.bytes >= p.total,
  )
  const onProgress = display.report
  if (args['from'] !== undefined) {
    const { bucket, prefix } = await bucketFrom(String(args['from']), args)
    try {
      const despite = despiteLockFrom(args, prefix)
      const r = await restoreFromArchive(bucket, prefix, String(args['vm']), k, String(args['to']), {
        logger: loggerFor(args, ctx, 'warn'),
        onProgress,
        ...despite,
      })
      display.end()
      ctx.write(
        json
          ? JSON.stringify({ event: 'restored', from: String(args['from']), ...r }) + '\n'
          : [
              `${r.vm}: archived point ${r.cycle} restored to ${r.to}`,
              ...r.disks.flatMap((d) => [
                `  ${d.name}: ${formatBytes(d.capacity)}, every chunk and the whole disk verified (sha256 ${d.sha256.slice(0, 16)}…)`,
                ...(d.divergedResync === undefined ? [] : [`  ${divergedResyncWarning(d.name, r.cycle, d.divergedResync, d.verified ?? 'none')}`]),
              ]),
            ].join('\n') + '\n',
      )
    } finally {
      bucket.close()
    }
    return ExitCode.Ok
  }
  const store = String(args['store'])
  if (isCephStore(store)) {
    const r = await cephRestoreVm(cephTargetFrom(store, args), String(args['vm']), k, String(args['to']), { onProgress })
    display.end()
    ctx.write(
      json
        ? JSON.stringify({ event: 'restored', store, ...r }) + '\n'
        : [
            `${r.vm}: point ${r.cycle} restored to ${r.to}`,
            ...r.disks.map((d) => `  ${d.name}: ${formatBytes(d.capacity)}, compared with ${d.snapshot} read again (the Ceph store records no whole-disk digest of a point)`),
          ].join('\n') + '\n',
    )
    return ExitCode.Ok
  }
  const r = await restorePoint(store, String(args['vm']), k, String(args['to']), {
    logger: loggerFor(args, ctx, 'warn'),
    onProgress,
  })
  display.end()
  if (json) {
    ctx.write(JSON.stringify({ event: 'restored', ...r }) + '\n')
  } else {
    const lines = [`${r.vm}: point ${r.cycle} restored to ${r.to}`]
    for (const d of r.disks) {
      const how =
        d.verified === 'none'
          ? 'NOT verified: no certify or trivial digest was recorded at that cycle'
          : `verified against the ${d.verified === 'certify' ? 'certify (whole disk)' : 'trivial-check (prefix)'} digest recorded at that cycle${d.sourceChecked ? '' : ' (that check had FAILED against the source)'}`
      lines.push(`  ${d.name}: ${formatBytes(d.capacity)}, ${how}`)
      if (d.divergedResync !== undefined) lines.push(`  ${divergedResyncWarning(d.name, r.cycle, d.divergedResync, d.verified)}`)
    }
    ctx.write(lines.join('\n') + '\n')
  }
  return ExitCode.Ok
}

/**
 * What a restored point that predates a resync of a diverged mirror means
 * (points.ts divergedResyncUnder): proven by a certify digest of its cycle,
 * or possibly holding the damage the resync repaired.
 */
export function divergedResyncWarning(disk: string, cycle: number, r: { readonly cycle: number; readonly reason: string }, verified: 'certify' | 'trivial' | 'none'): string {
  const what = `point ${cycle} was taken before the resync at cycle ${r.cycle} repaired the mirror of ${disk} (marked diverged: ${r.reason}) and reads the blocks that resync rewrote as the mirror held them then`
  if (verified === 'certify') return `note: ${what}; the whole-disk certify digest recorded at cycle ${cycle} matched, so this disk is as it was`
  const checked = verified === 'trivial' ? 'only the trivial-check prefix of the disk was recorded at that cycle' : 'no digest of the disk was recorded at that cycle'
  return `WARNING: ${what} — which may be the damage the resync repaired — and ${checked}: check the restored VM before trusting it, or restore a point taken at or after cycle ${r.cycle}`
}
