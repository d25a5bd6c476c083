/**
 * `grainline mirror rollback --store ceph:POOL`: discard a VM's interrupted
 * cycle (CephVmMirror.rollback: per disk the extent log removed, then a
 * seed's new image removed or an incremental's head rolled back to its base
 * snapshot); the mirror stays at its last commit. Under the VM's lease
 * (`E_BUSY` while a receiver's session holds it).
 */
import type { Logger } from 'pino'
import { ReceiverError } from '../../errors.ts'
import { adminHolder, CEPH_ADMIN_LOCK_WAIT_MS } from './ceph-points.ts'
import { CephVmMirror } from './ceph-mirror.ts'
import { CephNames, readCephState } from './ceph-state.ts'
import type { CephTarget } from './rbd-cli.ts'

/**
 * Roll back the cycle in flight of `vm`, if any.
 * @throws ReceiverError E_NOT_FOUND (the pool has no record of the VM), E_BUSY, E_STATE, E_IO
 */
export async function cephRollbackMirror(t: CephTarget, vm: string, log: Logger): Promise<{ vm: string; committedCycle: number; rolledBack: boolean }> {
  if ((await readCephState(t, new CephNames(vm).state, vm)) === undefined) throw new ReceiverError('E_NOT_FOUND', `no mirror of VM ${vm} in Ceph pool ${t.pool}`)
  const m = await CephVmMirror.acquireWait(t, vm, log, adminHolder('mirror rollback'), CEPH_ADMIN_LOCK_WAIT_MS)
  try {
    const had = m.state.inflight !== null
    return { vm, committedCycle: await m.rollback(), rolledBack: had }
  } finally {
    m.release()
  }
}
