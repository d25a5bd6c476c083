/**
 * The run locks of an archive (docs/ARCHIVE.md "Guarantees"): `points
 * archive-prune` excludes `points archive` and `restore --from s3://…` with
 * lock objects under `PREFIX/locks/`, write-then-check on both sides (as
 * restic does); archives and restores may run together. A run writes
 * `locks/<kind>-<uuid>` (body: kind, host, pid, time), then lists `locks/`:
 * an archive or a restore refuses (E_BUSY) when a prune lock is there, a
 * prune when an archive or restore lock is, after deleting its own. Two runs
 * that start together may both refuse; never may both go on. This closes the
 * race that the prune's grace period does not: an archive finds an old
 * unreferenced chunk present (HEAD) and does not upload it while a prune
 * deletes it; a prune deletes the manifest, then the chunks, of the point a
 * restore is reading.
 *
 * A lock is rewritten every {@link LOCK_REFRESH_MS} while its run goes on, and
 * one not rewritten for {@link LOCK_STALE_MS} is stale (its run crashed):
 * ignored. Lock objects are never written with Object Lock retention, so they
 * can be deleted (a bucket whose default retention locks every new object
 * would lock them too: such a lock is then left to go stale).
 */
import { randomUUID } from 'node:crypto'
import { hostname } from 'node:os'
import type { Logger } from 'pino'
import { ReceiverError } from '../errors.ts'
import { printableName, refusedByS3, type S3Bucket } from './s3-bucket.ts'

/** A lock not rewritten for this long belongs to a run that stopped: ignored. */
export const LOCK_STALE_MS = 2 * 3600_000
/** A running archive or prune rewrites its lock this often. */
export const LOCK_REFRESH_MS = 10 * 60_000

/** The kinds of run that hold an archive lock. */
export type ArchiveRunKind = 'archive' | 'prune' | 'restore'

/** The kinds of run a run of `kind` refuses to start beside: a prune beside anything, an archive or a restore beside a prune. */
function excludedBy(kind: ArchiveRunKind): readonly ArchiveRunKind[] {
  return kind === 'prune' ? ['archive', 'restore'] : ['prune']
}

/** A run of `kind` as an operator starts it. */
const COMMAND: Readonly<Record<ArchiveRunKind, string>> = {
  archive: 'points archive',
  prune: 'points archive-prune',
  restore: 'restore --from s3://…',
}

/** What a run of `kind` could not do, after "cannot ". */
const WHAT: Readonly<Record<ArchiveRunKind, string>> = {
  archive: 'archive points',
  prune: 'prune the archive',
  restore: 'restore from the archive',
}

/** Where a run of `kind` stopped when its lock was not rewritten for {@link LOCK_HELD_MS}. */
const STOPPED: Readonly<Record<ArchiveRunKind, string>> = {
  archive: 'archive stopped before writing the manifest of the point (a prune may have deleted chunks it found present; the next run uploads what is missing)',
  prune: 'archive-prune stopped here, nothing more deleted',
  restore: 'restore stopped (a prune could delete the chunks it is reading; what it wrote is removed)',
}

/** The key prefix of the run locks. */
export function locksPrefix(prefix: string): string {
  return `${prefix}locks/`
}

/**
 * A run whose lock was last written this long ago (its refreshes failed)
 * stops: a prune before it deletes anything more, an archive before it
 * writes a manifest, a restore before it reads more chunks — well before the lock is {@link LOCK_STALE_MS} old, when
 * a run of the other kind would ignore it.
 */
export const LOCK_HELD_MS = LOCK_STALE_MS / 2

/** A held run lock. */
export interface HeldRunLock {
  readonly key: string
  /**
   * Throw unless the lock was written within {@link LOCK_HELD_MS} (its
   * refreshes fail: another run could soon take it for stale). A prune checks
   * it before each deletion, an archive before each manifest it writes, a
   * restore before each batch of chunks it reads.
   * @throws ReceiverError E_ARCHIVE
   */
  assertHeld(): void
  /** Stop refreshing and delete the lock (a failure is logged: the lock goes stale). */
  release(): Promise<void>
}

/**
 * S3 refused to write a run lock (403: credentials that may only read, or a
 * bucket policy). A restore goes on without its lock (it only reads, and
 * checks every chunk); an archive or a prune, which write, do not.
 */
export class RunLockRefused extends ReceiverError {
  constructor(message: string, cause: unknown) {
    super('E_ARCHIVE', message, { cause })
  }
}

/**
 * Take the run lock of `kind` on the archive at `prefix`: write it, then
 * refuse when a fresh lock of a kind it excludes is there (a prune: an
 * archive or a restore; an archive or a restore: a prune), its own lock
 * deleted first. @throws ReceiverError E_BUSY (naming the other run's host, pid and time), E_ARCHIVE
 */
export async function takeRunLock(bucket: S3Bucket, prefix: string, kind: ArchiveRunKind, logger: Logger, now: () => number = Date.now): Promise<HeldRunLock> {
  const key = `${locksPrefix(prefix)}${kind}-${randomUUID()}`
  const body = Buffer.from(`${JSON.stringify({ kind, host: hostname(), pid: process.pid, time: new Date(now()).toISOString() })}\n`)
  // never with a retention: a lock must stay deletable
  try {
    await bucket.put(key, body)
  } catch (err) {
    if (refusedByS3(err))
      throw new RunLockRefused(`S3 refused to write the run lock s3://${bucket.bucket}/${key} (403): the credentials may not write under ${locksPrefix(prefix)}. ${(err as Error).message}`, err)
    throw err
  }
  let written = now()
  const del = async (): Promise<void> => {
    try {
      await bucket.deleteAllVersions(key)
    } catch (err) {
      logger.warn({ err, lock: key }, `could not delete the archive lock ${key}: it is ignored once ${LOCK_STALE_MS / 3600_000} h old`)
    }
  }
  const others = excludedBy(kind)
  let blocking: { key: string; lastModified: Date; kind: ArchiveRunKind } | undefined
  try {
    await bucket.listPages(locksPrefix(prefix), async (page) => {
      for (const o of page) {
        const name = o.key.slice(locksPrefix(prefix).length)
        const other = others.find((k) => name.startsWith(`${k}-`))
        if (blocking === undefined && other !== undefined && now() - o.lastModified.getTime() < LOCK_STALE_MS) blocking = { ...o, kind: other }
      }
    })
  } catch (err) {
    await del()
    throw err
  }
  if (blocking !== undefined) {
    const who = await describeLock(bucket, blocking.key)
    await del()
    throw new ReceiverError(
      'E_BUSY',
      `cannot ${WHAT[kind]} in s3://${bucket.bucket}/${prefix}: a ${COMMAND[blocking.kind]} holds the lock ${printableName(blocking.key)} (${who}, last written ${blocking.lastModified.toISOString()}). Run again once it has finished; if no such run is alive, delete that object, or wait until it is ${LOCK_STALE_MS / 3600_000} h old (it is then ignored)`,
    )
  }
  // rewritten (a new LastModified) while the run goes on; release waits for a rewrite in flight, which would otherwise
  // recreate the lock after its deletion — one at a time: a rewrite that hangs (S3 requests have no deadline) is not
  // overtaken by the next, which release would wait for instead while the hung one lands after the deletion
  let refreshing: Promise<void> | undefined
  const timer = setInterval(() => {
    if (refreshing !== undefined) return
    refreshing = bucket
      .put(key, body)
      .then(
        () => {
          written = now()
        },
        (err: unknown) => logger.warn({ err, lock: key }, `could not refresh the archive lock ${key}`),
      )
      .finally(() => {
        refreshing = undefined
      })
  }, LOCK_REFRESH_MS)
  timer.unref()
  logger.debug({ lock: key }, 'archive lock taken')
  return {
    key,
    assertHeld: () => {
      const age = now() - written
      if (age >= LOCK_HELD_MS)
        throw new ReceiverError(
          'E_ARCHIVE',
          `the run lock s3://${bucket.bucket}/${key} was last written ${Math.round(age / 60_000)} min ago (its refreshes every ${LOCK_REFRESH_MS / 60_000} min failed: see the warnings before): another run would ignore it once ${LOCK_STALE_MS / 3600_000} h old, so this ${STOPPED[kind]}. Check that the S3 credentials may write under ${locksPrefix(prefix)}, then run again`,
        )
    },
    release: async () => {
      clearInterval(timer)
      await refreshing
      await del()
    },
  }
}

/**
 * A field of a lock's body for a message an operator reads: anyone who can
 * write the bucket wrote it, so control characters (a terminal escape, a
 * newline faking a log line) become spaces and it is cut to 100 characters.
 */
function lockField(v: unknown): string {
  const text = String(v).replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]+/g, ' ')
  return text.length > 100 ? `${text.slice(0, 100)}…` : text
}

/** "host H pid P since T" of a lock's body, or what is known when it cannot be read. */
async function describeLock(bucket: S3Bucket, key: string): Promise<string> {
  try {
    const j = JSON.parse((await bucket.get(key, 4096)).toString('utf8')) as Record<string, unknown>
    return `host ${lockField(j['host'])} pid ${lockField(j['pid'])} since ${lockField(j['time'])}`
  } catch {
    return 'its body could not be read'
  }
}

/** Run `fn` holding the run lock of `kind` (released however `fn` ends). */
export async function withRunLock<T>(bucket: S3Bucket, prefix: string, kind: ArchiveRunKind, logger: Logger, fn: (lock: HeldRunLock) => Promise<T>, now: () => number = Date.now): Promise<T> {
  const lock = await takeRunLock(bucket, prefix, kind, logger, now)
  try {
    return await fn(lock)
  } finally {
    await lock.release()
  }
}
