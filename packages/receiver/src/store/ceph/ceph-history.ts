/**
 * The cycle history of a VM on the Ceph store (the dashboard's charts, the
 * `lastCycle` of `GET /api/v1/status`): one RADOS object per VM,
 * `grainline.hist.<vmkey>`, holding the same document and the same bounds as
 * the folder store's `history.json` (cycle-history.ts: 30 days, at most
 * 2000 entries, never read above 2 MiB). Rewritten whole at each commit by
 * the session holding the VM's lease, after the commit point (`rados put`:
 * one atomic write_full); losing it loses charts, never data, so a failure
 * is logged by the caller and the commit stands.
 */
import { encodeCycleHistory, HISTORY_MAX_FILE_BYTES, parseCycleHistory, withCycle, type CycleHistoryEntry } from '../../cycle-history.ts'
import { CephNames } from './ceph-state.ts'
import { CephCommandError, CephOutputTooLarge, runCeph, type CephTarget } from './rbd-cli.ts'

/** The VM's history, oldest first; empty when absent, too large or unreadable. @throws ReceiverError E_IO (the cluster does not answer) */
export async function readCephHistory(t: CephTarget, vm: string, now = Date.now()): Promise<CycleHistoryEntry[]> {
  let raw: Buffer
  try {
    // bounded while read (as the state object, ceph-state.ts): read at every commit and by the dashboard, an object
    // planted in the pool would cost its size in memory each time, and its whole transfer
    raw = await runCeph(t, 'rados', ['-p', t.pool, 'get', new CephNames(vm).history, '-'], undefined, { maxBytes: HISTORY_MAX_FILE_BYTES })
  } catch (err) {
    if (err instanceof CephCommandError && err.notFound) return []
    // too large: not one the receiver writes (the charts start again; the next commit rewrites it)
    if (err instanceof CephOutputTooLarge) return []
    throw err
  }
  return parseCycleHistory(raw.toString('utf8'), now)
}

/** Append one committed cycle (the object rewritten whole, trimmed) through `put`: the VM's session client (ceph-lock.ts). */
export async function appendCephHistory(t: CephTarget, vm: string, entry: CycleHistoryEntry, put: (object: string, data: Uint8Array) => Promise<void>, now = Date.now()): Promise<void> {
  const next = withCycle(await readCephHistory(t, vm, now), entry, now)
  await put(new CephNames(vm).history, Buffer.from(encodeCycleHistory(next)))
}
