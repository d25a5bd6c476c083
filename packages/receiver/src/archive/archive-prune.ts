/**
 * Retention of an S3 archive (`grainline points archive-prune`,
 * docs/ARCHIVE.md "Pruning"): delete the manifests a policy selects (per VM
 * the newest `keepLast` kept — 1 unless given, so that age alone never
 * deletes a VM's last archived point; 0 only for one named VM — and/or those
 * archived more than `olderThanMs` ago), then garbage-collect the chunks no remaining manifest references.
 *
 * - A manifest or chunk still under Object Lock retention is kept and
 *   reported (locked until …); the run goes on.
 * - Every manifest under the prefix (all VMs) is read strictly
 *   (parseManifest, its size bound) before anything is deleted: one that does
 *   not parse stops the run with nothing deleted — a chunk is never deleted
 *   on a partial view of what references it.
 * - A manifest hidden behind a delete marker (a plain DELETE on the
 *   versioned bucket) is still a point: `restore --from` reads through the
 *   marker, so the prune reads it the same way (the newest version that is
 *   no marker), counts it in the policy like any other and keeps its chunks
 *   while the policy keeps it; once selected, every version and the marker
 *   go. A delete marker is no deletion (anyone with the receiver's keys can
 *   add one: hiding a VM's newest point must not get its chunks collected).
 * - A chunk is deleted only when unreferenced AND last written more than
 *   `graceMs` ago: an archive run uploads its chunks before its manifest.
 * - Every age (a chunk's against the grace period, an `--older-than`
 *   cutoff, a retention's end) is judged by the S3 server's clock
 *   (HeldRunLock.serverNow), never the local one.
 * - The run lock (archive-lock.ts) excludes `points archive` meanwhile: an
 *   archive that found an old unreferenced chunk present (and did not upload
 *   it) cannot have it deleted under its manifest.
 * - Deleting removes every version and delete marker of the key (an Object
 *   Lock bucket is versioned: a plain DELETE would free nothing). Chunks are
 *   listed with their versions too: one hidden behind a delete marker is
 *   collected once unreferenced and past the grace period.
 *
 * Memory: the referenced set is a Set of 64-hex digests (1 TiB of distinct
 * chunks ≈ 262k strings, some tens of MB); manifests are read one at a time
 * and the chunk listing is handled a page (≤ 1000 versions) at a time.
 */
import type { Logger } from 'pino'
import { ReceiverError } from '../errors.ts'
import { MAX_MANIFEST_BYTES, parseManifest } from './archive-manifest.ts'
import { takeRunLock, type HeldRunLock } from './archive-lock.ts'
import { printableName, refusedByS3, type S3Bucket } from './s3-bucket.ts'

/** Why `keepLast: 0` needs a VM. */
export const KEEP_NONE_NEEDS_VM =
  '--keep-last 0 deletes every archived point; it is accepted only with --vm VM (the whole archive of one VM, e.g. a decommissioned one): without --keep-last each VM keeps its newest archived point'

/** What {@link pruneArchive} deletes. At least one of keepLast / olderThanMs. */
export interface ArchivePruneOptions {
  readonly logger: Logger
  readonly bucket: S3Bucket
  /** "" or ending in "/" */
  readonly prefix: string
  /** only this VM's manifests (the GC still reads every VM's) */
  readonly vm?: string
  /**
   * per VM, keep the manifests of the newest N cycles. @default 1: a VM's
   * newest archived point is never deleted by age alone (archiving that
   * stopped — broken, or stopped on purpose by an attacker — must not let
   * `--older-than` delete the last copies); 0 only with {@link vm}
   */
  readonly keepLast?: number
  /** delete manifests archived more than this long ago */
  readonly olderThanMs?: number
  /** delete an unreferenced chunk only when last written more than this long ago. @default 24 h */
  readonly graceMs?: number
  /** list what would be deleted, delete nothing */
  readonly dryRun?: boolean
  /** the local wall clock (tests): the run lock's body, compared with S3's (archive-lock.ts); ages are S3's. @default Date.now */
  readonly now?: () => number
  /** a monotonic clock (tests): the run lock's age since its last write, S3's time since the lock was taken. @default performance.now */
  readonly monotonic?: () => number
}

/** A manifest or chunk kept because S3 refuses its deletion (Object Lock). */
export interface KeptLocked {
  readonly key: string
  /** the retention's end (undefined: refused without a retention we could read, e.g. a legal hold) */
  readonly until: string | undefined
}

/** What {@link pruneArchive} did (or, dry run, would do). */
export interface ArchivePruneResult {
  readonly dryRun: boolean
  readonly manifests: {
    readonly examined: number
    /** of those, hidden behind a delete marker (read through it, as restore --from does) */
    readonly hidden: readonly string[]
    readonly deleted: readonly { readonly key: string; readonly vm: string; readonly cycle: number; readonly archivedAt: string }[]
    readonly keptLocked: readonly KeptLocked[]
  }
  readonly chunks: {
    readonly listed: number
    readonly referenced: number
    /** unreferenced but written within the grace period */
    readonly young: number
    readonly deleted: number
    readonly keptLocked: readonly KeptLocked[]
  }
  /** bytes of manifests and chunks deleted (all their versions) */
  readonly bytesFreed: number
}

const MANIFEST_KEY = /^vms\/([^/]+)\/points\/(\d{12})\.json$/
const CHUNK_KEY = /^chunks\/([0-9a-f]{2})\/([0-9a-f]{64})$/

interface ManifestEntry {
  readonly key: string
  readonly vm: string
  readonly cycle: number
  readonly archivedAt: number
  readonly archivedAtText: string
  /** bytes of every version */
  readonly size: number
  /** behind a delete marker: the newest version that is no marker was read */
  readonly hidden: boolean
}

/**
 * Prune the archive at `opts.prefix`. @throws ReceiverError E_CONFIG (no
 * selector), E_BUSY (a points archive holds the archive's lock), E_ARCHIVE
 * (a manifest that does not parse: nothing deleted; S3 failures)
 */
export async function pruneArchive(opts: ArchivePruneOptions): Promise<ArchivePruneResult> {
  if (opts.keepLast === undefined && opts.olderThanMs === undefined) throw new ReceiverError('E_CONFIG', 'archive-prune needs --keep-last N and/or --older-than DURATION')
  if (opts.keepLast !== undefined && (!Number.isSafeInteger(opts.keepLast) || opts.keepLast < 0)) throw new ReceiverError('E_CONFIG', `--keep-last ${opts.keepLast}: want a whole number ≥ 0`)
  if (opts.keepLast === 0 && opts.vm === undefined) throw new ReceiverError('E_CONFIG', KEEP_NONE_NEEDS_VM)
  const lock = await takeRunLock(opts.bucket, opts.prefix, 'prune', opts.logger, opts)
  try {
    return await pruneLocked(opts, lock)
  } finally {
    await lock.release()
  }
}

async function pruneLocked(opts: ArchivePruneOptions, lock: HeldRunLock): Promise<ArchivePruneResult> {
  const { bucket, prefix, logger } = opts
  // S3's time: every age below is judged by it (a local clock hours off would otherwise cut by its own time)
  const now = (): number => lock.serverNow()
  const dryRun = opts.dryRun === true
  const where = (key: string): string => `s3://${bucket.bucket}/${key}`

  // 1. every manifest, parsed strictly: one that does not parse stops the run before anything is deleted
  const manifests = await readAllManifests(opts, 0, undefined)
  const hidden = manifests.filter((m) => m.hidden)
  for (const m of hidden)
    logger.warn(
      { manifest: m.key, vm: m.vm, cycle: m.cycle },
      `archive-prune: manifest ${where(m.key)} (${m.vm} point ${m.cycle}) is hidden behind a delete marker (someone deleted it with a plain DELETE): restore --from still reads it, so it counts as a point and its chunks are kept while the policy keeps it`,
    )
  logger.info({ examined: manifests.length, hidden: hidden.length }, 'archive-prune: manifests examined')

  // 2. the selection: per VM, newest cycles first
  const byVm = new Map<string, ManifestEntry[]>()
  for (const m of manifests) {
    if (opts.vm !== undefined && m.vm !== opts.vm) continue
    const list = byVm.get(m.vm)
    if (list === undefined) byVm.set(m.vm, [m])
    else list.push(m)
  }
  const selected: ManifestEntry[] = []
  const cutoff = opts.olderThanMs === undefined ? undefined : now() - opts.olderThanMs
  for (const list of byVm.values()) {
    list.sort((a, b) => b.cycle - a.cycle)
    list.forEach((m, i) => {
      const beyondKeep = i >= (opts.keepLast ?? 1)
      const old = cutoff === undefined || m.archivedAt < cutoff
      if (beyondKeep && old) selected.push(m)
    })
  }

  // 3. delete them (a locked one is kept and reported)
  const deleted: ManifestEntry[] = []
  const manifestsKept: KeptLocked[] = []
  let bytesFreed = 0
  for (const m of selected) {
    const until = await lockedUntil(bucket, m.key, now)
    if (until !== undefined) {
      manifestsKept.push({ key: m.key, until })
      logger.warn({ manifest: m.key, until }, `archive-prune: manifest ${where(m.key)} is locked until ${until}: kept`)
      continue
    }
    if (!dryRun) {
      lock.assertHeld()
      const freed = await deleteUnlessRefused(bucket, m.key)
      if (freed instanceof Error) {
        manifestsKept.push({ key: m.key, until: undefined })
        logger.warn({ manifest: m.key, err: freed }, `archive-prune: S3 refused to delete ${where(m.key)} (an older version locked, a legal hold, or the policy): kept`)
        continue
      }
      bytesFreed += freed
    } else bytesFreed += m.size
    deleted.push(m)
    logger.info({ manifest: m.key, vm: m.vm, cycle: m.cycle, archivedAt: m.archivedAtText, dryRun }, dryRun ? 'archive-prune: would delete manifest' : 'archive-prune: manifest deleted')
  }
  logger.info({ examined: manifests.length, deleted: deleted.length, keptLocked: manifestsKept.length, dryRun }, 'archive-prune: manifests done')

  // 4. the chunks the remaining manifests reference (listed again: exactly what is left, every VM). A manifest
  // deleted but listed again is there (written anew meanwhile, e.g. by an archive whose run lock went stale):
  // it references its chunks like any other — only a dry run, which deleted nothing, leaves out its selection
  const gone = new Set(deleted.map((m) => m.key))
  const referenced = new Set<string>()
  await readAllManifests(opts, dryRun ? 0 : deleted.length, (key, digests) => {
    if (gone.has(key)) {
      if (dryRun) return
      logger.warn({ manifest: key }, `archive-prune: manifest ${where(key)} was deleted but is listed again (written anew meanwhile?): its chunks are kept`)
    }
    for (const d of digests) referenced.add(d)
  })

  // 5. the unreferenced chunks older than the grace period
  const graceMs = opts.graceMs ?? 24 * 3600_000
  const chunks = { listed: 0, referenced: 0, young: 0, deleted: 0 }
  const chunksKept: KeptLocked[] = []
  // every version: a chunk hidden behind a delete marker is collected like any other once unreferenced
  await bucket.listVersionPages(`${prefix}chunks/`, async (page) => {
    for (const { key, versions } of page) {
      const m = CHUNK_KEY.exec(key.slice(prefix.length))
      if (m === null || m[1] !== (m[2] as string).slice(0, 2)) continue // not an object of ours: left alone
      const real = versions.filter((v) => !v.deleteMarker)
      if (real.length === 0) continue // markers alone: nothing stored, left alone
      // its newest upload (a marker uploads nothing): what the grace period protects is an archive in progress
      const o = { key, size: real.reduce((n, v) => n + v.size, 0), lastModified: Math.max(...real.map((v) => v.lastModified.getTime())) }
      chunks.listed++
      if (referenced.has(m[2] as string)) {
        chunks.referenced++
        continue
      }
      if (now() - o.lastModified < graceMs) {
        chunks.young++
        continue
      }
      const until = await lockedUntil(bucket, o.key, now)
      if (until !== undefined) {
        chunksKept.push({ key: o.key, until })
        continue
      }
      if (!dryRun) {
        lock.assertHeld()
        const freed = await deleteUnlessRefused(bucket, o.key)
        if (freed instanceof Error) {
          chunksKept.push({ key: o.key, until: undefined })
          continue
        }
        bytesFreed += freed
      } else bytesFreed += o.size
      chunks.deleted++
    }
    logger.info({ ...chunks, keptLocked: chunksKept.length, bytesFreed, dryRun }, 'archive-prune: chunks so far')
  })
  logger.info(
    { manifests: { examined: manifests.length, deleted: deleted.length, keptLocked: manifestsKept.length }, chunks: { ...chunks, keptLocked: chunksKept.length }, bytesFreed, dryRun },
    dryRun ? 'archive-prune: dry run done (nothing deleted)' : 'archive-prune: done',
  )
  return {
    dryRun,
    manifests: {
      examined: manifests.length,
      hidden: hidden.map((m) => m.key),
      deleted: deleted.map((m) => ({ key: m.key, vm: m.vm, cycle: m.cycle, archivedAt: m.archivedAtText })),
      keptLocked: manifestsKept,
    },
    chunks: { ...chunks, keptLocked: chunksKept },
    bytesFreed,
  }
}

/** Delete every version of `key`: the bytes freed, or S3's refusal (Object Lock of an older version, a legal hold, the policy) as the error; any other failure throws. */
async function deleteUnlessRefused(bucket: S3Bucket, key: string): Promise<number | Error> {
  try {
    return await bucket.deleteAllVersions(key)
  } catch (err) {
    if (!refusedByS3(err)) throw err
    return err as Error
  }
}

/** The retention end of `key`'s current version when still in the future (S3's time: `now`), else undefined. */
async function lockedUntil(bucket: S3Bucket, key: string, now: () => number): Promise<string | undefined> {
  const h = await bucket.head(key)
  return h?.retainUntil !== undefined && h.retainUntil.getTime() > now() ? h.retainUntil.toISOString() : undefined
}

/**
 * Read and parse every manifest under the prefix, one at a time, as
 * `restore --from` reads it: its current version, or through a delete marker
 * the newest version that is no marker (a key with markers alone restores
 * nothing: skipped); `onDigests` gets each one's chunk and file digests.
 * `deletedBefore`: the manifests this run has deleted already (its second
 * reading, after step 3), which the refusal names. @throws ReceiverError
 * E_ARCHIVE naming the manifest that does not parse (no chunk has been
 * deleted then)
 */
async function readAllManifests(opts: ArchivePruneOptions, deletedBefore: number, onDigests: ((key: string, digests: Iterable<string>) => void) | undefined): Promise<ManifestEntry[]> {
  const { bucket, prefix } = opts
  const out: ManifestEntry[] = []
  await bucket.listVersionPages(`${prefix}vms/`, async (page) => {
    for (const { key, versions } of page) {
      const real = versions.filter((v) => !v.deleteMarker)
      if (real.length === 0) continue
      const o = { key, size: real.reduce((n, v) => n + v.size, 0), hidden: versions[0]?.deleteMarker === true }
      const rel = o.key.slice(prefix.length)
      const km = MANIFEST_KEY.exec(rel)
      // the key and the manifest's words were written by anyone with the bucket: escaped for the message
      const url = `s3://${bucket.bucket}/${printableName(o.key)}`
      const refuse = (why: string, cause?: unknown): ReceiverError =>
        new ReceiverError(
          'E_ARCHIVE',
          `archive-prune: ${why}; ${deletedBefore === 0 ? 'nothing was deleted' : `no chunk was deleted; ${deletedBefore} manifest${deletedBefore === 1 ? ' was' : 's were'} deleted before (the selected points: see the log)`} (a chunk is never deleted on a partial view of the manifests). Inspect it (${o.hidden ? `hidden behind a delete marker: aws s3api list-object-versions --bucket ${bucket.bucket} --prefix ${o.key}, then get-object --version-id` : `aws s3 cp ${url} -`}): if it is no grainline manifest or is damaged (it restores nothing), delete it by hand (every version), then run archive-prune again`,
          ...(cause === undefined ? [] : [{ cause }]),
        )
      if (km === null) throw refuse(`${url} is under vms/ but is not a manifest key (vms/VM/points/CYCLE(12 digits).json)`)
      let m: ReturnType<typeof parseManifest>
      try {
        // get() reads through a delete marker, as a restore does
        m = parseManifest(await bucket.get(o.key, MAX_MANIFEST_BYTES), url)
      } catch (err) {
        throw refuse((err as Error).message, err)
      }
      let vm: string
      try {
        vm = decodeURIComponent(km[1] as string)
      } catch {
        vm = ''
      }
      if (m.vm !== vm || m.cycle !== Number(km[2])) throw refuse(`manifest ${url} describes VM ${printableName(m.vm)} cycle ${m.cycle}, not the VM and cycle of its key`)
      const archivedAt = Date.parse(m.archivedAt)
      if (Number.isNaN(archivedAt)) throw refuse(`manifest ${url}: archivedAt ${JSON.stringify(m.archivedAt)} is not a time`)
      out.push({ key: o.key, vm, cycle: m.cycle, archivedAt, archivedAtText: m.archivedAt, size: o.size, hidden: o.hidden })
      if (onDigests !== undefined) {
        const digests: string[] = m.files.map((f) => f.sha256)
        for (const d of m.disks) for (const c of d.chunks) if (c !== null) digests.push(c)
        onDigests(o.key, digests)
      }
    }
  })
  return out
}
