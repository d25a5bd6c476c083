/**
 * What the receiver process knows that the store does not say: the cycles in
 * flight right now with their progress (bytes applied of the DiskOpen totals)
 * and the last session errors per VM. Fed by sessions through the
 * {@link ReceiverObserver} hooks, read by the dashboard API, and watched by
 * its event stream (`onChange`).
 *
 * Bounded: VMs are those sessions opened (names the token was allowed to
 * replicate), at most {@link LIVE_MAX_VMS} of them remembered (the oldest
 * forgotten first), {@link ERRORS_PER_VM} errors each, messages cut to 500
 * characters.
 *
 * With a folder store (`storeDir`), each VM's errors are also kept with its
 * mirror (session-errors.ts) and read back by the first look at that VM after
 * a restart. Writes for one VM run one at a time, and failures arriving while
 * one is written are folded into a single next write, so a peer failing
 * sessions in a loop costs at most one pending write per VM.
 */
import type { Logger } from 'pino'
import type { ReceiverObserver } from './metrics.ts'
import { readSessionErrors, writeSessionErrors } from './session-errors.ts'

/** Session errors kept per VM. */
export const ERRORS_PER_VM = 20
/** VMs whose errors are remembered at once. */
export const LIVE_MAX_VMS = 1000

/** One disk of a cycle in flight. */
export interface LiveDisk {
  readonly name: string
  readonly mode: string
  /** bytes (data + zero) the agent announced for this cycle (DiskOpen `totalBytes`) */
  readonly totalBytes: number
  /** bytes applied durably so far (including a resumed part) */
  doneBytes: number
  /** DiskEnd accepted */
  sealed: boolean
}

/** A cycle in flight in this process. */
export interface LiveCycle {
  readonly vm: string
  readonly cycle: number
  readonly startedAt: string
  readonly peer: string
  readonly disks: LiveDisk[]
}

/** A session error, as the agent was told it. */
export interface SessionErrorRecord {
  readonly at: string
  readonly cycle: number
  readonly code: string
  readonly message: string
}

/** Where a LiveState keeps errors across restarts. */
export interface LiveStateInit {
  /** the folder store whose VM folders keep `errors.json`; absent: errors live in memory only */
  readonly storeDir?: string
  /** where a failure to keep the errors file is logged (warn) */
  readonly log?: Logger
}

/** The live state of one receiver process. */
export class LiveState implements Partial<ReceiverObserver> {
  readonly #cycles = new Map<string, LiveCycle>()
  readonly #errors = new Map<string, SessionErrorRecord[]>()
  readonly #listeners = new Set<() => void>()
  readonly #storeDir: string | undefined
  readonly #log: Logger | undefined
  /** VMs whose kept errors were read into #errors (or found absent) */
  readonly #loaded = new Set<string>()
  /** per VM: the load/write in progress, and whether another write is due after it */
  readonly #io = new Map<string, { chain: Promise<void>; dirty: boolean }>()

  constructor(init: LiveStateInit = {}) {
    this.#storeDir = init.storeDir
    this.#log = init.log
  }

  /** Call `fn` after every change; returns the function that stops it. */
  onChange(fn: () => void): () => void {
    this.#listeners.add(fn)
    return () => this.#listeners.delete(fn)
  }

  #changed(): void {
    for (const fn of this.#listeners) fn()
  }

  /** The cycle in flight of `vm` in this process, if any. */
  cycle(vm: string): LiveCycle | undefined {
    return this.#cycles.get(vm)
  }

  /** The last errors of `vm` known in memory, newest last (see {@link loadErrors} for the kept ones). */
  errors(vm: string): readonly SessionErrorRecord[] {
    return this.#errors.get(vm) ?? []
  }

  /** The last errors of `vm`, newest last, with those kept in its mirror folder by an earlier process. */
  async loadErrors(vm: string): Promise<readonly SessionErrorRecord[]> {
    if (this.#storeDir !== undefined && !this.#loaded.has(vm)) await this.#queue(vm, false)
    return this.errors(vm)
  }

  /** Wait until every error noted so far is written. */
  async flush(): Promise<void> {
    while (this.#io.size > 0) await Promise.all([...this.#io.values()].map((x) => x.chain))
  }

  #ring(vm: string): SessionErrorRecord[] {
    let ring = this.#errors.get(vm)
    if (ring === undefined) {
      if (this.#errors.size >= LIVE_MAX_VMS) {
        const oldest = this.#errors.keys().next().value as string
        this.#errors.delete(oldest)
        this.#loaded.delete(oldest)
      }
      ring = []
      this.#errors.set(vm, ring)
    }
    return ring
  }

  /** Run the load (once) and, when `write`, one write of the VM's errors after whatever runs for it now. */
  #queue(vm: string, write: boolean): Promise<void> {
    const storeDir = this.#storeDir as string
    const cur = this.#io.get(vm)
    if (cur !== undefined) {
      cur.dirty ||= write
      return cur.chain
    }
    const entry = { chain: Promise.resolve(), dirty: write }
    const run = async (): Promise<void> => {
      if (!this.#loaded.has(vm)) {
        const kept = await readSessionErrors(storeDir, vm, ERRORS_PER_VM)
        const ring = this.#ring(vm)
        ring.unshift(...kept)
        if (ring.length > ERRORS_PER_VM) ring.splice(0, ring.length - ERRORS_PER_VM)
        this.#loaded.add(vm)
        if (kept.length > 0) this.#changed()
      }
      while (entry.dirty) {
        entry.dirty = false
        await writeSessionErrors(storeDir, vm, this.errors(vm)).catch((err: unknown) => {
          this.#log?.warn({ vm, err }, 'could not keep the session errors with the mirror (they stay in memory)')
        })
      }
    }
    entry.chain = run().finally(() => this.#io.delete(vm))
    this.#io.set(vm, entry)
    return entry.chain
  }

  cycleOpened(vm: string, cycle: number, peer: string): void {
    this.#cycles.set(vm, { vm, cycle, peer, startedAt: new Date().toISOString(), disks: [] })
    this.#changed()
  }

  diskOpened(vm: string, disk: string, mode: string, totalBytes: number, doneBytes: number): void {
    const c = this.#cycles.get(vm)
    if (c === undefined) return
    const i = c.disks.findIndex((d) => d.name === disk)
    const d: LiveDisk = { name: disk, mode, totalBytes, doneBytes, sealed: false }
    if (i >= 0) c.disks[i] = d
    else c.disks.push(d)
    this.#changed()
  }

  diskProgress(vm: string, disk: string, doneBytes: number): void {
    const d = this.#cycles.get(vm)?.disks.find((x) => x.name === disk)
    if (d === undefined || d.doneBytes === doneBytes) return
    d.doneBytes = doneBytes
    this.#changed()
  }

  diskSealed(vm: string, disk: string): void {
    const d = this.#cycles.get(vm)?.disks.find((x) => x.name === disk)
    if (d === undefined) return
    d.sealed = true
    this.#changed()
  }

  /** The session of `vm` ended (committed, failed or closed): its cycle is no longer live here. */
  sessionEnded(vm: string): void {
    if (this.#cycles.delete(vm)) this.#changed()
  }

  sessionFailed(vm: string, cycle: number, code: string, message: string): void {
    const ring = this.#ring(vm)
    ring.push({ at: new Date().toISOString(), cycle, code, message: message.slice(0, 500) })
    if (ring.length > ERRORS_PER_VM) ring.splice(0, ring.length - ERRORS_PER_VM)
    this.#changed()
    if (this.#storeDir !== undefined) void this.#queue(vm, true)
  }

  /** a committed cycle is no longer in flight (the session may still run checks) */
  cycleCommitted(vm: string): void {
    this.#cycles.delete(vm)
    this.#changed()
  }
}

/** One observer telling several (metrics and the live state). */
export function fanOut(...observers: ReadonlyArray<Partial<ReceiverObserver> | undefined>): ReceiverObserver {
  const all = observers.filter((o): o is Partial<ReceiverObserver> => o !== undefined)
  const each =
    <K extends keyof ReceiverObserver>(k: K) =>
    (...args: Parameters<NonNullable<ReceiverObserver[K]>>): void => {
      for (const o of all) (o[k] as ((...a: unknown[]) => void) | undefined)?.apply(o, args)
    }
  return {
    refused: each('refused'),
    sessionOpened: each('sessionOpened'),
    diskSealed: each('diskSealed'),
    cycleCommitted: each('cycleCommitted'),
    checked: each('checked'),
    cycleOpened: each('cycleOpened'),
    diskOpened: each('diskOpened'),
    diskProgress: each('diskProgress'),
    sessionEnded: each('sessionEnded'),
    sessionFailed: each('sessionFailed'),
  }
}
