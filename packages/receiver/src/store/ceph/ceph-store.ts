/**
 * The Ceph store's settings: `--store ceph:POOL` with the usual client
 * settings (`--ceph-conf`, `--ceph-id`, `--keyring`). Pure parsing.
 */
import { ReceiverError } from '../../errors.ts'
import { runCeph, type CephTarget } from './rbd-cli.ts'

/** Prefix of a Ceph store spec. */
export const CEPH_PREFIX = 'ceph:'

/** Whether a `--store` value names a Ceph pool. */
export function isCephStore(store: string): boolean {
  return store.startsWith(CEPH_PREFIX)
}

/**
 * The target of `ceph:POOL` (a RADOS pool name: letters, digits, `.`, `_`, `-`).
 * @throws ReceiverError E_CONFIG
 */
export function parseCephStore(store: string, client: { conf?: string; id?: string; keyring?: string } = {}): CephTarget {
  const pool = store.slice(CEPH_PREFIX.length)
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/.test(pool)) throw new ReceiverError('E_CONFIG', `store ${JSON.stringify(store)}: want ceph:POOL with a pool name of letters, digits, ".", "_" or "-"`)
  // passed to rbd/rados as `--id ID`: never something that reads as another option
  if (client.id !== undefined && !/^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/.test(client.id))
    throw new ReceiverError('E_CONFIG', `Ceph client id ${JSON.stringify(client.id)}: want 1–64 letters, digits, ".", "_" or "-", not starting with "-"`)
  return {
    pool,
    ...(client.conf === undefined ? {} : { conf: client.conf }),
    ...(client.id === undefined ? {} : { id: client.id }),
    ...(client.keyring === undefined ? {} : { keyring: client.keyring }),
  }
}

/**
 * Check at start-up that the pool answers (`rbd ls POOL`).
 * @throws ReceiverError E_CONFIG naming the pool and Ceph's message
 */
export async function checkCephPool(t: CephTarget): Promise<void> {
  try {
    await runCeph(t, 'rbd', ['ls', t.pool])
  } catch (err) {
    throw new ReceiverError('E_CONFIG', `the Ceph store pool ${t.pool} cannot be used: ${(err as Error).message}`)
  }
}
