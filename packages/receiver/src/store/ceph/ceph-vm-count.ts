/**
 * How many VMs a token keeps in a Ceph store (`maxVms`, auth.ts), the twin
 * of the folder store's vm-count.ts. A VmOpen of a VM the pool does not hold
 * takes its lease — a lock object that outlives the session — and its first
 * DiskOpen writes a state object, an extent log and an image, checked
 * against the token's byte quota only when the token has one. Without a
 * bound one token could create VMs without end (objects, images, status
 * and metrics rows, an index that grows for every reader).
 *
 * A VM counts from its VmOpen: the session records a new VM's (empty) state
 * object right after taking its lease (CephVmMirror.acquireWait with
 * `record`), so every lock object a session leaves has a state object naming
 * its VM. The count reads the pool's VM index (ceph-vm-index.ts: one omap
 * read, not a listing of the pool), then one `rados get` per VM not read
 * before by this process (ceph-space.ts `vmOfKey` keeps their names), and
 * at the limit one `rados stat` per counted VM not read or checked in the
 * last minute (`vmSeen`: a remembered name whose state object another
 * process removed is not counted; a token retrying at its limit costs at
 * most one check per VM a minute) — only for a VM the
 * pool does not hold yet, never on a cycle of a kept VM (one `rados stat`).
 */
import { DEFAULT_MAX_VMS, mayAccess, type TokenEntry } from '../../auth.ts'
import { ReceiverError } from '../../errors.ts'
import { forgetVmKey, vmKeySeen, vmKeyStale, vmOfKey } from './ceph-space.ts'
import { CephNames, STATE_PREFIX } from './ceph-state.ts'
import { listStateObjects } from './ceph-vm-index.ts'
import { CephCommandError, runCeph, type CephTarget } from './rbd-cli.ts'

/** Whether an object exists in the pool. @throws CephCommandError but for "not found" */
export async function cephObjectExists(t: CephTarget, object: string): Promise<boolean> {
  try {
    await runCeph(t, 'rados', ['-p', t.pool, 'stat', object])
    return true
  } catch (err) {
    if (err instanceof CephCommandError && err.notFound) return false
    throw err
  }
}

/**
 * Refuse a VmOpen of `vm` when the pool holds no state object of it and
 * `token` keeps `maxVms` VMs already (the VMs of the pool's state objects
 * its globs cover; a state object that cannot be read, or names another
 * VM than its own, is nobody's). Two sessions of one token creating VMs at
 * the same moment may both pass: the count can exceed the bound by the
 * token's sessions less one.
 * @throws ReceiverError E_QUOTA; CephCommandError (a failed query)
 */
export async function checkCephVmCount(t: CephTarget, token: TokenEntry, vm: string): Promise<void> {
  const names = new CephNames(vm)
  if (await cephObjectExists(t, names.state)) return
  const max = token.maxVms ?? DEFAULT_MAX_VMS
  let n = 0
  // names remembered from earlier calls: their state objects may be gone since (removed by another process, a key its removal left)
  const stale: string[] = []
  for (const object of await listStateObjects(t)) {
    const key = object.slice(STATE_PREFIX.length)
    const owner = await vmOfKey(t, key)
    if (owner === undefined || !mayAccess(token, owner)) continue
    n++
    if (vmKeyStale(t, key)) stale.push(object)
  }
  // before refusing: a VM not seen for `vmSeen.ms` counts only if its state object still exists (one `rados stat` each, until the count is below the limit)
  for (const object of stale) {
    if (n < max) break
    const key = object.slice(STATE_PREFIX.length)
    if (await cephObjectExists(t, object)) {
      vmKeySeen(t, key)
      continue
    }
    forgetVmKey(t, key)
    n--
  }
  if (n >= max)
    throw new ReceiverError(
      'E_QUOTA',
      `token ${token.name} keeps ${n} VMs in Ceph pool ${t.pool}, its limit (maxVms ${max}): VM ${vm} is not created; raise maxVms in the tokens file, or remove the mirrors of VMs no longer replicated (grainline mirror remove)`,
    )
}
