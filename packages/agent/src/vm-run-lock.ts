/**
 * One agent run per VM at a time, across processes: a lock file beside the
 * VM's record in the state folder (`<record>.lock`), held from before the
 * record is read until the cycle is disposed.
 *
 * Two runs of one VM overlapping (a cron entry firing while last night's seed
 * still runs, a job started twice) would each load the record at its start
 * and save it later — the second over the first's commit, forcing resyncs —
 * and each removes every grainline snapshot but its own once it commits,
 * so one could consolidate the delta the other still reads. The receiver's
 * VM lock does not prevent it: it is held only while a connection is open,
 * and a run takes and removes snapshots outside it.
 *
 * The file is created exclusively and says who holds it: pid, boot id, the
 * process's start time and the host name. A lock whose process is gone (or
 * whose boot id or start time differs: a reboot, a reused pid, a container
 * run again) is stale and taken over: a state folder is one proxy's (one
 * shared by two proxies at once is not supported). A stale lock is moved aside before the new
 * one is created, and put back (link: never over another) when what was
 * moved is not what was judged stale, so two runs taking over at once never
 * both hold it.
 */
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { link, open, rename, unlink } from 'node:fs/promises'
import { hostname } from 'node:os'
import { AgentError } from './errors.ts'
import { readRegularFile } from './fs-util.ts'

/** A lock file is one short JSON line; anything larger is not one. */
const MAX_LOCK_BYTES = 4096

/** Who holds a lock. */
interface Holder {
  readonly pid: number
  readonly boot: string
  /** the process's start time in clock ticks since boot (/proc/<pid>/stat field 22), '' where unknown */
  readonly start: string
  readonly host: string
  readonly since: string
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
  } catch {
    return ''
  }
}

/** Start time of `pid` (clock ticks since boot), '' where /proc cannot tell, undefined when the process is gone. */
function startTime(pid: number): string | undefined {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch (err) {
    const code = (err as { code?: unknown }).code
    return code === 'ENOENT' || code === 'ESRCH' ? undefined : ''
  }
  // "pid (comm) state ppid …": comm may hold spaces and parentheses
  return text.slice(text.lastIndexOf(')') + 2).split(' ')[22 - 3] ?? ''
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as { code?: unknown }).code === 'EPERM'
  }
}

function me(): Holder {
  return { pid: process.pid, boot: bootId(), start: startTime(process.pid) ?? '', host: hostname(), since: new Date().toISOString() }
}

/** The holder a lock file names, or undefined when it does not parse (a torn write: stale). */
function parseHolder(text: string): Holder | undefined {
  try {
    const h = JSON.parse(text) as Partial<Holder> | null
    if (h === null || typeof h !== 'object' || !Number.isSafeInteger(h.pid) || (h.pid as number) <= 0) return undefined
    if (typeof h.boot !== 'string' || typeof h.start !== 'string' || typeof h.host !== 'string' || typeof h.since !== 'string') return undefined
    return h as Holder
  } catch {
    return undefined
  }
}

/**
 * Whether the run `h` names still runs. Judged on this machine: its boot id,
 * pid and the pid's start time (a state folder is one proxy's; the host name
 * is for the message only — a container's changes with every run, and a run
 * killed there must not hold the VM for ever).
 */
function holds(h: Holder): boolean {
  if (h.boot !== '' && h.boot !== bootId()) return false
  if (!alive(h.pid)) return false
  const now = startTime(h.pid)
  // the pid was reused by another process since
  return !(h.start !== '' && now !== undefined && now !== '' && now !== h.start)
}

/** The lock's text ('' when larger than a lock), undefined when there is none; a link, FIFO or device is E_STATE (never followed or opened to block). */
async function readLock(path: string): Promise<string | undefined> {
  try {
    // larger than any lock: garbage, taken over as stale
    return (await readRegularFile(path, { maxBytes: MAX_LOCK_BYTES, code: 'E_STATE', what: 'agent run lock', tooLarge: 'skip' }))?.toString('utf8') ?? ''
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return undefined
    throw err
  }
}

/** The lock of one VM's runs, held by this process. */
export class VmRunLock {
  readonly path: string
  #released = false

  private constructor(path: string) {
    this.path = path
  }

  /**
   * Take the lock at `path` for a run of VM `vm`.
   * @throws AgentError E_BUSY when another run holds it (naming it), E_STATE when the file cannot be created
   */
  static async acquire(path: string, vm: string): Promise<VmRunLock> {
    for (let attempt = 0; attempt < 2; attempt++) {
      if (await VmRunLock.#create(path, vm)) return new VmRunLock(path)
      const text = await readLock(path).catch((err: unknown) => {
        throw new AgentError('E_STATE', `cannot read the run lock ${path} of VM ${vm}: ${(err as Error).message}`, { cause: err })
      })
      // gone meanwhile (its run ended): try again
      if (text === undefined) continue
      const h = parseHolder(text)
      if (h !== undefined && holds(h)) {
        // this very process: most likely a run that names the VM twice (an esxi VM by name and by id: loadJob compares
        // what it can before the run, not what only the host knows)
        const self = h.pid === process.pid && h.host === hostname()
        throw new AgentError(
          'E_BUSY',
          `VM ${vm} is being replicated by another grainline run (pid ${h.pid} on ${h.host}, since ${h.since}): this run leaves the VM alone. ${
            self ? `pid ${h.pid} is this process: does the job name the VM twice (by name and by id)? Name each VM once` : `If no such run exists, remove ${path}`
          }`,
        )
      }
      // stale: moved aside, and put back if what moved is not what was judged stale (another run took it over first)
      const aside = `${path}.stale-${randomBytes(4).toString('hex')}`
      try {
        await rename(path, aside)
      } catch (err) {
        if ((err as { code?: unknown }).code === 'ENOENT') continue
        throw new AgentError('E_STATE', `cannot take over the stale run lock ${path} of VM ${vm}: ${(err as Error).message}`, { cause: err })
      }
      if ((await readLock(aside)) !== text) {
        await link(aside, path).catch(() => {})
        await unlink(aside).catch(() => {})
        continue
      }
      await unlink(aside).catch(() => {})
    }
    const h = parseHolder((await readLock(path).catch(() => undefined)) ?? '')
    throw new AgentError('E_BUSY', `VM ${vm} is being replicated by another grainline run${h === undefined ? '' : ` (pid ${h.pid} on ${h.host}, since ${h.since})`}: this run leaves the VM alone`)
  }

  /** Create the lock file exclusively; false when it exists. */
  static async #create(path: string, vm: string): Promise<boolean> {
    let fh: Awaited<ReturnType<typeof open>>
    try {
      fh = await open(path, 'wx', 0o600)
    } catch (err) {
      if ((err as { code?: unknown }).code === 'EEXIST') return false
      throw new AgentError('E_STATE', `cannot create the run lock ${path} of VM ${vm}: ${(err as Error).message} (set --state-dir / stateDir)`, { cause: err })
    }
    try {
      await fh.writeFile(`${JSON.stringify(me())}\n`)
    } catch (err) {
      await fh.close().catch(() => {})
      await unlink(path).catch(() => {})
      throw new AgentError('E_STATE', `cannot write the run lock ${path} of VM ${vm}: ${(err as Error).message}`, { cause: err })
    }
    await fh.close()
    return true
  }

  /** Let go (idempotent): the lock file is removed when it is still this process's. */
  async release(): Promise<void> {
    if (this.#released) return
    this.#released = true
    const h = parseHolder((await readLock(this.path).catch(() => undefined)) ?? '')
    if (h?.pid === process.pid && h.boot === bootId()) await unlink(this.path).catch(() => {})
  }
}
