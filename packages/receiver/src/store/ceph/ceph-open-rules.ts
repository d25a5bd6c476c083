/**
 * The DiskOpen rules of SPEC §5.1/§5.2 (and §5.9 for a resync) that decide
 * a fresh open of a disk on the Ceph store from its committed record — the
 * twin of open-decision.ts for images (split from ceph-mirror.ts) — and
 * what the apply records of the blocks it writes. Pure.
 */
import type { DiskOpenRequest } from '../../open-decision.ts'
import { TouchedBlocks } from '../../kept-map.ts'
import { keepable } from './ceph-kept-map.ts'
import type { CephDiskRecord } from './ceph-state.ts'
import { grainlineCommand } from '../../operator-command.ts'

const refusal = (reason: string, message: string): { reason: string; message: string } => ({ reason, message })

/**
 * Why a fresh (not resumed) DiskOpen of a resync or an incremental is refused, or undefined (a seed is never refused here;
 * room and quota: ceph-space.ts). `compatible`: the VM's compatibility record matches the mirror's.
 */
export function freshOpenRefusal(vm: string, req: DiskOpenRequest, rec: CephDiskRecord | undefined, compatible: boolean): { reason: string; message: string } | undefined {
  if (req.mode === 'resync') {
    // SPEC §5.9 (resync-open.ts): generation, chain and divergence do not matter; the committed snapshot is compared with
    if (!compatible) return refusal('E_INCOMPATIBLE', `VM ${vm}: hardware version or datastore type differ from the mirror's (SPEC §4.2): no resync; seed a new mirror after checking the VM`)
    if (rec === undefined) return refusal('E_CHAIN_MISMATCH', `disk ${req.name} has no committed mirror to compare with: seed it`)
    if (req.capacity < rec.capacity) return refusal('E_CHAIN_MISMATCH', `capacity of ${req.name} shrank from ${rec.capacity} to ${req.capacity}: seed it`)
  }
  if (req.mode === 'incremental') {
    if (rec === undefined) return refusal('E_CHAIN_MISMATCH', `disk ${req.name} has no committed mirror to apply an incremental on`)
    if (!compatible) return refusal('E_INCOMPATIBLE', `VM ${vm}: hardware version or datastore type differ from the mirror's (SPEC §4.2): seed a new mirror`)
    if (req.baseCycle !== rec.cycle) return refusal('E_CHAIN_MISMATCH', `incremental on cycle ${req.baseCycle} but the mirror is at cycle ${rec.cycle}`)
    if (req.source.layers[0]?.file !== rec.source.successor) {
      return refusal('E_CHAIN_MISMATCH', `first delta ${req.source.layers[0]?.file ?? '(none)'} is not the successor ${rec.source.successor} recorded at the last commit`)
    }
    if (req.capacity < rec.capacity) return refusal('E_CHAIN_MISMATCH', `capacity shrank from ${rec.capacity} to ${req.capacity}`)
    if (req.baseGeneration !== rec.generation) {
      return refusal('E_GENERATION', `incremental planned against generation ${req.baseGeneration || '(none)'}, but the mirror of ${req.name} is at generation ${rec.generation}; resync`)
    }
    if (rec.diverged !== undefined) return refusal('E_DIVERGED', `mirror of ${req.name} was found to differ from its source at ${rec.diverged.at} (${rec.diverged.reason}): resync or seed it`)
  }
  return undefined
}

/**
 * Why an incremental or a resync of disk `disk` is refused when its committed
 * snapshot is damaged (`problem`: ceph-snapshots.ts snapshotProblem, as status
 * lists it in `damagedMirror`), and what the operator does. The refusal is
 * E_MIRROR_MODIFIED (`modified`): after an incremental's the agent tries a
 * resync, refused the same way — a resync compares with that snapshot — and
 * then fails the VM with this message instead of seeding over the mirror
 * (the operator chooses: the latest cycle is lost, its points may be archived
 * or restored first) or retrying an apply that fails at its first batch.
 */
export function damagedSnapshotText(vm: string, store: string, disk: string, rec: Pick<CephDiskRecord, 'image' | 'snap' | 'cycle'>, problem: string): string {
  const pool = store.replace(/^ceph:/, '')
  return (
    `the committed snapshot ${pool}/${rec.image}@${rec.snap} of disk ${disk} of VM ${vm} ${problem}: the mirror's latest cycle ${rec.cycle} is lost, and neither an incremental (written from that snapshot) nor a resync (compared with it) can build on it. ` +
    `Restore or fail over a restore point still whole instead if needed (${grainlineCommand(['status', '--store', store])} names them), archive the points to keep (${grainlineCommand(['points', 'archive', '--store', store, '--vm', vm, '--archive', 's3://BUCKET/PREFIX'])}), ` +
    `then remove the mirror (${grainlineCommand(['mirror', 'remove', '--store', store, '--vm', vm, '--yes'])}): the next run seeds the VM anew`
  )
}

/**
 * Why a cycle in flight of disk `disk` can neither resume nor be rolled back
 * when its base snapshot (the committed snapshot its head was written from,
 * `image@snap`) is damaged (`problem`: ceph-snapshots.ts snapshotProblem):
 * the refusal of its resume's DiskOpen and of its Rollback, E_MIRROR_MODIFIED
 * (the agent fails the VM with this, where the resume was accepted and its
 * first batch failed E_IO, and the rollback failed E_IO, at every run).
 */
export function damagedBaseText(vm: string, store: string, disk: string, base: { image: string; snap: string; committedCycle: number; inflightCycle: number }, problem: string): string {
  const pool = store.replace(/^ceph:/, '')
  const n = base.inflightCycle
  return (
    `the base snapshot ${pool}/${base.image}@${base.snap} of disk ${disk} of VM ${vm} (its committed cycle ${base.committedCycle}, which cycle ${n} in flight is written on) ${problem}: ` +
    `cycle ${n} can neither resume (its head is written from that snapshot) nor be rolled back (a rollback returns the image to it), and no later cycle can build on the mirror. ` +
    `Restore or fail over a restore point still whole instead if needed (${grainlineCommand(['status', '--store', store])} names them), archive the points to keep (${grainlineCommand(['points', 'archive', '--store', store, '--vm', vm, '--archive', 's3://BUCKET/PREFIX'])}), ` +
    `then remove the mirror with its cycle in flight (${grainlineCommand(['mirror', 'remove', '--store', store, '--vm', vm, '--yes'])}): the next run seeds the VM anew`
  )
}

/**
 * What the apply of a DiskOpen records of the blocks it writes (ceph-kept-map.ts):
 * a resync always (its commit writes the next kept map), an incremental on a
 * disk whose committed record keeps a map of the same capacity, nothing otherwise.
 */
export function trackerFor(req: DiskOpenRequest, rec: CephDiskRecord | undefined): TouchedBlocks | undefined {
  if (req.mode === 'resync') return req.blockSize !== undefined && keepable(req.capacity, req.blockSize, req.algorithm) ? new TouchedBlocks(req.capacity, req.blockSize) : undefined
  if (req.mode === 'incremental' && rec?.kept !== undefined && rec.capacity === req.capacity) return new TouchedBlocks(req.capacity, rec.kept.blockSize)
  return undefined
}
