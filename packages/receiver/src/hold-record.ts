/** The record of a hold in `state.json` (see holds.ts). */
import { readdir } from 'node:fs/promises'
import { isAbsolute, relative, resolve } from 'node:path'
import { shJoin } from '@grainline/protocol'
import { grainlineCommand, storeArg } from './operator-command.ts'
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

/**
 * The command that releases a hold, to paste as printed: every argument
 * shell-quoted (a VM or folder name with spaces), the store and the folder
 * absolute (`store`: a folder store's folder, resolved, or `ceph:POOL`).
 * `failover`: the hold is a failover's (closing it needs `--failover`).
 */
export function closeCommand(store: string, vm: string, dir: string, failover = false): string {
  // a Ceph store's hold is an opened point's name (`open-…`) or a failover's absolute folder: as it is
  const to = store.startsWith('ceph:') ? dir : resolve(dir)
  return grainlineCommand(['points', 'close', '--store', storeArg(store), '--vm', vm, '--to', to, ...(failover ? ['--failover'] : [])])
}

/** The first words of an E_HELD refusal: the VM, how many holds, the first one's point and folder (`dir`: as shown). */
function heldLead(vm: string, holds: readonly HoldRecord[], dir: string): string {
  const h = holds[0] as HoldRecord
  return `VM ${vm} is held by ${holds.length} ${h.kind === 'failover' ? 'failover' : 'opened point'}(s) (point ${h.cycle} in ${dir}): the mirror must not change`
}

/** The text of the refusal a held VM gets (E_HELD), for the DR site's operator: the command that releases the first hold (`store`: the store as `--store` takes it). */
export function heldMessage(vm: string, holds: readonly HoldRecord[], store: string): string {
  const h = holds[0] as HoldRecord
  return `${heldLead(vm, holds, h.dir)}; release it with "${closeCommand(store, vm, h.dir, h.kind === 'failover')}"${h.kind === 'failover' ? ' once the VM failed back (README "Fail back") and is powered off' : ''}`
}

/**
 * {@link heldMessage} as the agent is told it: a folder store's folder never
 * reaches a peer (refusal-detail.ts), so a hold inside the store is named
 * relative to it, and the command reads `--store STORE` with a word saying
 * what to put there and that `--to` is a path inside the store (closePoint
 * finds a hold by a `--to` relative to the store). A Ceph store's refusal is
 * {@link heldMessage} (`ceph:POOL` names no folder).
 */
export function heldPeerMessage(vm: string, holds: readonly HoldRecord[], storeDir: string): string {
  const h = holds[0] as HoldRecord
  const rel = relative(resolve(storeDir), h.dir)
  const inside = rel !== '' && !rel.startsWith('..') && !isAbsolute(rel)
  const failover = h.kind === 'failover' ? ['--failover'] : []
  if (!inside)
    return `${heldLead(vm, holds, h.dir)}; release it on the receiver with "${grainlineCommand(['points', 'close', '--store', 'STORE', '--vm', vm, '--to', h.dir, ...failover])}" (STORE: the receiver's store folder)`
  return (
    `${heldLead(vm, holds, `the store's ${rel}`)}; release it on the receiver with ` +
    `"${grainlineCommand(['points', 'close', '--store', 'STORE', '--vm', vm, '--to', rel, ...failover])}" (STORE: the receiver's store folder; --to ${shJoin([rel])} is inside it)`
  )
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
