/**
 * The reverse increment of an in-flight incremental cycle: an SEsparse delta
 * (written with `@grainline/vmdk`) holding the OLD bytes of every 4 KiB grain
 * the cycle overwrites in the mirror — the undo data of the apply and, after
 * the commit, restore point `baseCycle` (see docs/POINTS.md). The first save
 * of a grain wins (it holds the committed bytes); an old grain that is all
 * zeros becomes an explicit SEsparse zero grain.
 *
 * Crash safety: a batch's grains are written and the increment fsync'ed,
 * and their index (grain, crc32) is journaled and fsync'ed, before the
 * batch's stage 2 overwrites the mirror. A grain whose bytes in the
 * increment do not match its journaled crc belongs to a batch whose stage 2
 * never started: rollback skips it and a resume saves it again.
 */
import { crc32 } from 'node:zlib'
import { join } from 'node:path'
import { createDelta, openChain, openWriter, randomCid, type DiskWriter } from '@grainline/vmdk'
import { ReceiverError } from './errors.ts'
import { unlinkIfExists, writeFully } from './fs-util.ts'
import { ensureStoreDir, entryExists, openStoreFile } from './store-fs.ts'
import { checkIncrementFiles } from './point-chain.ts'
import { GrainList, GrainSet } from './grain-set.ts'
import type { JournalGrain } from './journal.ts'
import { POINTS_DIR, type VmPaths } from './vm-paths.ts'

/** A run of grains {@link ReverseIncrement.reserve} set aside: `n` bytes of the mirror at `pos`, first grain `grain`. */
export interface SaveRun {
  readonly grain: number
  readonly pos: number
  readonly n: number
}

/** Grain size of reverse increments: ESXi's SEsparse grain. */
export const POINT_GRAIN = 4096

// the points folder is part of the store layout (vm-paths.ts); re-exported for the modules that import it from here
export { POINTS_DIR } from './vm-paths.ts'

const ZERO_GRAIN = Buffer.alloc(POINT_GRAIN)

/** At most this many bytes of old grains are read and written at once. */
const SAVE_PIECE = 8 * 1024 * 1024

/** The descriptor name (in `.grainline/points`) of disk `stem`'s point `cycle`. */
export function pointFileName(stem: string, cycle: number): string {
  return `${stem}.p${cycle}.vmdk`
}

/** The SEsparse extent file createDelta writes beside a point descriptor. */
export function pointExtentName(file: string): string {
  return file.replace(/\.vmdk$/i, '-sesparse.vmdk')
}

/**
 * The flat extent of a base point (docs/POINTS.md "Re-seeds keep the
 * points"): the disk's old mirror flat, moved beside its descriptor when a
 * seed replaced the mirror; a full copy of the disk, the end of its chain.
 */
export function pointFlatName(file: string): string {
  return file.replace(/\.vmdk$/i, '-flat.vmdk')
}

/** Whether `file` is a plain `.vmdk` file name (no separator, no `..`): what a point descriptor of `.grainline/points` is named. */
export function isPointFileName(file: unknown): file is string {
  return typeof file === 'string' && /^[^/\\\0]+\.vmdk$/i.test(file)
}

/**
 * Absolute path of a point descriptor named `file` (in `.grainline/points`).
 * The names come from `state.json`: one that is not a plain `.vmdk` file name
 * (a separator, `..`) would make a prune remove, or a restore read, a file
 * outside the store.
 * @throws ReceiverError E_STATE
 */
export function pointPath(paths: VmPaths, file: string): string {
  if (!isPointFileName(file))
    throw new ReceiverError(
      'E_STATE',
      `${paths.state} names the point file ${JSON.stringify(file)}, which is not a file name of .grainline/points: the state file was changed by hand; nothing was read or removed`,
    )
  return join(paths.gdir, POINTS_DIR, file)
}

/** Remove a point's descriptor, then its extent, SEsparse or (a base point) flat (idempotent). */
export async function removePointFiles(paths: VmPaths, file: string): Promise<void> {
  await unlinkIfExists(pointPath(paths, file))
  await unlinkIfExists(pointPath(paths, pointExtentName(file)))
  await unlinkIfExists(pointPath(paths, pointFlatName(file)))
}

type Writer = DiskWriter & { readonly cid: string; renewCid: (cid?: string) => Promise<string>; abandon: () => Promise<void> }

/** The in-flight reverse increment of one disk. */
export class ReverseIncrement {
  readonly path: string
  private readonly writer: Writer
  /** grains saved or reserved: a bitmap (grain-set.ts), not a Set entry each */
  private readonly saved: GrainSet
  /** grains saved by this object (for logs and tests) */
  savedGrains = 0
  /** the error of a failed save: grains reserved for it may be missing, so nothing more is saved */
  private failed: Error | undefined

  private constructor(path: string, writer: Writer, saved: GrainSet) {
    this.path = path
    this.writer = writer
    this.saved = saved
  }

  /**
   * Create the increment `file` over the mirror descriptor of `stem`, or
   * reopen the one an interrupted apply left, trusting only the journaled
   * grains whose bytes match their crc (the first entry of a grain: a journal's
   * {@link GrainList}; a plain array is listed first). A reopened one is checked first
   * (point-chain.ts `checkIncrementFiles`): each of its files has one name.
   * @throws ReceiverError E_STATE (a hard link, a descriptor not as written), E_STORE_FILE (a symbolic link, FIFO, folder)
   */
  static async open(paths: VmPaths, stem: string, file: string, journaled: GrainList | readonly JournalGrain[]): Promise<ReverseIncrement> {
    const path = pointPath(paths, file)
    let saved = new GrainSet()
    if (journaled.length > 0 && (await entryExists(path))) {
      // written into again: not through a link, a hard link (the live mirror's flat), a descriptor naming another extent
      // or another parent than the mirror
      await checkIncrementFiles(paths, file, stem)
      saved = await verifiedGrains(path, GrainList.from(journaled))
    } else {
      // nothing durable refers to it: start afresh (a crash may have left half of it)
      await removePointFiles(paths, file)
      await ensureStoreDir(join(paths.gdir, POINTS_DIR))
      // a CID of its own from the start (ESXi's default is the parent's): no descriptor rewrite later
      await createDelta(paths.descriptor(stem), path, { format: 'sesparse', cid: randomCid() })
    }
    // `close`: the writer never rewrites the descriptor (the CID above stays)
    const writer = await openWriter(path, { newCid: 'close' })
    return new ReverseIncrement(path, writer, saved)
  }

  /**
   * The runs of grains of [offset, offset + length) not saved yet (at most
   * SAVE_PIECE bytes each, grain-aligned, clipped to `capacity`), reserved:
   * a later call skips them, so two extents of one batch save a grain once.
   * The caller reads each run's old bytes from the mirror (not yet
   * overwritten) and hands them to {@link saveRun}. After a failed save the
   * increment refuses further use (a reserved grain may not be saved).
   */
  reserve(offset: number, length: number, capacity: number): SaveRun[] {
    if (this.failed !== undefined) throw this.failed
    const out: SaveRun[] = []
    const first = Math.floor(offset / POINT_GRAIN)
    const end = Math.ceil(Math.min(offset + length, capacity) / POINT_GRAIN)
    let g = first
    while (g < end) {
      if (this.saved.has(g)) {
        g++
        continue
      }
      // a run of unsaved grains, at most SAVE_PIECE bytes
      let n = 1
      while (g + n < end && n * POINT_GRAIN < SAVE_PIECE && !this.saved.has(g + n)) n++
      const pos = g * POINT_GRAIN
      out.push({ grain: g, pos, n: Math.min(n * POINT_GRAIN, capacity - pos) })
      for (let k = 0; k < n; k++) this.saved.add(g + k)
      g += n
    }
    return out
  }

  /** Save a reserved run's old bytes (`data.length === run.n`) into the increment. Returns the index entries to journal. */
  async saveRun(run: SaveRun, data: Buffer): Promise<JournalGrain[]> {
    if (this.failed !== undefined) throw this.failed
    const out: JournalGrain[] = []
    try {
      await this.writeRun(data.subarray(0, run.n), run.grain, out)
    } catch (err) {
      this.failed = err as Error
      throw err
    }
    this.savedGrains += out.length
    return out
  }

  /** Write a run of old grains: zero grains as explicit zero grains, the rest as data. */
  private async writeRun(buf: Buffer, firstGrain: number, out: JournalGrain[]): Promise<void> {
    const n = Math.ceil(buf.length / POINT_GRAIN)
    let runStart = 0
    let runZero = false
    const flushRun = async (to: number): Promise<void> => {
      if (to <= runStart) return
      const a = runStart * POINT_GRAIN
      const b = Math.min(to * POINT_GRAIN, buf.length)
      if (runZero) await this.writer.writeZeroes(firstGrain * POINT_GRAIN + a, b - a)
      else await this.writer.write(firstGrain * POINT_GRAIN + a, buf.subarray(a, b))
    }
    for (let k = 0; k < n; k++) {
      const grain = buf.subarray(k * POINT_GRAIN, Math.min((k + 1) * POINT_GRAIN, buf.length))
      const zero = grain.equals(ZERO_GRAIN.subarray(0, grain.length))
      out.push({ grain: firstGrain + k, crc: crc32(grain) })
      if (k === 0) runZero = zero
      else if (zero !== runZero) {
        await flushRun(k)
        runStart = k
        runZero = zero
      }
    }
    await flushRun(n)
  }

  /** Make every saved grain durable (data, tables, header; fsync). */
  async flush(): Promise<void> {
    await this.writer.flush()
  }

  /** Flush and close; the CID stays the one given at creation. */
  async close(): Promise<void> {
    await this.writer.abandon()
  }
}

/** The journaled grains whose bytes in the increment at `path` match their crc (the list holds the first entry of each grain). */
async function verifiedGrains(path: string, journaled: GrainList): Promise<GrainSet> {
  const ok = new GrainSet()
  const chain = await openChain(path)
  try {
    // only grains the increment itself holds: read through the chain, a grain it lacks (its table was not written
    // before the crash) reads the mirror, its parent, whose bytes still equal the old ones until the batch
    // overwrites them — counted saved, it would never be saved again and the point would read the new bytes
    const held = new GrainSet()
    for await (const r of chain.changedRanges(0)) {
      for (let g = Math.floor(r.offset / POINT_GRAIN); g * POINT_GRAIN < r.offset + r.length; g++) held.add(g)
    }
    for (let i = 0; i < journaled.length; i++) {
      const grain = journaled.grainAt(i)
      if (!held.has(grain)) continue
      const start = grain * POINT_GRAIN
      const len = Math.min(POINT_GRAIN, chain.capacity - start)
      if (len <= 0) continue
      const data = await chain.read(start, len)
      if (crc32(data) >>> 0 === journaled.crcAt(i)) ok.add(grain)
    }
  } finally {
    await chain.close()
  }
  return ok
}

/**
 * Undo an interrupted in-place apply from its reverse increment: copy every
 * journaled grain whose bytes match their crc back into the flat (the first
 * entry of a grain is the committed bytes), cut the flat to `baseSize`,
 * fdatasync. Idempotent. `onUndone` hears of the bytes of the grains done so far.
 */
export async function undoFromIncrement(incrementPath: string, journaled: GrainList | readonly JournalGrain[], flatPath: string, baseSize: number, onUndone?: (bytes: number) => void): Promise<void> {
  const list = GrainList.from(journaled)
  const tfh = await openStoreFile(flatPath, 'update')
  try {
    if (list.length > 0 && (await entryExists(incrementPath))) {
      const chain = await openChain(incrementPath)
      try {
        for (let i = 0; i < list.length; i++) {
          const start = list.grainAt(i) * POINT_GRAIN
          const len = Math.min(POINT_GRAIN, chain.capacity - start)
          if (len <= 0) continue
          const data = await chain.read(start, len)
          if (crc32(data) >>> 0 === list.crcAt(i)) await writeFully(tfh, data, start)
          onUndone?.((i + 1) * POINT_GRAIN)
        }
      } finally {
        await chain.close()
      }
    }
    if ((await tfh.stat()).size !== baseSize) await tfh.truncate(baseSize)
    await tfh.datasync()
  } finally {
    await tfh.close()
  }
}
