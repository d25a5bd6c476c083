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
): Promise<D> {
  const pinOne = async (name: string, localPath: string, realPath: string | undefined): Promise<string> => {
    const [pinned] = await pinLocalRoots([realPath === undefined ? localPath : { named: localPath, real: realPath }], settingOf(name), protect, ESXI_MOUNT_REMEDY)
    return (pinned as { real: string }).real
  }
  if (datastores instanceof DatastoreMap) {
    const mounts: DatastoreMount[] = []
    for (const m of datastores.mounts) mounts.push(m.access === 'sftp' ? m : { ...m, realPath: await pinOne(m.name, m.localPath, m.realPath) })
    return new DatastoreMap(mounts) as D
  }
  const out: Record<string, DatastoreSetting> = {}
  for (const [name, v] of Object.entries(datastores as Readonly<Record<string, DatastoreSetting>>)) {
    if (typeof v === 'string') out[name] = { localPath: v, realPath: await pinOne(name, v, undefined) }
    else if ('access' in v) out[name] = v
    else out[name] = { ...v, realPath: await pinOne(name, v.localPath, v.realPath) }
  }
  return out as D
}
