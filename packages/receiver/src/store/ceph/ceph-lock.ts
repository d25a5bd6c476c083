/**
 * A VM's lock on the Ceph store: an exclusive RADOS (cls_lock) lease on the
 * VM's lock object, taken and renewed by one long-lived helper process per
 * locked VM (Python's `rados` module from Ceph's own packages: a cls_lock
 * lock belongs to the client instance that took it, so the one-shot `rados
 * lock get` command cannot renew a lease — each run is another client). The
 * lease lasts `leaseSeconds`, is renewed every third of it with "must renew"
 * (a lease that expired and was taken by another receiver is never silently
 * retaken), and the helper releases it when its stdin closes — so a receiver
 * killed with -9 frees its VMs at once (the helper sees EOF), and one whose
 * host died frees them when the lease runs out.
 *
 * Fencing (docs/CEPH.md "Locks, several receivers and fencing"): the same
 * helper is the session's one client for metadata writes (state object,
 * logs, history, snapshots, images: {@link CephLock.put} …), and every
 * client that writes for the lease — this one and each librbd writer
 * (rbd-image.ts) — registers its RADOS address in the lock object's omap
 * before it writes. Whoever takes the lease next blocklists the addresses a
 * previous holder left registered (`ceph osd blocklist add`), then writes: a
 * receiver that was stalled past its lease (a partition, SIGSTOP, a full
 * pool) finds every later write refused (EBLOCKLISTED), reported as
 * `E_BUSY` with {@link CephLock.fenced} set, and never retried.
 * Ceph session helper source: ceph-session-helper.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import type { Logger } from 'pino'
import { ReceiverError } from '../../errors.ts'
import { CephCommandError, cephTimeouts, runCeph, type CephTarget } from './rbd-cli.ts'
import { poolFullError, unlessPoolFull } from './ceph-space.ts'
import { SESSION_HELPER } from './ceph-session-helper.ts'

/** The lock name on every lock object. */
export const LOCK_NAME = 'grainline'

/** Default lease, seconds. */
export const DEFAULT_LEASE_SECONDS = 30

/** errno of a client that was blocklisted (EBLOCKLISTED is ESHUTDOWN on Linux). */
export const EBLOCKLISTED = 108

/** Who holds a lock (from `rados lock info`): the holder's description names its receiver. */
export async function lockHolder(t: CephTarget, object: string): Promise<string> {
  try {
    const out = await runCeph(t, 'rados', ['-p', t.pool, 'lock', 'info', object, LOCK_NAME, '--format', 'json'])
    const info = JSON.parse(out.toString('utf8')) as { lockers?: Array<{ name?: string; cookie?: string; description?: string; expiration?: string }> }
    const l = info.lockers?.[0]
    if (l === undefined) return 'nobody (released just now)'
    return `${l.description || l.name || 'an unknown client'} (${l.name ?? '?'}, lease until ${l.expiration ?? '?'})`
  } catch {
    return 'another client (its lock could not be read)'
  }
}

/** What a librbd writer needs to register itself for this lease (rbd-image.ts). */
export interface CephFence {
  /** the lock object whose omap holds the registrations */
  readonly object: string
  /** the lease's cookie: registrations are `<cookie>.<role>` */
  readonly cookie: string
  /** the VM (named by a fencing error) */
  readonly vm: string
}

interface Answer {
  id?: number
  ok?: boolean
  event?: string
  errno?: number
  msg?: string
  addr?: string
  fenced?: string[]
  /** `snap_size`: the snapshot's size, -1 when the image has no such snapshot; `stat`: the object's size */
  size?: number
  /** `read`: the bytes read, base64 */
  data?: string
}

interface Pending {
  resolve(a: Answer): void
  reject(e: Error): void
}

/** The error of a fenced session (the existing lease error code, E_BUSY): names the VM and what to do. */
export function fencedError(vm: string, why: string): ReceiverError & { fenced: true } {
  const e = new ReceiverError(
    'E_BUSY',
    `VM ${vm}: this receiver was fenced (${why}): another receiver took the VM over after this one's lease ran out (a stall, a partition or a full pool); nothing more is written by this session and nothing is retried — the agent's next cycle goes to the receiver that holds the VM; check this host's link to the Ceph cluster`,
    // `why` is Ceph's own text (the client's addresses): the log keeps it
    {
      peerMessage: `VM ${vm}: this receiver was fenced: another receiver session took the VM over after this one's lease ran out; nothing more is written by this session — the agent's next cycle goes to the receiver that holds the VM (the receiver's log says why)`,
    },
  )
  return Object.assign(e, { fenced: true as const })
}

/** Whether `err` is a fencing error (fencedError). */
export function isFenced(err: unknown): boolean {
  return (err as { fenced?: unknown } | null)?.fenced === true
}

/** A held lease; `lost` turns true when renewing it failed (writes must stop). */
export class CephLock {
  private readonly proc: ChildProcess
  private readonly target: CephTarget
  private readonly object: string
  private readonly cookie: string
  private released = false
  private nextId = 1
  private readonly pending = new Map<number, Pending>()
  private log: Logger | undefined
  private vm = ''
  /** set when this lease can no longer be used: this receiver no longer owns the VM */
  lost: string | undefined = undefined
  /** set when the cluster refused this session's client as blocklisted (another receiver fenced it) */
  fenced = false
  /** this session's client address */
  readonly addr: string
  /** the addresses of the previous holder this take blocklisted (empty: it had left cleanly) */
  readonly fencedAddrs: readonly string[]

  private constructor(proc: ChildProcess, t: CephTarget, object: string, cookie: string, first: Answer) {
    this.proc = proc
    this.target = t
    this.object = object
    this.cookie = cookie
    this.addr = first.addr ?? ''
    this.fencedAddrs = first.fenced ?? []
  }

  /**
   * Take the lease on `object`, fencing a previous holder whose lease ran
   * out. `holder` describes this receiver (shown to whoever finds the VM locked: the log and the operator's
   * commands; an agent hears neither the holder's host nor its pid, nor the helper's error text: SPEC §7).
   * `vm` names the VM in what the agent hears (default: the lock object).
   * @throws ReceiverError E_BUSY naming the holder; E_NO_SPACE (a full pool); E_IO when the helper cannot run, connect or fence
   */
  static async take(t: CephTarget, object: string, holder: string, cookie: string, leaseSeconds = DEFAULT_LEASE_SECONDS, vm?: string): Promise<CephLock> {
    const [conf, id, keyring] = [t.conf ?? '', t.id ?? '', t.keyring ?? '']
    const python = process.env['GRAINLINE_PYTHON'] ?? '/usr/bin/python3'
    const proc = spawn(python, ['-c', SESSION_HELPER, conf, id, keyring, t.pool, object, LOCK_NAME, cookie, holder, String(leaseSeconds)], { stdio: ['pipe', 'pipe', 'pipe'] })
    proc.stdin?.on('error', () => {})
    const err: Buffer[] = []
    proc.stderr?.on('data', (b: Buffer) => {
      if (err.length < 32) err.push(b)
    })
    let buf = ''
    let lock: CephLock | undefined
    let settleFirst: ((a: Answer) => void) | undefined
    proc.stdout?.on('data', (b: Buffer) => {
      buf += b.toString('utf8')
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        let a: Answer
        try {
          a = JSON.parse(line) as Answer
        } catch {
          a = { event: 'error', msg: line.slice(0, 512) }
        }
        if (lock !== undefined) lock.onAnswer(a)
        else settleFirst?.(a)
      }
    })
    // taking a lease is a write: a full pool pauses it (E_NO_SPACE once the pool's flags say so)
    const first = await unlessPoolFull(
      t,
      new Promise<Answer>((resolve) => {
        settleFirst = resolve
        proc.on('error', (e) => resolve({ event: 'error', msg: `cannot run ${python}: ${e.message}` }))
        proc.on('close', (code) => resolve({ event: 'error', msg: `exit ${code}` }))
      }),
      `taking the lock ${object}`,
      () => proc.kill('SIGKILL'),
    )
    if (first.event === 'locked') {
      lock = new CephLock(proc, t, object, cookie, first)
      const l = lock
      proc.on('close', () => l.onExit())
      return lock
    }
    proc.kill('SIGKILL')
    const named = vm === undefined ? `the VM of lock ${object}` : `VM ${vm}`
    if (first.event === 'busy')
      throw new ReceiverError('E_BUSY', `VM lock ${object} in pool ${t.pool} is held by ${await lockHolder(t, object)}; another receiver replicates this VM`, {
        // the holder's host and pid are the DR site's: the log, `grainline status` and the operator's commands name it
        peerMessage: `another receiver session holds the Ceph lease of ${named} (pool ${t.pool}): it replicates this VM now; retry when it is done (the receiver's log and "grainline status" name the holder for the DR site's operator)`,
      })
    const what = (first as { what?: string }).what === 'fence' ? 'cannot fence the previous holder of' : 'cannot take'
    throw new ReceiverError(
      'E_IO',
      `${what} the Ceph lock ${object} in pool ${t.pool} (${first.msg ?? first.event}): ${Buffer.concat(err).toString('utf8').trim().slice(-1024)}${what.startsWith('cannot fence') ? ' (the client needs the mon capability to blocklist: profile rbd)' : ''}`,
      // the helper's text may name the client's ceph.conf and keyring or the cluster's addresses: the log keeps it
      { peerMessage: `${what} the Ceph lock of ${named} in pool ${t.pool} on the receiver: the Ceph session helper failed; its error is in the receiver's log, for its operator` },
    )
  }

  /** Name the VM and a logger for the error log of a fence or a lost lease. */
  attach(vm: string, log: Logger): void {
    this.vm = vm
    this.log = log
  }

  /** The helper's process id (tests stall it). */
  get helperPid(): number | undefined {
    return this.proc.pid
  }

  /** For rbd-image.ts: where a librbd writer of this lease registers its address. */
  get fence(): CephFence {
    return { object: this.object, cookie: this.cookie, vm: this.vm }
  }

  private onAnswer(a: Answer): void {
    if (a.event === 'lost') {
      this.markLost(`renewing the lease failed: ${a.msg ?? ''}`, a.errno === EBLOCKLISTED)
      return
    }
    if (a.id === undefined) return
    const p = this.pending.get(a.id)
    if (p === undefined) return
    this.pending.delete(a.id)
    if (a.ok === true) p.resolve(a)
    else p.reject(Object.assign(new Error(a.msg ?? 'failed'), { errno: a.errno ?? 0 }))
  }

  private onExit(): void {
    if (!this.released) this.markLost('the lock helper exited', false)
  }

  /** A writer of this lease was refused as blocklisted (rbd-image.ts): the whole session is fenced. */
  noteFenced(why: string): void {
    this.markLost(why, true)
  }

  private markLost(why: string, fenced: boolean): void {
    if (fenced && !this.fenced) {
      this.fenced = true
      this.log?.error({ lock: this.object, addr: this.addr, code: 'E_BUSY', why }, `fenced: another receiver took VM ${this.vm} over and blocklisted this session; nothing more is written by it`)
    } else if (this.lost === undefined && !this.released) {
      this.log?.warn({ lock: this.object, code: 'E_BUSY', why }, `lost the Ceph lease of VM ${this.vm}: another receiver may hold it now; nothing more is written by this session`)
    }
    if (this.lost === undefined) this.lost = why
    const e = this.fenced ? fencedError(this.vm, why) : this.lostError()
    for (const p of this.pending.values()) p.reject(e)
    this.pending.clear()
  }

  private lostError(): ReceiverError {
    if (this.fenced) return fencedError(this.vm, this.lost ?? 'blocklisted')
    return new ReceiverError('E_BUSY', `lost the Ceph lock of VM ${this.vm} (${this.lost}): another receiver may hold it now; nothing more is written`, {
      // why is Ceph's text or a helper's: the log keeps it
      peerMessage: `lost the Ceph lock of VM ${this.vm}: another receiver session may hold it now; nothing more is written by this session (the receiver's log says why)`,
    })
  }

  /**
   * One request to the session client; `what` names it in errors (the
   * command it stands for). Unanswered after `timeoutMs` (default
   * `cephTimeouts.commandMs`), the client is killed and its lease given up.
   */
  private async request(req: Record<string, unknown>, what: string, timeoutMs: number = cephTimeouts.commandMs): Promise<Answer> {
    if (this.lost !== undefined) throw this.lostError()
    if (this.released) throw new ReceiverError('E_IO', `the Ceph session client of VM ${this.vm} is released: ${what} not written`)
    const id = this.nextId++
    const answered = new Promise<Answer>((resolve, reject) => {
      this.pending.set(id, { resolve, reject })
      this.proc.stdin?.write(`${JSON.stringify({ ...req, id })}\n`)
    })
    answered.catch(() => {})
    let timer: NodeJS.Timeout | undefined
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => {
        const e = new CephCommandError(`${what} (session client)`, null, `no answer in ${Math.round(timeoutMs / 1000)} s, killed: is the cluster healthy (ceph -s)?`, true)
        this.kill(e)
        reject(e)
      }, timeoutMs)
    })
    deadline.catch(() => {})
    try {
      // a write to a full pool pauses: E_NO_SPACE once the pool's flags say so (the client is killed, its lease given up)
      return await unlessPoolFull(this.target, Promise.race([answered, deadline]), what, (e) => this.kill(e))
    } catch (err) {
      if (err instanceof ReceiverError) throw err
      const errno = (err as { errno?: number }).errno ?? 0
      const msg = (err as Error).message
      if (errno === EBLOCKLISTED) {
        this.markLost(`${what}: ${msg}`, true)
        throw fencedError(this.vm, `${what} refused: ${msg}`)
      }
      if (errno === 28 || errno === 122) throw poolFullError(this.target, what)
      throw new CephCommandError(`${what} (session client)`, errno, `${msg} (${errno})`)
    } finally {
      if (timer !== undefined) clearTimeout(timer)
    }
  }

  /** Give the lease up at once (a request that hangs): the next holder fences this session's clients. */
  private kill(e: Error): void {
    this.markLost(e.message, false)
    this.proc.kill('SIGKILL')
  }

  /** Write a whole object (RADOS write_full: atomic). */
  async put(object: string, data: Uint8Array): Promise<void> {
    await this.request({ op: 'put', obj: object, data: Buffer.from(data).toString('base64') }, `rados put ${object}`)
  }

  /** Remove an object; one that does not exist is fine when `missingOk`. */
  async remove(object: string, missingOk = true): Promise<void> {
    await this.request({ op: 'rm', obj: object }, `rados rm ${object}`).catch((err: unknown) => {
      if (!(missingOk && err instanceof CephCommandError && err.notFound)) throw err
    })
  }

  /** Set omap key `key` of `object` to `value` (the object created when missing). */
  async setKey(object: string, key: string, value: string): Promise<void> {
    await this.request({ op: 'omap_set', obj: object, key, val: value }, `rados setomapval ${object} ${key}`)
  }

  /** Remove omap key `key` of `object`; a missing key or object is fine. */
  async removeKey(object: string, key: string): Promise<void> {
    await this.request({ op: 'omap_rm', obj: object, key }, `rados rmomapkey ${object} ${key}`).catch((err: unknown) => {
      if (!(err instanceof CephCommandError && err.notFound)) throw err
    })
  }

  /**
   * `rbd snap create|rm|rollback IMAGE@SNAP` through the session client;
   * `timeoutMs` for work that scales with the image (a rollback rewrites
   * every object, ceph-mirror.ts cephRollbackDeadlineMs).
   */
  async snap(op: 'create' | 'rm' | 'rollback', image: string, snap: string, timeoutMs?: number): Promise<void> {
    await this.request({ op: `snap_${op}`, image, snap }, `rbd snap ${op} ${this.target.pool}/${image}@${snap}`, timeoutMs)
  }

  /**
   * The size of snapshot `snap` of `image` through the session client (no
   * process, no new cluster connection: a DiskOpen's check of its committed
   * snapshot, ceph-mirror.ts); -1 when the image has no such snapshot,
   * undefined when the image does not exist.
   */
  async snapSize(image: string, snap: string): Promise<number | undefined> {
    try {
      const a = await this.request({ op: 'snap_size', image, snap }, `rbd snap ls ${this.target.pool}/${image}`, cephTimeouts.queryMs)
      return typeof a.size === 'number' ? a.size : -1
    } catch (err) {
      if (err instanceof CephCommandError && err.notFound) return undefined
      throw err
    }
  }

  /** The size of a RADOS object through the session client (a query: no process); undefined when it does not exist. */
  async objectSize(object: string): Promise<number | undefined> {
    try {
      const a = await this.request({ op: 'stat', obj: object }, `rados stat ${object}`, cephTimeouts.queryMs)
      return typeof a.size === 'number' ? a.size : undefined
    } catch (err) {
      if (err instanceof CephCommandError && err.notFound) return undefined
      throw err
    }
  }

  /**
   * At most `length` bytes of a RADOS object from `offset` through the
   * session client (librados `read`: fewer at its end, none past it), where
   * `rados get` has no offset and reads the whole object. The answer is one
   * line of base64: keep `length` to a piece (ceph-apply.ts EXTENT_LOG_PIECE_BYTES).
   */
  async readObject(object: string, offset: number, length: number): Promise<Buffer> {
    const a = await this.request({ op: 'read', obj: object, off: offset, len: length }, `rados read ${object} ${offset}+${length}`, cephTimeouts.queryMs)
    return Buffer.from(a.data ?? '', 'base64')
  }

  /** `rbd create --size SIZE IMAGE` (the cluster's default features). */
  async createImage(image: string, size: number): Promise<void> {
    await this.request({ op: 'create', image, size }, `rbd create ${this.target.pool}/${image}`)
  }

  /** Grow an image to `size` (never shrinks). */
  async growImage(image: string, size: number): Promise<void> {
    await this.request({ op: 'grow', image, size }, `rbd resize ${this.target.pool}/${image}`)
  }

  /** `rbd snap purge` then `rbd rm` of an image; one that does not exist is fine. `timeoutMs` as for {@link snap}. */
  async removeImage(image: string, timeoutMs?: number): Promise<void> {
    await this.request({ op: 'remove', image }, `rbd rm ${this.target.pool}/${image}`, timeoutMs).catch((err: unknown) => {
      if (!(err instanceof CephCommandError && err.notFound)) throw err
    })
  }

  /**
   * Renew the lease now: a client registered before this returns was
   * either seen by any later taker (and is fenced by it) or registered
   * after a takeover — then this fails and nothing is written through it.
   * @throws ReceiverError E_BUSY (the lease is lost or this session fenced)
   */
  async confirm(): Promise<void> {
    await this.request({ op: 'renew' }, `renewing the lock ${this.object}`).catch((err: unknown) => {
      if (err instanceof ReceiverError && err.code !== 'E_IO') throw err
      this.markLost(`renewing the lease failed: ${(err as Error).message}`, false)
      throw this.lostError()
    })
  }

  /**
   * Release the lease (idempotent): the helper removes this session's
   * registrations, unlocks and exits. Those are calls to the cluster, which
   * librados waits on forever when the cluster does not answer (stopped,
   * unreachable): a helper not gone `cephTimeouts.releaseMs` after its
   * release is killed (its lease then runs out by itself and the next holder
   * fences what it left registered), so a released session never keeps the
   * receiver's process alive through the helper's pipes.
   */
  release(): void {
    if (this.released) return
    this.released = true
    if (this.lost === undefined) this.proc.stdin?.write(`${JSON.stringify({ op: 'release' })}\n`)
    this.proc.stdin?.end()
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return
    const releaseMs = cephTimeouts.releaseMs
    const timer = setTimeout(() => {
      this.log?.warn(
        { lock: this.object, pid: this.proc.pid },
        `the Ceph session client of VM ${this.vm} did not unlock within ${Math.round(releaseMs / 1000)} s of its release (does the cluster answer? ceph -s): killed; its lease runs out by itself and the next holder fences what it left registered`,
      )
      this.proc.kill('SIGKILL')
    }, releaseMs)
    // the helper's pipes keep the process alive until it is gone; the timer alone does not
    timer.unref()
    this.proc.once('exit', () => clearTimeout(timer))
  }

  /** Resolves once the session client has exited (after {@link release}: within `cephTimeouts.releaseMs`). */
  whenExited(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return Promise.resolve()
    return new Promise((resolve) => this.proc.once('exit', () => resolve()))
  }

  /** @throws ReceiverError E_BUSY when the lease was lost (another receiver may own the VM now) */
  check(vm: string): void {
    if (this.vm === '') this.vm = vm
    if (this.lost !== undefined) throw this.lostError()
  }
}
