/**
 * The {@link FileAccess} of an esxi driver: paths on a datastore configured
 * `{ "access": "sftp" }` are read over the host's SSH connection
 * ({@link SftpFileAccess}), every other path through the local file system
 * (a mounted datastore). Handed to `@grainline/vmdk` and used for the
 * driver's own .vmx/.vmsd/nvram/descriptor reads.
 */
import { localFileAccess, type FileAccess, type FileStat, type RandomAccessFile } from '@grainline/vmdk'
import type { DatastoreMap } from './datastore-path.ts'

/** Route each path to the SFTP or the local reader. `sftp` is required when the map has SFTP datastores. */
export function datastoreFileAccess(map: DatastoreMap, sftp: FileAccess | undefined): FileAccess {
  if (sftp === undefined || !map.hasSftp) return localFileAccess
  const pick = (p: string): FileAccess => (map.isSftpPath(p) ? sftp : localFileAccess)
  return Object.freeze({
    stat: (p: string): Promise<FileStat> => pick(p).stat(p),
    open: (p: string, mode: 'r' | 'r+'): Promise<RandomAccessFile> => pick(p).open(p, mode),
    realpath: async (p: string): Promise<string> => {
      const a = pick(p)
      return a.realpath === undefined ? p : await a.realpath(p)
    },
    // the remote transport decides: small requests, many in flight (local reads do well with them too)
    maxReadBytes: sftp.maxReadBytes ?? localFileAccess.maxReadBytes ?? 1024 * 1024,
    concurrency: sftp.concurrency ?? 2,
  })
}
