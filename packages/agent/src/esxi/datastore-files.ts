/**
 * The {@link FileAccess} of an esxi driver: paths on a datastore configured
 * `{ "access": "sftp" }` are read over the host's SSH connection
 * ({@link SftpFileAccess}), paths on a locally mounted datastore through the
 * local file system. Handed to `@grainline/vmdk` and used for the driver's
 * own .vmx/.vmsd/nvram/descriptor reads.
 *
 * Nothing else is read: a path on no mapped datastore, or one whose symbolic
 * links lead out of its datastore (an NFS datastore holds whatever its
 * writers put there, `vm.nvram -> /etc/…` included), is refused with
 * `VmdkError` `E_OUTSIDE_ROOT` (vmdk's confineFileAccess) instead of being
 * read from the proxy's own disk. A local mount pinned (`realPath`, as
 * `replicate()` pins every one) confines to its real path of then.
 */
import { confineFileAccess, localFileAccess, VmdkError, type FileAccess, type FileStat, type RandomAccessFile } from '@grainline/vmdk'
import type { DatastoreMap } from './datastore-path.ts'

/** What an `E_OUTSIDE_ROOT` of the esxi driver tells the operator to do: its roots are the datastores of its settings. */
export const ESXI_OUTSIDE_ROOT_REMEDY = 'fix the reference, or map the datastore the file is on (esxi settings "datastores")'

/** Route each path to the SFTP or the local reader. `sftp` is required when the map has SFTP datastores. */
export function datastoreFileAccess(map: DatastoreMap, sftp: FileAccess | undefined): FileAccess {
  // pinned mounts: a file's real path must lie below the real folders of then, never what a mount's name leads to now
  const pinned = map.localRealRoots()
  const local = confineFileAccess(localFileAccess, map.localRoots(), { remedy: ESXI_OUTSIDE_ROOT_REMEDY, ...(pinned === undefined ? {} : { realRoots: pinned }) })
  const remote =
    sftp === undefined || !map.hasSftp
      ? undefined
      : confineFileAccess(
          sftp,
          map.roots().filter((r) => map.isSftpPath(r)),
          { remedy: ESXI_OUTSIDE_ROOT_REMEDY },
        )
  const pick = (p: string): FileAccess => {
    // a local mount missing at the VM's start: never read, even if it is mounted since
    map.checkPresent(p)
    if (remote !== undefined && map.isSftpPath(p)) return remote
    if (map.isMappedPath(p) && !map.isSftpPath(p)) return local
    throw new VmdkError(
      'E_OUTSIDE_ROOT',
      `${p} is on no mapped datastore (${map.roots().join(', ')}): not read, neither over SFTP nor from the proxy's own disk; a .vmx or descriptor that names it is refused; ${ESXI_OUTSIDE_ROOT_REMEDY}`,
      p,
    )
  }
  return Object.freeze({
    stat: async (p: string): Promise<FileStat> => await pick(p).stat(p),
    open: async (p: string, mode: 'r' | 'r+'): Promise<RandomAccessFile> => await pick(p).open(p, mode),
    realpath: async (p: string): Promise<string> => {
      const a = pick(p)
      return a.realpath === undefined ? p : await a.realpath(p)
    },
    // the remote transport decides: small requests, many in flight (local reads do well with them too)
    maxReadBytes: sftp?.maxReadBytes ?? localFileAccess.maxReadBytes ?? 1024 * 1024,
    concurrency: sftp?.concurrency ?? (sftp === undefined ? (localFileAccess.concurrency ?? 2) : 2),
  })
}
