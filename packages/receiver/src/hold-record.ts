/** The record of a hold in `state.json` (see holds.ts). */
import type { VmStateFile } from './state-file.ts'

/** A hold on a VM's mirror: an opened point or a failover. */
export interface HoldRecord {
  readonly id: string
  /** the point (cycle) opened; the committed cycle = the mirror itself */
  readonly cycle: number
  /** the folder holding the runnable VM */
  readonly dir: string
  readonly kind: 'open' | 'failover'
  readonly createdAt: string
}

/** The holds of a VM. */
export function holdsOf(state: VmStateFile): readonly HoldRecord[] {
  return state.holds ?? []
}

/** The text of the refusal a held VM gets (E_HELD). */
export function heldMessage(vm: string, holds: readonly HoldRecord[]): string {
  const h = holds[0] as HoldRecord
  return `VM ${vm} is held by ${holds.length} ${h.kind === 'failover' ? 'failover' : 'opened point'}(s) (point ${h.cycle} in ${h.dir}): the mirror must not change; release it with "grainline points close --store … --vm ${vm} --to ${h.dir}"`
}
