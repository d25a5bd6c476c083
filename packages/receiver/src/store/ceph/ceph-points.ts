/**
 * `grainline points drop` and `grainline points prune` on the Ceph store:
 * a point is an RBD snapshot of every disk, so dropping one removes its
 * snapshots (copy-on-write inside Ceph: nothing is merged, unlike the folder
 * store's reverse increments) and its entry in the state object.
 *
 * Crash safety — the state object first, the snapshots after: the new state
 * (the point gone, its snapshots listed in `pending`) is one atomic
 * `write_full` and is the commit point of the drop; then `rbd snap rm` of
 * each, then `pending` cleared. A crash in between leaves a state whose
 * `points` no longer name the point and whose `pending` names its
 * snapshots: `status` and `points` read it as dropped, and whoever takes the
 * VM's lease next (the next cycle's receiver, or the next operator action)
 * finishes the removal before anything else (CephVmMirror.acquire). The
 * other order would, after a crash, leave a state naming a point whose
 * snapshots are gone: a restore of it would fail.
 *
 * The VM's lease is held throughout (a running receiver's session is never
 * raced: the action waits for a closing session, then `E_BUSY` naming the
 * holder). As on the folder store: a cycle in flight refuses (`E_BUSY`), a
 * failover's hold refuses (`E_HELD`), and the mirror itself — the committed
 * cycle, the base of the next incremental and of a resync — is not a point
 * and is never dropped (`E_NOT_FOUND`).
 */
import { hostname } from 'node:os'
import type { Logger } from 'pino'
import { ReceiverError } from '../../errors.ts'
import { faultPoint } from '../../fault.ts'
import { heldMessage } from '../../hold-record.ts'
import { keepsPoints, pointsToDrop, type RetentionPolicy } from '../../retention.ts'
import { CephVmMirror, reclaimCephDisks } from './ceph-mirror.ts'
import { keptCephConfigs } from './ceph-point-config.ts'
import { CephNames, headImages, readCephState, unreferencedImages, type CephPoint, type CephVmState } from './ceph-state.ts'
import { retainedPoints } from './ceph-space.ts'
import type { CephTarget } from './rbd-cli.ts'

/** An operator action waits this long for the lease of a session that is closing (then E_BUSY). */
export const CEPH_ADMIN_LOCK_WAIT_MS = 5000

/** How an operator action describes itself in the VM's lease (seen by a receiver that finds the VM taken). */
export function adminHolder(action: string): { description: string } {
  return { description: `grainline ${action} on ${hostname()} pid ${process.pid}` }
}

/**
 * Take the lease of a VM that has a committed mirror in the pool.
 * @throws ReceiverError E_NOT_FOUND (no mirror: nothing is locked or created), E_BUSY, E_STATE, E_IO
 */
export async function acquireCommitted(t: CephTarget, vm: string, log: Logger, action: string): Promise<CephVmMirror> {
  const s = await readCephState(t, new CephNames(vm).state, vm)
  if (s === undefined || s.committedCycle === 0) throw new ReceiverError('E_NOT_FOUND', `no committed mirror of VM ${vm} in Ceph pool ${t.pool}`)
  const m = await CephVmMirror.acquireWait(t, vm, log, adminHolder(action), CEPH_ADMIN_LOCK_WAIT_MS)
  if (m.state.committedCycle === 0) {
    m.release()
    throw new ReceiverError('E_NOT_FOUND', `no committed mirror of VM ${vm} in Ceph pool ${t.pool}`)
  }
  return m
}

/** The snapshots of `gone` points that neither the kept points nor the committed disks name (pure). */
export function snapsToRemove(state: CephVmState, kept: readonly CephPoint[], gone: readonly CephPoint[]): Array<{ image: string; snap: string }> {
  const used = new Set<string>()
  for (const d of Object.values(state.disks)) used.add(`${d.image}@${d.snap}`)
  for (const p of kept) for (const d of Object.values(p.disks)) used.add(`${d.image}@${d.snap}`)
  const out = new Map<string, { image: string; snap: string }>()
  for (const p of gone) for (const d of Object.values(p.disks)) if (!used.has(`${d.image}@${d.snap}`)) out.set(`${d.image}@${d.snap}`, { image: d.image, snap: d.snap })
  return [...out.values()]
}

/**
 * Prune a VM's points by `retention` at `now` (a fake clock in tests), or
 * drop the listed `cycles`. Returns the cycles dropped and kept (the mirror
 * excluded). For a `maxBytes` rule each point's bytes are measured with
 * `rbd du` (ceph-space.ts: what the cycle after it wrote).
 * @throws ReceiverError E_NOT_FOUND (no mirror, no such point, the mirror itself), E_BUSY (a cycle in flight, a session holding the lease), E_HELD (a failover holds the mirror), E_IO
 */
export async function cephPrunePoints(
  t: CephTarget,
  vm: string,
  what: RetentionPolicy | { readonly cycles: readonly number[] },
  opts: { logger: Logger; now?: () => number },
): Promise<{ vm: string; dropped: number[]; kept: number[] }> {
  const m = await acquireCommitted(t, vm, opts.logger, 'cycles' in what ? 'points drop' : 'points prune')
  try {
    const s = m.state
    if (s.inflight !== null) throw new ReceiverError('E_BUSY', `VM ${vm} has cycle ${s.inflight.cycle} in flight: its points cannot change until it is committed or rolled back`)
    if ((s.holds ?? []).length > 0) throw new ReceiverError('E_HELD', heldMessage(vm, s.holds ?? [], `ceph:${t.pool}`))
    const before = [...s.points].sort((a, b) => a.cycle - b.cycle)
    let drop: Set<number>
    if ('cycles' in what) {
      const have = before.map((p) => p.cycle).join(', ') || 'none'
      if (what.cycles.includes(s.committedCycle)) {
        throw new ReceiverError('E_NOT_FOUND', `VM ${vm} has no point ${s.committedCycle}: it is the mirror (the base of the next cycle and of a resync), never dropped (points: ${have})`)
      }
      const missing = what.cycles.filter((c) => !before.some((p) => p.cycle === c))
      if (missing.length > 0) throw new ReceiverError('E_NOT_FOUND', `VM ${vm} has no point ${missing.join(', ')} (points: ${have})`)
      drop = new Set(what.cycles)
    } else if (!keepsPoints(what)) {
      drop = new Set(before.map((p) => p.cycle))
    } else {
      drop = new Set(pointsToDrop(await retainedPoints(t, before, what.maxBytes !== undefined, headImages(s)), what, (opts.now ?? Date.now)()))
    }
    const kept = before.filter((p) => !drop.has(p.cycle))
    const gone = before.filter((p) => drop.has(p.cycle))
    if (gone.length === 0) return { vm, dropped: [], kept: kept.map((p) => p.cycle) }
    // a disk removed from the VM that only the dropped points named: its image (and kept map) go too
    const reclaimed = reclaimCephDisks(s, kept, new CephNames(vm), opts.logger.child({ vm }))
    const disks = Object.fromEntries(Object.entries(s.disks).filter(([n]) => !reclaimed.names.includes(n)))
    // the commit point: the state no longer names the points; their snapshots are pending removal
    await m.write({
      ...s,
      disks,
      points: kept,
      configs: keptCephConfigs(s.configs, kept),
      // an image only the dropped points read (a re-seed replaced it) goes with them
      pending: { snaps: snapsToRemove({ ...s, disks }, kept, gone), images: [...new Set([...unreferencedImages(s, disks, kept), ...reclaimed.images])], logs: reclaimed.objects },
    })
    faultPoint('ceph-prune-after-state')
    await m.finishPending()
    opts.logger.info({ vm, dropped: gone.map((p) => p.cycle), kept: kept.map((p) => p.cycle) }, 'restore points dropped (Ceph snapshots removed)')
    return { vm, dropped: gone.map((p) => p.cycle), kept: kept.map((p) => p.cycle) }
  } finally {
    m.release()
  }
}
