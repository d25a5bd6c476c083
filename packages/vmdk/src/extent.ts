import type { DiskFile } from './disk-file.ts'
import type { DataRange } from './data-ranges.ts'

/** What one stretch of an extent holds. */
export const RunState = { None: 0, Zero: 1, Data: 2 } as const
export type RunState = (typeof RunState)[keyof typeof RunState]

/**
 * A stretch of an extent (or of a layer, in disk coordinates) in one state.
 * `off` is the file byte offset of `start` for uncompressed data, `-(grain byte
 * offset)` for a compressed grain (one grain per run), and -1 otherwise.
 */
export interface Run {
  start: number
  length: number
  state: RunState
  off: number
}

/**
 * A walk over an extent in increasing order: `runs` must be called with
 * windows that never go back. Lets a sparse extent read its grain tables in
 * file order, in large reads, instead of one table at a time.
 */
export interface ExtentWalk {
  runs(start: number, length: number): Promise<Run[]>
}

/** Everything a layer needs from one extent. Coordinates are bytes within the extent. */
export interface Extent {
  /** `flat`, `zero`, `hosted` (KDMV), `cowd` (vmfsSparse), `sesparse` */
  readonly format: 'flat' | 'zero' | 'hosted' | 'cowd' | 'sesparse'
  readonly size: number
  readonly file: DiskFile | undefined
  /** grain size in bytes (the extent size for flat/zero extents) */
  readonly grainSize: number
  readonly sparse: boolean
  /** Runs covering [start, start+length), merged; data runs merge only when file-contiguous. */
  runs(start: number, length: number): Promise<Run[]>
  /** Start an in-order walk of [start, end) (see {@link ExtentWalk}). */
  walk(start: number, end: number): ExtentWalk
  /**
   * Allocated (data or zero) runs in extent order, merged regardless of file
   * offsets, in batches. From the grain directory and tables only.
   */
  allocated(signal?: AbortSignal): AsyncGenerator<Run[]>
  /** Read part of a data run into buf. */
  readRun(run: Run, start: number, length: number, buf: Uint8Array, bufOffset: number): Promise<void>
  close(): Promise<void>
}

/** Append a run to a list, merging with the last one when allowed. */
export function pushRun(out: Run[], start: number, length: number, state: RunState, off: number, mergeData: boolean): void {
  const last = out[out.length - 1]
  if (last !== undefined && last.state === state && last.start + last.length === start) {
    if (state !== RunState.Data) {
      last.length += length
      return
    }
    if (!mergeData) {
      last.length += length
      last.off = -1
      return
    }
    if (last.off >= 0 && off >= 0 && last.off + last.length === off) {
      last.length += length
      return
    }
  }
  out.push({ start, length, state, off })
}

/** A walk for extents whose runs need no I/O. */
function directWalk(e: Extent): ExtentWalk {
  return { runs: async (start, length) => await e.runs(start, length) }
}

/** A flat (FLAT / VMFS) extent: raw bytes at `base` in `file`. */
export class FlatExtent implements Extent {
  readonly format = 'flat' as const
  readonly size: number
  readonly file: DiskFile
  readonly grainSize: number
  readonly sparse = false
  readonly base: number
  /**
   * the file reported no allocated blocks when opened (a fresh thin disk):
   * `map` reports it as zero, as QEMU does. Display only: some mounts (FUSE,
   * NAS/dedup back-ends) report `st_blocks` 0 for files that hold data, so
   * what is read (and shipped) never follows it — see {@link fileDataRanges}.
   */
  readonly allHole: boolean

  constructor(file: DiskFile, size: number, base: number) {
    this.file = file
    this.size = size
    this.base = base
    this.grainSize = size
    this.allHole = file.allocatedBytes === 0 && file.size > 0
  }

  async runs(start: number, length: number): Promise<Run[]> {
    return [{ start, length, state: RunState.Data, off: this.base + start }]
  }

  walk(): ExtentWalk {
    return directWalk(this)
  }

  async *allocated(): AsyncGenerator<Run[]> {
    if (this.size > 0) yield [{ start: 0, length: this.size, state: RunState.Data, off: this.base }]
  }

  async readRun(run: Run, start: number, length: number, buf: Uint8Array, bufOffset: number): Promise<void> {
    await this.file.readInto(buf, bufOffset, length, run.off + (start - run.start))
  }

  /**
   * The parts of file bytes `[off, off + length)` that may hold data, as file
   * ranges (holes found with `SEEK_DATA`, see data-ranges.ts); undefined
   * when the file's transport cannot tell. Only `SEEK_DATA` answers, never
   * {@link allHole}: a file whose `st_blocks` says empty may hold data.
   */
  async fileDataRanges(off: number, length: number): Promise<DataRange[] | undefined> {
    return await this.file.dataRanges(off, off + length)
  }

  async close(): Promise<void> {
    await this.file.close()
  }
}

/** A ZERO extent: no file, reads as zeros. */
export class ZeroExtent implements Extent {
  readonly format = 'zero' as const
  readonly size: number
  readonly file = undefined
  readonly grainSize: number
  readonly sparse = false
  constructor(size: number) {
    this.size = size
    this.grainSize = size
  }
  async runs(start: number, length: number): Promise<Run[]> {
    return [{ start, length, state: RunState.Zero, off: -1 }]
  }
  walk(): ExtentWalk {
    return directWalk(this)
  }
  async *allocated(): AsyncGenerator<Run[]> {
    if (this.size > 0) yield [{ start: 0, length: this.size, state: RunState.Zero, off: -1 }]
  }

  async readRun(_run: Run, _start: number, length: number, buf: Uint8Array, bufOffset: number): Promise<void> {
    buf.fill(0, bufOffset, bufOffset + length)
  }

  async close(): Promise<void> {}
}
