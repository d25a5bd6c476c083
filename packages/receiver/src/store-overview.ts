/**
 * The one JSON document of a store that the dashboard's API serves
 * (`GET /api/v1/status`) and `grainline status --output json` prints: the
 * store's health (`assessStore`), and per VM its RPO state against its
 * target, the space its folder takes, its restore points, its last cycle and
 * — when read by a running receiver — the cycle in flight with its progress.
 * Read-only; never takes a VM's lock.
 */
import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import { globMatch } from './auth.ts'
import { readCycleHistory, type CycleHistoryEntry } from './cycle-history.ts'
import { ReceiverError } from './errors.ts'
import type { LiveCycle, LiveState, SessionErrorRecord } from './live-state.ts'
import { listPoints } from './points-admin.ts'
import { storeStatus, type VmStatus } from './store-admin.ts'
import { assessStore, type MirrorHealth, type StoreHealth, type StoreHealthOptions } from './store-health.ts'
import { allocatedBytes } from './store-usage.ts'
import { VmPaths } from './vm-paths.ts'
import { DEFAULT_RPO_TARGET_MS } from './config-schema.ts'

/** Recovery point objectives: a default target and targets by VM-name glob (first match wins). */
export interface RpoPolicy {
  /** @default 24 h */
  readonly targetMs?: number
  readonly vms?: Readonly<Record<string, number>>
}

/** RPO states, best first. */
export const RpoStates = ['ok', 'warning', 'critical'] as const
export type RpoState = (typeof RpoStates)[number]

/** Share of the target above which a mirror's age is a warning. */
export const RPO_WARNING_RATIO = 0.75

/** A mirror's age against its target. */
export interface RpoStatus {
  readonly targetSeconds: number
  readonly ageSeconds: number | null
  /** ok up to 75 % of the target, warning above, critical above the target or never committed */
  readonly state: RpoState
}

/** A restore point in the overview. */
export interface OverviewPoint {
  readonly cycle: number
  readonly committedAt: string
  /** bytes its own increments take */
  readonly bytes: number
  readonly held: boolean
  /**
   * the cycle of a resync of a mirror marked diverged that this point
   * predates, when no certify digest of its cycle proves the disks that read
   * through it (points-admin.ts PointDiskInfo.divergedResync): it may hold
   * the damage that resync repaired
   */
  readonly unprovenBeforeRepair?: number
}

/** One VM of the overview. */
export type VmOverview = VmStatus & {
  readonly health: MirrorHealth
  readonly rpo: RpoStatus
  /** bytes allocated by the VM's folder (mirror, points, state) */
  readonly usedBytes: number
  readonly restorePoints: readonly OverviewPoint[]
  readonly lastCycle: CycleHistoryEntry | null
  /** the cycle in flight in the running receiver, with progress; null when none or read offline */
  readonly live: LiveCycle | null
}

/** The overview of a store. */
export type StoreOverview = Omit<StoreHealth, 'vms'> & { readonly vms: readonly VmOverview[] }

/** One VM's page: its overview entry, cycle history (30 days) and last session errors. */
export interface VmDetail {
  readonly vm: VmOverview
  readonly history: readonly CycleHistoryEntry[]
  /** newest last; only those seen by the running receiver (empty offline) */
  readonly errors: readonly SessionErrorRecord[]
}

/** Options of {@link storeOverview}. */
export interface StoreOverviewOptions extends StoreHealthOptions {
  readonly rpo?: RpoPolicy
  /** the running receiver's live state (cycles in flight, errors) */
  readonly live?: LiveState
  /** only these VMs (a viewer token's globs) */
  readonly covers?: (vm: string) => boolean
}

/** The RPO target of a VM, ms. */
export function rpoTargetMs(rpo: RpoPolicy | undefined, vm: string): number {
  for (const [glob, ms] of Object.entries(rpo?.vms ?? {})) if (globMatch(glob, vm)) return ms
  return rpo?.targetMs ?? DEFAULT_RPO_TARGET_MS
}

/** A mirror's RPO state (pure). */
export function assessRpo(targetMs: number, ageSeconds: number | null): RpoStatus {
  const targetSeconds = Math.round(targetMs / 1000)
  const state: RpoState = ageSeconds === null || ageSeconds * 1000 > targetMs ? 'critical' : ageSeconds * 1000 > targetMs * RPO_WARNING_RATIO ? 'warning' : 'ok'
  return { targetSeconds, ageSeconds, state }
}

/**
 * What the overview reads of a store: the folder store (`folderStoreReader`)
 * and the Ceph store (ceph-overview.ts `cephStoreReader`) each give the
 * same shapes, so `grainline status`, `/metrics`, the dashboard and its API
 * work the same on both.
 */
export interface StoreReader {
  /** the store as documents name it: a folder, or `ceph:POOL` */
  readonly store: string
  /**
   * Every VM's status, sorted by name.
   * @throws ReceiverError E_NOT_FOUND when the store does not exist
   */
  status(): Promise<{ store: string; vms: VmStatus[] }>
  /** a VM's space (bytes its mirror, points and state take) and restore points, from the last {@link status} read where the store allows */
  extras(vm: VmStatus): Promise<{ usedBytes: number; restorePoints: OverviewPoint[] }>
  /** a VM's cycle history, oldest first (empty when none or unreadable) */
  history(vm: string, now?: number): Promise<CycleHistoryEntry[]>
}

/** The reader of the folder store at `storeDir`. */
export function folderStoreReader(storeDir: string): StoreReader {
  return {
    store: storeDir,
    async status() {
      const st = await stat(storeDir).catch((err: NodeJS.ErrnoException) => err)
      if (st instanceof Error) throw new ReceiverError('E_NOT_FOUND', `store ${storeDir} does not exist (${st.code ?? st.message})`)
      if (!st.isDirectory()) throw new ReceiverError('E_NOT_FOUND', `store ${storeDir} is not a folder`)
      return await storeStatus(storeDir)
    },
    async extras(v) {
      let restorePoints: OverviewPoint[] = []
      if ((v.points ?? []).length > 0) {
        restorePoints = await listPoints(storeDir, v.vm).then(
          (l) =>
            l.points
              .filter((p) => !p.current)
              .map((p) => {
                const repair = p.disks.find((d) => d.divergedResync !== undefined && d.certify?.ok !== true)?.divergedResync
                return { cycle: p.cycle, committedAt: p.committedAt, bytes: p.bytes, held: p.held, ...(repair === undefined ? {} : { unprovenBeforeRepair: repair.cycle }) }
              }),
          () => [],
        )
      }
      return { usedBytes: await allocatedBytes(join(storeDir, v.vm)).catch(() => 0), restorePoints }
    },
    history: (vm, now) => readCycleHistory(new VmPaths(storeDir, vm), now),
  }
}

const readerOf = (store: string | StoreReader): StoreReader => (typeof store === 'string' ? folderStoreReader(store) : store)

async function overviewOf(reader: StoreReader, v: VmStatus & { health: MirrorHealth }, opts: StoreOverviewOptions): Promise<VmOverview> {
  const history = await reader.history(v.vm, opts.now)
  const { usedBytes, restorePoints } = await reader.extras(v)
  return {
    ...v,
    rpo: assessRpo(rpoTargetMs(opts.rpo, v.vm), v.health.ageSeconds),
    usedBytes,
    restorePoints,
    lastCycle: history.at(-1) ?? null,
    live: opts.live?.cycle(v.vm) ?? null,
  }
}

/**
 * The overview of a store (`GET /api/v1/status`, `grainline status --output json`): a folder, or a {@link StoreReader}.
 * @throws ReceiverError E_NOT_FOUND when the store does not exist
 */
export async function storeOverview(store: string | StoreReader, opts: StoreOverviewOptions = {}): Promise<StoreOverview> {
  const reader = readerOf(store)
  const status = await reader.status()
  const covers = opts.covers
  const h = assessStore(covers === undefined ? status : { ...status, vms: status.vms.filter((v) => covers(v.vm)) }, opts)
  const vms: VmOverview[] = []
  for (const v of h.vms) vms.push(await overviewOf(reader, v, opts))
  return { ...h, vms }
}

/**
 * One VM's page (`GET /api/v1/vms/NAME`), or undefined when the store holds no such VM (or `covers` hides it).
 * @throws ReceiverError E_NOT_FOUND when the store does not exist
 */
export async function vmDetail(store: string | StoreReader, vm: string, opts: StoreOverviewOptions = {}): Promise<VmDetail | undefined> {
  const reader = readerOf(store)
  const o = await storeOverview(reader, { ...opts, covers: (n) => n === vm && (opts.covers?.(n) ?? true) })
  const v = o.vms[0]
  if (v === undefined) return undefined
  return { vm: v, history: await reader.history(vm, opts.now), errors: (await opts.live?.loadErrors(vm)) ?? [] }
}
