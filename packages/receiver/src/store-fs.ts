/**
 * How the receiver touches files of its store: never through a symbolic
 * link, never blocking on a FIFO, never outside the store.
 *
 * Every store file is opened with `O_NOFOLLOW | O_NONBLOCK` and checked with
 * `fstat` to be a regular file; store folders are created one level at a time
 * and checked with `lstat` to be real folders; a VM folder must resolve to
 * `<store>/<vm>` itself. Anything else is a typed `E_STORE_FILE` error that
 * names the path and what to do — not a hang, and not a write into another
 * tenant's mirror or `/etc`.
 */
import { constants, type Stats } from 'node:fs'
import { lstat, mkdir, open, readdir, realpath, type FileHandle } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { HARD_LIMITS } from '@grainline/protocol'
import { ReceiverError } from './errors.ts'
import { STATE_SUBDIRS } from './vm-paths.ts'

/**
 * The most a VM configuration file of the store (.vmx, .nvram, a staged file,
 * a point's saved .vmx) holds: what one VmOpen may carry (SPEC §6
 * `maxFileBytes`).
 */
export const CONFIG_FILE_MAX_BYTES = HARD_LIMITS.maxFileBytes

const { O_RDONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_NOFOLLOW, O_NONBLOCK } = constants

/** How a store file is opened: `read` an existing file, `update` it in place, `create` a new one (it must not exist), `replace` (create or truncate). */
export type StoreOpenMode = 'read' | 'update' | 'create' | 'replace'

const FLAGS: Readonly<Record<StoreOpenMode, number>> = {
  read: O_RDONLY,
  update: O_RDWR,
  create: O_RDWR | O_CREAT | O_EXCL,
  replace: O_RDWR | O_CREAT | O_TRUNC,
}

/** What a store entry that is no regular file is, as its errors say it ("a FIFO", "a folder", …). */
export function entryKind(st: Stats): string {
  if (st.isSymbolicLink()) return 'a symbolic link'
  if (st.isFIFO()) return 'a FIFO'
  if (st.isDirectory()) return 'a folder'
  if (st.isSocket()) return 'a socket'
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device'
  return 'not a regular file'
}

/** The typed error for a store entry of the wrong kind. */
export function storeFileError(path: string, what: string): ReceiverError {
  return new ReceiverError('E_STORE_FILE', `${path} is ${what}: grainline never follows or opens it; remove it (or put the real file there), then retry`)
}

/**
 * Open a file of the store: never through a symbolic link (`O_NOFOLLOW`),
 * never blocking on a FIFO (`O_NONBLOCK`, then `fstat`: a regular file only).
 * @throws ReceiverError E_STORE_FILE for a symlink, FIFO, folder or device; the file-system error otherwise (ENOENT, EEXIST, …)
 */
export async function openStoreFile(path: string, mode: StoreOpenMode, perm = 0o644): Promise<FileHandle> {
  let fh: FileHandle
  try {
    fh = await open(path, FLAGS[mode] | O_NOFOLLOW | O_NONBLOCK, perm)
  } catch (err) {
    const code = (err as { code?: unknown }).code
    if (code === 'ELOOP') throw storeFileError(path, 'a symbolic link')
    if (code === 'EISDIR') throw storeFileError(path, 'a folder')
    throw err
  }
  try {
    const st = await fh.stat()
    if (!st.isFile()) throw storeFileError(path, entryKind(st))
  } catch (err) {
    await fh.close().catch(() => {})
    throw err
  }
  return fh
}

/**
 * Read a whole store file of at most `maxBytes` (see {@link openStoreFile}).
 * Its size is checked on the opened handle before anything is allocated: a
 * huge (or sparse) file planted in a store costs no memory, where reading it
 * whole would hold gigabytes in every process that looks at the VM.
 * @throws ReceiverError `tooLarge` (E_STORE_FILE unless told) above `maxBytes`; see {@link openStoreFile} for the others
 */
export async function readStoreFile(path: string, maxBytes: number, tooLarge: 'E_STORE_FILE' | 'E_STATE' = 'E_STORE_FILE'): Promise<Buffer> {
  const fh = await openStoreFile(path, 'read')
  try {
    const { size } = await fh.stat()
    if (size > maxBytes)
      throw new ReceiverError(
        tooLarge,
        `${path} is ${size} bytes, more than the ${maxBytes} grainline ever writes there: it is damaged or was not written by grainline, so it was not read; move it away (or put back the file from a backup), then retry`,
      )
    // the size fstat gave: store files are replaced by rename, never grown in place while read
    const buf = Buffer.alloc(size)
    let n = 0
    while (n < size) {
      const { bytesRead } = await fh.read(buf, n, size - n, n)
      if (bytesRead === 0) break
      n += bytesRead
    }
    return buf.subarray(0, n)
  } finally {
    await fh.close()
  }
}

/** Read and parse a JSON store file of at most `maxBytes` ({@link readStoreFile}); `undefined` when it does not exist. */
export async function readStoreJson(path: string, maxBytes: number, tooLarge: 'E_STORE_FILE' | 'E_STATE' = 'E_STORE_FILE'): Promise<unknown> {
  let text: string
  try {
    text = (await readStoreFile(path, maxBytes, tooLarge)).toString('utf8')
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return undefined
    throw err
  }
  return JSON.parse(text) as unknown
}

/** Whether anything (of any kind, a dangling link included) is at `path`; never follows or opens it. */
export async function entryExists(path: string): Promise<boolean> {
  try {
    await lstat(path)
    return true
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return false
    throw err
  }
}

/**
 * The size of a regular store file, undefined when nothing is there.
 * @throws ReceiverError E_STORE_FILE when something other than a regular file is there
 */
export async function regularFileSize(path: string): Promise<number | undefined> {
  return (await regularFileSpace(path))?.size
}

/**
 * The size of a regular store file and the bytes it allocates (st_blocks ×
 * 512: a sparse file's holes are not counted), undefined when nothing is there.
 * @throws ReceiverError E_STORE_FILE when something other than a regular file is there
 */
export async function regularFileSpace(path: string): Promise<{ size: number; allocated: number } | undefined> {
  let st: Stats
  try {
    st = await lstat(path)
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return undefined
    throw err
  }
  if (!st.isFile()) throw storeFileError(path, entryKind(st))
  return { size: st.size, allocated: st.blocks * 512 }
}

/**
 * Make sure `path` is a real folder (created if missing, parent assumed
 * checked): a symbolic link or a file there is refused.
 * @throws ReceiverError E_STORE_FILE
 */
export async function ensureStoreDir(path: string): Promise<void> {
  try {
    await mkdir(path)
    return
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'EEXIST') throw err
  }
  const st = await lstat(path)
  if (!st.isDirectory()) throw storeFileError(path, entryKind(st))
}

/**
 * Names in a store folder (empty when it does not exist). The folder itself
 * must be real: readdir follows a symbolic link, and the callers delete
 * what they list (temporary files, orphaned point files, stale staged files).
 * @throws ReceiverError E_STORE_FILE (a link, a file, a FIFO in the folder's place)
 */
export async function readStoreDir(path: string): Promise<string[]> {
  let st: Stats
  try {
    st = await lstat(path)
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return []
    throw err
  }
  if (!st.isDirectory()) throw storeFileError(path, entryKind(st))
  return await readdir(path)
}

/** The identity of a VM folder: its device and inode (two names of one folder share it). */
export interface FolderIdentity {
  readonly key: string
}

/**
 * Check (and with `create`, make) a VM folder `<store>/<vm>` and its
 * `.grainline`: real folders, no symbolic link, resolving to a folder
 * directly inside the store; so are the folders grainline keeps in
 * `.grainline` (`incoming`, `points`) where they exist. Returns its identity.
 * @throws ReceiverError E_STORE_FILE (a symlink, a file, a path leaving the store), E_NOT_FOUND (absent, without `create`)
 */
export async function checkVmDir(storeDir: string, dir: string, gdir: string, create: boolean): Promise<FolderIdentity> {
  if (create) {
    await mkdir(storeDir, { recursive: true })
    await ensureStoreDir(dir)
    await ensureStoreDir(gdir)
  }
  let st: Stats
  try {
    st = await lstat(dir)
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') throw new ReceiverError('E_NOT_FOUND', `no mirror folder ${dir}`)
    throw err
  }
  if (!st.isDirectory()) throw storeFileError(dir, entryKind(st))
  const g = await lstat(gdir).catch((err: unknown) => {
    if ((err as { code?: unknown }).code === 'ENOENT') return undefined
    throw err
  })
  if (g !== undefined && !g.isDirectory()) throw storeFileError(gdir, entryKind(g))
  if (g !== undefined) for (const sub of STATE_SUBDIRS) await checkStateSubdir(basename(dir), join(gdir, sub))
  const [real, root] = await Promise.all([realpath(dir), realpath(storeDir)])
  if (real !== join(root, basename(dir))) throw outsideStoreError(dir, real, root)
  return { key: `${st.dev}:${st.ino}` }
}

/**
 * A VM folder that resolves outside the store (a folder swapped for a link
 * after its lstat, a store path whose `..` follows a link): the log names
 * where it leads and what the operator does; the agent hears the VM's folder
 * by its name only — where it leads is the DR site's layout beyond the store,
 * which the store-folder stripping of SPEC §7 cannot know (refusal-detail.ts).
 */
function outsideStoreError(dir: string, real: string, root: string): ReceiverError {
  const vm = basename(dir)
  return new ReceiverError(
    'E_STORE_FILE',
    `${dir} is outside the store (it resolves to ${real}, not to ${join(root, vm)}): grainline never follows or opens it; put VM ${vm}'s own folder there (move the link away; give the store by a path without \`..\`), then retry`,
    { peerMessage: `VM folder ${vm} resolves outside the store: grainline never follows or opens it; the receiver's log says where it leads and what its operator does` },
  )
}

/**
 * A folder of `.grainline` (a real one, checked) must be a real folder too:
 * a link there — to another VM's points, say — would have start-up recovery
 * take that VM's point files for orphans and delete them, a prune remove them,
 * a commit write this VM's increments among them.
 */
async function checkStateSubdir(vm: string, path: string): Promise<void> {
  let st: Stats
  try {
    st = await lstat(path)
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return
    throw err
  }
  if (!st.isDirectory())
    throw new ReceiverError(
      'E_STORE_FILE',
      `VM ${vm}: ${path} is ${entryKind(st)}, not a folder of the VM's own: grainline never lists, writes or deletes through it, and nothing of VM ${vm} was changed; put the VM's own folder there (move the link away, restore the folder from a backup), then retry`,
    )
}
