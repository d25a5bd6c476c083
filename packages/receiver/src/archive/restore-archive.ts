/**
 * Restore an archived point from the bucket alone (`grainline restore
 * --from s3://…`, docs/ARCHIVE.md): a standalone VM folder (`.vmx`, a
 * `createType="vmfs"` descriptor and a thin flat per disk), every chunk
 * checked against its sha256 as it arrives and every disk against the
 * whole-disk sha256 the archive recorded. Nothing in the manifest is trusted
 * (parseManifest): names are plain file names, no two of the files a restore
 * writes share one (ignoring case: disks `a` and `a-flat` refused), a DDB
 * cannot add lines to a descriptor, sizes are bounded.
 *
 * It holds the archive's `restore` run lock (archive-lock.ts): a `points
 * archive-prune` cannot start meanwhile and delete the manifest, then the
 * chunks, it is reading (nor can it start while a prune runs: E_BUSY). A
 * restore that fails leaves nothing that looks whole: each flat is written
 * under a temporary name (`<stem>-flat.vmdk.tmp-<pid>-<hex>`) and every file
 * fetched and checked before any gets its final name (descriptors, then the
 * `.vmx` last); on a failure what it wrote is removed.
 */
import { createHash } from 'node:crypto'
import { open, readdir, rename, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { ReceiverError } from '../errors.ts'
import { fsyncDir, mkdirDurable, tempName, writeFileAtomic, writeFully, writeNewFileDurable } from '../fs-util.ts'
import { mirrorDescriptor, newCid } from '../mirror-descriptor.ts'
import { markVmx } from '../mirror-vmx.ts'
import { chunkKey, manifestKey, manifestPrefix, MAX_MANIFEST_BYTES, parseManifest, type ArchiveManifest, type ArchivedDisk, type ArchiveVerified } from './archive-manifest.ts'
import { despiteLockProblem, locksPrefix, refuseBesideExcluded, RunLockRefused, takeRunLock, type HeldRunLock } from './archive-lock.ts'
import { printableName, refusedByS3, type S3Bucket } from './s3-bucket.ts'

/** Progress of a restore from an archive. */
export interface ArchiveRestoreProgress {
  readonly disk: string
  readonly bytes: number
  readonly total: number
  readonly elapsedMs: number
  readonly etaMs: number | undefined
}

/** An archived point of a VM, as {@link listArchivedPoints} finds it. */
export interface ListedArchivedPoint {
  readonly cycle: number
  /**
   * its manifest is hidden behind a delete marker (someone deleted it with a
   * plain DELETE on the versioned bucket): `restore --from` still reads it
   * through the marker and archive-prune counts it as a point, so it is one;
   * only deleting every version (archive-prune selecting it) removes it
   */
  readonly hidden: boolean
}

/**
 * The archived points of a VM, by cycle: every manifest key under the VM's
 * prefix that has a version, the current one or one hidden behind a delete
 * marker — what `restore --from` can restore and archive-prune counts (a key
 * with markers alone restores nothing: left out). One version listing,
 * bounded as every listing is (S3Bucket.listVersionPages). Credentials
 * without `s3:ListBucketVersions` (S3 answers the version listing 403) get
 * the current manifests of a plain listing, and `onVersionsRefused` is told:
 * the points hidden behind a delete marker are then not seen.
 * @throws ReceiverError E_ARCHIVE (S3 failures, a listing beyond its bounds)
 */
export async function listArchivedPoints(bucket: S3Bucket, prefix: string, vm: string, onVersionsRefused?: (err: unknown) => void): Promise<ListedArchivedPoint[]> {
  const out: ListedArchivedPoint[] = []
  const under = manifestPrefix(prefix, vm)
  const cycleOf = (key: string): string | undefined => /^(\d{12})\.json$/.exec(key.slice(under.length))?.[1]
  try {
    await bucket.listVersionPages(under, async (page) => {
      for (const { key, versions } of page) {
        const cycle = cycleOf(key)
        if (cycle === undefined || !versions.some((v) => !v.deleteMarker)) continue
        out.push({ cycle: Number(cycle), hidden: versions[0]?.deleteMarker === true })
      }
    })
  } catch (err) {
    if (!refusedByS3(err)) throw err
    onVersionsRefused?.(err)
    out.length = 0
    await bucket.listPages(under, async (page) => {
      for (const { key } of page) {
        const cycle = cycleOf(key)
        if (cycle !== undefined) out.push({ cycle: Number(cycle), hidden: false })
      }
    })
  }
  return out.sort((a, b) => a.cycle - b.cycle)
}

/** A chunk an archived point's manifest names that is not in the bucket ({@link checkArchivedPoint}). */
export interface MissingArchiveChunk {
  /** the finding's code: a restore of the point fails on it (E_ARCHIVE, "is missing") */
  readonly code: 'E_ARCHIVE_CHUNK_MISSING'
  readonly key: string
  readonly sha256: string
  /** what it holds: `disk NAME at offset N` (its first use) or `configuration file NAME`, the name's control characters escaped */
  readonly holds: string
}

/** What {@link checkArchivedPoint} found. */
export interface ArchivedPointCheck {
  readonly cycle: number
  readonly manifest: string
  /** the distinct chunks and files the manifest names */
  readonly chunks: number
  readonly missing: readonly MissingArchiveChunk[]
}

/**
 * Check that every chunk and configuration file the manifest of point
 * `cycle` of `vm` names is in the bucket, without reading them: a HEAD each
 * (`concurrency` at a time), and for one S3 answers 404 a listing of its
 * versions (a chunk hidden behind a delete marker is read through by a
 * restore: not missing). A chunk with no version is a finding
 * (`E_ARCHIVE_CHUNK_MISSING`, naming the key and what it holds): the point's
 * restore would fail on it. The chunks' contents are not read (a restore
 * checks each against its sha256). @throws ReceiverError E_ARCHIVE (the
 * manifest is missing or does not parse; S3 failures)
 */
export async function checkArchivedPoint(bucket: S3Bucket, prefix: string, vm: string, cycle: number, concurrency = 4): Promise<ArchivedPointCheck> {
  const m = await readManifest(bucket, prefix, vm, cycle)
  const holds = new Map<string, string>()
  for (const d of m.disks)
    d.chunks.forEach((c, i) => {
      if (c !== null && !holds.has(c)) holds.set(c, `disk ${printableName(d.name)} at offset ${i * m.chunkBytes}`)
    })
  for (const f of m.files) if (!holds.has(f.sha256)) holds.set(f.sha256, `configuration file ${printableName(f.name)}`)
  const todo = [...holds.keys()]
  const missing: MissingArchiveChunk[] = []
  const worker = async (): Promise<void> => {
    for (let d = todo.pop(); d !== undefined; d = todo.pop()) {
      const key = chunkKey(prefix, d)
      if ((await bucket.head(key)) !== undefined) continue
      let versions = false
      await bucket.listVersionPages(key, async (page) => {
        versions ||= page.some((k) => k.key === key && k.versions.some((v) => !v.deleteMarker))
      })
      if (!versions) missing.push({ code: 'E_ARCHIVE_CHUNK_MISSING', key, sha256: d, holds: holds.get(d) as string })
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker))
  return { cycle, manifest: manifestKey(prefix, vm, cycle), chunks: holds.size, missing: missing.sort((a, b) => a.key.localeCompare(b.key)) }
}

/** Read and check the manifest of point `cycle` of `vm`. @throws ReceiverError E_ARCHIVE */
export async function readManifest(bucket: S3Bucket, prefix: string, vm: string, cycle: number): Promise<ArchiveManifest> {
  const key = manifestKey(prefix, vm, cycle)
  const m = parseManifest(await bucket.get(key, MAX_MANIFEST_BYTES), `s3://${bucket.bucket}/${key}`)
  if (m.vm !== vm || m.cycle !== cycle) throw new ReceiverError('E_ARCHIVE', `archive manifest s3://${bucket.bucket}/${key} describes VM ${m.vm} cycle ${m.cycle}, not ${vm} cycle ${cycle}`)
  return m
}

/** What {@link restoreFromArchive} restored. */
export interface ArchiveRestoreResult {
  readonly vm: string
  readonly cycle: number
  readonly to: string
  readonly disks: {
    name: string
    descriptor: string
    flat: string
    capacity: number
    sha256: string
    /** what the point matched when it was archived (absent in older manifests) */
    verified?: ArchiveVerified
    /** the point predated a resync that repaired the disk's mirror ({@link ArchivedDisk.divergedResync}) */
    divergedResync?: { readonly cycle: number; readonly reason: string }
  }[]
}

/** Options of {@link restoreFromArchive}. */
export interface ArchiveRestoreOptions {
  readonly logger: Logger
  readonly onProgress?: (p: ArchiveRestoreProgress) => void
  readonly signal?: AbortSignal
  readonly concurrency?: number
  /** the local wall clock (tests): the run lock's body, compared with S3's (archive-lock.ts). @default Date.now */
  readonly now?: () => number
  /** a monotonic clock (tests): the run lock's age since its last write. @default performance.now */
  readonly monotonic?: () => number
  /**
   * `--despite-lock`: the key of the one prune lock (`PREFIX/locks/prune-…`,
   * as the E_BUSY refusal printed it) the restore goes on beside although it
   * is fresh, warned of (archive-lock.ts RunLockOptions.despiteLock); any
   * other fresh prune lock still refuses it.
   */
  readonly despiteLock?: string
}

/**
 * Restore point `cycle` of `vm` from the archive into the new folder `toDir`,
 * holding the archive's `restore` run lock (released however it ends).
 * With `despiteLock` it goes on beside that one prune lock (warned of).
 * @throws ReceiverError E_BUSY (a prune runs), E_ARCHIVE, E_VERIFY, E_CONFIG (also a `despiteLock` not a prune lock's key of this archive)
 */
export async function restoreFromArchive(bucket: S3Bucket, prefix: string, vm: string, cycle: number, toDir: string, opts: ArchiveRestoreOptions): Promise<ArchiveRestoreResult> {
  const despite = opts.despiteLock === undefined ? undefined : despiteLockProblem(prefix, opts.despiteLock)
  if (despite !== undefined) throw new ReceiverError('E_CONFIG', despite)
  let lock: HeldRunLock
  try {
    lock = await takeRunLock(bucket, prefix, 'restore', opts.logger, opts)
  } catch (err) {
    if (!(err instanceof RunLockRefused)) throw err
    // it can still read locks/: a prune running now would make it fail half-way — refused up front (E_BUSY)
    await refuseBesideExcluded(bucket, prefix, 'restore', opts.logger, opts)
    // read-only credentials (a common choice at the DR site): the restore only reads, and checks every chunk and
    // disk, so a prune that deletes what it reads makes it fail and remove what it wrote — never restore silently wrong
    // S3's refusal is an expected answer to read-only credentials: its words, not its stack and cause chain
    opts.logger.warn(
      { why: err.message, vm, cycle },
      `restoring ${vm} point ${cycle} WITHOUT the archive's run lock: the S3 credentials may not write under ${locksPrefix(prefix)} (read-only). No points archive-prune holds a fresh lock now (checked${opts.despiteLock === undefined ? '' : `, but for the one --despite-lock names`}), but one started meanwhile could delete the chunks being read; the restore would then fail its checks and remove what it wrote. Run no prune during the restore, or allow these credentials PutObject and DeleteObject on ${locksPrefix(prefix)}`,
    )
    return await restoreLocked(bucket, prefix, vm, cycle, toDir, NO_LOCK, opts)
  }
  try {
    return await restoreLocked(bucket, prefix, vm, cycle, toDir, lock, opts)
  } finally {
    await lock.release()
  }
}

/** The lock of a restore that could not write one (read-only credentials): nothing to check or release (a restore reads no age: its serverNow is unused). */
const NO_LOCK: HeldRunLock = { key: '(none: read-only credentials)', serverNow: () => Date.now(), assertHeld: () => {}, release: async () => {} }

async function restoreLocked(bucket: S3Bucket, prefix: string, vm: string, cycle: number, toDir: string, lock: HeldRunLock, opts: ArchiveRestoreOptions): Promise<ArchiveRestoreResult> {
  const m = await readManifest(bucket, prefix, vm, cycle)
  // durable: the folder (its parents fsynced), every file (fsynced, then the folder): a crash after the restore
  // returned never leaves a missing or empty descriptor or configuration file (the flats are datasynced as they are written)
  await mkdirDurable(toDir, 'destination')
  const present = await readdir(toDir)
  if (present.length > 0)
    throw new ReceiverError(
      'E_CONFIG',
      `${toDir} is not empty: restore into a new folder${present.some((f) => f.includes('-flat.vmdk.tmp-')) ? ` (its *-flat.vmdk.tmp-* files are what a restore that was killed wrote: delete them)` : ''}`,
    )
  // every path this restore has created in toDir: removed if it fails
  const written = new Set<string>()
  try {
    return await restoreInto(bucket, prefix, m, toDir, lock, written, opts)
  } catch (err) {
    for (const p of written) await unlink(p).catch((e: unknown) => opts.logger.warn({ err: e, path: p }, `could not remove ${p} of the failed restore`))
    if (written.size > 0) await fsyncDir(toDir, 'destination').catch(() => {})
    throw err
  }
}

async function restoreInto(bucket: S3Bucket, prefix: string, m: ArchiveManifest, toDir: string, lock: HeldRunLock, written: Set<string>, opts: ArchiveRestoreOptions): Promise<ArchiveRestoreResult> {
  const { vm, cycle } = m
  const total = m.disks.reduce((n, d) => n + d.capacity, 0)
  const t0 = performance.now()
  let done = 0
  // each flat under a temporary name until every disk and file is checked
  const staged: { d: ArchiveManifest['disks'][number]; flatName: string; temp: string; sha256: string }[] = []
  for (const d of m.disks) {
    const flatName = `${d.stem}-flat.vmdk`
    const temp = tempName(join(toDir, flatName))
    const fh = await open(temp, 'wx')
    written.add(temp)
    const whole = createHash('sha256')
    try {
      await fh.truncate(d.capacity)
      // chunks are fetched `concurrency` at a time and hashed in order
      const width = Math.max(1, opts.concurrency ?? 4)
      const zero = Buffer.alloc(m.chunkBytes)
      for (let i = 0; i < d.chunks.length; i += width) {
        opts.signal?.throwIfAborted()
        // a lock not rewritten for an hour: a prune may soon ignore it and delete these chunks
        lock.assertHeld()
        const batch = d.chunks.slice(i, i + width)
        const datas = await Promise.all(
          batch.map(async (h, j) => {
            const len = Math.min(m.chunkBytes, d.capacity - (i + j) * m.chunkBytes)
            if (h === null) return zero.subarray(0, len)
            const data = await bucket.get(chunkKey(prefix, h), len)
            if (data.length !== len || createHash('sha256').update(data).digest('hex') !== h) {
              throw new ReceiverError(
                'E_VERIFY',
                `archive chunk ${h} (disk ${d.name}, offset ${(i + j) * m.chunkBytes}) of VM ${vm} point ${cycle} does not match its digest: the archive is damaged (what the restore wrote to ${toDir} is removed)`,
              )
            }
            return data
          }),
        )
        for (const [j, data] of datas.entries()) {
          whole.update(data)
          if (batch[j] !== null) await writeFully(fh, data, (i + j) * m.chunkBytes)
          done += data.length
        }
        const elapsedMs = performance.now() - t0
        opts.onProgress?.({ disk: d.name, bytes: done, total, elapsedMs, etaMs: (elapsedMs * (total - done)) / Math.max(done, 1) })
      }
      await fh.datasync()
    } finally {
      await fh.close()
    }
    const got = whole.digest('hex')
    if (got !== d.sha256)
      throw new ReceiverError(
        'E_VERIFY',
        `restored disk ${d.name} of VM ${vm} point ${cycle} has sha256 ${got}, the archive recorded ${d.sha256}: the archive is damaged (what the restore wrote to ${toDir} is removed)`,
      )
    staged.push({ d, flatName, temp, sha256: got })
  }
  const files: { name: string; text: Buffer }[] = []
  for (const f of m.files) {
    opts.signal?.throwIfAborted()
    lock.assertHeld()
    const data = await bucket.get(chunkKey(prefix, f.sha256), f.bytes)
    if (createHash('sha256').update(data).digest('hex') !== f.sha256)
      throw new ReceiverError('E_VERIFY', `archived file ${f.name} of VM ${vm} point ${cycle} does not match its digest: the archive is damaged (what the restore wrote to ${toDir} is removed)`)
    const text = f.name.endsWith('.vmx')
      ? // the mirror's name and mark (recorded in the .vmx) and the point's, in place of the mark recorded (as points
        // open and restore mark it); a .vmx archived before marks were recorded keeps its name and gets the point's
        Buffer.from(markVmx(data.toString('utf8'), (mirror) => `${mirror ?? ''} (archived point ${cycle})`))
      : data
    files.push({ name: f.name, text })
  }
  // everything is here and checked: the final names, the flats and their descriptors first, the .vmx last
  // (a crash in between leaves no .vmx to register)
  const disks = []
  for (const { d, flatName, temp, sha256 } of staged) {
    const flat = join(toDir, flatName)
    await rename(temp, flat)
    written.delete(temp)
    written.add(flat)
    const descriptor = join(toDir, `${d.stem}.vmdk`)
    // atomic and durable (fs-util.ts writeFileAtomic): its folder's fsync makes the flat's name durable too
    await writeFileAtomic(descriptor, mirrorDescriptor({ cid: newCid(), capacity: d.capacity, flatFile: flatName, ddb: d.ddb }), 'destination')
    written.add(descriptor)
    disks.push({
      name: d.name,
      descriptor,
      flat,
      capacity: d.capacity,
      sha256,
      ...(d.verified === undefined ? {} : { verified: d.verified }),
      ...(d.divergedResync === undefined ? {} : { divergedResync: d.divergedResync }),
    })
  }
  for (const f of [...files.filter((f) => !f.name.endsWith('.vmx')), ...files.filter((f) => f.name.endsWith('.vmx'))]) {
    const path = join(toDir, f.name)
    await writeNewFileDurable(path, f.text, 'destination')
    written.add(path)
  }
  opts.logger.info({ vm, cycle, to: toDir, disks: disks.length }, 'point restored from the archive')
  return { vm, cycle, to: toDir, disks }
}
