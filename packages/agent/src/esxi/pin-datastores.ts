/**
 * The esxi driver's local datastore mounts made ready, as the local driver's
 * roots are (`pinLocalRoots`): each one's real path resolved once and kept
 * (`realPath`), and a mount that contains one of the agent's own files — its
 * state dir, token, CA, SSH key, settings or job file — refused. A mount is
 * read through the proxy's file system: a hostile .vmx (on the host, or
 * written by a VM's administrator) could otherwise name the token file as a
 * disk and have the agent ship its contents to the receiver. SFTP datastores
 * are read on the host, never from the proxy's disk: left as they are.
 */
import path from 'node:path'
import { pinLocalRoots } from '../local-driver.ts'
import { DatastoreMap, type DatastoreMount, type DatastoreSetting } from './datastore-path.ts'

/** What a refused mount's message tells the operator to do. */
export const ESXI_MOUNT_REMEDY = 'map the datastore to the folder it is mounted at on this proxy (e.g. /mnt/nfs/ds2)'

/**
 * Pin every local mount of `datastores` and check it against `protect`.
 * A mount already pinned (`realPath`) keeps its real path (not resolved
 * again) and is checked again. The result is of the kind given: a
 * settings record (its local entries as `{ localPath, uuid?, realPath }`) or
 * a {@link DatastoreMap}.
 * @param protect the agent's own files and folders: a mount that contains one (by name or real path) is refused
 * @param settingOf how the operator names a datastore's mount, for messages (`/etc/grainline/esxi.json: datastores.ds1`)
 * @throws AgentError `E_CONFIG` naming the datastore, its mount and the agent's file: a relative, missing or non-folder mount, one that is or leads to /, or one holding an agent file
 */
export async function pinEsxiDatastores<D extends DatastoreMap | Readonly<Record<string, DatastoreSetting>>>(
  datastores: D,
  protect: readonly string[],
  settingOf: (name: string) => string = (name) => `esxi.datastores.${name}`,
  opts: PinEsxiOptions = {},
): Promise<D> {
  const pinOne = async (name: string, localPath: string, realPath: string | undefined): Promise<{ realPath: string } | { missing: string }> => {
    try {
      const [pinned] = await pinLocalRoots([realPath === undefined ? localPath : { named: localPath, real: realPath }], settingOf(name), protect, ESXI_MOUNT_REMEDY)
      return { realPath: (pinned as { real: string }).real }
    } catch (err) {
      const cause = (err as { cause?: { code?: unknown } }).cause
      if (opts.missing !== 'defer' || realPath !== undefined || cause?.code !== 'ENOENT') throw err
      // not read in this run, even if it is mounted later: it was never checked against the agent's files
      return { missing: `${settingOf(name)}: ${path.resolve(localPath)} does not exist (is datastore ${JSON.stringify(name)} mounted?)` }
    }
  }
  if (datastores instanceof DatastoreMap) {
    const mounts: DatastoreMount[] = []
    for (const m of datastores.mounts) mounts.push(m.access === 'sftp' || m.missing !== undefined ? m : { ...m, ...(await pinOne(m.name, m.localPath, m.realPath)) })
    return new DatastoreMap(mounts) as D
  }
  const out: Record<string, DatastoreSetting> = {}
  for (const [name, v] of Object.entries(datastores as Readonly<Record<string, DatastoreSetting>>)) {
    if (typeof v === 'string') out[name] = { localPath: v, ...(await pinOne(name, v, undefined)) }
    else if ('access' in v || v.missing !== undefined) out[name] = v
    else out[name] = { ...v, ...(await pinOne(name, v.localPath, v.realPath)) }
  }
  return out as D
}

/** Options of {@link pinEsxiDatastores}. */
export interface PinEsxiOptions {
  /**
   * A local mount that does not exist: `refuse` it (`E_CONFIG`, as a job
   * file's are at load), or `defer`: keep it unpinned and marked `missing`,
   * so that only a VM whose .vmx or disks lie on it fails (`E_CONFIG` when
   * the file is resolved), never reading it (which datastores a VM uses is
   * known only once its .vmx is read). @default 'refuse'
   */
  readonly missing?: 'refuse' | 'defer'
}
