/**
 * Restore points of a VM mirror (docs/POINTS.md): the records in
 * `state.json`, the chain links a commit rewrites, and where a point of a
 * disk is read from. Each disk's points form an SEsparse chain on top of the
 * mirror, newest first: mirror ← p(n−1) ← p(n−2) ← … — the descriptor of
 * p(k) reads as the disk after cycle k.
 */
import { stat } from 'node:fs/promises'
import { formatCid, parseDescriptor, serializeDescriptor } from '@grainline/vmdk'
import { consolidate } from '@grainline/vmdk'
import { writeFileAtomic } from './fs-util.ts'
import { ReceiverError } from './errors.ts'
import { faultPoint } from './fault.ts'
import { entryExists, readStoreFile } from './store-fs.ts'
import { pointExtentName, pointFlatName, pointPath, removePointFiles } from './increment.ts'
import { checkPointChain, checkPointMerge, MAX_POINT_DESCRIPTOR_BYTES } from './point-chain.ts'
import { checkMirrorFiles } from './mirror-check.ts'
import type { WorkProgress } from './work-progress.ts'
import type { DigestAlgorithm } from '@grainline/protocol'
import { mirrorVmx } from './mirror-vmx.ts'
import type { DiskRecord, VerifyRecord, VmStateFile } from './state-file.ts'
import type { VmPaths } from './vm-paths.ts'

/** One disk of a restore point. */
export interface PointDisk {
  /** the point's descriptor in `.grainline/points` */
  readonly file: string
  readonly stem: string
  readonly capacity: number
  /** bytes the increment takes on disk (allocated blocks of descriptor + extent) */
  readonly bytes: number
  readonly ddb: Readonly<Record<string, string>>
  readonly cycleDigest?: { readonly algorithm: DigestAlgorithm; readonly digest: string }
  /** the trivial check / certify recorded for the mirror while it was at this cycle */
  readonly trivial?: VerifyRecord
  readonly certify?: VerifyRecord
  /**
   * a base point: the disk's old mirror, which a seed replaced, kept whole
   * (a flat extent, no parent): the older points of the disk read through
   * it, the newer ones never do (docs/POINTS.md "Re-seeds keep the points")
   */
  readonly base?: true
  /**
   * this increment holds what a resync overwrote in a mirror marked diverged
   * (a failed check, a restore that found it damaged): the cycle of that
   * resync and why the mirror was marked. The points that read through it
   * read those blocks as the damaged mirror held them ({@link divergedResyncUnder}).
   * Merged increments keep the newest.
   */
  readonly divergedResync?: DivergedResync
}

/** A resync of a mirror marked diverged, as a point increment records it. */
export interface DivergedResync {
  readonly cycle: number
  readonly reason: string
}

/** A restore point: the VM as it was committed at `cycle`. */
export interface PointRecord {
  readonly cycle: number
  readonly committedAt: string
  readonly generation: string
  /** the disks whose increment holds this point; another disk reads as its next newer point (it did not change) */
  readonly disks: Readonly<Record<string, PointDisk>>
  /** the mirror's .vmx while the VM was at this point, saved in `.grainline/points` (point-config.ts); absent in points recorded before configurations were kept */
  readonly config?: string
}

/** A chain link a commit rewrites: `file`'s parent becomes the mirror of `disk` (null) or the point `parent`. */
export interface PointLink {
  readonly disk: string
  readonly file: string
  readonly parent: string | null
}

/** The VM's points, oldest first. */
export function pointsOf(state: VmStateFile): readonly PointRecord[] {
  return state.points ?? []
}

/** Every point file of a VM's points. */
export function pointFiles(points: readonly PointRecord[]): string[] {
  return points.flatMap((p) => Object.values(p.disks).map((d) => d.file))
}

/** The newest point of `disk` (its file is the child of the mirror), if any. */
export function newestPointOf(points: readonly PointRecord[], disk: string): PointDisk | undefined {
  for (let i = points.length - 1; i >= 0; i--) {
    const d = points[i]?.disks[disk]
    if (d !== undefined) return d
  }
  return undefined
}

/**
 * The disks the VM had at point `cycle` (the mirror's disks held since that
 * cycle or before, and not removed at it or before), sorted by name: a disk
 * added to the VM later is not part of an older point — restoring it there
 * would attach today's data to the past — and a disk removed from the VM is
 * not part of the points after (nor of the mirror's own cycle).
 */
export function disksAt(state: VmStateFile, cycle: number): DiskRecord[] {
  return Object.values(state.disks)
    .filter((r) => heldAt(r, cycle))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
}

/** Whether the VM had disk `r` at point `cycle`: added at or before it, not removed at or before it, not in a gap it was out of the VM. */
function heldAt(r: DiskRecord, cycle: number): boolean {
  return (r.since ?? 0) <= cycle && (r.removed === undefined || cycle < r.removed) && !(r.absent ?? []).some((g) => g.from <= cycle && cycle < g.to)
}

/**
 * The disks removed from the VM that no point of `points` holds any more
 * (none at a cycle the VM had them: {@link heldAt}): nothing reads their mirror, which
 * a commit or prune reclaims (vm-mirror.ts). None while the VM is held (an
 * opened point or a failover may read through a mirror). Pure.
 */
export function reclaimableDisks(state: VmStateFile, points: readonly PointRecord[]): DiskRecord[] {
  if ((state.holds ?? []).length > 0) return []
  return Object.values(state.disks).filter((r) => r.removed !== undefined && !points.some((p) => heldAt(r, p.cycle)))
}

/**
 * The mirror's .vmx as point `cycle` runs it: the devices of disks added
 * after that cycle are disabled (`present = "FALSE"`, mirror-vmx.ts), so that
 * a restored or opened point boots without a missing disk.
 */
export function pointVmx(text: string, state: VmStateFile, cycle: number): string {
  const held = disksAt(state, cycle)
  if (held.length === Object.keys(state.disks).length) return text
  return mirrorVmx(text, { suffix: '', diskMap: new Map(held.map((r) => [`${r.stem}.vmdk`, `${r.stem}.vmdk`])) }).text
}

/**
 * Where disk `disk` of point `cycle` is read from: the descriptor of the
 * oldest point ≥ `cycle` holding the disk, or the mirror when none (the disk
 * did not change since).
 */
export function pointSource(paths: VmPaths, state: VmStateFile, disk: string, cycle: number): string {
  const file = pointFileAt(state, disk, cycle)
  return file !== undefined ? pointPath(paths, file) : paths.descriptor(state.disks[disk]?.stem ?? disk)
}

/** The point file {@link pointSource} reads disk `disk` of point `cycle` from; undefined when it is the mirror. */
function pointFileAt(state: VmStateFile, disk: string, cycle: number): string | undefined {
  for (const p of pointsOf(state)) {
    if (p.cycle < cycle) continue
    const d = p.disks[disk]
    if (d !== undefined) return d.file
  }
  return undefined
}

/** Characters of a resync's reason kept in a point record (an archive manifest accepts up to 2000). */
export const DIVERGED_REASON_MAX = 500

/**
 * A recorded resync as read from a store's state.json (a hand-edited or
 * hostile file): a cycle ≥ 1 and a reason cut to {@link DIVERGED_REASON_MAX}
 * characters, else none. Pure.
 */
export function checkedResync(v: unknown): DivergedResync | undefined {
  const o = v as { cycle?: unknown; reason?: unknown } | null | undefined
  if (o === null || typeof o !== 'object' || !Number.isSafeInteger(o.cycle) || (o.cycle as number) < 1 || typeof o.reason !== 'string') return undefined
  return { cycle: o.cycle as number, reason: o.reason.slice(0, DIVERGED_REASON_MAX) }
}

/** The newer of two recorded resyncs of a diverged mirror (either may be absent). */
function newerResync(a: DivergedResync | undefined, b: DivergedResync | undefined): DivergedResync | undefined {
  if (a === undefined) return b
  if (b === undefined) return a
  return b.cycle >= a.cycle ? b : a
}

/**
 * The resync of a mirror marked diverged that disk `disk` of point `cycle`
 * reads through, if any: the newest recorded in the point files of its
 * chain (the oldest point ≥ `cycle` holding the disk, then each newer one,
 * up to the mirror or a base point, which ends the chain). Such a point reads
 * the blocks that resync rewrote as the mirror held them before it — the
 * damage it repaired, when the mirror was damaged — so only a whole-disk
 * (certify) digest recorded at the point's cycle proves a restore of it. Pure.
 */
export function divergedResyncUnder(state: VmStateFile, disk: string, cycle: number): DivergedResync | undefined {
  let found: DivergedResync | undefined
  for (const p of pointsOf(state)) {
    if (p.cycle < cycle) continue
    const d = p.disks[disk]
    if (d === undefined) continue
    found = newerResync(found, checkedResync(d.divergedResync))
    if (d.base === true) break
  }
  return found
}

/** `{ divergedResync }` of disk `disk` of point `cycle` ({@link divergedResyncUnder}; none for the mirror itself, which no point is newer than), to spread into a record. */
export function withDivergedResync(state: VmStateFile, disk: string, cycle: number): { divergedResync?: DivergedResync } {
  const r = divergedResyncUnder(state, disk, cycle)
  return r === undefined ? {} : { divergedResync: r }
}

/**
 * {@link pointSource}, with the chain of point files it reads through
 * checked first (point-chain.ts) and, when the chain ends at the mirror (not
 * at a base point), the mirror's descriptor and flat (mirror-check.ts): what
 * a restore, an open, a failover and an archive read a point from.
 * @throws ReceiverError E_STATE, E_STORE_FILE
 */
export async function checkedPointSource(paths: VmPaths, state: VmStateFile, disk: string, cycle: number): Promise<string> {
  return (await checkedPointChain(paths, state, disk, cycle)).source
}

/**
 * {@link checkedPointSource}, and whether the read goes through the mirror
 * (`throughMirror`: the chain ends at the mirror's flat, not at a base point)
 * and through point increments (`increments`: false when the point is the
 * mirror itself). A restore that finds a disk wrong tells from these what it
 * read: the points' own grains, the mirror's flat, or both.
 * @throws ReceiverError E_STATE, E_STORE_FILE
 */
export async function checkedPointChain(paths: VmPaths, state: VmStateFile, disk: string, cycle: number): Promise<{ source: string; throughMirror: boolean; increments: boolean }> {
  const file = pointFileAt(state, disk, cycle)
  const rec = state.disks[disk]
  const throughMirror = file === undefined || (await checkPointChain(paths, file, rec?.stem ?? disk))
  if (throughMirror) {
    if (rec === undefined) throw new ReceiverError('E_STATE', `VM ${state.vm} has no record of disk ${disk}: state.json was changed by hand; nothing was read`)
    await checkMirrorFiles(paths, rec)
  }
  return { source: pointSource(paths, state, disk, cycle), throughMirror, increments: file !== undefined }
}

/** Allocated bytes of a point's descriptor and extent, SEsparse or flat (0 when missing). */
export async function pointBytes(paths: VmPaths, file: string): Promise<number> {
  let n = 0
  for (const f of [file, pointExtentName(file), pointFlatName(file)]) {
    try {
      n += (await stat(pointPath(paths, f))).blocks * 512
    } catch {
      // missing: counts nothing
    }
  }
  return n
}

/**
 * Rewrite a point descriptor's parent (hint and CID) so that the chain reads
 * through it: the mirror descriptor of the disk, or another point. Idempotent
 * (the file is only replaced when it changes).
 */
export async function linkPoint(paths: VmPaths, state: VmStateFile, link: PointLink): Promise<void> {
  const rec = state.disks[link.disk]
  if (rec === undefined) return
  const path = pointPath(paths, link.file)
  let text: string
  try {
    text = (await readStoreFile(path, MAX_POINT_DESCRIPTOR_BYTES)).toString('utf8')
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return
    throw err
  }
  const d = parseDescriptor(text)
  let hint: string
  let cid: string
  if (link.parent === null) {
    hint = `../../${rec.stem}.vmdk`
    cid = rec.mirrorCid
  } else {
    hint = link.parent
    cid = formatCid(parseDescriptor((await readStoreFile(pointPath(paths, link.parent), MAX_POINT_DESCRIPTOR_BYTES)).toString('utf8')).cid)
  }
  if (d.parentFileNameHint === hint && formatCid(d.parentCid) === cid) return
  await writeFileAtomic(path, serializeDescriptor(d.withParent(hint, cid)))
}

/** How often a running merge of dropped points is reported, at most, between its first and last report (ms). */
export const MERGE_PROGRESS_MS = 5000

/**
 * Carry out the point work of a pending commit or prune: links, merges, then
 * removals (idempotent). `onProgress` hears of the merges, the long part
 * (SPEC §5.5 CommitProgress): 0 done of the increments' allocated bytes when
 * they start (a merge counts what earlier merges of the plan bring into its
 * increment too), then the data bytes copied, at most every
 * MERGE_PROGRESS_MS, each merge capped at its own count so the sum never
 * passes the total, and the whole total when the last one is durable;
 * nothing when there is no merge.
 */
export async function rollForwardPoints(paths: VmPaths, state: VmStateFile, onProgress?: WorkProgress, now: () => number = () => performance.now()): Promise<void> {
  const p = state.pending
  if (p === null) return
  for (const l of p.links ?? []) await linkPoint(paths, state, l)
  // consolidate finishes an interrupted merge with the same CID; a finished one has no child descriptor left
  const merges: Array<PointMerge & { bytes: number }> = []
  // sized in plan order: a merge whose child an earlier merge of the plan fills (consecutive dropped points)
  // copies what that merge brings too, which is not on disk yet
  const fed = new Map<string, number>()
  for (const m of p.merges ?? []) {
    if (!(await entryExists(pointPath(paths, m.child)))) continue
    const bytes = (await pointBytes(paths, m.child)) + (fed.get(m.child) ?? 0)
    merges.push({ ...m, bytes })
    fed.set(m.parent, (fed.get(m.parent) ?? 0) + bytes)
  }
  const total = merges.reduce((n, m) => n + m.bytes, 0)
  let before = 0
  let reported = now()
  let last = 0
  if (merges.length > 0) onProgress?.(0, total)
  for (const m of merges) {
    // consolidate writes into the parent the child names and deletes the files it lists
    await checkPointMerge(paths, m)
    await consolidate(pointPath(paths, m.child), {
      onProgress: (e) => {
        faultPoint(`merge-${e.step}`)
        if (e.step !== 'copied' || onProgress === undefined || now() - reported < MERGE_PROGRESS_MS) return
        // a zero range moves nothing: it does not use up the slot of the next report that moves
        const done = before + Math.min(e.dataBytes ?? 0, m.bytes)
        if (done <= last) return
        reported = now()
        last = done
        onProgress(done, total)
      },
    })
    before += m.bytes
  }
  if (merges.length > 0) onProgress?.(total, total)
  for (const f of p.removePoints ?? []) await removePointFiles(paths, f)
}

/** A sealed disk of the cycle being committed, as point planning sees it. */
export interface CommittedIncrement {
  readonly disk: string
  /** its reverse increment (undefined: applied without one — a seed, a capacity change, points off) */
  readonly file: string | undefined
  /** allocated bytes of the increment */
  readonly bytes: number
  /** `file` is a base point: the disk's old mirror, replaced by a seed, kept whole ({@link PointDisk.base}) */
  readonly base?: true
  /** `file` holds what a resync of a mirror marked diverged overwrote ({@link PointDisk.divergedResync}) */
  readonly divergedResync?: DivergedResync
}

/** The point part of a commit: the VM's points after it and the roll-forward work. */
export interface PointPlan {
  readonly points: PointRecord[]
  readonly links: PointLink[]
  readonly removePoints: string[]
  /** why every point was dropped (logged), if they were */
  readonly droppedAll?: string
}

/**
 * Plan the points of a commit (pure): the increments of the cycle become
 * point `state.committedCycle` — each linked onto the mirror, the disk's
 * previous newest point re-linked onto it. A re-seeded disk's old mirror
 * kept whole (`base`) is that disk's file of the point: the end of its
 * chain, the previous newest point re-linked onto it. A disk of the cycle
 * applied without either while it had a committed mirror (a capacity
 * change, a resync of a modified mirror, points turned off) breaks every
 * point of the VM: they are all dropped, with the reason returned.
 */
export function planCommitPoints(state: VmStateFile, incs: readonly CommittedIncrement[]): PointPlan {
  const old = pointsOf(state)
  const base = state.committedCycle
  const newFiles = incs.flatMap((i) => (i.file === undefined ? [] : [i.file]))
  const breaking = incs.find((i) => i.file === undefined && state.disks[i.disk] !== undefined)
  if (breaking !== undefined || newFiles.length === 0) {
    const all = [...pointFiles(old), ...newFiles]
    if (all.length === 0) return { points: [], links: [], removePoints: [] }
    const why =
      breaking === undefined
        ? 'the cycle kept no increment'
        : `disk ${breaking.disk} was applied without a reverse increment (capacity change, a seed or resync of a modified mirror, or points off): older points no longer read through its mirror`
    return { points: [], links: [], removePoints: all, droppedAll: why }
  }
  const disks: Record<string, PointDisk> = {}
  const links: PointLink[] = []
  for (const i of incs) {
    const rec = state.disks[i.disk]
    if (i.file === undefined || rec === undefined) continue
    disks[i.disk] = {
      file: i.file,
      stem: rec.stem,
      capacity: rec.capacity,
      bytes: i.bytes,
      ddb: rec.ddb,
      cycleDigest: rec.cycleDigest,
      ...(rec.trivial === undefined ? {} : { trivial: rec.trivial }),
      ...(rec.certify === undefined ? {} : { certify: rec.certify }),
      ...(i.base === true ? { base: true as const } : {}),
      ...(i.divergedResync === undefined ? {} : { divergedResync: i.divergedResync }),
    }
    // a base point has no parent: it is the whole disk
    if (i.base !== true) links.push({ disk: i.disk, file: i.file, parent: null })
    // the previous newest point reads through the new one, unless it is a base point (whole, no parent)
    const prev = newestPointOf(old, i.disk)
    if (prev !== undefined && prev.base !== true) links.push({ disk: i.disk, file: prev.file, parent: i.file })
  }
  const point: PointRecord = { cycle: base, committedAt: state.committedAt ?? new Date(0).toISOString(), generation: state.generation ?? '', disks }
  return { points: [...old, point], links, removePoints: [] }
}

/** A merge of a dropped point: `child` (the next older increment of the disk) is consolidated into `parent`, which then holds the older point. */
export interface PointMerge {
  readonly child: string
  readonly parent: string
}

/**
 * Drop points by cycle (pure). Per disk of a dropped point: when points
 * just older do not hold the disk (it did not change), they read it from the
 * dropped file, which passes to the newest of them; else, when the next
 * older point holds the disk, that older increment is merged into the dropped
 * one (the older grains win: `consolidate`), whose file then holds the older
 * point — O(their size); when older points exist but none holds the disk (it
 * did not change in between), the file passes to the next older point; when
 * no point is older, the file is removed — O(1). A base point (a re-seeded
 * disk's old mirror) ends a chain: an older base point is not merged into a
 * newer point (nothing older reads through the dropped one), but an older
 * increment is merged into a dropped base point, which stays a base.
 */
export function dropPoints(points: readonly PointRecord[], drop: readonly number[]): { points: PointRecord[]; removePoints: string[]; merges: PointMerge[] } {
  const pts = [...points].sort((a, b) => a.cycle - b.cycle)
  const removePoints: string[] = []
  const merges: PointMerge[] = []
  for (const cycle of [...drop].sort((a, b) => a - b)) {
    const idx = pts.findIndex((p) => p.cycle === cycle)
    if (idx < 0) continue
    const gone = pts[idx] as PointRecord
    for (const [disk, d] of Object.entries(gone.disks)) {
      let j = idx - 1
      while (j >= 0 && (pts[j] as PointRecord).disks[disk] === undefined) j--
      if (j >= 0 && j < idx - 1) {
        // points in between do not hold the disk and read it from `d`: it passes to the newest of them (the
        // older holder still reads through it, a base reads nothing) — a merge would leave them reading a newer point
        const prev = pts[idx - 1] as PointRecord
        pts[idx - 1] = { ...prev, disks: { ...prev.disks, [disk]: d } }
      } else if (j >= 0 && (pts[j] as PointRecord).disks[disk]?.base === true) {
        // the older holder (just before) is whole and reads nothing through `d`
        removePoints.push(d.file)
      } else if (j >= 0) {
        const older = pts[j] as PointRecord
        const od = older.disks[disk] as PointDisk
        merges.push({ child: od.file, parent: d.file })
        removePoints.push(od.file)
        // the merged file holds the older grains over the newer: what either recorded of a diverged mirror's resync stays
        const divergedResync = newerResync(od.divergedResync, d.divergedResync)
        pts[j] = {
          ...older,
          disks: {
            ...older.disks,
            [disk]: { ...od, file: d.file, bytes: od.bytes + d.bytes, ...(d.base === true ? { base: true as const } : {}), ...(divergedResync === undefined ? {} : { divergedResync }) },
          },
        }
      } else if (idx > 0) {
        const prev = pts[idx - 1] as PointRecord
        pts[idx - 1] = { ...prev, disks: { ...prev.disks, [disk]: d } }
      } else {
        removePoints.push(d.file)
      }
    }
    pts.splice(idx, 1)
  }
  return { points: pts, removePoints, merges }
}
