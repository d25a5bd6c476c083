/**
 * At most one snapshot operation at a time per hypervisor host: ESXi
 * serialises snapshot create, remove and consolidate per host, and a job
 * replicating several VMs of one host in parallel would otherwise queue them
 * on the host (and time out there). The lock lives in the driver layer: a
 * driver is wrapped so that those operations wait their turn; reads
 * (openVm, listSnapshots, disk I/O) are not serialised.
 */
import type { HypervisorDriver } from './driver.ts'
import { checkAborted } from './errors.ts'

/** Driver methods that change the VM's snapshot tree (present ones are serialised). */
export const SNAPSHOT_OPERATIONS = ['createSnapshot', 'removeSnapshot', 'consolidate'] as const

/** One FIFO lock per key (a host). */
export class HostLocks {
  readonly #tails = new Map<string, Promise<void>>()
  /** Operations that have waited or run, per key (tests and logs). */
  readonly stats = new Map<string, { runs: number; maxConcurrent: number; active: number; waiting: number }>()
  /** called when an operation has to wait for another on the same host */
  onWait: (key: string) => void = () => {}

  #stat(key: string): { runs: number; maxConcurrent: number; active: number; waiting: number } {
    let st = this.stats.get(key)
    if (st === undefined) {
      st = { runs: 0, maxConcurrent: 0, active: 0, waiting: 0 }
      this.stats.set(key, st)
    }
    return st
  }

  /** Run `fn` once every earlier operation on `key` has finished. */
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const st = this.#stat(key)
    const queued = this.#tails.has(key)
    const prev = this.#tails.get(key) ?? Promise.resolve()
    let release!: () => void
    const mine = new Promise<void>((resolve) => {
      release = resolve
    })
    const tail = prev.then(() => mine)
    this.#tails.set(key, tail)
    if (queued) {
      st.waiting++
      this.onWait(key)
      await prev
      st.waiting--
    }
    st.active++
    st.runs++
    st.maxConcurrent = Math.max(st.maxConcurrent, st.active)
    try {
      return await fn()
    } finally {
      st.active--
      release()
      if (this.#tails.get(key) === tail) this.#tails.delete(key)
    }
  }
}

/** The lock key of a driver: its host (`esxi:esx01.example.net`), or undefined when operations need no serialising (local). */
export function hostLockKey(driver: HypervisorDriver): string | undefined {
  return driver.host === undefined ? undefined : `${driver.name}:${driver.host}`
}

/**
 * `driver` with its snapshot operations serialised per host through `locks`.
 * A driver without a host (the local driver: every VM's files are its own) is returned as it is.
 * An operation that waited its turn does not start once `signal` has fired (`E_ABORTED`): a stop
 * lets the operation in flight finish, not every one queued behind it on the host (a job's VMs
 * could otherwise each still create or consolidate a snapshot, up to 30 minutes each, after it).
 */
export function withHostLock<D extends HypervisorDriver>(driver: D, locks: HostLocks, signal?: AbortSignal): D {
  const key = hostLockKey(driver)
  if (key === undefined) return driver
  const serialised = new Set<PropertyKey>(SNAPSHOT_OPERATIONS)
  return new Proxy(driver, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown
      if (typeof v !== 'function') return v
      const fn = v as (...a: unknown[]) => unknown
      // methods run on the real driver (its private fields are not on the proxy)
      if (!serialised.has(prop)) return fn.bind(target)
      return async (...args: unknown[]) =>
        await locks.run(key, async () => {
          checkAborted(signal)
          return await fn.apply(target, args)
        })
    },
  })
}
