/**
 * Which VMs a Ceph pool holds, without listing the pool: one RADOS object,
 * `grainline.vms`, whose omap keys are the names of the VMs' state objects
 * (each value the VM's name, for an operator's `rados listomapvals`).
 * `rados ls` walks every object of the pool — every 4 MiB piece of every
 * image, millions on a production pool — and ran on every `status`, every
 * metrics scrape and every VmOpen of a VM new to the pool (the VM count);
 * reading the index is one omap read, O(VMs).
 *
 * Invariant: the index holds the name of every state object (a superset).
 * A VM's first state write adds its key before the object exists
 * (ceph-mirror.ts, through the session client: fenced, and a full pool is
 * E_NO_SPACE as for the state itself); a removal deletes the key after the
 * state object (ceph-remove.ts). A key whose state object does not exist —
 * a first write that failed or was killed, a removal killed between its two
 * steps, a state object deleted by hand — is read as no VM by every reader
 * (they read each state object anyway); a reader never deletes a key, since
 * a session may be between its two steps. Running the removal again deletes
 * such a key.
 *
 * Pools written before the index: a reader that finds no `complete` key
 * lists the pool once (`rados ls`), adds every state object it finds, then
 * `complete`. A VM created meanwhile adds its own key first, so the order
 * does not matter. The adds are best-effort: a reader that may not write
 * (a read-only Ceph client) or a full pool gets the listing it made, and
 * the next reader tries again. Every receiver writing to a pool must know
 * the index once one has built it: a receiver older than it would create
 * VMs the index does not list (docs/CEPH.md "Upgrading").
 */
import { unlessPoolFull } from './ceph-space.ts'
import { type CephVmState, listPool, readCephState, STATE_PREFIX } from './ceph-state.ts'
import { CephCommandError, runCeph, type CephTarget } from './rbd-cli.ts'

/** The index object. */
export const VM_INDEX = 'grainline.vms'

/** The key saying the index holds every state object of the pool (written after a build). */
export const INDEX_COMPLETE = 'complete'

/** Adds of a build run at once. */
const BUILD_PARALLEL = 8

/** The state objects the index of pool `t` names (`rados listomapkeys`), or undefined when it is not complete. @throws CephCommandError but for a missing index */
async function readIndex(t: CephTarget): Promise<string[] | undefined> {
  let out: Buffer
  try {
    out = await runCeph(t, 'rados', ['-p', t.pool, 'listomapkeys', VM_INDEX])
  } catch (err) {
    if (err instanceof CephCommandError && err.notFound) return undefined
    throw err
  }
  const keys = out.toString('utf8').split('\n')
  if (!keys.includes(INDEX_COMPLETE)) return undefined
  return keys.filter((k) => k.startsWith(STATE_PREFIX))
}

/**
 * Index the pool's state objects from one `rados ls` (a pool written before
 * the index), then mark the index complete; the listing is returned whether
 * or not the adds succeeded (see the file comment).
 * @throws CephCommandError (the listing failed: a missing pool is `notFound`)
 */
async function buildIndex(t: CephTarget): Promise<string[]> {
  const listed = (await listPool(t, 'objects')).filter((o) => o.startsWith(STATE_PREFIX))
  try {
    for (let i = 0; i < listed.length; i += BUILD_PARALLEL) {
      await Promise.all(listed.slice(i, i + BUILD_PARALLEL).map((o) => addKey(t, o, '')))
    }
    await addKey(t, INDEX_COMPLETE, new Date().toISOString())
  } catch {
    // a read-only client, a full pool: the listing stands; the next reader builds again
  }
  return listed
}

/** One key of the index through a one-shot client (a build); a full pool rejects after STALL_MS instead of waiting. */
async function addKey(t: CephTarget, key: string, value: string): Promise<void> {
  await unlessPoolFull(t, runCeph(t, 'rados', ['-p', t.pool, 'setomapval', VM_INDEX, key, value]), `indexing ${key}`)
}

/** The names of the pool's state objects (`grainline.vm.*`), sorted: from the index, built first when incomplete. @throws CephCommandError */
export async function listStateObjects(t: CephTarget): Promise<string[]> {
  const keys = (await readIndex(t)) ?? (await buildIndex(t))
  return [...new Set(keys)].sort()
}

/** The states of every VM in the pool (a key whose state object is gone is no VM). */
export async function listCephStates(t: CephTarget): Promise<CephVmState[]> {
  const states: CephVmState[] = []
  for (const o of await listStateObjects(t)) {
    const s = await readCephState(t, o)
    if (s !== undefined) states.push(s)
  }
  return states.sort((a, b) => a.vm.localeCompare(b.vm))
}
