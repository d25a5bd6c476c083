/**
 * `grainline mirror remove` on a Ceph store: a VM no longer replicated
 * leaves the pool — its images with their snapshots (the mirror and its
 * restore points), its extent logs, kept block maps, history, state and
 * lock objects — and its place under its token's `maxVms` and quota is free
 * again.
 *
 * Under the VM's lease, the state object goes first: from that moment the
 * VM is gone for every reader, session and count (ceph-vm-count.ts counts
 * state objects; a state-less image is nobody's, ceph-space.ts), then its
 * key in the pool's VM index (ceph-vm-index.ts; a run that finds no state
 * object deletes the key too). What
 * follows is found by the VM's key in the names (`gl.<key>.…` and
 * `glo.<key>.…` images, `grainline.{log,kmap,hist}.<key>…` objects), not by
 * the state, so a removal killed half-way is finished by running it again:
 * with no state object left it removes what still carries the key.
 * Refused while a failover or an opened point holds the VM (its clones are
 * children of the mirror's snapshots) and while a session holds the lease
 * (E_BUSY). Clones no hold names any longer (a crash during `points
 * close`) are removed and their parent snapshots unprotected. Archives of
 * its points on radosgw are not touched: they are the historic record,
 * kept by their own retention (Object Lock).
 */
import type { Logger } from 'pino'
import { ReceiverError } from '../../errors.ts'
import { faultPoint } from '../../fault.ts'
import { heldMessage } from '../../hold-record.ts'
import type { RemovedMirror } from '../../mirror-remove.ts'
import { CephVmMirror } from './ceph-mirror.ts'
import { adminHolder, CEPH_ADMIN_LOCK_WAIT_MS } from './ceph-points.ts'
import { imageVmKey, rbdDu } from './ceph-space.ts'
import { type CephNames, listPool, readCephState } from './ceph-state.ts'
import { CephCommandError, runCeph, type CephTarget } from './rbd-cli.ts'
import { VM_INDEX } from './ceph-vm-index.ts'

/** What of VM `names` the pool holds: its images (clones first) and its objects other than the state and lock objects. */
async function vmLeftovers(t: CephTarget, names: CephNames): Promise<{ clones: string[]; images: string[]; objects: string[] }> {
  const images = (await listPool(t, 'images')).filter((i) => imageVmKey(i) === names.vmKey)
  const k = names.vmKey
  const objects = (await listPool(t, 'objects')).filter((o) => o === `grainline.hist.${k}` || o.startsWith(`grainline.kmap.${k}.`) || o.startsWith(`grainline.log.${k}.`))
  return { clones: images.filter((i) => i.startsWith('glo.')).sort(), images: images.filter((i) => i.startsWith('gl.')).sort(), objects: objects.sort() }
}

/** Unprotect every protected snapshot of `image` (their clones removed before). */
async function unprotectAll(t: CephTarget, vm: string, image: string): Promise<void> {
  const out = await runCeph(t, 'rbd', ['snap', 'ls', '--format', 'json', `${t.pool}/${image}`])
  for (const s of JSON.parse(out.toString('utf8')) as Array<{ name?: unknown; protected?: unknown }>) {
    if (typeof s.name !== 'string' || (s.protected !== 'true' && s.protected !== true)) continue
    try {
      await runCeph(t, 'rbd', ['snap', 'unprotect', `${t.pool}/${image}@${s.name}`])
    } catch (err) {
      if (err instanceof CephCommandError && /child|busy|\(16\)/i.test(err.stderr)) {
        throw new ReceiverError('E_BUSY', `snapshot ${t.pool}/${image}@${s.name} of VM ${vm} has clones grainline did not make (rbd children): remove them, then run mirror remove again`, {
          cause: err,
        })
      }
      throw err
    }
  }
}

/**
 * Remove VM `vm` from the Ceph pool (see the file comment).
 * @throws ReceiverError E_BAD_NAME, E_NOT_FOUND (the pool holds nothing of it), E_BUSY (a session or command holds the lease; a clone in use), E_HELD, E_STATE, E_IO
 */
export async function cephRemoveMirror(t: CephTarget, vm: string, log: Logger): Promise<RemovedMirror> {
  const m = await CephVmMirror.acquireWait(t, vm, log, adminHolder('mirror remove'), CEPH_ADMIN_LOCK_WAIT_MS)
  try {
    const names = m.names
    const s = await readCephState(t, names.state, vm)
    const left = await vmLeftovers(t, names)
    if (s === undefined && left.images.length + left.clones.length + left.objects.length === 0) {
      // a key a killed removal (or first write) left in the VM index
      await m.lock.removeKey(VM_INDEX, names.state)
      await m.lock.remove(names.lock)
      throw new ReceiverError('E_NOT_FOUND', `no mirror of VM ${vm} in Ceph pool ${t.pool}`)
    }
    const holds = s?.holds ?? []
    if (holds.length > 0) throw new ReceiverError('E_HELD', `${heldMessage(vm, holds, `ceph:${t.pool}`)}; then remove it`)
    const all = [...left.clones, ...left.images]
    const bytes = all.length === 0 ? 0 : (await rbdDu(t, all)).reduce((n, u) => n + u.used, 0)
    if (s !== undefined) {
      m.checkLease()
      await m.lock.remove(names.state, false)
      faultPoint('ceph-remove-after-state')
      await m.lock.removeKey(VM_INDEX, names.state)
      log.info({ vm, pool: t.pool, committedCycle: s.committedCycle, images: all.length, bytes }, 'VM removed from the pool (its state object); removing its images and objects')
    } else {
      await m.lock.removeKey(VM_INDEX, names.state)
      log.info({ vm, pool: t.pool, images: all.length }, 'finishing an interrupted removal')
    }
    for (const c of left.clones) {
      try {
        await runCeph(t, 'rbd', ['rm', '--no-progress', `${t.pool}/${c}`])
      } catch (err) {
        if (err instanceof CephCommandError && err.notFound) continue
        if (err instanceof CephCommandError && /watchers|busy|\(16\)/i.test(err.stderr)) {
          throw new ReceiverError('E_BUSY', `clone ${t.pool}/${c} of VM ${vm} is in use (stop the VM that runs it), then run mirror remove again`, { cause: err })
        }
        throw err
      }
    }
    for (const image of left.images) {
      await unprotectAll(t, vm, image)
      await m.lock.removeImage(image)
    }
    for (const o of left.objects) await m.lock.remove(o)
    // the lease's own object last: nothing is written for this VM after it
    await m.lock.remove(names.lock)
    return {
      vm,
      committedCycle: s?.committedCycle ?? 0,
      disks: Object.keys(s?.disks ?? {}).sort(),
      points: (s?.points ?? []).map((p) => p.cycle),
      bytes,
      leftovers: s === undefined ? 1 : 0,
      resumed: s === undefined,
    }
  } finally {
    m.release()
  }
}
