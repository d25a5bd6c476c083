/** The Ceph target of a `ceph:POOL` store from the Ceph client options (their flags: store-flags.ts), for the commands that read one. */
import { parseCephStore, type CephTarget } from '@grainline/receiver/store-status'

/** The Ceph target of `--store ceph:POOL` and the client options. */
export function cephTargetFrom(store: string, args: Record<string, unknown>): CephTarget {
  const s = (k: string): string | undefined => (args[k] === undefined ? undefined : String(args[k]))
  return parseCephStore(store, {
    ...(s('ceph-conf') === undefined ? {} : { conf: s('ceph-conf') as string }),
    ...(s('ceph-id') === undefined ? {} : { id: s('ceph-id') as string }),
    ...(s('keyring') === undefined ? {} : { keyring: s('keyring') as string }),
  })
}
