/**
 * One disk of a cycle: its frozen chain, its current plan (seed or
 * incremental, turned into an extent plan), its cycle identity (SPEC §5.2)
 * and what the run learned while shipping it (digest log, view digests,
 * progress, report).
 */
import { cycleIdentity, type ChainLayer, type DiskMode, type SourceIdentity } from '@grainline/protocol'
import { formatCid, type DiskChain, type Layer } from '@grainline/vmdk'
import type { DiskPlanDecision } from './cycle-plan.ts'
import type { DigestLog } from './digest-log.ts'
import type { VmDisk } from './driver.ts'
import { buildPlan, arraySource, coalesceSource, unionSource, type ExtentPlan, type RangeSource } from './extent-plan.ts'
import type { ViewDigester } from './extent-source.ts'
import type { DiskProgress } from './progress.ts'
import type { DiskReport } from './report.ts'
import type { ScrubSliceDigests } from './scrub-slice-digests.ts'
import type { WrittenBlockDigests } from './written-block-digests.ts'

/** A disk being shipped. */
export interface DiskWork {
  /** position in the VM's disk list (stable; handles change per connection) */
  readonly index: number
  /** the disk handle of its latest DiskOpen in the current connection */
  handle: number
  readonly disk: VmDisk
  /** the mirror's disk name */
  readonly name: string
  readonly chain: DiskChain
  readonly report: DiskReport
  /** chain depth of the newest frozen layer (1: the layer just frozen by the snapshot) */
  readonly depth: number
  readonly progress: DiskProgress
  mode: DiskMode
  /** resync: the block size of the maps (SPEC §5.9); 0 otherwise */
  blockSize: number
  /** depth of the oldest frozen layer shipped (incremental); the base for a seed */
  fromDepth: number
  baseCycle: number
  /** SPEC §5.8: the generation the incremental was planned against ("" for a seed) */
  baseGeneration: string
  cycleNo: number
  source: SourceIdentity
  plan: ExtentPlan
  cycleId: string
  /** per-seq digests for replaying the cycle digest after a reconnect (bounded) */
  records: DigestLog | undefined
  /** the view digests (trivial check prefix, certify) */
  view: ViewDigester | undefined
  /** the view digests computed by reading, in the background while extents ship */
  viewTask: Promise<void> | undefined
  /** resync: bitmap of the blocks that differed and were written (for `--verify changed`) */
  touched: Uint8Array | undefined
  /** `--verify changed`: the frozen-view digests of the blocks written, taken before the commit (block-check.ts) */
  written: WrittenBlockDigests | undefined
  /** `--verify changed`, incremental: those digests taken while the extents ship; never rejects */
  writtenTask: Promise<void> | undefined
  /**
   * `--scrub N`: the frozen-view digests of this cycle's scrub slice, taken before the commit (block-check.ts).
   * Not reset by a new plan: the frozen view does not change, and the check uses them only for the slice they cover.
   */
  scrubSlice: ScrubSliceDigests | undefined
  /** `--scrub N`, incremental: those digests taken while the extents ship; never rejects */
  scrubTask: Promise<void> | undefined
}

/** Largest zero extent of an incremental cycle. */
const INCREMENTAL_ZERO_CHUNK = 16 * 1024 * 1024

// SPEC: CIDs travel as 8 lowercase hex digits; QEMU writes them without leading zeros
const layerOf = (l: Layer): ChainLayer => ({ file: l.file, cid: formatCid(l.cid), parentCid: formatCid(l.parentCid) })

/** The layer at `depth` (0 = running delta). */
export function layerAt(chain: DiskChain, depth: number): Layer {
  const l = chain.layers[depth]
  if (l === undefined) throw new RangeError(`no layer at depth ${depth} (chain of ${chain.layers.length})`)
  return l
}

/** The base (bottom) layer of a chain. */
export function baseLayer(chain: DiskChain): Layer {
  return layerAt(chain, chain.layers.length - 1)
}

/** An empty plan (before the first decision is applied). */
export async function emptyPlan(chunkBytes: number): Promise<ExtentPlan> {
  return await buildPlan(arraySource([]), { chunkBytes })
}

/**
 * A seed's ranges: the view at `depth` as `map` describes it, unallocated and
 * zero ranges as zero. A range that is data *and* zero (a flat file that
 * reported no allocated blocks, see the vmdk `FlatExtent.allHole`) stays
 * data: `st_blocks` 0 is what some mounts (FUSE, NAS/dedup back-ends) report
 * for files that hold data, so only reading decides (a seed reads around
 * holes by `SEEK_DATA`, extent-source.ts `skipHoles`).
 */
export function seedRanges(chain: DiskChain, depth: number, signal?: AbortSignal): RangeSource {
  const sig = signal === undefined ? {} : { signal }
  return async function* () {
    for await (const e of chain.map({ depth, ...sig })) yield { offset: e.start, length: e.length, zero: !e.present || (e.zero && !e.data) }
  }
}

/**
 * Turn a plan decision into the disk's extent plan and cycle identity. A seed
 * ships the whole frozen view (unallocated and zero chunks as zero extents);
 * an incremental the union of the changed ranges (grain tables only) of the
 * frozen layers from `fromDepth` up to `depth`, newest data winning.
 */
export async function applyDiskPlan(
  w: DiskWork,
  decision: DiskPlanDecision,
  ctx: { readonly vm: string; readonly cycleNo: number; readonly chunkBytes: number; readonly blockSize: number; readonly signal?: AbortSignal },
): Promise<void> {
  const sig = ctx.signal === undefined ? {} : { signal: ctx.signal }
  const chain = w.chain
  w.blockSize = 0
  if (decision.kind === 'resync') {
    // SPEC §5.9: the extents follow from comparing the block maps, while shipping; the plan stays empty
    w.mode = 'resync'
    w.baseCycle = 0
    w.baseGeneration = ''
    w.blockSize = ctx.blockSize
    w.fromDepth = chain.layers.length - 1
    w.plan = await emptyPlan(ctx.chunkBytes)
    w.report.fallbackReason = decision.reason
  } else if (decision.kind === 'seed') {
    w.mode = 'seed'
    w.baseCycle = 0
    w.baseGeneration = ''
    w.fromDepth = chain.layers.length - 1
    w.plan = await buildPlan(coalesceSource(seedRanges(chain, w.depth, ctx.signal)), { chunkBytes: ctx.chunkBytes })
    if (decision.reason !== undefined) w.report.fallbackReason = decision.reason
  } else {
    const layers: RangeSource[] = []
    for (let d = decision.fromDepth; d >= w.depth; d--) layers.push(() => chain.changedRanges(d, sig))
    w.mode = 'incremental'
    w.baseCycle = decision.baseCycle
    w.baseGeneration = decision.baseGeneration
    w.fromDepth = decision.fromDepth
    // An incremental zero range overwrites mirror data in place, and the receiver
    // journals the old contents first: keep each such extent small (a seed's zero
    // ranges stay 1 GiB — they become holes in a fresh file and are not journalled).
    w.plan = await buildPlan(unionSource(layers), { chunkBytes: ctx.chunkBytes, zeroChunkBytes: INCREMENTAL_ZERO_CHUNK })
  }
  w.records?.clear()
  // the blocks written follow from the plan
  w.written = undefined
  w.writtenTask = undefined
  const frozen: ChainLayer[] = []
  for (let d = w.fromDepth; d >= w.depth; d--) frozen.push(layerOf(layerAt(chain, d)))
  w.source = { layers: frozen, successor: layerAt(chain, 0).file }
  w.cycleNo = ctx.cycleNo
  w.cycleId = cycleIdentity({ vm: ctx.vm, name: w.name, cycle: ctx.cycleNo, mode: w.mode, baseCycle: w.baseCycle, baseGeneration: w.baseGeneration, source: w.source, blockSize: w.blockSize })
  w.report.mode = w.mode
  w.report.layers = frozen
  w.report.extents = w.plan.totalExtents
  // a resync compares the whole disk: its progress counts the bytes compared
  w.progress.totalBytes = w.mode === 'resync' ? chain.capacity : w.plan.totalBytes
  w.progress.update('plan', true)
}
