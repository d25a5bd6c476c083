/**
 * `grainline points archive --store ceph:POOL`: the points of a Ceph store
 * copied to an S3 bucket as the same self-contained, verifiable object set
 * a folder store's point becomes (docs/ARCHIVE.md: 4 MiB chunks stored once
 * under their sha256, zero chunks recorded as such, Object Lock, the
 * manifest with the whole-disk sha256 written last), so `restore --from
 * s3://…` restores either from the bucket alone.
 *
 * Each disk of a point is read from its RBD snapshot through a reading
 * librbd helper (rbd-image.ts). Snapshots are immutable and a cycle writes
 * only the images' heads, so no lease is taken and a cycle in flight does
 * not refuse (unlike the folder store, whose points read through files a
 * cycle changes); a point that retention removes meanwhile fails its read
 * with `E_IO` naming the disk and point, and no manifest is written for it.
 * An archive interrupted at any instant has no manifest for the point being
 * copied; the next run uploads only the chunks still missing.
 *
 * The state object comes from the pool: every name it gives is checked
 * (ceph-restore.ts `pointSnapshots`) before it becomes an argument or a
 * file name in the manifest.
 */
import { validateName } from '@grainline/protocol'
import { withRunLock } from '../../archive/archive-lock.ts'
import { archiveOnePoint, checkArchiveLock, type ArchivedPoint, type ArchiveFileSource, type ArchiveOptions, type PointDiskSource } from '../../archive/archive-point.ts'
import { ReceiverError } from '../../errors.ts'
import { DEFAULT_DISPLAY_SUFFIX, mirrorVmx } from '../../mirror-vmx.ts'
import { diskStem } from '../../vm-paths.ts'
import { pointSnapshots } from './ceph-restore.ts'
import { cephPointFiles } from './ceph-point-config.ts'
import { CephNames, readCephState, type CephVmState } from './ceph-state.ts'
import type { CephTarget } from './rbd-cli.ts'
import { RbdImage } from './rbd-image.ts'

/**
 * The configuration files of point `cycle` as a folder store's mirror has
 * them: the `.vmx` (the point's own: ceph-point-config.ts) rewritten to the
 * disks' descriptors (`<stem>.vmdk`, display name marked as a mirror) as
 * `<vm>.vmx`, and the last commit's `.nvram` as `<vm>.nvram` (pure).
 */
export function cephConfigFiles(s: CephVmState, cycle: number, diskNames: readonly string[]): ArchiveFileSource[] {
  const out: ArchiveFileSource[] = []
  const entries = Object.entries(cephPointFiles(s, cycle)).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  const vmx = entries.find(([f, b]) => /\.vmx$/i.test(f) && typeof b === 'string')
  if (vmx !== undefined) {
    const diskMap = new Map(diskNames.map((name) => [name, `${diskStem(name)}.vmdk`]))
    out.push({ name: `${s.vm}.vmx`, data: Buffer.from(mirrorVmx(Buffer.from(vmx[1], 'base64').toString('utf8'), { suffix: DEFAULT_DISPLAY_SUFFIX, diskMap }).text) })
  }
  const nvram = entries.find(([f, b]) => /\.nvram$/i.test(f) && typeof b === 'string')
  if (nvram !== undefined) out.push({ name: `${s.vm}.nvram`, data: Buffer.from(nvram[1], 'base64') })
  return out
}

/**
 * Archive `cycles` of VM `vm` (every kept point and the mirror when
 * undefined), oldest first; points whose manifest is in the bucket are
 * skipped.
 * @throws ReceiverError E_BAD_NAME (the VM name), E_NOT_FOUND (no mirror, no such point), E_CONFIG (a lock on a bucket without Object Lock), E_STATE (a hostile state object), E_IO (a snapshot that cannot be read), E_ARCHIVE
 */
export async function cephArchivePoints(t: CephTarget, vm: string, cycles: readonly number[] | undefined, opts: ArchiveOptions): Promise<ArchivedPoint[]> {
  validateName(vm, 'VM name')
  await checkArchiveLock(opts)
  // the run lock (archive-lock.ts), as archivePoints: no archive-prune deletes a chunk this run finds present and does not upload
  return await withRunLock(opts.bucket, opts.prefix, 'archive', opts.logger, (runLock) => cephArchiveLocked(t, vm, cycles, { ...opts, runLock }), opts)
}

async function cephArchiveLocked(t: CephTarget, vm: string, cycles: readonly number[] | undefined, opts: ArchiveOptions): Promise<ArchivedPoint[]> {
  const s = await readCephState(t, new CephNames(vm).state, vm)
  if (s === undefined || s.committedCycle === 0) throw new ReceiverError('E_NOT_FOUND', `no committed mirror of VM ${vm} in Ceph pool ${t.pool}`)
  const kept = new Map<number, { committedAt: string; generation: string }>(s.points.map((p) => [p.cycle, { committedAt: p.committedAt, generation: p.generation }]))
  kept.set(s.committedCycle, { committedAt: s.committedAt ?? '', generation: s.generation ?? '' })
  const want = cycles ?? [...kept.keys()].sort((a, b) => a - b)
  for (const c of want) if (!kept.has(c)) throw new ReceiverError('E_NOT_FOUND', `VM ${vm} has no point ${c} in Ceph pool ${t.pool} (points: ${[...kept.keys()].join(', ')})`)
  // every point's names are checked before anything is read or sent
  const points = want.map((cycle) => ({ cycle, disks: pointSnapshots(t, s, cycle) }))
  const out: ArchivedPoint[] = []
  for (const { cycle, disks } of points) {
    const sources: PointDiskSource[] = disks.map(([name, d]) => ({
      name,
      stem: diskStem(name),
      capacity: d.capacity,
      ddb: s.disks[name]?.ddb ?? {},
      open: async () => {
        let img: RbdImage
        try {
          img = await RbdImage.open(t, d.image, d.snap)
        } catch (err) {
          throw new ReceiverError(
            'E_IO',
            `disk ${name} of VM ${vm}: reading point ${cycle} (${t.pool}/${d.image}@${d.snap}) failed: ${(err as Error).message}; if retention removed the point meanwhile, pick another (grainline points list)`,
            { cause: err },
          )
        }
        if (img.size !== d.capacity) {
          await img.close()
          throw new ReceiverError('E_STATE', `disk ${name} of VM ${vm}: ${img.label} holds ${img.size} bytes, the state object records a capacity of ${d.capacity}`)
        }
        return { capacity: img.size, read: (off: number, n: number) => img.read(off, n), close: () => img.close() }
      },
    }))
    const files = cephConfigFiles(s, cycle, Object.keys(s.disks))
    out.push(await archiveOnePoint(vm, cycle, kept.get(cycle) as { committedAt: string; generation: string }, sources, files, opts))
  }
  return out
}
