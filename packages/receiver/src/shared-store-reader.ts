/**
 * One store read shared by every viewer of the HTTP listener. Each
 * `GET /api/v1/status`, VM page and event-stream push reads the whole store
 * (every VM's state, its points, the space its folder takes); without
 * sharing, a viewer token holder looping on the API (64 sockets) makes the
 * receiver rescan the store 64 times over, taking the disks from the
 * replication it serves. Here one read is in flight at a time and its result
 * serves every request for `maxAgeMs`; a change of the live state (a cycle
 * committed, a session opened) invalidates it, so a push after a commit
 * never shows the store from before it.
 */
import type { CycleHistoryEntry } from './cycle-history.ts'
import type { VmStatus } from './store-admin.ts'
import type { OverviewPoint, StoreReader } from './store-overview.ts'

/** How long one store read serves requests. @default 1000 ms */
export const SHARED_READ_MAX_AGE_MS = 1000

/** A {@link StoreReader} sharing reads, and how to drop what it holds. */
export interface SharedStoreReader extends StoreReader {
  /** forget every read (the next request reads the store again); a read in flight is not reused either */
  invalidate(): void
}

interface Round {
  readonly at: number
  readonly status: Promise<{ store: string; vms: VmStatus[] }>
  readonly extras: Map<string, Promise<{ usedBytes: number; restorePoints: OverviewPoint[] }>>
  readonly history: Map<string, Promise<CycleHistoryEntry[]>>
}

/** Whether `r` is already a {@link SharedStoreReader} (not wrapped again). */
export function isShared(r: string | StoreReader): r is SharedStoreReader {
  return typeof r !== 'string' && typeof (r as Partial<SharedStoreReader>).invalidate === 'function'
}

/** Share the reads of `inner` (see the file comment); `now` is a clock for tests. */
export function sharedStoreReader(inner: StoreReader, opts: { maxAgeMs?: number; now?: () => number } = {}): SharedStoreReader {
  const maxAge = opts.maxAgeMs ?? SHARED_READ_MAX_AGE_MS
  const now = opts.now ?? Date.now
  let round: Round | undefined
  const current = (): Round => {
    const t = now()
    if (round !== undefined && t - round.at < maxAge) return round
    const status = inner.status()
    const r: Round = { at: t, status, extras: new Map(), history: new Map() }
    round = r
    // a failed read is not kept: the next request tries again
    status.catch(() => {
      if (round === r) round = undefined
    })
    return r
  }
  /** memoize per round; a rejected promise is dropped so that the next request retries */
  const once = <T>(map: Map<string, Promise<T>>, key: string, make: () => Promise<T>): Promise<T> => {
    const have = map.get(key)
    if (have !== undefined) return have
    const p = make()
    map.set(key, p)
    p.catch(() => {
      if (map.get(key) === p) map.delete(key)
    })
    return p
  }
  return {
    store: inner.store,
    status: () => current().status,
    // extras depend on the status read they come with: keyed by VM within the round that read it
    extras: (v) => once(current().extras, v.vm, () => inner.extras(v)),
    history: (vm, at) => (at === undefined ? once(current().history, vm, () => inner.history(vm)) : inner.history(vm, at)),
    invalidate: () => {
      round = undefined
    },
  }
}
