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
 */
import type { ReceiverObserver } from './metrics.ts'

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

/** The live state of one receiver process. */
export class LiveState implements Partial<ReceiverObserver> {
  readonly #cycles = new Map<string, LiveCycle>()
  readonly #errors = new Map<string, SessionErrorRecord[]>()
  readonly #listeners = new Set<() => void>()

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

  /** The last errors of `vm`, newest last. */
  errors(vm: string): readonly SessionErrorRecord[] {
    return this.#errors.get(vm) ?? []
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
    let ring = this.#errors.get(vm)
    if (ring === undefined) {
      if (this.#errors.size >= LIVE_MAX_VMS) this.#errors.delete(this.#errors.keys().next().value as string)
      ring = []
      this.#errors.set(vm, ring)
    }
    ring.push({ at: new Date().toISOString(), cycle, code, message: message.slice(0, 500) })
    if (ring.length > ERRORS_PER_VM) ring.splice(0, ring.length - ERRORS_PER_VM)
    this.#changed()
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
