/**
 * The Ceph store as the overview reads it (store-overview.ts `StoreReader`):
 * `grainline status` (text, `--output json`, the monitoring-plugin exit
 * codes), the receiver's `/metrics`, the dashboard and its JSON API read a
 * `ceph:POOL` store through this as they read a folder — the same
 * documents, from the state objects (ceph-state.ts), the history objects
 * (ceph-history.ts) and `rbd du` (ceph-space.ts).
 *
 * Every restore point's snapshots and every committed disk's snapshot are
 * looked at ({@link cephStoreDamage}): a snapshot removed behind the store
 * (`rbd snap rm` by hand), an image removed, or a snapshot smaller than the
 * capacity (the image was shrunk before the snapshot was taken by hand) is
 * a `damagedPoints` entry (a point's) or a `damagedMirror` entry (the
 * mirror's latest cycle), and the VM is CRITICAL (store-health.ts), as a
 * missing or truncated point file or mirror flat is on the folder store.
 *
 * Cost per read: one omap read of the pool's VM index (ceph-vm-index.ts),
 * one `rados get` per VM (plus a `rados stat` and a streamed `rados get`
 * per disk with a cycle in flight: its resume point, counted a pipe's piece
 * at a time, ceph-admin.ts resumePoint) and one `rbd snap ls` per
 * image a restore point or a committed disk names (its output bounded by
 * ceph-snapshots.ts SNAP_LIST_MAX_BYTES); `rbd du` of the pool only
 * when the space of a VM is asked for (the overview, not `/metrics`), once
 * per read. A state object that cannot be read is a VM with `error` (named
 * by its object), as an unreadable state file is on the folder store.
 */
import type { DigestAlgorithm } from '@grainline/protocol'
import { ReceiverError } from '../../errors.ts'
import type { DamagedMirrorDisk, DiskStatus, VmStatus } from '../../store-admin.ts'
import type { DamagedPointFile } from '../../point-chain.ts'
import { withPointsDropped, type VerifyRecord } from '../../state-file.ts'
import type { OverviewPoint, StoreReader } from '../../store-overview.ts'
import { resumePoint } from './ceph-admin.ts'
import { readCephHistory } from './ceph-history.ts'
import { imageVmKey, pointBytes, rbdDu, type RbdUsage } from './ceph-space.ts'
import { CephNames, headImages, readCephState, snapCid, stateDisks, type CephCheckRecord, type CephVmState } from './ceph-state.ts'
import { listStateObjects } from './ceph-vm-index.ts'
import { CephCommandError, type CephTarget } from './rbd-cli.ts'
import { snapSizes, snapshotProblem } from './ceph-snapshots.ts'

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

/** The snapshots of an image by name with their sizes (undefined: the image does not exist), one `rbd snap ls` per image and read. */
type SnapLister = (image: string) => Promise<Map<string, number> | undefined>

/** The damaged snapshots of `s`'s points, from the listings `list` gives (pure but for it). */
async function pointDamage(s: CephVmState, pool: string, list: SnapLister): Promise<DamagedPointFile[]> {
  const out: DamagedPointFile[] = []
  for (const p of s.points) {
    for (const [disk, d] of Object.entries(p.disks ?? {})) {
      const problem = snapshotProblem(pool, d.image, d.snap, d.capacity, await list(d.image))
      if (problem !== undefined) out.push({ cycle: p.cycle, disk, file: `${pool}/${d.image}@${d.snap}`, problem })
    }
  }
  return out
}

/**
 * The committed disks of `s` whose image or committed snapshot is missing or
 * smaller than the disk's capacity, from the listings `list` gives (pure but
 * for it). Every record of `s.disks`: a disk with a cycle in flight keeps its
 * committed snapshot (the head is written, the snapshot is its undo), and a
 * disk removed from the VM keeps its image and snapshot while points need it
 * (ceph-state.ts headImages) — it is named as removed.
 */
async function mirrorDamage(s: CephVmState, pool: string, list: SnapLister): Promise<DamagedMirrorDisk[]> {
  const out: DamagedMirrorDisk[] = []
  for (const { name, d } of stateDisks(s)) {
    // a disk only in flight (its first seed) has no committed snapshot yet
    if (d === undefined || d === null) continue
    const problem = snapshotProblem(pool, d.image, d.snap, d.capacity, await list(d.image))
    if (problem !== undefined) out.push({ disk: name, cycle: d.cycle, file: `${pool}/${d.image}@${d.snap}`, problem, ...(d.removed === undefined ? {} : { removed: d.removed }) })
  }
  return out
}

/**
 * The snapshots VM `s` names that are missing or smaller than they must
 * be: its restore points' ({@link DamagedPointFile}, `damagedPoints`) and
 * its committed disks' — the mirror's latest cycle ({@link DamagedMirrorDisk},
 * `damagedMirror`). One `rbd snap ls` per image (bounded), shared by both: a
 * mirror's image is usually its points' too. A point dropped or a cycle
 * committed while this looked (`points prune` and a commit write the state,
 * then remove the snapshots it no longer names) is not reported: when
 * something is found the state object is read again, and only what it still
 * names is.
 * @throws CephCommandError, CephOutputTooLarge, ReceiverError E_IO (a listing that is not JSON)
 */
export async function cephStoreDamage(t: CephTarget, s: CephVmState): Promise<{ points: DamagedPointFile[]; mirror: DamagedMirrorDisk[] }> {
  const listings = new Map<string, Promise<Map<string, number> | undefined>>()
  const list: SnapLister = (image) => {
    let l = listings.get(image)
    if (l === undefined) {
      l = snapSizes(t, image)
      listings.set(image, l)
    }
    return l
  }
  const points = await pointDamage(s, t.pool, list)
  const mirror = await mirrorDamage(s, t.pool, list)
  if (points.length === 0 && mirror.length === 0) return { points, mirror }
  const again = await readCephState(t, new CephNames(s.vm).state, s.vm)
  if (again === undefined) return { points: [], mirror: [] }
  const named = new Set(again.points.flatMap((p) => Object.entries(p.disks ?? {}).map(([disk, d]) => `${p.cycle}\0${disk}\0${t.pool}/${d.image}@${d.snap}`)))
  const committed = new Set(Object.entries(again.disks).map(([disk, d]) => `${disk}\0${t.pool}/${d?.image}@${d?.snap}`))
  return {
    points: points.filter((f) => named.has(`${f.cycle}\0${f.disk}\0${f.file}`)),
    mirror: mirror.filter((f) => committed.has(`${f.disk}\0${f.file}`)),
  }
}

/** The status of one VM from its state object, its points' and its disks' snapshots (the resume points of disks in flight, {@link cephStoreDamage}). */
export async function cephVmStatus(t: CephTarget, s: CephVmState): Promise<VmStatus> {
  const damage = await cephStoreDamage(t, s)
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
      inflight: inf === undefined || s.inflight === null ? null : { cycle: s.inflight.cycle, mode: inf.mode, ...(await resumePoint(t, s.vm, inf)) },
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
    damagedPoints: damage.points,
    damagedMirror: damage.mirror,
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
