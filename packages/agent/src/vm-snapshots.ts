/**
 * The snapshot steps of a cycle that act on the source VM through its driver:
 * refusing (or consolidating) snapshots grainline did not make, and removing
 * every grainline snapshot but the one just committed, so that their deltas
 * consolidate into the base and the VM runs on exactly one grainline snapshot.
 */
import type { Logger } from 'pino'
import type { HypervisorDriver, SnapshotRef, VmHandle } from './driver.ts'
import { AgentError, checkAborted } from './errors.ts'

/**
 * Refuse a VM holding snapshots grainline did not make (`E_FOREIGN_SNAPSHOTS`),
 * or remove them first when `consolidate` is set. Returns the VM as it is
 * afterwards and its snapshots.
 */
export async function settleForeignSnapshots(
  driver: HypervisorDriver,
  vm: VmHandle,
  opts: { consolidate: boolean; log: Logger; signal?: AbortSignal },
): Promise<{ vm: VmHandle; snapshots: SnapshotRef[] }> {
  const sig = opts.signal === undefined ? {} : { signal: opts.signal }
  let snaps = await driver.listSnapshots(vm, sig)
  const foreign = snaps.filter((s) => !s.grainline)
  if (foreign.length === 0) return { vm, snapshots: snaps }
  if (!opts.consolidate) {
    throw new AgentError(
      'E_FOREIGN_SNAPSHOTS',
      `VM ${vm.name} has snapshots grainline did not make (${foreign.map((s) => JSON.stringify(s.name)).join(', ')}); remove them or use --consolidate-existing`,
    )
  }
  let current = vm
  for (const s of foreign) {
    checkAborted(opts.signal)
    opts.log.warn({ snapshot: s.name, id: s.id }, 'removing a pre-existing snapshot (consolidateExisting)')
    // a snapshot operation is never cut short: it finishes, and a stop takes effect before the next one
    await driver.removeSnapshot(current, s)
    current = await driver.openVm(vm.ref, sig)
  }
  snaps = await driver.listSnapshots(current, sig)
  return { vm: current, snapshots: snaps }
}

/**
 * Remove every grainline snapshot except `keep` (by id): after a commit they
 * are older points (or leftovers of another target) whose deltas consolidate
 * into the base. `onRemoved` hears each name removed; a failed removal
 * throws `E_SNAPSHOT` with the driver's code, and the next cycle retries.
 */
export async function removeOtherSnapshots(driver: HypervisorDriver, vm: VmHandle, keep: SnapshotRef, opts: { log: Logger; onRemoved: (name: string) => void; signal?: AbortSignal }): Promise<void> {
  const sig = opts.signal === undefined ? {} : { signal: opts.signal }
  let current = vm
  for (const s of await driver.listSnapshots(current, sig)) {
    if (!s.grainline || s.id === keep.id) continue
    checkAborted(opts.signal)
    try {
      await driver.removeSnapshot(current, s)
      opts.onRemoved(s.name)
      current = await driver.openVm(vm.ref, sig)
      opts.log.info({ snapshot: s.name, id: s.id }, 'older snapshot removed')
    } catch (err) {
      // a stop that came while the removal waited for its turn on the host: not a failure of the removal
      if (err instanceof AgentError && err.code === 'E_ABORTED') throw err
      opts.log.error({ err, snapshot: s.name }, 'removing an older snapshot failed; the next cycle retries')
      // keep the driver's own code (E_CONSOLIDATION_NEEDED, E_TIMEOUT, …) in front of the operator
      const code = (err as { code?: unknown }).code
      throw new AgentError('E_SNAPSHOT', `removing snapshot ${s.name} failed${typeof code === 'string' ? ` [${code}]` : ''}: ${(err as Error).message}`, { cause: err })
    }
  }
}
