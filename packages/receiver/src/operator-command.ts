/**
 * The `grainline …` commands the receiver's messages tell an operator to run
 * are printed ready to paste: every argument POSIX-quoted (a VM named
 * `web 01`), a folder store's path absolute (the CLI resolves a relative one
 * from the folder it runs in, not the receiver's).
 */
import { resolve } from 'node:path'
import { shJoin } from '@grainline/protocol'
import { ReceiverError } from './errors.ts'

/** `grainline ARGS…`, quoted. */
export function grainlineCommand(args: readonly string[]): string {
  return shJoin(['grainline', ...args])
}

/** A store as a printed `--store` gives it: `ceph:POOL` and the `STORE` placeholder as they are, a folder absolute. */
export function storeArg(store: string): string {
  return store.startsWith('ceph:') || store === 'STORE' ? store : resolve(store)
}

/**
 * The refusal of an operator action (`doing`: "opening a point", "restoring"…) on VM `vm` of `store` while its
 * cycle `cycle` is in flight. The action holds the VM's lock, so no receiver session is applying that cycle now:
 * it was interrupted. E_BUSY (the agent's next run may resume and commit it), with the rollback's command.
 */
export function inflightRefusal(store: string, vm: string, cycle: number, doing: string): ReceiverError {
  const rollback = grainlineCommand(['mirror', 'rollback', '--store', storeArg(store), '--vm', vm])
  return new ReceiverError(
    'E_BUSY',
    `VM ${vm} has cycle ${cycle} in flight, interrupted (no receiver session is applying it now): let the agent's next run resume and commit it, or roll it back (${rollback}), before ${doing}`,
  )
}
