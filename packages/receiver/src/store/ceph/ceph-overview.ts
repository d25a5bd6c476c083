/**
 * The Ceph store as the overview reads it (store-overview.ts `StoreReader`):
 * `grainline status` (text, `--output json`, the monitoring-plugin exit
 * codes), the receiver's `/metrics`, the dashboard and its JSON API read a
 * `ceph:POOL` store through this as they read a folder — the same
 * documents, from the state objects (ceph-state.ts), the history objects
 * (ceph-history.ts) and `rbd du` (ceph-space.ts).
 *
 * Every restore point's snapshots are looked at ({@link cephDamagedPoints}):
 * a snapshot removed behind the store (`rbd snap rm` by hand), an image
 * removed, or a snapshot smaller than the point's capacity (the image was
 * shrunk before the snapshot was taken by hand) is a `damagedPoints` entry,
 * and the VM is CRITICAL (store-health.ts), as a missing or truncated point
 * file is on the folder store.
 *
 * Cost per read: one omap read of the pool's VM index (ceph-vm-index.ts),
 * one `rados get` per VM (plus one per
 * disk with a cycle in flight: its resume point) and one `rbd snap ls` per
 * image a restore point names (its output bounded by
 * {@link SNAP_LIST_MAX_BYTES}); `rbd du` of the pool only
 * when the space of a VM is asked for (the overview, not `/metrics`), once
 * per read. A state object that cannot be read is a VM with `error` (named
 * by its object), as an unreadable state file is on the folder store.
 */
import type { DigestAlgorithm } from '@grainline/protocol'
import { ReceiverError } from '../../errors.ts'
import type { DiskStatus, VmStatus } from '../../store-admin.ts'
import type { DamagedPointFile } from '../../point-chain.ts'
import { withPointsDropped, type VerifyRecord } from '../../state-file.ts'
import type { OverviewPoint, StoreReader } from '../../store-overview.ts'
import { resumeSeq } from './ceph-admin.ts'
import { readCephHistory } from './ceph-history.ts'
import { imageVmKey, pointBytes, rbdDu, type RbdUsage } from './ceph-space.ts'
import { CephNames, headImages, readCephState, snapCid, stateDisks, type CephCheckRecord, type CephVmState } from './ceph-state.ts'
import { listStateObjects } from './ceph-vm-index.ts'
import { CephCommandError, runCeph, type CephTarget } from './rbd-cli.ts'

/** A disk's status on the Ceph store: the folder store's fields, plus its snapshot and the bytes its image takes. */
export type CephDiskOverview = DiskStatus & {
  /** `POOL/IMAGE@SNAP` of the committed cycle ('' when none) */
  readonly snapshot: string
}

/** A check as the folder store records it (older Ceph records keep only the verdict and the time). */
function verifyRecord(r: CephCheckRecord | undefined): VerifyRecord | null {
  if (r === undefined) return null
  return { ok: r.ok, at: r.at, algorithm: r.algorithm ?? ('' as DigestAlgorithm), digest: r.digest ?? '', bytes: r.bytes ?? 0 }
}

/**
 * The most bytes `rbd snap ls --format json` of one image may write (about
 * 150 per snapshot: some 25,000 snapshots, far more than a retention keeps);
 * past it the command is killed (rbd-cli.ts `CephOutputTooLarge`) and the
 * VM's status is an error, CRITICAL.
 */
export const SNAP_LIST_MAX_BYTES = 4 * 1024 * 1024

/** The snapshots of `image` by name with their sizes; undefined when the image does not exist. */
async function snapSizes(t: CephTarget, image: string): Promise<Map<string, number> | undefined> {
  let out: Buffer
  try {
    out = await runCeph(t, 'rbd', ['snap', 'ls', '--format', 'json', `${t.pool}/${image}`], undefined, { maxBytes: SNAP_LIST_MAX_BYTES })
  } catch (err) {
    if (err instanceof CephCommandError && err.notFound) return undefined
    throw err
  }
  let list: unknown
  try {
    list = JSON.parse(out.toString('utf8'))
  } catch {
    throw new ReceiverError('E_IO', `rbd snap ls of ${t.pool}/${image} did not answer JSON: ${out.toString('utf8').slice(0, 200)}`)
  }
  const sizes = new Map<string, number>()
  for (const x of Array.isArray(list) ? (list as Array<{ name?: unknown; size?: unknown }>) : []) {
    if (typeof x?.name === 'string') sizes.set(x.name, typeof x.size === 'number' ? x.size : Number(x.size))
  }
  return sizes
}

/** The damaged snapshots of `s`'s points, from the listings `list` gives (pure but for it). */
async function pointDamage(s: CephVmState, pool: string, list: (image: string) => Promise<Map<string, number> | undefined>): Promise<DamagedPointFile[]> {
  const out: DamagedPointFile[] = []
  for (const p of s.points) {
    for (const [disk, d] of Object.entries(p.disks ?? {})) {
      const file = `${pool}/${d.image}@${d.snap}`
      const sizes = await list(d.image)
      const size = sizes?.get(d.snap)
      if (sizes === undefined) out.push({ cycle: p.cycle, disk, file, problem: `is missing: its image ${pool}/${d.image} does not exist (removed behind the store)` })
      else if (size === undefined) out.push({ cycle: p.cycle, disk, file, problem: 'is missing (rbd snap ls does not list it: removed behind the store)' })
      else if (!(size >= d.capacity)) out.push({ cycle: p.cycle, disk, file, problem: `is ${size} bytes, smaller than the disk's capacity ${d.capacity} (the image was shrunk)` })
    }
  }
  return out
}

/**
 * The snapshots of VM `s`'s restore points that are missing or smaller than
 * their point's capacity: one `rbd snap ls` per image (bounded). A point
 * dropped while this looked (`points prune` writes the state, then removes
 * the snapshots) is not reported: when something is found the state object
 * is read again, and only what it still names is.
 * @throws CephCommandError, CephOutputTooLarge, ReceiverError E_IO (a listing that is not JSON)
 */
export async function cephDamagedPoints(t: CephTarget, s: CephVmState): Promise<DamagedPointFile[]> {
  const listings = new Map<string, Promise<Map<string, number> | undefined>>()
  const list = (image: string): Promise<Map<string, number> | undefined> => {
    let l = listings.get(image)
    if (l === undefined) {
      l = snapSizes(t, image)
      listings.set(image, l)
    }
    return l
  }
  const found = await pointDamage(s, t.pool, list)
  if (found.length === 0) return found
  const again = await readCephState(t, new CephNames(s.vm).state, s.vm)
  if (again === undefined) return []
  const named = new Set(again.points.flatMap((p) => Object.entries(p.disks ?? {}).map(([disk, d]) => `${p.cycle}\0${disk}\0${t.pool}/${d.image}@${d.snap}`)))
  return found.filter((f) => named.has(`${f.cycle}\0${f.disk}\0${f.file}`))
}

/** The status of one VM from its state object and its points' snapshots (the resume points of disks in flight, {@link cephDamagedPoints}). */
export async function cephVmStatus(t: CephTarget, s: CephVmState): Promise<VmStatus> {
  const disks: CephDiskOverview[] = []
  for (const { name, d, inf } of stateDisks(s)) {
    disks.push({
      name,
      committedCycle: d?.cycle ?? 0,
      committedAt: d?.committedAt ?? null,
      capacity: d?.capacity ?? inf?.capacity ?? 0,
      size: d?.capacity ?? 0,
      mirrorCid: d === undefined ? '' : snapCid(d.image, d.snap),
      // a snapshot is immutable: nothing boots or edits a committed point behind the store
      modified: false,
      trivial: verifyRecord(d?.trivial),
      certify: verifyRecord(d?.certify),
      diverged: d?.diverged ?? null,
      proven: d?.certify?.ok === true ? { kind: 'certify', at: d.certify.at, cycle: d.cycle } : null,
      inflight: inf === undefined || s.inflight === null ? null : { cycle: s.inflight.cycle, mode: inf.mode, resumeSeq: await resumeSeq(t, inf.log) },
      snapshot: d === undefined ? '' : `${t.pool}/${d.image}@${d.snap}`,
      ...(d?.removed === undefined ? {} : { removed: d.removed }),
    })
  }
  return {
    vm: s.vm,
    committedCycle: s.committedCycle,
    committedAt: s.committedAt,
    generation: s.committedCycle > 0 ? (s.generation ?? '') : '',
    inflightCycle: s.inflight?.cycle ?? 0,
    needsRecovery: s.inflight !== null || s.pending !== null,
    disks,
    vmxDropped: [],
    holds: s.holds ?? [],
    points: s.points.map((p) => p.cycle),
    pointsCommittedAt: s.points.map((p) => p.committedAt),
    ...withPointsDropped(s),
    damagedPoints: await cephDamagedPoints(t, s),
  }
}

/** The reader of the Ceph store `t` (see the file comment). */
export function cephStoreReader(t: CephTarget): StoreReader {
  const store = `ceph:${t.pool}`
  let states = new Map<string, CephVmState>()
  let usage: Promise<RbdUsage[]> | undefined
  return {
    store,
    async status() {
      let objects: string[]
      try {
        objects = await listStateObjects(t)
      } catch (err) {
        if (err instanceof CephCommandError && err.notFound) throw new ReceiverError('E_NOT_FOUND', `Ceph pool ${t.pool} does not exist (${err.stderr.trim().slice(-200)})`)
        throw err
      }
      const next = new Map<string, CephVmState>()
      const vms: VmStatus[] = []
      for (const o of objects) {
        try {
          const s = await readCephState(t, o)
          if (s === undefined) continue
          next.set(s.vm, s)
          vms.push(await cephVmStatus(t, s))
        } catch (err) {
          vms.push({
            vm: o,
            committedCycle: 0,
            committedAt: null,
            generation: '',
            inflightCycle: 0,
            needsRecovery: true,
            disks: [],
            vmxDropped: [],
            holds: [],
            points: [],
            error: (err as Error).message,
          })
        }
      }
      states = next
      usage = undefined
      return { store, vms: vms.sort((a, b) => (a.vm < b.vm ? -1 : a.vm > b.vm ? 1 : 0)) }
    },
    async extras(v) {
      const s = states.get(v.vm)
      if (s === undefined) return { usedBytes: 0, restorePoints: [] }
      usage ??= rbdDu(t).catch(() => [])
      const u = await usage
      const key = new CephNames(s.vm).vmKey
      const bytes = pointBytes(s.points, u, headImages(s))
      const held = (cycle: number): boolean => (s.holds ?? []).some((h) => h.cycle === cycle)
      const restorePoints: OverviewPoint[] = s.points.map((p) => ({
        cycle: p.cycle,
        committedAt: p.committedAt,
        bytes: Object.values(bytes.get(p.cycle) ?? {}).reduce((n, b) => n + b, 0),
        held: held(p.cycle),
      }))
      return { usedBytes: u.reduce((n, x) => n + (imageVmKey(x.image) === key ? x.used : 0), 0), restorePoints }
    },
    history: (vm, now) => readCephHistory(t, vm, now).catch(() => []),
  }
}
