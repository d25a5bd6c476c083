import { randomBytes } from 'node:crypto'
import { link, lstat, open, realpath, rename, stat, type FileHandle } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import type { Logger } from 'pino'
import { ReceiverError, ioError } from './errors.ts'
import { faultPoint } from './fault.ts'
import { unlinkIfExists } from './fs-util.ts'
import { checkVmDir, readStoreFile } from './store-fs.ts'
import type { VmPaths } from './vm-paths.ts'

/** Identities (device:inode) of the VM folders held by this process: two names of one folder (a bind mount, a case-insensitive file system) are one VM. */
const held = new Set<string>()

/** What the agent hears of a lock another process holds (SPEC §7): not that process's pid, which the log keeps. */
const BUSY_PEER = (vm: string): string => `VM ${vm} is being written by another process on the receiver (a grainline command or another receiver); the receiver's log names it`

/**
 * Folders whose lock file this process failed to remove (a read-only or full
 * store): a lock naming our own pid there is ours and stale; anywhere else a
 * lock naming our own pid is held.
 */
const leaked = new Set<string>()

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as { code?: unknown }).code === 'EPERM'
  }
}

/** This boot's id (Linux), or '' where there is none. */
export function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
  } catch {
    return ''
  }
}

/**
 * Start time of a process in clock ticks since boot (field 22 of
 * /proc/<pid>/stat), '' where /proc cannot tell, undefined when it is gone.
 */
export function processStartTime(pid: number): string | undefined {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch (err) {
    const code = (err as { code?: unknown }).code
    if (code === 'ENOENT' || code === 'ESRCH') return existsSync('/proc/self/stat') ? undefined : ''
    return ''
  }
  // "pid (comm) state ppid …": comm may hold spaces and parentheses
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ')
  return rest[22 - 3] ?? ''
}

/**
 * What the lock file says: `pid\nboot id\nstart time\ninode\n`, the inode
 * the lock file itself has (older locks: the pid only, or without the inode).
 */
export function lockText(ino?: number | bigint, copied = false, where = ''): string {
  const head = `${process.pid}\n${bootId()}\n${processStartTime(process.pid) ?? ''}\n`
  if (ino === undefined) return head
  const tail = where !== '' ? `${copied ? COPIED_LINE : ''}\n${where}\n` : copied ? `${COPIED_LINE}\n` : ''
  return `${head}${ino}\n${tail}`
}

/**
 * Where a lock file lies, its folder's real path (the sixth line of lockText; '' when it cannot be resolved). A lock
 * whose inode is not the one it records but that lies where it was written, its holder alive, is no copy: a copy
 * made while its holder runs lies elsewhere (another folder, host or boot). Inode numbers are not stable on every
 * file system (SMB mounted noserverino, FUSE mounts without use_ino such as sshfs): there the holder's live lock,
 * taken for a copy, was taken over, and two processes wrote the mirror at once.
 */
async function lockWhere(paths: VmPaths): Promise<string> {
  try {
    return join(await realpath(paths.gdir), basename(paths.lock))
  } catch {
    return ''
  }
}

/** Whether a lock records that it lies at `where` (lockWhere; false for a lock that records no place). */
function lockLiesAt(text: string, where: string): boolean {
  return where !== '' && text.split('\n')[5] === where
}

/**
 * The fifth line of a lock that took over a copy (lockIsCopy) and whose VM
 * may not be marked diverged yet: a crash before the mark leaves a lock that
 * says so, and whoever takes it over next marks the VM (VmMirror.acquire).
 */
const COPIED_LINE = 'copied'

/** Whether a lock says its holder took over a copied lock and may not have marked the VM diverged yet (lockText `copied`). */
export function lockOwesCopy(text: string): boolean {
  return text.split('\n')[4] === COPIED_LINE
}

/**
 * Whether a lock file is a copy: its text records an inode (lockText) other
 * than the one it has. A copy of a store (cp -a, rsync, tar, a disk by
 * courier) made while a receiver or a grainline command held the VM gives
 * every file a new inode; a crash, a reboot or a rename keeps the lock's.
 * Such a lock is nobody's (its pid, if alive, holds the original), and the
 * mirror beside it was copied while it was being written.
 */
export function lockIsCopy(text: string, ino: bigint | undefined): boolean {
  const recorded = text.split('\n')[3] ?? ''
  return ino !== undefined && /^[0-9]+$/.test(recorded) && BigInt(recorded) !== ino
}

/** The inode of the file at `path` (undefined when it is gone or cannot be stat'ed). */
async function inodeOf(path: string): Promise<bigint | undefined> {
  try {
    return (await lstat(path, { bigint: true })).ino
  } catch {
    return undefined
  }
}

/**
 * Whether the process that wrote a lock still holds it: its pid is alive
 * and, when the lock records them, this is the same boot and the pid's
 * process started at the recorded time (a pid reused after a reboot or in a
 * container by an unrelated process does not hold the lock). A lock of this
 * very process is held: it was taken through another name of the folder.
 */
export function lockHolderAlive(text: string): boolean {
  const [pidText = '', boot = '', start = ''] = text.split('\n')
  return processHolds(Number.parseInt(pidText, 10), boot, start)
}

/**
 * Whether process `pid` of this host, which recorded this `boot` id and its
 * `start` time ('' each: not recorded), still runs: alive (a signal 0 is
 * not refused with ESRCH), the same boot, and that pid's process started at
 * the recorded time. A pid that is not a positive integer is no process
 * (never a process group: kill(0) and kill(-1) would reach many).
 */
export function processHolds(pid: number, boot: string, start: string): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0 || !processAlive(pid)) return false
  if (boot !== '' && bootId() !== '' && boot !== bootId()) return false
  if (start !== '') {
    const now = processStartTime(pid)
    if (now === undefined) return false
    if (now !== '' && now !== start) return false
  }
  return true
}

/** How long a lock file may stay empty (its creator writing it) or a takeover claim may stay before it counts as stale. */
export const LOCK_SETTLE_MS = 5_000
/** How long lockFile keeps trying while another process takes over the same stale lock. */
const TAKE_TIMEOUT_MS = 10_000

/** The age of a file in ms (undefined when it is gone). */
async function ageMs(path: string): Promise<number | undefined> {
  try {
    return Date.now() - (await stat(path)).mtimeMs
  } catch {
    return undefined
  }
}

/**
 * Take the VM's lock file (`.grainline/lock`: our pid, boot id and process
 * start time) so that two processes — a receiver and `grainline mirror
 * rollback`, say — never write one mirror at once. The lock is written to a
 * file of its own first and then linked into place (`link` fails when the
 * lock exists): it never exists empty or half-written, except one left by an
 * older version or a full disk, which counts as stale only once older than
 * {@link LOCK_SETTLE_MS}. A lock whose process is gone is taken over under a
 * claim (`lock.takeover`, created exclusively): the claimant looks again and
 * removes the lock only if it is still the stale one it judged, so that two
 * processes taking over the same stale lock (a receiver's recovery and a
 * `points prune` after a crash) never both end up holding it. Returns false
 * when the VM folder does not exist yet (a first VmOpen creates it under the
 * in-process lock) or the lock cannot be written for lack of space (a
 * rollback must still work on a full disk).
 */
async function lockFile(paths: VmPaths, vm: string, key: string, log: Logger): Promise<{ readonly locked: boolean; readonly copied: boolean; readonly copyKept?: string }> {
  const deadline = Date.now() + TAKE_TIMEOUT_MS
  const claim = `${paths.lock}.takeover`
  const pause = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 25 + Math.random() * 50))
  const where = await lockWhere(paths)
  while (Date.now() < deadline) {
    const created = await createLock(paths, vm, log, where)
    if (created !== 'exists') return { locked: created, copied: false }
    const ino = await inodeOf(paths.lock)
    const text = await readLockText(paths.lock)
    if (text === undefined) continue // gone meanwhile: try again
    const pid = Number.parseInt(text, 10)
    // a lock copied with the store is nobody's: its pid, alive or not, holds the original (or nothing)
    const copied = lockIsCopy(text, ino) || lockOwesCopy(text)
    // a live holder's lock where it wrote it is held, whatever inode the file system shows now (lockWhere)
    if ((!lockIsCopy(text, ino) || lockLiesAt(text, where)) && lockHolderAlive(text) && !(pid === process.pid && leaked.has(key))) {
      throw new ReceiverError('E_BUSY', `VM ${vm} is being written by process ${pid}`, { peerMessage: BUSY_PEER(vm) })
    }
    if (!Number.isSafeInteger(pid) && ((await ageMs(paths.lock)) ?? 0) < LOCK_SETTLE_MS) {
      // an empty lock (an older version writing it right now, or a full disk): stale only once it has settled
      await pause()
      continue
    }
    // stale: take it over under the claim, and only if it is still the lock judged stale
    faultPoint('lock-stale')
    let fh: FileHandle
    try {
      fh = await open(claim, 'wx', 0o644)
    } catch (err) {
      const code = (err as { code?: unknown }).code
      if (code === 'ENOENT') continue
      if (code === 'EROFS') return { locked: false, copied }
      if (code !== 'EEXIST') throw ioError(err, 'taking over a stale VM lock')
      // another process is taking it over: wait for it (a claim left by a crash goes once it has settled)
      if (((await ageMs(claim)) ?? 0) >= LOCK_SETTLE_MS) await unlinkIfExists(claim).catch(() => {})
      await pause()
      continue
    }
    await fh.close()
    try {
      if ((await readLockText(paths.lock)) !== text) continue
      if (copied) {
        log.warn(
          { vm, pid: Number.isSafeInteger(pid) ? pid : null, lock: paths.lock },
          `VM ${vm}: its lock file is a copy (another inode than it records): the store was copied while a receiver or a grainline command was writing this VM, so its mirror may mix two moments; taken over, the mirror is marked diverged`,
        )
      } else log.warn({ vm, pid: Number.isSafeInteger(pid) ? pid : null }, 'stale VM lock taken over')
      leaked.delete(key)
      if (copied) {
        // replaced by our lock saying `copied` in one rename, never removed first: without room for ours the copy
        // stays, for the next taker to find if the VM cannot be marked diverged now (a full store)
        if (await replaceCopiedLock(paths, vm, log, where)) return { locked: true, copied: true }
        return { locked: false, copied: true, copyKept: text }
      }
      try {
        await unlinkIfExists(paths.lock)
      } catch (e) {
        // a read-only store: nobody can write it, ours to report when we try
        if ((e as { code?: unknown }).code === 'EROFS') return { locked: false, copied }
        throw ioError(e, 'taking over a stale VM lock')
      }
    } finally {
      await unlinkIfExists(claim).catch(() => {})
    }
  }
  throw new ReceiverError('E_BUSY', `VM ${vm}: could not take its lock within ${TAKE_TIMEOUT_MS / 1000} s (other processes kept taking it over)`)
}

/** The lock created exclusively in place and then written (a file system without hard links): empty for a moment. */
async function createLockInPlace(paths: VmPaths, vm: string, log: Logger, where: string): Promise<boolean | 'exists'> {
  let fh: FileHandle
  try {
    fh = await open(paths.lock, 'wx', 0o644)
  } catch (err) {
    if ((err as { code?: unknown }).code === 'EEXIST') return 'exists'
    throw ioError(err, 'taking the VM lock')
  }
  await writeLockText(fh, vm, log, where)
  return true
}

/** Put our lock, saying `copied` (fsynced), in the place of a copied lock by a rename; false when there is no room for it (ENOSPC, EDQUOT, EROFS). */
async function replaceCopiedLock(paths: VmPaths, vm: string, log: Logger, where: string): Promise<boolean> {
  const tmp = `${paths.lock}.${process.pid}.${randomBytes(6).toString('hex')}.new`
  const room = (err: unknown): boolean => {
    const code = (err as { code?: unknown }).code
    if (code !== 'ENOSPC' && code !== 'EDQUOT' && code !== 'EROFS') return true
    log.warn({ vm, code }, 'no room for a VM lock in the place of the copied one: the copy stays until the VM is marked diverged')
    return false
  }
  try {
    const fh = await open(tmp, 'wx', 0o644)
    try {
      await fh.writeFile(lockText((await fh.stat({ bigint: true })).ino, true, where))
      await fh.sync()
    } finally {
      await fh.close()
    }
    await rename(tmp, paths.lock)
    return true
  } catch (err) {
    await unlinkIfExists(tmp).catch(() => {})
    if (room(err)) throw ioError(err, 'taking over a copied VM lock')
    return false
  }
}

/** Write our lock text into `fh` and close it; on a full disk the lock stays without our pid (others take it as stale once it settled). */
async function writeLockText(fh: FileHandle, vm: string, log: Logger, where: string): Promise<void> {
  try {
    // the file's own inode: a copy of the lock (a store copied while held) has another (lockIsCopy)
    await fh.writeFile(lockText((await fh.stat({ bigint: true })).ino, false, where))
  } catch (err) {
    log.warn({ vm, code: (err as { code?: unknown }).code }, 'VM lock file without pid')
  } finally {
    await fh.close()
  }
}

/** A lock holds a pid, a boot id, a start time and an inode (lockText): a few dozen bytes. */
const LOCK_MAX_BYTES = 4096

/** The lock's text; undefined when there is no lock; empty when it cannot be read (a link, or too large: not a lock of ours, stale once settled). */
async function readLockText(path: string): Promise<string | undefined> {
  try {
    return (await readStoreFile(path, LOCK_MAX_BYTES)).toString('utf8')
  } catch (err) {
    return (err as { code?: unknown }).code === 'ENOENT' ? undefined : ''
  }
}

/** Write our lock to a file of its own and link it into place: true (ours), false (no folder, no space), 'exists'. */
async function createLock(paths: VmPaths, vm: string, log: Logger, where: string): Promise<boolean | 'exists'> {
  const tmp = `${paths.lock}.${process.pid}.${randomBytes(6).toString('hex')}.new`
  let fh: FileHandle
  try {
    fh = await open(tmp, 'wx', 0o644)
  } catch (err) {
    const code = (err as { code?: unknown }).code
    if (code === 'ENOENT') return false
    if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EROFS') {
      log.warn({ vm, code }, 'VM lock file not written')
      return false
    }
    throw ioError(err, 'taking the VM lock')
  }
  try {
    await writeLockText(fh, vm, log, where)
    try {
      await link(tmp, paths.lock)
      return true
    } catch (err) {
      const code = (err as { code?: unknown }).code
      if (code === 'EEXIST') return 'exists'
      // a file system without hard links (SMB, some FUSE): created exclusively in place, then written
      if (code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'ENOSYS') return await createLockInPlace(paths, vm, log, where)
      throw ioError(err, 'taking the VM lock')
    }
  } finally {
    await unlinkIfExists(tmp).catch(() => {})
  }
}

/**
 * The write lock of one VM mirror: held in this process (one session per
 * VM) and, across processes, by the lock file `.grainline/lock`.
 */
export class VmLock {
  private readonly paths: VmPaths
  private readonly vm: string
  private readonly log: Logger
  private readonly key: string
  /** whether we created the lock file (false: the folder did not exist yet, or the disk is full) */
  private fileLocked: boolean
  private released = false
  /**
   * Whether the stale lock taken over was a copy (lockIsCopy): the store was
   * copied while a process held this VM, so the mirror, its state and its
   * journal may each be of another moment.
   */
  readonly copied: boolean
  /** the lock file still says `copied` (lockOwesCopy): the VM is not marked diverged yet ({@link clearCopied}) */
  private owed: boolean
  /** the copied lock's text, left in place for lack of room for ours (removed once the VM is marked: {@link clearCopied}) */
  private readonly copyKept: string | undefined

  private constructor(paths: VmPaths, vm: string, log: Logger, key: string, fileLocked: boolean, copied: boolean, copyKept?: string) {
    this.paths = paths
    this.vm = vm
    this.log = log
    this.key = key
    this.fileLocked = fileLocked
    this.copied = copied
    this.owed = copied
    this.copyKept = copyKept
  }

  /**
   * The VM taken over from a copied lock is marked diverged: our lock file
   * drops its `copied` line (a new file renamed over it). Until then a crash,
   * or a release after a failed mark, leaves the line for the next taker.
   */
  async clearCopied(): Promise<void> {
    if (!this.owed) return
    if (this.fileLocked) {
      const tmp = `${this.paths.lock}.${process.pid}.${randomBytes(6).toString('hex')}.new`
      try {
        await writeLockText(await open(tmp, 'wx', 0o644), this.vm, this.log, await lockWhere(this.paths))
        await rename(tmp, this.paths.lock)
      } catch (err) {
        await unlinkIfExists(tmp).catch(() => {})
        this.log.warn({ vm: this.vm, code: (err as { code?: unknown }).code }, 'VM lock file still says it took over a copy: the next taker marks the VM diverged again')
        return
      }
    } else if (this.copyKept !== undefined && (await readLockText(this.paths.lock)) === this.copyKept) {
      try {
        await unlinkIfExists(this.paths.lock)
      } catch (err) {
        this.log.warn({ vm: this.vm, code: (err as { code?: unknown }).code }, 'the copied VM lock not removed: the next taker marks the VM diverged again')
      }
    }
    this.owed = false
  }

  /**
   * Take the lock of a VM. The VM folder must be a real folder directly in
   * the store (`create`: made if missing); the in-process lock is keyed on
   * its identity, not its name.
   * @throws ReceiverError E_BUSY when another session or process holds it, E_STORE_FILE, E_NOT_FOUND
   */
  static async take(paths: VmPaths, vm: string, log: Logger, opts: { create?: boolean } = {}): Promise<VmLock> {
    const { key } = await checkVmDir(paths.store, paths.dir, paths.gdir, opts.create === true).catch((err: unknown) => {
      throw ioError(err, `opening the folder of VM ${vm}`)
    })
    if (held.has(key)) throw new ReceiverError('E_BUSY', `VM ${vm} is being written by another session`)
    held.add(key)
    try {
      const { locked, copied, copyKept } = await lockFile(paths, vm, key, log)
      return new VmLock(paths, vm, log, key, locked, copied, copyKept)
    } catch (err) {
      held.delete(key)
      throw err
    }
  }

  /**
   * Release the lock (idempotent; synchronous so that it also runs on abort paths).
   * `moved`: the VM folder was renamed away with our lock file in it (mirror-remove.ts): the
   * folder's old name may be a new VM folder by now, whose lock is another writer's.
   */
  release(opts: { moved?: boolean } = {}): void {
    if (this.released) return
    this.released = true
    held.delete(this.key)
    if (opts.moved === true) this.fileLocked = false
    if (this.fileLocked && this.owed) {
      // the copy's mark is owed (a failed mark): the lock stays, this process takes it over again, others once we are gone
      leaked.add(this.key)
      this.log.warn({ vm: this.vm }, 'VM lock file kept: it took over a copied lock and the VM is not marked diverged yet')
      this.fileLocked = false
      return
    }
    try {
      if (this.fileLocked) rmSync(this.paths.lock, { force: true })
    } catch (err) {
      // a read-only or vanished store: the lock names our pid; this process takes it over, others once we are gone
      leaked.add(this.key)
      this.log.warn({ vm: this.vm, code: (err as { code?: unknown }).code }, 'VM lock file not removed')
    }
    this.fileLocked = false
  }
}
