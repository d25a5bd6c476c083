/**
 * Planning decisions of a cycle as pure functions of the facts (the source
 * chain, what the receiver reports, a refusal): whether a disk ships as a
 * seed or an incremental, from which frozen layer, and what to do after the
 * receiver refuses a DiskOpen. No I/O here; `disk-work.ts` turns a decision
 * into an extent plan, `cycle.ts` acts on it.
 */

/** How one disk is shipped. */
export type DiskPlanDecision =
  /** the whole frozen view; `reason` says why when an incremental was expected */
  | { readonly kind: 'seed', readonly reason?: string }
  /** the changed ranges of the frozen layers from `fromDepth` (oldest) up to depth 1, onto committed cycle `baseCycle` of generation `baseGeneration` */
  | { readonly kind: 'incremental', readonly fromDepth: number, readonly baseCycle: number, readonly baseGeneration: string }

/** What the receiver said about the mirror (VmState). */
export interface MirrorFacts {
  readonly exists: boolean
  readonly committedCycle: number
  /** SPEC §5.8 generation of the last commit ("" when none) */
  readonly generation: string
}

/**
 * The first plan of a disk. `layerCount` counts the chain after the snapshot:
 * [0] running delta, [1] the layer just frozen, …, [L-1] the base. An
 * incremental needs a committed mirror and a frozen delta above the base
 * (the base is the mirror's committed point; the delta above it is the one
 * the mirror recorded as its successor).
 */
export function initialDiskPlan (mirror: MirrorFacts, layerCount: number): DiskPlanDecision {
  if (!mirror.exists || mirror.committedCycle === 0) return { kind: 'seed' }
  if (layerCount < 3) return { kind: 'seed', reason: 'no frozen delta above the base (the mirror\'s successor is gone)' }
  // issue #10: until the agent keeps its own record beside its snapshot it plans against the receiver's generation
  return { kind: 'incremental', fromDepth: layerCount - 2, baseCycle: mirror.committedCycle, baseGeneration: mirror.generation }
}

/** A refused DiskOpen, as far as planning cares. */
export interface DiskRefusal {
  /** DiskState.reason */
  readonly code: string
  /** DiskState.modified: the mirror changed since its commit */
  readonly modified: boolean
  readonly committedCycle: number
  /** the mirror's recorded successor (the first delta it expects), if any */
  readonly successor?: string
}

/** The disk's current plan, as far as a replan cares. */
export interface PlannedDisk {
  readonly mode: 'seed' | 'incremental'
  readonly fromDepth: number
  readonly baseCycle: number
  readonly baseGeneration: string
  /** file names of the chain layers, [0] = running delta */
  readonly layerFiles: readonly string[]
}

/** What to do after a refused DiskOpen. */
export type RefusalDecision =
  /** open the disk again in the same connection (a new handle) with this plan */
  | { readonly kind: 'replan', readonly plan: DiskPlanDecision }
  /** another cycle is in flight: a new connection, Rollback before any DiskOpen, then open again */
  | { readonly kind: 'rollback' }
  /** nothing left to try */
  | { readonly kind: 'fail', readonly reason: string }

/**
 * The decision after the receiver refused `disk`. `rolledBack` says whether
 * this cycle already rolled the receiver back once (a second
 * `E_CYCLE_MISMATCH` after that is a failure, not a loop).
 */
export function planAfterRefusal (disk: PlannedDisk, refusal: DiskRefusal, rolledBack: boolean): RefusalDecision {
  if (refusal.code === 'E_CYCLE_MISMATCH') {
    return rolledBack ? { kind: 'fail', reason: 'E_CYCLE_MISMATCH after a rollback' } : { kind: 'rollback' }
  }
  if (disk.mode === 'seed') return { kind: 'fail', reason: refusal.code }
  const succ = refusal.successor
  const L = disk.layerFiles.length
  // the mirror may record a later successor than the bottom delta (an older snapshot was not removed)
  const j = succ === undefined ? -1 : disk.layerFiles.findIndex((f, k) => k >= 1 && k <= L - 2 && f === succ)
  if (refusal.code === 'E_CHAIN_MISMATCH' && j >= 1 && j !== disk.fromDepth && !refusal.modified && refusal.committedCycle === disk.baseCycle) {
    return { kind: 'replan', plan: { kind: 'incremental', fromDepth: j, baseCycle: disk.baseCycle, baseGeneration: disk.baseGeneration } }
  }
  const reason = `${refusal.code}${refusal.modified ? ' (mirror modified)' : ''}${succ !== undefined ? ` (mirror successor ${succ})` : ''}`
  return { kind: 'replan', plan: { kind: 'seed', reason } }
}
