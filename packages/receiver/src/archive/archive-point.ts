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
import { checkedPointSource, disksAt, pointsOf } from '../points.ts'
import { pointConfigText } from '../point-config.ts'
import { isAllZero } from '@grainline/vmdk'
import { CONFIG_FILE_MAX_BYTES, readStoreFile } from '../store-fs.ts'
import { VmMirror } from '../vm-mirror.ts'
import { ARCHIVE_CHUNK_BYTES, ARCHIVE_FORMAT, chunkKey, encodeManifest, manifestKey, type ArchivedDisk, type ArchivedFile, type ArchiveManifest } from './archive-manifest.ts'
import { withRunLock, type HeldRunLock } from './archive-lock.ts'
import type { ArchiveLock, S3Bucket } from './s3-bucket.ts'

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
    return { cycle, archived: false, manifest: key, uploaded: 0, present: 0, zero: 0, uploadedBytes: 0 }
  }
  const counts = { uploaded: 0, present: 0, zero: 0, uploadedBytes: 0 }
  const total = sources.reduce((n, r) => n + r.capacity, 0)
  const t0 = performance.now()
  let done = 0
  const disks: ArchivedDisk[] = []
  if (sources.some((s) => s.check !== undefined)) await initDigests()
  for (const src of sources) {
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
      disks.push({ name: src.name, stem: src.stem, capacity: reader.capacity, sha256: whole.digest('hex'), chunks, ddb: src.ddb, verified: check?.kind ?? 'none' })
    } finally {
      await reader.close()
    }
  }
  const files: ArchivedFile[] = []
  for (const f of configFiles) {
    const sha256 = createHash('sha256').update(f.data).digest('hex')
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
  opts.runLock?.assertHeld()
  await opts.bucket.put(key, encodeManifest(manifest), opts.lock)
  opts.logger.info({ vm, cycle, manifest: key, ...counts }, 'point archived')
  return { cycle, archived: true, manifest: key, ...counts }
}

/** Store one chunk unless present; extend a present chunk's lock when it ends before ours. */
async function storeChunk(opts: ArchiveOptions, sha256: string, data: Buffer, counts: { uploaded: number; present: number; uploadedBytes: number }): Promise<void> {
  const key = chunkKey(opts.prefix, sha256)
  const have = await opts.bucket.head(key)
  if (have === undefined) {
    await opts.bucket.put(key, data, opts.lock)
    counts.uploaded++
    counts.uploadedBytes += data.length
    return
  }
  counts.present++
  if (opts.lock !== undefined && (have.retainUntil === undefined || have.retainUntil < opts.lock.until)) await opts.bucket.extend(key, opts.lock)
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
