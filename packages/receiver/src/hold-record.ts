/** The record of a hold in `state.json` (see holds.ts). */
import { readdir } from 'node:fs/promises'
import { ReceiverError } from './errors.ts'
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

/**
 * A file ESXi keeps in the folder of a powered-on VM: the lock of an open disk
 * or of the .vmx on NFS (`.lck-…`), or the swap file (`*.vswp`). Undefined
 * when there is none, or the folder cannot be read (gone, or not a folder).
 */
export async function poweredOnSign(dir: string): Promise<string | undefined> {
  let names: string[]
  try {
    names = await readdir(dir)
  } catch {
    return undefined
  }
  return names.find((n) => n.startsWith('.lck-') || n.endsWith('.vswp'))
}

/**
 * Refuse to close holds that may be in use, before anything changes. After a
 * failover its folder is the production VM, and closing deletes it: a
 * failover hold closes only with `failover` (the operator says the VM failed
 * back and is off; `--all` alone is not enough). A hold whose folder shows a
 * powered-on VM ({@link poweredOnSign}) is refused whatever the flags.
 * @throws ReceiverError E_HELD (a failover hold without `failover`), E_BUSY (a powered-on VM)
 */
export async function checkClosable(vm: string, drop: readonly { readonly kind: string; readonly dir: string }[], failover: boolean): Promise<void> {
  const failovers = drop.filter((h) => h.kind === 'failover')
  if (failovers.length > 0 && !failover)
    throw new ReceiverError(
      'E_HELD',
      `VM ${vm}: ${failovers.map((h) => h.dir).join(', ')} ${failovers.length === 1 ? 'is a failover folder' : 'are failover folders'}: after a failover the VM runs from it, and closing deletes it. Fail back first (README "Fail back"), power the failed-over VM off, then close with --failover`,
    )
  for (const h of drop) {
    const sign = await poweredOnSign(h.dir)
    if (sign !== undefined) throw new ReceiverError('E_BUSY', `VM ${vm}: ${h.dir} holds ${sign}: the VM opened there looks powered on; power it off (and unregister it) before closing its hold`)
  }
}
