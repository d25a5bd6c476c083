/**
 * The kept block map's life around cycles (kept-map.ts): which blocks a cycle
 * tracks, how its commit carries the map over, and when the map is dropped.
 *
 * - a resync commits a new map: the digests its block map sent (the mirror
 *   at the resync's start), the blocks it wrote stale;
 * - an incremental on a disk whose map matches the committed record marks
 *   the blocks it wrote stale and names its own commit in the header;
 * - a seed, a capacity change, a map that does not match: the map goes (the
 *   next resync reads the whole mirror and writes a new one);
 * - a failed check (E_DIVERGED) or a hold on the mirror: the map goes.
 *
 * Every step runs before the commit's state.json replace, naming the
 * generation about to be committed; a failure here drops the map and never
 * fails the commit.
 */
import type { Logger } from 'pino'
import { blockCount } from '@grainline/protocol'
import { unlinkIfExists } from './fs-util.ts'
import { KeptMap, MAX_KEPT_BLOCKS, TouchedBlocks, decodeKeptHeader, keptMismatch, writeKeptMap, HEAD_BYTES } from './kept-map.ts'
import { finishedResyncMap } from './resync-map.ts'
import { readFully } from './fs-util.ts'
import { openStoreFile } from './store-fs.ts'
import type { DiskRecord, InflightDisk } from './state-file.ts'
import type { VmPaths } from './vm-paths.ts'

/** The committed facts of a record, as a kept map names them. */
function expectationOf(rec: DiskRecord): { generation: string; mirrorCid: string; size: number; capacity: number } {
  return { generation: rec.generation ?? '', mirrorCid: rec.mirrorCid, size: rec.size, capacity: rec.capacity }
}

/** The block size of the kept map matching `rec`, or undefined (none, unusable). */
async function keptBlockSize(paths: VmPaths, rec: DiskRecord): Promise<number | undefined> {
  let fh: Awaited<ReturnType<typeof openStoreFile>>
  try {
    fh = await openStoreFile(paths.keptMap(rec.stem), 'read')
  } catch {
    return undefined
  }
  try {
    const h = decodeKeptHeader(await readFully(fh, 0, HEAD_BYTES))
    return typeof h === 'string' || keptMismatch(h, expectationOf(rec)) !== undefined ? undefined : h.blockSize
  } finally {
    await fh.close()
  }
}

/**
 * What the apply of `info` records of the blocks it writes: a resync always
 * (its commit writes the new map), an in-place incremental when the disk has
 * a kept map matching its committed record `rec`, nothing otherwise.
 */
export async function trackerFor(paths: VmPaths, info: InflightDisk, rec: DiskRecord | undefined): Promise<TouchedBlocks | undefined> {
  let blockSize: number | undefined
  if (info.mode === 'resync') blockSize = info.blockSize
  else if (info.mode === 'incremental' && info.target === 'flat' && rec !== undefined && rec.capacity === info.capacity) blockSize = await keptBlockSize(paths, rec)
  if (blockSize === undefined || blockSize <= 0 || blockCount(info.capacity, blockSize) > MAX_KEPT_BLOCKS) return undefined
  return new TouchedBlocks(info.capacity, blockSize)
}

/** One disk of a commit: its in-flight info, what it wrote, its record before and after. */
export interface KeptCommitDisk {
  readonly info: InflightDisk
  readonly touched: TouchedBlocks | undefined
  readonly prev: DiskRecord | undefined
  readonly next: DiskRecord
}

/**
 * Carry every disk's kept map over to the commit about to be written.
 * Returns the names of the resync disks whose map read the whole mirror
 * (those disks are fully proven by this commit).
 */
export async function updateKeptMaps(paths: VmPaths, disks: readonly KeptCommitDisk[], log: Logger, vm: string): Promise<Set<string>> {
  const proven = new Set<string>()
  for (const d of disks) {
    const path = paths.keptMap(d.info.stem)
    try {
      if (d.info.mode === 'resync') {
        const m = await finishedResyncMap(paths, d.info)
        if (m === undefined) {
          await unlinkIfExists(path)
          continue
        }
        try {
          const blockSize = d.info.blockSize as number
          if (blockCount(d.info.capacity, blockSize) <= MAX_KEPT_BLOCKS && d.next.size === d.info.capacity) {
            await writeKeptMap(path, { ...expectationOf(d.next), blockSize, algorithm: d.info.algorithm }, { fh: m.fh, offset: m.offset }, d.touched)
          } else {
            await unlinkIfExists(path)
          }
          if (!m.usedKept) proven.add(d.info.name)
        } finally {
          await m.fh.close()
        }
        continue
      }
      const k =
        d.touched === undefined || d.prev === undefined ? 'no tracking' : await KeptMap.open(path, { ...expectationOf(d.prev), capacity: d.info.capacity, blockSize: d.touched.blockSize }, 'update')
      if (typeof k === 'string') {
        await unlinkIfExists(path)
        continue
      }
      try {
        await k.advance(d.touched as TouchedBlocks, { ...k.header, ...expectationOf(d.next) })
      } finally {
        await k.close()
      }
    } catch (err) {
      log.warn({ vm, disk: d.info.name, err }, 'kept block map not carried over: dropped, the next resync reads the whole mirror')
      await unlinkIfExists(path).catch(() => {})
    }
  }
  return proven
}

/** Drop the kept maps of `stems` (a failed check, a hold; idempotent). */
export async function dropKeptMaps(paths: VmPaths, stems: Iterable<string>): Promise<void> {
  for (const s of stems) await unlinkIfExists(paths.keptMap(s))
}
