/**
 * How a batch's data reaches its target file: runs of bytes back to back on
 * the disk, each one (vectored) write, and the extents each run completes
 * (for the `extent-written` fault point, once per extent after its bytes).
 *
 * A seed writes into a fresh file whose unwritten ranges are holes (a
 * seed's zero extents write nothing, disk-apply.ts `freshSeed`): there the
 * zero pieces of data extents are left unwritten too ({@link seedRuns},
 * issue #17). An agent cuts a seed into extents of 1 MiB and sends as zero
 * extents only those that are zero whole; a thin disk's data extents are
 * mostly zeros around the data (the benchmark's 16 GiB sample: 1220 MiB of
 * data extents for 315 MiB of data), which the receiver copied into the page
 * cache, wrote and synced, and which made the mirror several times larger on
 * disk than its source.
 */
import { isAllZero } from '@grainline/vmdk'

/** Back-to-back bytes written with one (vectored) write; `extents` it completes. */
export interface WriteRun {
  readonly offset: number
  readonly data: Uint8Array[]
  extents: number
}

/** What a batch holds, as far as writing goes. */
export interface RunExtent {
  readonly offset: number
  readonly length: number
  readonly zero: boolean
  readonly data?: Uint8Array | undefined
}

/** The write runs of a batch of data extents in ascending, disjoint order; undefined for any other batch. Pure. */
export function scatteredRuns(batch: readonly RunExtent[]): WriteRun[] | undefined {
  const runs: WriteRun[] = []
  let end = -1
  for (const e of batch) {
    if (e.zero || e.offset < end) return undefined
    const last = runs[runs.length - 1]
    if (last !== undefined && e.offset === end) {
      last.data.push(e.data as Uint8Array)
      last.extents++
    } else runs.push({ offset: e.offset, data: [e.data as Uint8Array], extents: 1 })
    end = e.offset + e.length
  }
  return runs
}

/**
 * The granule of a seed's zero pieces: a piece of a data extent that covers
 * one whole, aligned 64 KiB of the file and is all zeros is not written.
 * Coarser than a file system block, so that a run stays a few writes
 * (16 zero checks per MiB, not 256).
 */
export const SEED_ZERO_GRANULE = 65536

/**
 * The write runs of a seed's batch (ascending, disjoint; data and zero
 * extents mixed): the data extents' bytes without their zero granules, zero
 * extents nothing. An extent is credited to the run that holds its last
 * written byte, or — nothing written — to a run of no bytes at its place, so
 * every extent is counted once, in order. Undefined when the batch is not
 * ascending and disjoint (written in order instead). Pure.
 */
export function seedRuns(batch: readonly RunExtent[], granule = SEED_ZERO_GRANULE): WriteRun[] | undefined {
  const runs: WriteRun[] = []
  let end = -1
  // the run being built: bytes back to back up to `runEnd`
  let runEnd = -1
  const put = (offset: number, bytes: Uint8Array): void => {
    const last = runs[runs.length - 1]
    if (last !== undefined && offset === runEnd && last.data.length > 0) last.data.push(bytes)
    else runs.push({ offset, data: [bytes], extents: 0 })
    runEnd = offset + bytes.length
  }
  for (const e of batch) {
    if (e.offset < end) return undefined
    end = e.offset + e.length
    const data = e.zero ? undefined : e.data
    // a data extent's bytes are never taken for zeros: without them the batch fails (a session's bug, not a hole)
    if (!e.zero && data?.length !== e.length) throw new TypeError(`data extent at ${e.offset} has ${data?.length ?? 'no'} bytes for ${e.length}`)
    let wrote = false
    if (data !== undefined) {
      // pieces between granule boundaries of the file; a whole granule of zeros is skipped
      let at = 0
      let pending = -1
      while (at < data.length) {
        const next = Math.min(data.length, (Math.floor((e.offset + at) / granule) + 1) * granule - e.offset)
        const whole = next - at === granule
        if (whole && isAllZero(data.subarray(at, next))) {
          if (pending >= 0) {
            put(e.offset + pending, data.subarray(pending, at))
            wrote = true
            pending = -1
          }
        } else if (pending < 0) pending = at
        at = next
      }
      if (pending >= 0) {
        put(e.offset + pending, data.subarray(pending))
        wrote = true
      }
    }
    if (wrote) (runs[runs.length - 1] as WriteRun).extents++
    else {
      const last = runs[runs.length - 1]
      // nothing of this extent written: counted with the run before it when that one holds no bytes either, else a run of no bytes
      if (last !== undefined && last.data.length === 0) last.extents++
      else runs.push({ offset: e.offset, data: [], extents: 1 })
    }
  }
  return runs
}
