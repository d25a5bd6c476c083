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
 * ignored. A lock's age is judged by the S3 server's clock, never the local
 * one: the LastModified S3 gave the run's own lock, just written, against
 * the other's (a host whose clock is 2 h ahead would otherwise take a fresh
 * lock for stale and run beside it; one behind would never see a dead run's
 * lock go stale). The run carries that server time on with the local
 * monotonic clock ({@link HeldRunLock.serverNow}: a prune's grace period and
 * retention checks use it too), and a run whose local clock differs from
 * S3's by more than {@link MAX_CLOCK_SKEW_MS} stops (a restore warns). Lock
 * objects are never written with Object Lock retention, so they can be
 * deleted (a bucket whose default retention locks every new object
 * would lock them too: such a lock is then left to go stale).
 *
 * A run that died (killed, its host restarted) leaves its lock, which would
 * refuse the runs it excludes for up to {@link LOCK_STALE_MS}. A lock whose
 * body names this host (its hostname) and a process that is gone from it
 * (its pid not running; with the boot id and start time a lock records, a
 * pid of an earlier boot or reused by another process) is of a dead run, as
 * restic's `unlock` judges: warned of, deleted (nothing can rewrite it) and
 * ignored ({@link deadHolder}); so is one of a kind the run does not exclude
 * (it would refuse the other kind, on hosts that cannot judge it, until
 * stale). A lock of another host, or of an older
 * grainline without a pid, is judged by its age alone. Past a dead prune's
 * lock of another host, `restore --despite-lock KEY` and `points archive
 * --despite-lock KEY` ({@link RunLockOptions.despiteLock}) go on beside that
 * one lock, warned: the operator asserts that prune is dead.
 */
import { randomUUID } from 'node:crypto'
import { readFileSync, readlinkSync } from 'node:fs'
import { hostname } from 'node:os'
import { blankUnprintable } from '@grainline/protocol'
import type { Logger } from 'pino'
import { ReceiverError } from '../errors.ts'
import { bootId, processHolds, processStartTime } from '../vm-lock.ts'
import { printableName, refusedByS3, type S3Bucket } from './s3-bucket.ts'

/** A lock not rewritten for this long belongs to a run that stopped: ignored. */
export const LOCK_STALE_MS = 2 * 3600_000
/** A running archive or prune rewrites its lock this often. */
export const LOCK_REFRESH_MS = 10 * 60_000
/**
 * An archive or a prune refuses to run (E_ARCHIVE), a restore warns, when the
 * local clock differs from the S3 server's by more than this. Lock ages, the
 * grace period and retention ends are judged by S3's clock, so this is not
 * what keeps the exclusion; it bounds what still comes from the local clock:
 * the `archivedAt` that `--older-than` selects by and the Object Lock end
 * (now + `--retain`) an archive writes, and the time in a lock's body an
 * operator reads. 5 min is a twelfth of the hour between {@link LOCK_HELD_MS}
 * and {@link LOCK_STALE_MS} (a run of an older grainline, which judges a lock
 * by its own clock, keeps the exclusion beside hosts within it); an NTP-synced
 * host is milliseconds off, so a clock 5 min off is broken, not drifting
 * (AWS refuses request signatures 15 min off, which the SDK silently corrects
 * from the server's Date header: S3 does not catch it for us). The
 * measurement's own error (LastModified's 1 s resolution, the PUT's round
 * trip) is far below it: a run is refused only when its skew is certainly
 * beyond.
 */
export const MAX_CLOCK_SKEW_MS = 5 * 60_000
/** LastModified is given to the second (AWS truncates; a server might round): the write happened within this of it. */
const LAST_MODIFIED_RESOLUTION_MS = 1000

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

/** The clocks of an archive run (tests set them). */
export interface RunClock {
  /** the local wall clock, ms since the epoch: the lock's body, compared with S3's when the lock is taken. @default Date.now */
  readonly now?: () => number
  /** a monotonic clock, ms: the time since the lock's writes and since S3's clock was read. @default performance.now */
  readonly monotonic?: () => number
}

/** What a run lock is taken with: the clocks, and the one lock an operator told a restore or an archive to go on beside. */
export interface RunLockOptions extends RunClock {
  /**
   * The key (`PREFIX/locks/prune-…`, as an E_BUSY refusal printed it) of a
   * lock this run goes on beside although it is fresh, warned of (`restore
   * --despite-lock`, `points archive --despite-lock`: a prune that died on
   * another host left it, and the operator cannot or will not delete it).
   * Only that key: any other fresh lock of a kind this run excludes still
   * refuses it. A prune takes none.
   */
  readonly despiteLock?: string
}

/**
 * Why `key` cannot be the lock a run of the archive at `prefix` goes on
 * beside ({@link RunLockOptions.despiteLock}), or undefined: it must be a
 * prune lock's key under the archive's `locks/` (the only kind a restore or
 * an archive refuses beside), written as the refusal printed it.
 */
export function despiteLockProblem(prefix: string, key: string): string | undefined {
  const lockPrefix = `${locksPrefix(prefix)}prune-`
  if (key.startsWith(lockPrefix) && key.length > lockPrefix.length) return undefined
  return `--despite-lock ${printableName(key)}: want the key of a points archive-prune lock of this archive, ${locksPrefix(prefix)}prune-…, exactly as the refusal (E_BUSY) printed it`
}

/** A held run lock. */
export interface HeldRunLock {
  readonly key: string
  /**
   * The S3 server's time now, ms since the epoch, never later than it: the
   * LastModified S3 gave this run's lock when it was taken (less its
   * resolution) plus the monotonic time since that PUT returned. What a
   * chunk's age (the grace period), a retention's end and an `--older-than`
   * cutoff are judged by, whatever the local clock says.
   */
  serverNow(): number
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
 * How far the local clock is off the S3 server's (positive: ahead) when it
 * certainly is by more than {@link MAX_CLOCK_SKEW_MS}, else undefined. S3
 * stamped `lastModified` (to the second) between the local readings
 * `before` and `after` of the PUT.
 */
function clockSkew(lastModified: number, before: number, after: number): number | undefined {
  // local − server, at the write: within [before − (LM + res), after − (LM − res)]
  const lo = before - (lastModified + LAST_MODIFIED_RESOLUTION_MS)
  const hi = after - (lastModified - LAST_MODIFIED_RESOLUTION_MS)
  if (lo > MAX_CLOCK_SKEW_MS) return lo
  if (hi < -MAX_CLOCK_SKEW_MS) return hi
  return undefined
}

/** "2 h 5 min ahead of" / "3 min behind" */
function skewText(ms: number): string {
  const min = Math.round(Math.abs(ms) / 60_000)
  const text = min >= 60 ? `${Math.floor(min / 60)} h ${min % 60} min` : `${min} min`
  return `${text} ${ms > 0 ? 'ahead of' : 'behind'}`
}

/**
 * Take the run lock of `kind` on the archive at `prefix`: write it, then
 * refuse when a fresh lock of a kind it excludes is there (a prune: an
 * archive or a restore; an archive or a restore: a prune), its own lock
 * deleted first. Ages are S3's: its own lock's LastModified against the
 * other's. An archive or a prune whose local clock is more than
 * {@link MAX_CLOCK_SKEW_MS} off S3's is refused; a restore warns and goes on.
 * @throws ReceiverError E_BUSY (naming the other run's host, pid and time), E_ARCHIVE (the clock skew; the listing does not show the lock just written)
 */
export async function takeRunLock(bucket: S3Bucket, prefix: string, kind: ArchiveRunKind, logger: Logger, clock: RunLockOptions = {}): Promise<HeldRunLock> {
  const now = clock.now ?? Date.now
  const mono = clock.monotonic ?? (() => performance.now())
  const key = `${locksPrefix(prefix)}${kind}-${randomUUID()}`
  checkDespite(prefix, kind, clock.despiteLock)
  const body = Buffer.from(`${JSON.stringify(lockBody(kind, now()))}\n`)
  const wallBefore = now()
  const monoBefore = mono()
  // never with a retention: a lock must stay deletable
  try {
    await bucket.put(key, body)
  } catch (err) {
    if (refusedByS3(err))
      throw new RunLockRefused(`S3 refused to write the run lock s3://${bucket.bucket}/${key} (403): the credentials may not write under ${locksPrefix(prefix)}. ${(err as Error).message}`, err)
    throw err
  }
  const monoAfter = mono()
  const wallAfter = now()
  // the start of the last write that succeeded: S3 stamped it no earlier, so its age is never underestimated
  let written = monoBefore
  const del = async (): Promise<void> => {
    try {
      await bucket.deleteAllVersions(key)
    } catch (err) {
      logger.warn({ err, lock: key }, `could not delete the archive lock ${key}: it is ignored once ${LOCK_STALE_MS / 3600_000} h old`)
    }
  }
  const others = excludedBy(kind)
  const candidates: { key: string; lastModified: Date; kind: ArchiveRunKind }[] = []
  // the locks of the kinds this run goes on beside (its own kind's too): a dead one of this machine is deleted as well
  const beside = (['archive', 'prune', 'restore'] as const).filter((k) => !others.includes(k))
  const bystanders: { key: string; lastModified: Date; kind: ArchiveRunKind }[] = []
  let own: Date | undefined
  // the other locks are seen no earlier than this: their ages are judged at it
  const monoListed = mono()
  try {
    await bucket.listPages(locksPrefix(prefix), async (page) => {
      for (const o of page) {
        if (o.key === key) own = o.lastModified
        const other = lockKindOf(prefix, o.key, others)
        if (other !== undefined) candidates.push({ ...o, kind: other })
        const along = o.key === key ? undefined : lockKindOf(prefix, o.key, beside)
        if (along !== undefined) bystanders.push({ ...o, kind: along })
      }
    })
  } catch (err) {
    await del()
    throw err
  }
  if (own === undefined) {
    await del()
    throw new ReceiverError(
      'E_ARCHIVE',
      `cannot ${WHAT[kind]} in s3://${bucket.bucket}/${prefix}: the listing of ${locksPrefix(prefix)} right after writing the run lock ${key} does not show it, so another run would not see it either and the exclusion of the run locks cannot hold. Check the S3 endpoint (a listing that lags behind writes: a cache or proxy in front of S3), then run again`,
    )
  }
  const ownWritten = own.getTime()
  // S3's time, never later than it: its stamp on our lock (to the second) plus the monotonic time since the PUT returned
  const serverNow = (): number => ownWritten - LAST_MODIFIED_RESOLUTION_MS + (mono() - monoAfter)
  const skew = clockSkew(ownWritten, wallBefore, wallAfter)
  if (skew !== undefined) {
    const what = `the local clock of ${lockField(hostname())} is ${skewText(skew)} the S3 server's (its LastModified on the run lock ${key}, ${own.toISOString()}; the local clock said ${new Date(wallAfter).toISOString()})`
    if (kind !== 'restore') {
      await del()
      throw new ReceiverError(
        'E_ARCHIVE',
        `cannot ${WHAT[kind]} in s3://${bucket.bucket}/${prefix}: ${what}, more than the ${MAX_CLOCK_SKEW_MS / 60_000} min allowed: the times an archive writes (archivedAt, which --older-than selects by; the Object Lock end, now + --retain) would be off by as much. Fix the clock (NTP: chronyc tracking, timedatectl), then run again`,
      )
    }
    // a restore writes no time into the archive, and judges locks by S3's clock: it goes on
    logger.warn(
      { lock: key, skewMs: skew },
      `${what}, more than ${MAX_CLOCK_SKEW_MS / 60_000} min: the restore goes on (the run locks are judged by S3's clock), but fix the clock (NTP) before archiving or pruning from this host`,
    )
  }
  // a fresh lock of the other kind, judged when the listing began: our lock's stamp plus the monotonic time since
  // the PUT returned (freshLock takes the stamps' second off: ages err young); a lock written after ours is fresh
  const listedAt = ownWritten + (monoListed - monoAfter)
  const fresh = candidates.filter((o) => freshLock(listedAt, o.lastModified))
  let blocking: (typeof fresh)[number] | undefined
  try {
    blocking = await besideDespite(bucket, prefix, kind, await withoutDead(bucket, kind, fresh, logger, true), clock.despiteLock, logger)
  } catch (err) {
    await del()
    throw err
  }
  if (blocking !== undefined) {
    const who = await describeLock(bucket, blocking.key)
    await del()
    throw new ReceiverError(
      'E_BUSY',
      `cannot ${WHAT[kind]} in s3://${bucket.bucket}/${prefix}: a ${COMMAND[blocking.kind]} holds the lock ${printableName(blocking.key)} (${who.text}, last written ${blocking.lastModified.toISOString()}). Run again once it has finished (${aliveWhere(who)}); if no such run is alive, delete that object (s3://${bucket.bucket}/${printableName(blocking.key)}), or wait until it is ${LOCK_STALE_MS / 3600_000} h old (it is then ignored)${despiteHint(bucket, prefix, kind, blocking.key)}`,
    )
  }
  // a dead run's lock of a kind this run does not exclude refuses the other kind (elsewhere: another host cannot judge
  // it) until stale: deleted the same way (withoutDead: warned; a failure warned of, never this run's)
  try {
    await withoutDead(
      bucket,
      kind,
      bystanders.filter((o) => freshLock(listedAt, o.lastModified)),
      logger,
      true,
    )
  } catch (err) {
    logger.warn({ err }, `could not judge the other locks under ${locksPrefix(prefix)}: left as they are`)
  }
  // rewritten (a new LastModified) while the run goes on; release waits for a rewrite in flight, which would otherwise
  // recreate the lock after its deletion — one at a time: a rewrite that hangs (S3 requests have no deadline) is not
  // overtaken by the next, which release would wait for instead while the hung one lands after the deletion
  let refreshing: Promise<void> | undefined
  const timer = setInterval(() => {
    if (refreshing !== undefined) return
    const started = mono()
    refreshing = bucket
      .put(key, body)
      .then(
        () => {
          written = started
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
    serverNow,
    assertHeld: () => {
      const age = mono() - written
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
 * Refuse a run that could not write its lock (a restore with read-only
 * credentials: {@link RunLockRefused}) when a fresh lock of a kind it
 * excludes (for a restore: a prune) is under `locks/` — it can still read
 * them. Without a lock of its own there is no LastModified of its own to
 * judge ages by, so S3's time is the listing's `Date` header (the server's
 * clock, as LastModified is): a lock is fresh while `Date − (LastModified +
 * 1 s)` (the age's lower bound: both are to the second) is below
 * {@link LOCK_STALE_MS}, exactly takeRunLock's rule. A server that sends no
 * `Date`: the local clock, less {@link MAX_CLOCK_SKEW_MS} (a lock is taken
 * for younger than it may be: fresh when unsure). A listing S3 refuses (403:
 * credentials that may not list `locks/`) is warned of and the run goes on,
 * as before this check (it cannot see the locks); any other listing failure
 * throws, as takeRunLock's does (an endpoint that fails this listing fails
 * the restore's reads too, and a broken listing is never taken for the
 * whole). A local clock more than {@link MAX_CLOCK_SKEW_MS} off the `Date`
 * is warned of, as a locked restore does.
 * @throws ReceiverError E_BUSY (naming the lock, its host, pid and time, and what to do), E_ARCHIVE (the listing)
 */
export async function refuseBesideExcluded(bucket: S3Bucket, prefix: string, kind: ArchiveRunKind, logger: Logger, clock: RunLockOptions = {}): Promise<void> {
  const now = clock.now ?? Date.now
  checkDespite(prefix, kind, clock.despiteLock)
  const others = excludedBy(kind)
  const candidates: { key: string; lastModified: Date; kind: ArchiveRunKind; listedAt: number }[] = []
  const before = now()
  let serverDate: Date | undefined
  try {
    await bucket.listPages(locksPrefix(prefix), async (page, date) => {
      serverDate ??= date
      // S3's time when the page was answered (a lower bound); without it the local clock, less the skew allowed
      const listedAt = date === undefined ? now() - MAX_CLOCK_SKEW_MS : date.getTime()
      for (const o of page) {
        const other = lockKindOf(prefix, o.key, others)
        if (other !== undefined) candidates.push({ ...o, kind: other, listedAt })
      }
    })
  } catch (err) {
    if (!refusedByS3(err)) throw err
    logger.warn({ err }, `S3 refused the listing of ${locksPrefix(prefix)} (403): whether a ${others.map((k) => COMMAND[k]).join(' or ')} runs cannot be seen; the ${COMMAND[kind]} goes on`)
    return
  }
  const after = now()
  if (serverDate !== undefined) {
    const skew = clockSkew(serverDate.getTime(), before, after)
    if (skew !== undefined)
      logger.warn(
        { skewMs: skew },
        `the local clock of ${lockField(hostname())} is ${skewText(skew)} the S3 server's (the Date of its listing of ${locksPrefix(prefix)}, ${serverDate.toISOString()}), more than ${MAX_CLOCK_SKEW_MS / 60_000} min: the run locks are judged by S3's clock, but fix the clock (NTP) before archiving or pruning from this host`,
      )
  }
  // a dead run's lock is ignored, not deleted: these credentials may not write
  const live = await withoutDead(
    bucket,
    kind,
    candidates.filter((o) => freshLock(o.listedAt, o.lastModified)),
    logger,
    false,
  )
  const blocking = await besideDespite(bucket, prefix, kind, live, clock.despiteLock, logger)
  if (blocking === undefined) return
  const who = await describeLock(bucket, blocking.key)
  throw new ReceiverError(
    'E_BUSY',
    `cannot ${WHAT[kind]} in s3://${bucket.bucket}/${prefix}: a ${COMMAND[blocking.kind]} holds the lock ${printableName(blocking.key)} (${who.text}, last written ${blocking.lastModified.toISOString()}), and S3 refused this run's own lock (read-only credentials), so nothing was started: the ${COMMAND[blocking.kind]} could delete what it reads. Run again once it has finished (${aliveWhere(who)}); if no such run is alive, delete that object (s3://${bucket.bucket}/${printableName(blocking.key)}, with credentials that may write under ${locksPrefix(prefix)}), or wait until it is ${LOCK_STALE_MS / 3600_000} h old by S3's clock (it is then ignored)${despiteHint(bucket, prefix, kind, blocking.key)}`,
  )
}

/**
 * The first of the `fresh` locks of the kinds a run excludes that refuses
 * it, or undefined: every one but the lock `despite` names (the operator's
 * override: {@link RunLockOptions.despiteLock}), which is warned of, naming
 * its host, pid and start. A `despite` that names no fresh lock here is
 * warned of too (it overrode nothing); {@link checkDespite} checked it.
 */
async function besideDespite<L extends { key: string; lastModified: Date; kind: ArchiveRunKind }>(
  bucket: S3Bucket,
  prefix: string,
  kind: ArchiveRunKind,
  fresh: readonly L[],
  despite: string | undefined,
  logger: Logger,
): Promise<L | undefined> {
  if (despite === undefined) return fresh[0]
  const named = fresh.find((o) => o.key === despite)
  const blocking = fresh.find((o) => o.key !== despite)
  if (blocking !== undefined) return blocking
  if (named === undefined) {
    logger.warn(
      { despiteLock: despite },
      `--despite-lock ${printableName(despite)}: no fresh lock of that key is under ${locksPrefix(prefix)} now (deleted, stale, of a run that died on this host, or mistyped): nothing overridden, the ${COMMAND[kind]} goes on as it would without the option`,
    )
    return undefined
  }
  logger.warn(
    { despiteLock: despite, lastModified: named.lastModified.toISOString() },
    `going on beside the lock ${printableName(named.key)} of a ${COMMAND[named.kind]} (${(await describeLock(bucket, named.key)).text}, last written ${named.lastModified.toISOString()}, fresh), as --despite-lock asked: ${DESPITE_RISK[kind]}. Delete that lock object once it is certain no such run is alive`,
  )
  return undefined
}

/**
 * Refuse a {@link RunLockOptions.despiteLock} before any request: only a
 * restore or an archive takes one, naming a prune lock of this archive.
 * @throws ReceiverError E_CONFIG
 */
function checkDespite(prefix: string, kind: ArchiveRunKind, despite: string | undefined): void {
  if (despite === undefined) return
  const problem = kind === 'prune' ? `--despite-lock is an option of ${COMMAND.restore} and ${COMMAND.archive}, not of ${COMMAND.prune}` : despiteLockProblem(prefix, despite)
  if (problem !== undefined) throw new ReceiverError('E_CONFIG', problem)
}

/** What a run of `kind` risks beside a prune that is alive after all (a prune takes no --despite-lock). */
const DESPITE_RISK: Readonly<Record<ArchiveRunKind, string>> = {
  restore:
    'if that prune is alive it may delete chunks this restore reads, which then fails (a chunk missing, or not matching its sha256) and removes what it wrote, never leaving a folder that looks restored',
  archive:
    'if that prune is alive it may delete chunks this archive finds already in the bucket: each chunk is uploaded again rather than trusted, and every chunk a manifest names is checked before and after it is written (one gone is uploaded again, warned; one the prune keeps deleting fails the archive, E_ARCHIVE, leaving no manifest naming it) — a point archived so costs its whole size on the wire',
  prune: '',
}

/** What a refused restore or archive may do beside the lock `key` (empty for a prune). */
function despiteHint(bucket: S3Bucket, prefix: string, kind: ArchiveRunKind, key: string): string {
  if (kind === 'prune') return ''
  const command = kind === 'restore' ? `grainline restore --from s3://${bucket.bucket}/${prefix} …` : `grainline points archive … --archive s3://${bucket.bucket}/${prefix}`
  return `; or, once certain that prune is dead (no ${COMMAND.prune} process on that host, which may not be reachable), ${kind} beside that lock alone: ${command} --despite-lock ${printableName(key)} — you assert the prune is dead: ${DESPITE_RISK[kind]}`
}

/** The biggest pid a lock may name: larger is no process (Node would refuse to signal it). */
const MAX_PID = 2 ** 31 - 1

/** This machine's id (/etc/machine-id), or '' where there is none: two machines may share a hostname. */
function machineId(): string {
  try {
    return readFileSync('/etc/machine-id', 'utf8').trim()
  } catch {
    return ''
  }
}

/** This process's pid namespace (`pid:[INODE]`), or '' where /proc does not tell: containers under one hostname see different pids. */
function pidNamespace(): string {
  try {
    return readlinkSync('/proc/self/ns/pid')
  } catch {
    return ''
  }
}

/**
 * This process as a run lock's body names it: the host, its machine id and
 * pid namespace, the pid, the boot id and the process start time (each
 * where Linux tells it: a hostname may be shared, a pid reused).
 */
function lockBody(kind: ArchiveRunKind, time: number): Record<string, unknown> {
  const known = (v: string): string | undefined => (v === '' ? undefined : v)
  return {
    kind,
    host: hostname(),
    machine: known(machineId()),
    pidns: known(pidNamespace()),
    pid: process.pid,
    boot: known(bootId()),
    start: known(processStartTime(process.pid) ?? ''),
    time: new Date(time).toISOString(),
  }
}

/**
 * Why the run that wrote a lock's body `j` is certainly dead, or undefined
 * (alive, or it cannot be told: judged by its age alone): the body names
 * this host by its hostname AND its machine id (`/etc/machine-id`, which
 * this grainline records on Linux), in this process's pid namespace where
 * it records one, and a pid that runs here no more (signal 0 refused with
 * ESRCH), or one of an earlier boot of this machine, or whose process
 * started at another time (the pid reused). A hostname alone proves no
 * machine (clones, hosts left as `localhost`, containers on the host's
 * network share one): a body without this machine's id — an older
 * grainline's (host and pid only), a foreign writer's, one from a machine
 * without /etc/machine-id, or any body when this machine has none — is
 * never judged dead, nor one without a pid or whose pid is not a positive
 * integer, nor one that records another pid namespace (a container whose
 * pids this process does not see). Anyone who may write the bucket could
 * forge one naming this host; they could delete the lock as well.
 */
function deadHolder(j: Record<string, unknown> | undefined): string | undefined {
  if (j === undefined || typeof j['host'] !== 'string' || j['host'] !== hostname()) return undefined
  const mine = machineId()
  if (mine === '' || j['machine'] !== mine) return undefined
  if (j['pidns'] !== undefined && j['pidns'] !== pidNamespace()) return undefined
  const pid = j['pid']
  if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid <= 0 || pid > MAX_PID) return undefined
  const boot = typeof j['boot'] === 'string' ? j['boot'] : ''
  const start = typeof j['start'] === 'string' ? j['start'] : ''
  if (boot !== '' && boot !== bootId()) {
    // another kernel's of this machine (its id recorded and ours): its pids mean nothing now
    return bootId() !== '' ? "this host has restarted since (its boot id is not the lock's)" : undefined
  }
  try {
    process.kill(pid, 0)
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ESRCH') return `no process ${pid} runs on this host`
    return undefined // EPERM: it runs (another user's)
  }
  if (processHolds(pid, boot, start)) return undefined
  return `process ${pid} of this host is another one than the lock's (it started at another time: the pid was reused)`
}

/**
 * The `fresh` locks but those of a run that is certainly dead
 * ({@link deadHolder}), each of which is warned of (its key, host, pid,
 * start and last write) and, with `remove`, deleted: no run can rewrite it,
 * so the deletion takes nothing from a live one (a failure is warned of; the
 * lock is ignored anyway).
 */
async function withoutDead<L extends { key: string; lastModified: Date; kind: ArchiveRunKind }>(
  bucket: S3Bucket,
  kind: ArchiveRunKind,
  fresh: readonly L[],
  logger: Logger,
  remove: boolean,
): Promise<L[]> {
  const live: L[] = []
  for (const o of fresh) {
    const body = await readLockBody(bucket, o.key)
    const why = deadHolder(body)
    if (why === undefined) {
      live.push(o)
      continue
    }
    let done = 'left as it is (these credentials may not delete it)'
    if (remove)
      try {
        await bucket.deleteAllVersions(o.key)
        done = 'deleted'
      } catch (err) {
        done = `could not be deleted (${blankUnprintable((err as Error).message)})`
      }
    logger.warn(
      { lock: o.key, host: lockField(body?.['host']), pid: body?.['pid'], lastModified: o.lastModified.toISOString() },
      `the lock ${printableName(o.key)} of a ${COMMAND[o.kind]} (${describeBody(body)}, last written ${o.lastModified.toISOString()}) is of a run that died: ${why}. Ignored, and ${done}; the ${COMMAND[kind]} goes on`,
    )
  }
  return live
}

/** The kind among `others` of the lock `key` under `prefix`'s `locks/`, or undefined (this run's own kind, or no lock). */
function lockKindOf(prefix: string, key: string, others: readonly ArchiveRunKind[]): ArchiveRunKind | undefined {
  const name = key.slice(locksPrefix(prefix).length)
  return others.find((k) => name.startsWith(`${k}-`))
}

/**
 * Whether a lock stamped `lastModified` (by S3, to the second) is fresh when
 * S3's clock reads at least `serverTime`: its age's lower bound is below
 * {@link LOCK_STALE_MS} — takeRunLock's and refuseBesideExcluded's one rule.
 */
function freshLock(serverTime: number, lastModified: Date): boolean {
  return serverTime - (lastModified.getTime() + LAST_MODIFIED_RESOLUTION_MS) < LOCK_STALE_MS
}

/**
 * A field of a lock's body for a message an operator reads: anyone who can
 * write the bucket wrote it, so control characters (a terminal escape, a
 * newline faking a log line) become spaces and it is cut to 100 characters.
 */
function lockField(v: unknown): string {
  const text = blankUnprintable(String(v))
  return text.length > 100 ? `${text.slice(0, 100)}…` : text
}

/** A lock's body (a JSON object), or undefined when it cannot be read or is not one. */
async function readLockBody(bucket: S3Bucket, key: string): Promise<Record<string, unknown> | undefined> {
  try {
    const j = JSON.parse((await bucket.get(key, 4096)).toString('utf8')) as unknown
    return typeof j === 'object' && j !== null && !Array.isArray(j) ? (j as Record<string, unknown>) : undefined
  } catch {
    return undefined
  }
}

/** "host H pid P since T" of a lock's body, or what is known when it cannot be read. */
function describeBody(j: Record<string, unknown> | undefined): string {
  return j === undefined ? 'its body could not be read' : `host ${lockField(j['host'])} pid ${lockField(j['pid'])} since ${lockField(j['time'])}`
}

/** A lock's holder: its description, and the host and pid its body names. */
interface LockHolder {
  readonly text: string
  readonly host: unknown
  readonly pid: unknown
  readonly machine: unknown
}

async function describeLock(bucket: S3Bucket, key: string): Promise<LockHolder> {
  const j = await readLockBody(bucket, key)
  return { text: describeBody(j), host: j?.['host'], pid: j?.['pid'], machine: j?.['machine'] }
}

/** Where an operator sees whether the run holding a lock is alive. */
function aliveWhere(who: LockHolder): string {
  if (who.host === undefined || who.pid === undefined) return 'its body names no host and pid to look for'
  const ps = `ps -p ${lockField(who.pid)}`
  if (who.host === hostname() && machineId() !== '' && who.machine === machineId()) return `its pid runs on this host: ${ps}; a lock of a process gone from this host is ignored by itself`
  if (who.host === hostname())
    return `on host ${lockField(who.host)}, this host's name, though the lock records ${who.machine === undefined ? 'no machine id' : "another machine id than this host's"} (an older grainline's lock, or another machine of the same name: it is judged by its age alone): ${ps} there`
  return `on host ${lockField(who.host)}: ${ps}`
}

/** Run `fn` holding the run lock of `kind` (released however `fn` ends). */
export async function withRunLock<T>(bucket: S3Bucket, prefix: string, kind: ArchiveRunKind, logger: Logger, fn: (lock: HeldRunLock) => Promise<T>, clock: RunLockOptions = {}): Promise<T> {
  const lock = await takeRunLock(bucket, prefix, kind, logger, clock)
  try {
    return await fn(lock)
  } finally {
    await lock.release()
  }
}
