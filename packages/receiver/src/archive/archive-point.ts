/**
 * Copy restore points off to an S3 bucket (`grainline points archive`,
 * docs/ARCHIVE.md). Each disk of the point is read through the point's chain
 * in 4 MiB chunks; a chunk of zeros is recorded as such, any other is stored
 * once under its sha256 (a chunk every point shares is uploaded once, so an
 * archive of the next point costs about its changes), locked with S3 Object
 * Lock until the point's retention ends (an existing chunk's lock is extended,
 * never shortened). The manifest is written last: an archive interrupted at
 * any instant has no manifest and the next run uploads only what is missing.
 * The VM's lock is held while the point is read (a cycle waits, as for
 * `restore`), and the archive's run lock (archive-lock.ts: no
 * `points archive-prune` meanwhile). The writer of one point ({@link archiveOnePoint}) is shared
 * with the Ceph store (store/ceph/ceph-archive.ts), which reads RBD
 * snapshots instead of VMDK chains into the same object set.
 */
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { createDigest, initDigests, type DigestAlgorithm } from '@grainline/protocol'
import { openChain } from '@grainline/vmdk'
import { ReceiverError } from '../errors.ts'
import { inflightRefusal } from '../operator-command.ts'
import { ADMIN_LOCK_WAIT_MS, checksAt } from '../points-admin.ts'
import { checkedPointSource, disksAt, pointsOf, withDivergedResync, type DivergedResync } from '../points.ts'
import { pointConfigText } from '../point-config.ts'
import { isAllZero } from '@grainline/vmdk'
import { CONFIG_FILE_MAX_BYTES, readStoreFile } from '../store-fs.ts'
import { VmMirror } from '../vm-mirror.ts'
import { ARCHIVE_CHUNK_BYTES, ARCHIVE_FORMAT, chunkKey, encodeManifest, manifestKey, type ArchivedDisk, type ArchivedFile, type ArchiveManifest } from './archive-manifest.ts'
import { withRunLock, type HeldRunLock } from './archive-lock.ts'
import { printableName, type ArchiveLock, type S3Bucket } from './s3-bucket.ts'

/** Progress of an archive run. */
export interface ArchiveProgress {
  readonly cycle: number
  readonly disk: string
  readonly bytes: number
  readonly total: number
  readonly elapsedMs: number
  readonly etaMs: number | undefined
}

/** What archiving one point did. */
export interface ArchivedPoint {
  readonly cycle: number
  /** false: its manifest was already in the bucket (nothing read or sent) */
  readonly archived: boolean
  readonly manifest: string
  /** chunks uploaded / already in the bucket / zero (not stored) */
  readonly uploaded: number
  readonly present: number
  readonly zero: number
  readonly uploadedBytes: number
  /**
   * `--despite-lock` only: chunks found gone when checked before or after
   * the manifest was written (a prune alive after all deleted them), and
   * uploaded again (counted in `uploaded` too)
   */
  readonly reuploaded: number
}

/** Options of {@link archivePoints}. */
export interface ArchiveOptions {
  readonly logger: Logger
  /** the bucket (see S3Bucket) and the key prefix ("" or ending in "/") */
  readonly bucket: S3Bucket
  readonly prefix: string
  /** Object Lock of every object written or reused; undefined: no lock (the bucket's default, if any, applies) */
  readonly lock?: ArchiveLock
  readonly onProgress?: (p: ArchiveProgress) => void
  readonly signal?: AbortSignal
  /** chunk uploads in flight. @default 4 */
  readonly concurrency?: number
  /** the local wall clock (tests): the run lock's body, compared with S3's (archive-lock.ts). @default Date.now */
  readonly now?: () => number
  /** a monotonic clock (tests): the run lock's age since its last write. @default performance.now */
  readonly monotonic?: () => number
  /**
   * `points archive --despite-lock`: the key of the one prune lock
   * (`PREFIX/locks/prune-…`) this archive goes on beside although it is
   * fresh, warned of — the operator asserts that prune is dead
   * (archive-lock.ts RunLockOptions.despiteLock); any other fresh prune lock
   * still refuses it. A key not of a prune lock under this archive's
   * `locks/` is E_CONFIG before anything is written.
   */
  readonly despiteLock?: string
  /** the run lock held (set by {@link archivePoints}, cephArchivePoints): checked before each manifest is written */
  readonly runLock?: Pick<HeldRunLock, 'assertHeld'>
}

/**
 * Archive `cycles` of VM `vm` (every kept point and the mirror when
 * undefined), oldest first; points whose manifest is in the bucket are
 * skipped. @throws ReceiverError E_NOT_FOUND, E_BUSY, E_ARCHIVE
 */
export async function archivePoints(storeDir: string, vm: string, cycles: readonly number[] | undefined, opts: ArchiveOptions): Promise<ArchivedPoint[]> {
  await checkArchiveLock(opts)
  // the run lock (archive-lock.ts): no archive-prune deletes a chunk this run finds present and does not upload
  return await withRunLock(opts.bucket, opts.prefix, 'archive', opts.logger, (runLock) => archiveLocked(storeDir, vm, cycles, { ...opts, runLock }), opts)
}

async function archiveLocked(storeDir: string, vm: string, cycles: readonly number[] | undefined, opts: ArchiveOptions): Promise<ArchivedPoint[]> {
  const m = await VmMirror.acquireWait(storeDir, vm, opts.logger, ADMIN_LOCK_WAIT_MS, undefined, { create: false })
  try {
    const state = m.state
    if (state.committedCycle === 0) throw new ReceiverError('E_NOT_FOUND', `no committed mirror of VM ${vm} in ${storeDir}`)
    if (state.inflight !== null) throw inflightRefusal(storeDir, vm, state.inflight.cycle, 'archiving')
    const kept = new Map<number, { committedAt: string; generation: string }>(pointsOf(state).map((p) => [p.cycle, { committedAt: p.committedAt, generation: p.generation }]))
    kept.set(state.committedCycle, { committedAt: state.committedAt ?? '', generation: state.generation ?? '' })
    const want = cycles ?? [...kept.keys()].sort((a, b) => a - b)
    for (const c of want) if (!kept.has(c)) throw new ReceiverError('E_NOT_FOUND', `VM ${vm} has no point ${c} (points: ${[...kept.keys()].join(', ')})`)
    // the .nvram is the mirror's; the .vmx each point's own (point-config.ts)
    const nvram = await mirrorNvram(join(m.paths.dir), vm)
    const out: ArchivedPoint[] = []
    for (const cycle of want) {
      const disks: PointDiskSource[] = disksAt(state, cycle).map((rec) => ({
        name: rec.name,
        stem: rec.stem,
        capacity: rec.capacity,
        ddb: checksAt(state, rec.name, cycle).own?.ddb ?? rec.ddb,
        ...recordedCheck(checksAt(state, rec.name, cycle)),
        ...withDivergedResync(state, rec.name, cycle),
        open: async () => {
          const chain = await openChain(await checkedPointSource(m.paths, state, rec.name, cycle))
          return {
            capacity: chain.capacity,
            read: async (off: number, n: number) => {
              const b = Buffer.alloc(n)
              await chain.readInto(b, 0, off, n)
              return b
            },
            close: () => chain.close(),
          }
        },
      }))
      const vmx = await pointConfigText(m.paths, state, cycle, opts.logger)
      const own = [...(vmx === undefined ? [] : [{ name: `${vm}.vmx`, data: Buffer.from(vmx) }]), ...nvram]
      out.push(await archiveOnePoint(vm, cycle, kept.get(cycle) as { committedAt: string; generation: string }, disks, own, opts))
    }
    return out
  } finally {
    m.release()
  }
}

/** Refuse a lock on a bucket without Object Lock. @throws ReceiverError E_CONFIG */
export async function checkArchiveLock(opts: ArchiveOptions): Promise<void> {
  if (opts.lock !== undefined && !(await opts.bucket.lockEnabled())) {
    throw new ReceiverError(
      'E_CONFIG',
      `bucket ${opts.bucket.bucket} has no Object Lock: create it with Object Lock enabled (aws s3api create-bucket --object-lock-enabled-for-bucket), or archive without --retain`,
    )
  }
}

/**
 * The check recorded for a disk at a point's cycle (points-admin.ts
 * checksAt), which what the point reads must still match: a certify digest
 * covers the whole disk, a trivial check the first `bytes`.
 */
export interface PointDiskCheck {
  readonly kind: 'certify' | 'trivial'
  readonly algorithm: DigestAlgorithm
  readonly digest: string
  readonly bytes: number
}

/** The check {@link archiveOnePoint} holds a disk to: the certify recorded at the cycle, else its trivial check, else none (as `restorePoint`). */
function recordedCheck(ch: ReturnType<typeof checksAt>): { check?: PointDiskCheck } {
  if (ch.certify !== null) return { check: { kind: 'certify', algorithm: ch.certify.algorithm, digest: ch.certify.digest, bytes: ch.certify.bytes } }
  if (ch.trivial !== null) return { check: { kind: 'trivial', algorithm: ch.trivial.algorithm, digest: ch.trivial.digest, bytes: ch.trivial.bytes } }
  return {}
}

/** A disk of a point as {@link archiveOnePoint} reads it (a VMDK chain of the folder store, an RBD snapshot of the Ceph store). */
export interface PointDiskSource {
  readonly name: string
  readonly stem: string
  /** the capacity the store records (progress totals); the opened reader's capacity is archived */
  readonly capacity: number
  readonly ddb: Readonly<Record<string, string>>
  /** the check recorded at the point's cycle (absent: none recorded, or the store keeps no digest — Ceph) */
  readonly check?: PointDiskCheck
  /** the resync of a diverged mirror the point reads through ({@link ArchivedDisk.divergedResync}; the folder store) */
  readonly divergedResync?: DivergedResync
  open(): Promise<{ readonly capacity: number; read(offset: number, length: number): Promise<Buffer>; close(): Promise<void> }>
}

/** A configuration file of a point (stored as one content-addressed chunk). */
export interface ArchiveFileSource {
  readonly name: string
  readonly data: Buffer
}

/**
 * Archive one point whose disks `disks` read: chunks first (zero chunks
 * recorded as such, the others stored once under their sha256 and locked),
 * the manifest last; a point whose manifest is in the bucket already is
 * skipped (nothing read). A disk with a check recorded at its cycle is
 * hashed with that check's algorithm too, and a point that no longer matches
 * it is refused before the manifest is written: a damaged point is never
 * locked away as verified (its chunks already sent are referenced by no
 * manifest). The manifest says per disk which check it matched. Shared by
 * both stores.
 * @throws ReceiverError E_VERIFY (a disk differs from its cycle's check), E_ARCHIVE, and what a disk's reader throws
 */
export async function archiveOnePoint(
  vm: string,
  cycle: number,
  id: { readonly committedAt: string; readonly generation: string },
  sources: readonly PointDiskSource[],
  configFiles: readonly ArchiveFileSource[],
  opts: ArchiveOptions,
): Promise<ArchivedPoint> {
  opts.signal?.throwIfAborted()
  const key = manifestKey(opts.prefix, vm, cycle)
  if ((await opts.bucket.head(key)) !== undefined) {
    opts.logger.info({ vm, cycle, manifest: key }, 'point already archived')
    return { cycle, archived: false, manifest: key, uploaded: 0, present: 0, zero: 0, uploadedBytes: 0, reuploaded: 0 }
  }
  const counts = { uploaded: 0, present: 0, zero: 0, uploadedBytes: 0, reuploaded: 0 }
  // beside a prune lock the operator asserts is dead (--despite-lock): where each chunk comes from, to upload it again
  const origins = opts.despiteLock === undefined ? undefined : new Map<string, ChunkOrigin>()
  const total = sources.reduce((n, r) => n + r.capacity, 0)
  const t0 = performance.now()
  let done = 0
  const disks: ArchivedDisk[] = []
  if (sources.some((s) => s.check !== undefined)) await initDigests()
  for (const [index, src] of sources.entries()) {
    const reader = await src.open()
    try {
      const whole = createHash('sha256')
      const check = src.check
      const checked = check === undefined ? undefined : createDigest(check.algorithm)
      const checkBytes = check === undefined ? 0 : check.kind === 'certify' ? reader.capacity : check.bytes
      const chunks: (string | null)[] = []
      const inflight = new Set<Promise<void>>()
      for (let off = 0; off < reader.capacity; off += ARCHIVE_CHUNK_BYTES) {
        opts.signal?.throwIfAborted()
        const n = Math.min(ARCHIVE_CHUNK_BYTES, reader.capacity - off)
        const b = await reader.read(off, n)
        whole.update(b)
        if (checked !== undefined && off < checkBytes) checked.update(b.subarray(0, Math.min(n, checkBytes - off)))
        if (isAllZero(b)) {
          chunks.push(null)
          counts.zero++
        } else {
          const h = createHash('sha256').update(b).digest('hex')
          chunks.push(h)
          if (origins !== undefined && !origins.has(h)) origins.set(h, { source: index, offset: off, length: n })
          const p = storeChunk(opts, h, b, counts).finally(() => inflight.delete(p))
          inflight.add(p)
          if (inflight.size >= (opts.concurrency ?? 4)) await Promise.race(inflight)
        }
        done += n
        const elapsedMs = performance.now() - t0
        opts.onProgress?.({ cycle, disk: src.name, bytes: done, total, elapsedMs, etaMs: (elapsedMs * Math.max(0, total - done)) / done })
      }
      await Promise.all(inflight)
      if (check !== undefined && checked !== undefined) {
        const got = Buffer.from(checked.digest()).toString('hex')
        if (got !== check.digest) {
          throw new ReceiverError(
            'E_VERIFY',
            `disk ${src.name} of point ${cycle} of VM ${vm} does not match the ${check.kind === 'certify' ? 'certify' : 'trivial-check'} digest recorded at that cycle (${check.algorithm} ${check.digest}, got ${got}): the point is damaged, so it was not archived (no manifest written). Restore or archive another point, and check the store (grainline points list, grainline status)`,
          )
        }
      }
      disks.push({
        name: src.name,
        stem: src.stem,
        capacity: reader.capacity,
        sha256: whole.digest('hex'),
        chunks,
        ddb: src.ddb,
        verified: check?.kind ?? 'none',
        ...(src.divergedResync === undefined ? {} : { divergedResync: src.divergedResync }),
      })
    } finally {
      await reader.close()
    }
  }
  const files: ArchivedFile[] = []
  for (const f of configFiles) {
    const sha256 = createHash('sha256').update(f.data).digest('hex')
    origins?.set(sha256, { name: f.name, data: f.data })
    await storeChunk(opts, sha256, f.data, counts)
    files.push({ name: f.name, sha256, bytes: f.data.length })
  }
  const manifest: ArchiveManifest = {
    format: ARCHIVE_FORMAT,
    vm,
    cycle,
    committedAt: id.committedAt,
    generation: id.generation,
    archivedAt: new Date().toISOString(),
    retainUntil: opts.lock?.until.toISOString() ?? null,
    chunkBytes: ARCHIVE_CHUNK_BYTES,
    disks,
    files,
  }
  // a lock not rewritten for long (its refreshes failed) may soon be taken for stale by an archive-prune, which
  // would delete the chunks this run found present and did not upload: no manifest naming them then
  // beside a prune that may be alive after all: no manifest naming a chunk it deleted meanwhile (ensureChunks)
  if (origins !== undefined) await ensureChunks(vm, cycle, key, 'before', origins, sources, opts, counts)
  opts.runLock?.assertHeld()
  await opts.bucket.put(key, encodeManifest(manifest), opts.lock)
  if (origins !== undefined) await ensureChunks(vm, cycle, key, 'after', origins, sources, opts, counts)
  opts.logger.info({ vm, cycle, manifest: key, ...counts }, 'point archived')
  return { cycle, archived: true, manifest: key, ...counts }
}

/**
 * Store one chunk unless present; extend a present chunk's lock when it ends
 * before ours. Beside a prune lock (`--despite-lock`) it is uploaded
 * whatever is there: a chunk found present is one no kept manifest may
 * reference any more and last written long ago, which a prune alive after
 * all deletes — uploaded now, it is younger than the prune's `--grace` in
 * any listing the prune makes from now on, and carries this run's lock.
 */
async function storeChunk(opts: ArchiveOptions, sha256: string, data: Buffer, counts: { uploaded: number; present: number; uploadedBytes: number }): Promise<void> {
  const key = chunkKey(opts.prefix, sha256)
  const have = opts.despiteLock === undefined ? await opts.bucket.head(key) : undefined
  if (have === undefined) {
    await opts.bucket.put(key, data, opts.lock)
    counts.uploaded++
    counts.uploadedBytes += data.length
    return
  }
  counts.present++
  if (opts.lock !== undefined && (have.retainUntil === undefined || have.retainUntil < opts.lock.until)) await opts.bucket.extend(key, opts.lock)
}

/** Where a chunk of a point comes from, to upload it again: a disk's range, or a configuration file's bytes. */
type ChunkOrigin = { readonly source: number; readonly offset: number; readonly length: number } | { readonly name: string; readonly data: Buffer }

/** How many times {@link ensureChunks} uploads a chunk found gone before it refuses. */
export const DESPITE_REUPLOADS = 3

/**
 * Beside a prune lock the operator asserts is dead (`--despite-lock`): make
 * sure every chunk the point's manifest names is in the bucket, `before` the
 * manifest is written and again `after` (a prune that read the manifests
 * before this one was written may still be deleting what it took for
 * unreferenced). Each chunk is checked (HEAD, 4 at a time); one gone is read
 * again from its source, checked against its sha256, uploaded again and
 * warned of (a prune is alive: the lock named is not dead), and the check
 * repeated, up to {@link DESPITE_REUPLOADS} times. A chunk still gone then is
 * refused: before the manifest, none is written; after it, the manifest is
 * deleted when S3 lets it (no --retain), so that no manifest names a chunk
 * that is gone and the next run archives the point again.
 * @throws ReceiverError E_ARCHIVE
 */
async function ensureChunks(
  vm: string,
  cycle: number,
  manifest: string,
  stage: 'before' | 'after',
  origins: ReadonlyMap<string, ChunkOrigin>,
  sources: readonly PointDiskSource[],
  opts: ArchiveOptions,
  counts: { uploaded: number; uploadedBytes: number; reuploaded: number },
): Promise<void> {
  const { bucket, prefix, logger } = opts
  const lock = printableName(opts.despiteLock ?? '')
  for (let round = 0; ; round++) {
    opts.signal?.throwIfAborted()
    const gone: string[] = []
    const digests = [...origins.keys()]
    const workers = Array.from({ length: Math.max(1, opts.concurrency ?? 4) }, async () => {
      for (let d = digests.pop(); d !== undefined; d = digests.pop()) if ((await bucket.head(chunkKey(prefix, d))) === undefined) gone.push(d)
    })
    await Promise.all(workers)
    if (gone.length === 0) return
    gone.sort()
    const first = gone[0] as string
    const what = (d: string): string => {
      const o = origins.get(d) as ChunkOrigin
      return 'name' in o ? `configuration file ${o.name}` : `disk ${(sources[o.source] as PointDiskSource).name} at offset ${o.offset}`
    }
    if (round === DESPITE_REUPLOADS) {
      let left = `The manifest s3://${bucket.bucket}/${manifest} was not written`
      if (stage === 'after') {
        try {
          await bucket.deleteAllVersions(manifest)
          left = `The manifest s3://${bucket.bucket}/${manifest}, written, was deleted again (the next run archives the point again)`
        } catch (err) {
          left = `The manifest s3://${bucket.bucket}/${manifest} names it and could not be deleted (${(err as Error).message}): a restore --from of this point fails (E_ARCHIVE, missing) until that manifest is deleted (every version; under --retain once its retention ends), then archive the point again`
        }
      }
      throw new ReceiverError(
        'E_ARCHIVE',
        `point ${cycle} of VM ${vm}: chunk s3://${bucket.bucket}/${chunkKey(prefix, first)} (${what(first)}${gone.length > 1 ? `, and ${gone.length - 1} more` : ''}) was gone again after each of ${DESPITE_REUPLOADS} uploads: a points archive-prune is deleting from the archive, so the lock ${lock} given to --despite-lock is of a live run. ${left}. Wait until that prune has ended (its lock gone), then run points archive again without --despite-lock`,
      )
    }
    logger.warn(
      { vm, cycle, chunks: gone.length, first: chunkKey(prefix, first), despiteLock: opts.despiteLock },
      `point ${cycle} of VM ${vm}: ${gone.length} chunk(s) uploaded or found present are gone ${stage === 'before' ? 'before its manifest is written' : 'after its manifest was written'} (s3://${bucket.bucket}/${chunkKey(prefix, first)}, ${what(first)}): a points archive-prune is deleting from the archive, so the lock ${lock} given to --despite-lock is of a live run. Uploading them again`,
    )
    const open = new Map<number, Awaited<ReturnType<PointDiskSource['open']>>>()
    try {
      for (const d of gone) {
        opts.signal?.throwIfAborted()
        const o = origins.get(d) as ChunkOrigin
        let data: Buffer
        if ('name' in o) data = o.data
        else {
          let reader = open.get(o.source)
          if (reader === undefined) {
            reader = await (sources[o.source] as PointDiskSource).open()
            open.set(o.source, reader)
          }
          data = await reader.read(o.offset, o.length)
        }
        if (createHash('sha256').update(data).digest('hex') !== d)
          throw new ReceiverError(
            'E_ARCHIVE',
            `point ${cycle} of VM ${vm}: ${what(d)} reads otherwise than when it was archived a moment ago (sha256 ${d}): the point changed while archived; nothing more written. Check the store (grainline status), then run again`,
          )
        await bucket.put(chunkKey(prefix, d), data, opts.lock)
        counts.uploaded++
        counts.uploadedBytes += data.length
        counts.reuploaded++
      }
    } finally {
      for (const r of open.values()) await r.close()
    }
  }
}

/** The mirror's `.nvram` (none when absent). */
async function mirrorNvram(dir: string, vm: string): Promise<ArchiveFileSource[]> {
  const name = `${vm}.nvram`
  try {
    // a store file: a link or FIFO there is a typed E_STORE_FILE, never a hang with the VM locked or a file from outside the store in the bucket
    return [{ name, data: await readStoreFile(join(dir, name), CONFIG_FILE_MAX_BYTES) }]
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return []
    throw err
  }
}
