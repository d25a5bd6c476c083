/**
 * The `grainline …` commands the receiver's messages tell an operator to run
 * are printed ready to paste: every argument POSIX-quoted (a VM named
 * `web 01`), a folder store's path absolute (the CLI resolves a relative one
 * from the folder it runs in, not the receiver's).
 */
import { resolve } from 'node:path'
import { shJoin } from '@grainline/protocol'

/** `grainline ARGS…`, quoted. */
export function grainlineCommand(args: readonly string[]): string {
  return shJoin(['grainline', ...args])
}

/** A store as a printed `--store` gives it: `ceph:POOL` and the `STORE` placeholder as they are, a folder absolute. */
export function storeArg(store: string): string {
  return store.startsWith('ceph:') || store === 'STORE' ? store : resolve(store)
}
