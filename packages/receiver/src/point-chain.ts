/**
 * The files of restore points, checked against the layout the receiver
 * writes before anything reads or merges through them.
 *
 * A point is a text descriptor in `.grainline/points` with one SEsparse
 * extent beside it (`<name>-sesparse.vmdk`) and no change-tracking file;
 * its parent is the next newer point of the disk (a plain file name in the
 * same folder) or, for the newest, the mirror (`../../<stem>.vmdk`). A base
 * point (the old mirror a re-seed replaced) has one flat extent
 * (`<name>-flat.vmdk`) and no parent: the end of its chain. The
 * vmdk readers follow whatever a descriptor names (ESXi datastores need
 * that), and `consolidate` writes into the parent its child names and
 * deletes the files the child lists. A descriptor edited by hand, damaged,
 * or carried in a store from elsewhere could otherwise make a prune merge a
 * point's old grains into the live mirror or into a file outside the store,
 * delete a file outside it, or make a restore read another file; a symbolic
 * link in the points folder would be written or read through.
 */
import { parseDescriptor, seSparseLayout, type Descriptor } from '@grainline/vmdk'
import type { Stats } from 'node:fs'
import { lstat } from 'node:fs/promises'
import { basename } from 'node:path'
import { ReceiverError } from './errors.ts'
import { pointExtentName, pointFlatName, pointPath } from './increment.ts'
import { readStoreFile, regularFileSize } from './store-fs.ts'
import type { PointRecord } from './points.ts'
import type { VmPaths } from './vm-paths.ts'
import { grainlineCommand, storeArg } from './operator-command.ts'

/** A point descriptor is a few hundred bytes; anything larger is not one of ours. */
export const MAX_POINT_DESCRIPTOR_BYTES = 64 * 1024

/** Longest chain of points a check walks (a loop in the links ends it). */
const MAX_POINT_HOPS = 100_000

/** The parent hint of a disk's newest point: the mirror's descriptor, two folders up. */
export function mirrorHint(stem: string): string {
  return `../../${stem}.vmdk`
}

function linkError(paths: VmPaths, file: string, why: string): ReceiverError {
  return new ReceiverError(
    'E_STATE',
    `restore point ${file} of VM ${basename(paths.dir)}: ${why}; it is not as grainline wrote it (edited, damaged or carried from another store), so nothing was read, merged or removed through it. Put back the points folder from a backup, or drop the VM's points (${grainlineCommand(['points', 'prune', '--store', storeArg(paths.store), '--vm', basename(paths.dir), '--keep', '0'])}) and let the next cycles make new ones`,
  )
}

/**
 * Check one point's files: its descriptor and its extent are regular files
 * (not symbolic links, FIFOs or folders), the descriptor lists exactly its
 * own extent and no change-tracking file. Returns the descriptor.
 * @throws ReceiverError E_STATE (not a point's layout, missing), E_STORE_FILE (a link, FIFO, folder or device)
 */
export async function checkPointFiles(paths: VmPaths, file: string): Promise<Descriptor> {
  const path = pointPath(paths, file)
  const size = await regularFileSize(path)
  if (size === undefined) throw linkError(paths, file, 'its descriptor is missing')
  if (size > MAX_POINT_DESCRIPTOR_BYTES) throw linkError(paths, file, `its descriptor is ${size} bytes (a point's is a few hundred)`)
  let d: Descriptor
  try {
    d = parseDescriptor((await readStoreFile(path, MAX_POINT_DESCRIPTOR_BYTES)).toString('utf8'))
  } catch (err) {
    throw linkError(paths, file, `its descriptor does not parse (${(err as Error).message})`)
  }
  // a base point: one flat extent of its own and no parent; any other point: its SEsparse extent
  const base = d.extents.length === 1 && isBase(d)
  const extent = base ? pointFlatName(file) : pointExtentName(file)
  const names = d.extents.map((e) => e.file)
  if (names.length !== 1 || names[0] !== extent) throw linkError(paths, file, `its descriptor names the extents ${JSON.stringify(names)}, not ${JSON.stringify([extent])}`)
  if (d.changeTrackPath !== undefined) throw linkError(paths, file, `its descriptor names a change-tracking file ${JSON.stringify(d.changeTrackPath)}`)
  if ((await regularFileSize(pointPath(paths, extent))) === undefined) throw linkError(paths, file, `its extent ${extent} is missing`)
  return d
}

/** Whether a point's (checked) descriptor is a base point's: a full copy of the disk, its chain ends there. */
function isBase(d: Descriptor): boolean {
  const type = d.extents[0]?.type
  return d.parentFileNameHint === undefined && (type === 'VMFS' || type === 'FLAT')
}

/** The parent a point's descriptor names: another point's file name, or `null` for the mirror of `stem`. */
function parentOf(paths: VmPaths, file: string, d: Descriptor, stem: string): string | null {
  const hint = d.parentFileNameHint
  if (hint === mirrorHint(stem)) return null
  if (hint !== undefined && /^[^/\\\0]+\.vmdk$/i.test(hint) && basename(hint) === hint) return hint
  throw linkError(paths, file, `its parent is ${JSON.stringify(hint ?? null)}, neither a point of the same folder nor the mirror ${mirrorHint(stem)}`)
}

/**
 * Check the chain a read of point `file` of the disk `stem` goes through:
 * every point file up to the mirror or a base point (see
 * {@link checkPointFiles}), each linked to a point of the same folder or,
 * last, to the mirror of `stem`. Returns whether the chain ends at the
 * mirror (false: at a base point), whose own files the caller checks
 * (mirror-check.ts).
 * @throws ReceiverError E_STATE, E_STORE_FILE
 */
export async function checkPointChain(paths: VmPaths, file: string, stem: string): Promise<boolean> {
  const seen = new Set<string>()
  for (let f: string | null = file; f !== null; ) {
    if (seen.has(f)) throw linkError(paths, file, `its chain loops back to ${f}`)
    if (seen.size >= MAX_POINT_HOPS) throw linkError(paths, file, `its chain is longer than ${MAX_POINT_HOPS} points`)
    seen.add(f)
    const d = await checkPointFiles(paths, f)
    if (isBase(d)) return false
    f = parentOf(paths, f, d, stem)
  }
  return true
}

/**
 * Check a merge of a dropped point before `consolidate` writes: the child
 * (the next older point) names the dropped point as its parent, and both
 * points' files are as the receiver writes them — so the merge writes only
 * into the dropped point's extent and deletes only the child's two files.
 * @throws ReceiverError E_STATE, E_STORE_FILE
 */
export async function checkPointMerge(paths: VmPaths, merge: { readonly child: string; readonly parent: string }): Promise<void> {
  const d = await checkPointFiles(paths, merge.child)
  if (d.parentFileNameHint !== merge.parent) throw linkError(paths, merge.child, `its parent is ${JSON.stringify(d.parentFileNameHint ?? null)}, but the merge expects ${merge.parent}`)
  const p = await checkPointFiles(paths, merge.parent)
  // consolidate rewrites the child's descriptor and writes into the parent's descriptor and extent, in place
  await checkOwnFile(paths, merge.child, merge.child)
  await checkOwnFile(paths, merge.parent, merge.parent)
  await checkOwnFile(paths, merge.parent, isBase(p) ? pointFlatName(merge.parent) : pointExtentName(merge.parent))
}

/**
 * Check the reverse increment `file` an interrupted apply left, before it is
 * reopened for writing (increment.ts `ReverseIncrement.open`): its files are
 * as the receiver writes them ({@link checkPointFiles}: regular files, the
 * descriptor naming only its own SEsparse extent), not a base point, its
 * parent the mirror of `stem` (the reopen reads through it), and each has
 * one name ({@link checkOwnFile}) — the resumed apply writes old
 * grains into its extent, and through a hard link it would write them into
 * the live mirror's flat or another VM's file, as a merge would.
 * @throws ReceiverError E_STATE, E_STORE_FILE
 */
export async function checkIncrementFiles(paths: VmPaths, file: string, stem: string): Promise<void> {
  const d = await checkPointFiles(paths, file)
  if (isBase(d)) throw linkError(paths, file, 'it is a base point (a flat, no parent), where the in-flight cycle expects its reverse increment')
  // the reopen reads its chain (unconfined): the in-flight increment is always made over the mirror's descriptor
  if (d.parentFileNameHint !== mirrorHint(stem))
    throw linkError(paths, file, `its parent is ${JSON.stringify(d.parentFileNameHint ?? null)}, where the in-flight cycle's reverse increment has the mirror ${mirrorHint(stem)}`)
  await checkOwnFile(paths, file, file, 'the resumed apply')
  await checkOwnFile(paths, file, pointExtentName(file), 'the resumed apply')
}

/**
 * A point file a merge (or a resumed apply, into its reverse increment)
 * writes into has one name: a hard link passes every other check (a regular
 * file of the points folder), and the write would go through it into
 * whatever else it names — the live mirror's flat, another VM's file. The
 * receiver never hard-links point files (it copies, renames and creates them).
 * @throws ReceiverError E_STATE
 */
async function checkOwnFile(paths: VmPaths, file: string, name: string, writer = 'a merge'): Promise<void> {
  const st = await lstat(pointPath(paths, name))
  if (st.nlink > 1)
    throw linkError(
      paths,
      file,
      `${name} has ${st.nlink} names (a hard link: its inode ${st.dev}:${st.ino} is also another file, the mirror's flat or another VM's perhaps), and ${writer} would write into all of them; if a backup tool made the link, replace ${name} by a copy of its own (cp, then mv over it) and retry`,
    )
}

/** A restore point file `grainline status` found missing or not as the receiver wrote it. */
export interface DamagedPointFile {
  /** the point (its cycle) */
  readonly cycle: number
  readonly disk: string
  /** the file of `.grainline/points` (the descriptor, or its extent) */
  readonly file: string
  /** what is wrong: missing, not a regular file, shorter than the point's capacity requires */
  readonly problem: string
}

/**
 * The least size of a point's extent that its capacity requires: a base
 * point's flat holds the whole disk; an SEsparse extent holds at least the
 * headers and tables `createDelta` lays out for the capacity (the grains
 * start after them). 0 when the capacity is not a whole number of sectors
 * (a damaged record: nothing to compare).
 */
export function pointExtentMinSize(capacity: number, base: boolean): number {
  if (!Number.isSafeInteger(capacity) || capacity <= 0 || capacity % 512 !== 0) return 0
  return base ? capacity : (seSparseLayout(capacity / 512).grainsOffset ?? 0) * 512
}

/** What lstat finds at a point file: undefined when it is a regular file of at least `min` bytes. */
async function pointFileProblem(path: string, min: number): Promise<string | undefined> {
  let st: Stats
  try {
    st = await lstat(path)
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return 'is missing'
    return `cannot be looked at (${(err as { code?: string }).code ?? (err as Error).message})`
  }
  if (st.isSymbolicLink()) return 'is a symbolic link, not a regular file'
  if (!st.isFile()) return `is ${st.isDirectory() ? 'a folder' : st.isFIFO() ? 'a FIFO' : 'a special file'}, not a regular file`
  if (st.size === 0) return 'is empty (truncated)'
  if (st.size < min) return `is ${st.size} bytes, shorter than the ${min} bytes the point's capacity requires (truncated)`
  return undefined
}

/**
 * Look at the files of every disk of restore point `point` with lstat only
 * (`grainline status` stays cheap: no descriptor or data is read): its
 * descriptor is a non-empty regular file, its extent (SEsparse, or a base
 * point's flat) a regular file at least as large as the point's capacity
 * requires ({@link pointExtentMinSize}). A link is never followed.
 */
export async function damagedPointFiles(paths: VmPaths, point: PointRecord): Promise<DamagedPointFile[]> {
  const out: DamagedPointFile[] = []
  const disks = typeof point.disks === 'object' && point.disks !== null ? Object.entries(point.disks) : []
  for (const [disk, d] of disks) {
    const file = typeof d?.file === 'string' ? d.file : String(d?.file)
    let descriptor: string
    try {
      descriptor = pointPath(paths, file)
    } catch {
      out.push({ cycle: point.cycle, disk, file, problem: 'is not a file name of .grainline/points (the state file was changed by hand)' })
      continue
    }
    const dp = await pointFileProblem(descriptor, 1)
    if (dp !== undefined) out.push({ cycle: point.cycle, disk, file, problem: dp })
    const extent = d.base === true ? pointFlatName(file) : pointExtentName(file)
    const ep = await pointFileProblem(pointPath(paths, extent), pointExtentMinSize(d.capacity, d.base === true))
    if (ep !== undefined) out.push({ cycle: point.cycle, disk, file: extent, problem: ep })
  }
  return out
}
