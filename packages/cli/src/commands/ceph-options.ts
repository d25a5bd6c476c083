/** The Ceph client options of commands that read a `ceph:POOL` store (status, points). */
import type { Argv } from 'yargs'
import { parseCephStore, type CephTarget } from '@grainline/receiver'

/** Add `--ceph-conf`, `--ceph-id`, `--keyring`. */
export function withCephOptions<T>(y: Argv<T>): Argv<T> {
  return y
    .option('ceph-conf', { type: 'string', describe: 'ceph.conf of a ceph:POOL store (default: the Ceph client default)' })
    .option('ceph-id', { type: 'string', describe: 'Ceph client id of a ceph:POOL store (default: admin)' })
    .option('keyring', { type: 'string', describe: 'keyring of the Ceph client id' }) as unknown as Argv<T>
}

/** The Ceph target of `--store ceph:POOL` and the client options. */
export function cephTargetFrom(store: string, args: Record<string, unknown>): CephTarget {
  const s = (k: string): string | undefined => (args[k] === undefined ? undefined : String(args[k]))
  return parseCephStore(store, {
    ...(s('ceph-conf') === undefined ? {} : { conf: s('ceph-conf') as string }),
    ...(s('ceph-id') === undefined ? {} : { id: s('ceph-id') as string }),
    ...(s('keyring') === undefined ? {} : { keyring: s('keyring') as string }),
  })
}
