/**
 * Operator views of the Ceph store, read from the pool alone (no lock
 * taken, nothing written): `grainline status` and `grainline points` of a
 * `ceph:POOL` store, and a point read back into raw files (`restore`).
 */
import { join } from 'node:path'
import { ReceiverError } from '../../errors.ts'
import { fsyncFile, mkdirDurable } from '../../fs-util.ts'
import { cliLogSource, ExtentLogTooLarge, readExtentLogRecords } from './ceph-apply.ts'
import { exportImage } from './ceph-read.ts'
import { pointSnapshots } from './ceph-restore.ts'
import { CephNames, headImages, heldDisks, readCephState, stateDisks, type CephInflightDisk, type CephVmState } from './ceph-state.ts'
import { listCephStates } from './ceph-vm-index.ts'
import type { CephTarget } from './rbd-cli.ts'
import { imageVmKey, pointBytes, rbdDu, type RbdUsage } from './ceph-space.ts'
import type { PointInfo } from '../../points-admin.ts'
import type { HoldRecord } from '../../hold-record.ts'

/** One disk in `grainline status` of a Ceph store. */
export interface CephDiskStatus {
  readonly name: string
  readonly committedCycle: number
  readonly capacity: number
  /** `POOL/IMAGE@SNAP` of the committed cycle */
  readonly snapshot: string
  /** bytes its images take (head and snapshots, `rbd du` used; a seed's new image in flight included) */
  readonly bytes: number
  readonly diverged: { readonly reason: string; readonly at: string } | null
  /** `problem`: why `resumeSeq` is 0 though the log may hold records ({@link resumePoint}) */
  readonly inflight: { readonly cycle: number; readonly mode: string; readonly resumeSeq: number; readonly problem?: string } | null
}

/** `grainline status` of a Ceph store. */
export interface CephStoreStatus {
  readonly store: string
  readonly vms: ReadonlyArray<{
    readonly vm: string
    readonly committedCycle: number
    readonly committedAt: string | null
    readonly points: number
    /** bytes the points take (`rbd du`: each point's, what the cycle after it wrote) */
    readonly pointBytes: number
    /** bytes the VM's images take in the pool, snapshots and `points open` clones included (`rbd du` used) */
    readonly bytes: number
    readonly disks: readonly CephDiskStatus[]
    /** failovers holding the mirror (no cycle is applied until `points close`) */
    readonly holds: readonly HoldRecord[]
  }>
}

/** What status shows of a disk in flight: its resume point, and why it is 0 when its log could not be counted. */
export interface CephResumePoint {
  /** the number of whole records of the extent log, in order from seq 0: where a resume of the cycle starts */
  readonly resumeSeq: number
  /** why the log was not counted (resumeSeq 0): larger than a cycle of the disk can log, or not readable; absent when it was */
  readonly problem?: string
}

/**
 * The resume point of a disk in flight: the number of whole records of its
 * extent log, counted as a resume counts them (ceph-apply.ts
 * readExtentLogRecords) but without the VM's lease (a receiver may be
 * writing): the log streamed by `rados get` ({@link cliLogSource}), held a
 * pipe's piece and one carried line at a time, only the count kept — a log
 * of any size costs the same memory, and one with a run no record can be
 * (no newline for longer than the longest record line) is read no further.
 * A log larger than a cycle of the disk can write (extentLogMaxBytes) is
 * not read: its problem says so, with what to do; a log that cannot be
 * read (a command failed) is a problem too, never a failed status. No log
 * (not written yet, or removed by a commit): 0.
 */
export async function resumePoint(t: CephTarget, vm: string, inf: CephInflightDisk): Promise<CephResumePoint> {
  let n = 0
  try {
    for await (const _ of readExtentLogRecords(t, vm, inf, cliLogSource(t))) n++
    return { resumeSeq: n }
  } catch (err) {
    if (err instanceof ExtentLogTooLarge) return { resumeSeq: 0, problem: `resume point of ${inf.name} not counted: ${err.message}` }
    return {
      resumeSeq: 0,
      problem: `resume point of ${inf.name} not counted: its extent log ${inf.log} in pool ${t.pool} could not be read after ${n} records (${(err as Error).message}); grainline status again, and if it stays, ceph -s`,
    }
  }
}

const total = (r: Readonly<Record<string, number>> | undefined): number => Object.values(r ?? {}).reduce((n, b) => n + b, 0)

/** Status of every VM of the pool, with the bytes it takes (one `rbd du` of the pool). */
export async function cephStatus(t: CephTarget): Promise<CephStoreStatus> {
  const vms = []
  const states = await listCephStates(t)
  const usage: RbdUsage[] = states.length === 0 ? [] : await rbdDu(t)
  for (const s of states) {
    const disks: CephDiskStatus[] = []
    for (const { name, d, inf } of stateDisks(s)) {
      disks.push({
        name,
        committedCycle: d?.cycle ?? 0,
        capacity: d?.capacity ?? inf?.capacity ?? 0,
        snapshot: d === undefined ? '' : `${t.pool}/${d.image}@${d.snap}`,
        bytes: usage.reduce((n, u) => n + (u.image === d?.image || u.image === inf?.image ? u.used : 0), 0),
        diverged: d?.diverged ?? null,
        inflight: inf === undefined || s.inflight === null ? null : { cycle: s.inflight.cycle, mode: inf.mode, ...(await resumePoint(t, s.vm, inf)) },
      })
    }
    const key = new CephNames(s.vm).vmKey
    const bytes = usage.reduce((n, u) => n + (imageVmKey(u.image) === key ? u.used : 0), 0)
    const pointsBytes = [...pointBytes(s.points, usage, headImages(s)).values()].reduce((n, r) => n + total(r), 0)
    vms.push({ vm: s.vm, committedCycle: s.committedCycle, committedAt: s.committedAt, points: s.points.length, pointBytes: pointsBytes, bytes, disks, holds: s.holds ?? [] })
  }
  return { store: `ceph:${t.pool}`, vms }
}

async function stateOf(t: CephTarget, vm: string): Promise<CephVmState> {
  const s = await readCephState(t, new CephNames(vm).state, vm)
  if (s === undefined) throw new ReceiverError('E_NOT_FOUND', `no mirror of VM ${vm} in Ceph pool ${t.pool}`)
  return s
}

/** The points of a VM, the mirror last (the shape of the folder store's `listPoints`). */
export async function cephListPoints(t: CephTarget, vm: string): Promise<{ vm: string; committedCycle: number; inflightCycle: number; points: PointInfo[] }> {
  const s = await stateOf(t, vm)
  const held = (cycle: number): boolean => (s.holds ?? []).some((h) => h.cycle === cycle)
  // a point's bytes: what the cycle after it wrote (ceph-space.ts); the mirror's are not a point's (0, as on the folder store)
  const bytes =
    s.points.length === 0
      ? new Map<number, Record<string, number>>()
      : pointBytes(
          s.points,
          await rbdDu(
            t,
            s.points.flatMap((p) => Object.values(p.disks).map((d) => d.image)),
          ),
          headImages(s),
        )
  const pts: PointInfo[] = s.points.map((p) => ({
    cycle: p.cycle,
    committedAt: p.committedAt,
    generation: p.generation,
    current: false,
    bytes: total(bytes.get(p.cycle)),
    held: held(p.cycle),
    disks: Object.entries(p.disks)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([name, d]) => ({ name, source: `${t.pool}/${d.image}@${d.snap}`, bytes: bytes.get(p.cycle)?.[name] ?? 0, trivial: null, certify: null })),
  }))
  pts.push({
    cycle: s.committedCycle,
    committedAt: s.committedAt ?? '',
    generation: s.generation ?? '',
    current: true,
    bytes: 0,
    held: held(s.committedCycle),
    disks: heldDisks(s).map((d) => ({ name: d.name, source: `${t.pool}/${d.image}@${d.snap}`, bytes: 0, trivial: null, certify: null })),
  })
  return { vm, committedCycle: s.committedCycle, inflightCycle: s.inflight?.cycle ?? 0, points: pts }
}

/**
 * Read point `cycle` of a VM (its committed cycle when it is the mirror)
 * into `dir`: one raw file per disk (`<disk stem>.raw`, `rbd export` of its
 * snapshot), each fsynced with its folder before this returns (`dir` made
 * with its parents fsynced): a power loss after "exported" loses nothing.
 * @throws ReceiverError E_NOT_FOUND (no such VM or point), E_STATE (a disk, image or snapshot name in the state object that is not a safe one)
 */
export async function cephRestorePoint(t: CephTarget, vm: string, cycle: number, dir: string): Promise<{ disks: Array<{ name: string; file: string; snapshot: string }> }> {
  const s = await stateOf(t, vm)
  // the disk names of the pool's state become file names in `dir`, its images and snapshots arguments: checked first
  const snaps = pointSnapshots(t, s, cycle)
  await mkdirDurable(dir, 'destination')
  const disks = []
  for (const [name, d] of snaps) {
    const file = join(dir, `${name.replace(/\.vmdk$/i, '')}.raw`)
    await exportImage(t, `${d.image}@${d.snap}`, file)
    // `rbd export` writes through the page cache: its data and the file's name made durable here
    await fsyncFile(file, 'destination')
    disks.push({ name, file, snapshot: `${t.pool}/${d.image}@${d.snap}` })
  }
  return { disks }
}
