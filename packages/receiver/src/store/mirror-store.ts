/**
 * The store seam: what a session needs of a VM mirror, whichever store holds
 * it — the folder store (vm-mirror.ts, disk-apply.ts: files, undo journal,
 * state.json rename) or the Ceph store (store/ceph/: RBD images and
 * snapshots, a RADOS state object and lease). Both open a VM under its lock,
 * stage its configuration files, open disks for a cycle (fresh or resumed by
 * cycle identity), take batches of validated extents through the same
 * {@link StoreApply} interface, commit atomically, roll back and verify.
 */
import type { ApplyExtent, DiskEndClaim, ExtentCounts } from '../disk-apply.ts'
import type { CephTarget } from './ceph/rbd-cli.ts'

/** The kinds of store. */
export const StoreKinds = ['folder', 'ceph'] as const
export type StoreKind = (typeof StoreKinds)[number]

/** Where a receiver keeps its mirrors. */
export type StoreSpec = { readonly kind: 'folder'; readonly dir: string } | { readonly kind: 'ceph'; readonly target: CephTarget; readonly leaseSeconds?: number }

/** One disk's apply of a cycle, as the session and the ApplyPipeline drive it. */
export interface StoreApply {
  readonly info: { readonly name: string; readonly mode: string }
  readonly nextSeq: number
  readonly appliedSeq: number
  readonly counts: ExtentCounts
  readonly batches: number
  readonly journalMs: number
  readonly writeMs: number
  accept(e: ApplyExtent): ApplyExtent
  cost(e: ApplyExtent): number
  prepareBatch(batch: readonly ApplyExtent[], opts?: { signal?: AbortSignal }): Promise<void>
  writeBatchData(batch: readonly ApplyExtent[], opts?: { signal?: AbortSignal }): Promise<void>
  syncBatch(batch: readonly ApplyExtent[]): Promise<void>
  /**
   * The pipeline went idle (every batch durable, none being journaled): make
   * the resume point of the last durable batch visible where it is only
   * queued, so that a stalled link or a killed receiver resumes from it.
   * Optional: a store whose markers are written per batch needs nothing.
   */
  settle?(): Promise<void>
  end(claim: DiskEndClaim): Promise<void>
  close(opts?: { flush?: boolean }): Promise<void>
}
