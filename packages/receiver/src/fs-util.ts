import { constants } from 'node:fs'
import { mkdir, open, readdir, rename, rm, rmdir, unlink, type FileHandle } from 'node:fs/promises'
import { dirname, join, resolve, sep } from 'node:path'
import { randomBytes } from 'node:crypto'

/**
 * Whose folder a durable write is in. `'store'` (the default): the store's own
 * folders, whose fsync the journal's and the commit's crash safety rest on —
 * any error of a folder's fsync is thrown. `'destination'`: a folder a
 * restore, an export or `points open` writes for the operator (a share the DR
 * host mounts, whose file system may not fsync a folder: CIFS, some FUSE
 * mounts) — an error that only means "this file system does not do that" is
 * tolerated, as vmdk's `syncDir` (and QEMU) do; the files themselves are
 * still fsynced, and every other error is thrown.
 */
export type FolderKind = 'store' | 'destination'

/** Errors of a folder's fsync that only mean "this file system does not do that" (vmdk's atomic-file.ts tolerates the same). */
const DIR_SYNC_UNSUPPORTED: ReadonlySet<string> = new Set(['EINVAL', 'ENOTSUP', 'EOPNOTSUPP', 'EISDIR'])

/** fsync a directory so that a rename or create inside it is durable (on a `'destination'`, see {@link FolderKind}, as far as its file system can). */
export async function fsyncDir(dir: string, kind: FolderKind = 'store'): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } catch (err) {
    if (kind === 'store' || !DIR_SYNC_UNSUPPORTED.has(String((err as { code?: unknown }).code))) throw err
  } finally {
    await fh.close()
  }
}

/** The longest {@link tempName} of `name`: a pid of 10 digits, as many as {@link isTempName} allows. */
export function longestTempName(name: string): string {
  return `${name}.tmp-${'9'.repeat(10)}-${'f'.repeat(8)}`
}

/** The name of {@link writeFileAtomic}'s temporary file for `name`: `<name>.tmp-<pid>-<8 hex>`. */
export function tempName(name: string): string {
  return `${name}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`
}

/**
 * Whether a file name is exactly a temporary file of {@link writeFileAtomic}
 * (`<name>.tmp-<pid>-<8 hex>`), which start-up recovery removes. A committed
 * file whose name merely contains `.tmp-` (a disk `data.tmp-2024.vmdk`) is not.
 */
export function isTempName(name: string): boolean {
  return /^.+\.tmp-[1-9]\d{0,9}-[0-9a-f]{8}$/.test(name)
}

/**
 * Replace `path` atomically: write a temporary file beside it, fsync it,
 * rename it over `path`, fsync the directory (ARCHITECTURE §4.1; `kind`: {@link FolderKind}).
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, kind: FolderKind = 'store'): Promise<void> {
  const tmp = tempName(path)
  let fh: FileHandle | undefined
  try {
    fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644)
    await fh.writeFile(data)
    await fh.sync()
    await fh.close()
    fh = undefined
    await rename(tmp, path)
  } catch (err) {
    if (fh !== undefined) await fh.close().catch(() => {})
    await unlink(tmp).catch(() => {})
    throw err
  }
  await fsyncDir(dirname(path), kind)
}

/**
 * Create `path`, which must not exist (`EEXIST` otherwise, as a `wx` write),
 * holding `data`, durably: the file is fsynced before it is closed, then its
 * folder, so that its name is durable too. What a restore writes into the new
 * folder it restores to (the folder starts empty, so nothing is replaced): a
 * crash after the restore returned never leaves it missing or empty.
 */
export async function writeNewFileDurable(path: string, data: string | Uint8Array, kind: FolderKind): Promise<void> {
  const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
  await fsyncDir(dirname(path), kind)
}

/** fsync a regular file another program wrote (`rbd export`'s flat), then its folder (its name; `kind`: {@link FolderKind}). */
export async function fsyncFile(path: string, kind: FolderKind): Promise<void> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW)
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
  await fsyncDir(dirname(path), kind)
}

/**
 * `mkdir -p dir`, durably: the parent of every folder it created is fsynced
 * (deepest first), so that a restore's new folder does not vanish in a crash
 * after the restore returned. A folder that existed already is left as is.
 * Returns the first (outermost) folder it created, undefined when none.
 */
export async function mkdirDurable(dir: string, kind: FolderKind): Promise<string | undefined> {
  const first = await mkdir(dir, { recursive: true })
  if (first === undefined) return undefined
  const top = resolve(first)
  for (let d = resolve(dir); ; d = dirname(d)) {
    await fsyncDir(dirname(d), kind)
    if (d === top || dirname(d) === d) break
  }
  return top
}

/**
 * Remove what an opening (a point opened, a failover) wrote into `dir`, given
 * `made`, the outermost folder {@link mkdirDurable} created for it: `dir`
 * whole, then each parent it made, inner first, only while empty (another
 * VM's folder may have come beside). Without `made` (`dir` was there, empty)
 * only what is in it goes: the folder the operator made stays.
 */
export async function removeOpened(dir: string, made: string | undefined): Promise<void> {
  if (made === undefined) {
    for (const name of await readdir(dir).catch(() => [] as string[])) await rm(join(dir, name), { recursive: true, force: true })
    return
  }
  await rm(dir, { recursive: true, force: true })
  const top = resolve(made)
  for (let d = dirname(dir); top !== dir && (d === top || d.startsWith(top + sep)); d = dirname(d)) {
    if (
      !(await rmdir(d).then(
        () => true,
        () => false,
      ))
    )
      break
  }
}

/**
 * {@link writeFileAtomic}, unless `path` already is a regular file holding
 * exactly `data` (a VM's nvram, and its mirrored .vmx, come unchanged cycle
 * after cycle): then the write, the rename and the file's fsync are skipped
 * and only its folder is fsynced, so that the same file left visible but not
 * yet durable by a process that died between its rename and the folder's
 * fsync is durable now. Anything else at `path` (missing, another size or
 * content, a link, a FIFO: read as the store reads, never followed nor
 * blocked on) is replaced by {@link writeFileAtomic} as before. Returns
 * whether it wrote.
 */
export async function writeFileAtomicIfChanged(path: string, data: string | Uint8Array): Promise<boolean> {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data
  if (!(await holdsExactly(path, bytes))) {
    await writeFileAtomic(path, bytes)
    return true
  }
  await fsyncDir(dirname(path))
  return false
}

/** Whether `path` is a regular file whose contents are `bytes` (false on any error). */
async function holdsExactly(path: string, bytes: Uint8Array): Promise<boolean> {
  let fh: FileHandle | undefined
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
    const st = await fh.stat()
    if (!st.isFile() || st.size !== bytes.length) return false
    const have = Buffer.allocUnsafe(bytes.length)
    let got = 0
    while (got < have.length) {
      const { bytesRead } = await fh.read(have, got, have.length - got, got)
      if (bytesRead === 0) return false
      got += bytesRead
    }
    return Buffer.compare(have, bytes) === 0
  } catch {
    return false
  } finally {
    await fh?.close().catch(() => {})
  }
}

/**
 * Remove a file if it exists. A name too long for the file system
 * (ENAMETOOLONG) names no file, so it is absent too: a disk whose seed name
 * did not fit, taken in flight by a receiver that did not refuse such names,
 * must still roll back (receiver-rules.ts checkDiskName).
 */
export async function unlinkIfExists(path: string): Promise<boolean> {
  try {
    await unlink(path)
    return true
  } catch (err) {
    const code = (err as { code?: unknown }).code
    if (code === 'ENOENT' || code === 'ENAMETOOLONG') return false
    throw err
  }
}

const ZERO = new Uint8Array(1024 * 1024)

/** Write `length` zero bytes at `offset`. */
export async function writeZeros(fh: FileHandle, offset: number, length: number): Promise<void> {
  let done = 0
  while (done < length) {
    const n = Math.min(ZERO.length, length - done)
    await writeFully(fh, ZERO.subarray(0, n), offset + done)
    done += n
  }
}

/** Write all of `data` at `offset` (loops over short writes). */
export async function writeFully(fh: FileHandle, data: Uint8Array, offset: number): Promise<void> {
  let done = 0
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, offset + done)
    if (bytesWritten <= 0) throw Object.assign(new Error('short write'), { code: 'EIO' })
    done += bytesWritten
  }
}

/**
 * Write the buffers back to back from `offset` with as few `pwritev(2)` calls
 * as the kernel allows (a short write continues where it stopped).
 */
export async function writevFully(fh: FileHandle, bufs: readonly Uint8Array[], offset: number): Promise<void> {
  let k = 0
  let skip = 0
  let pos = offset
  while (k < bufs.length) {
    const list: Uint8Array[] = []
    let want = 0
    for (let i = k; i < bufs.length && list.length < WRITEV_MAX; i++) {
      const b = bufs[i] as Uint8Array
      const part = i === k && skip > 0 ? b.subarray(skip) : b
      list.push(part)
      want += part.length
    }
    const { bytesWritten } = await fh.writev(list as NodeJS.ArrayBufferView[], pos)
    if (bytesWritten <= 0 && want > 0) throw Object.assign(new Error('short write'), { code: 'EIO' })
    pos += bytesWritten
    let left = bytesWritten
    while (k < bufs.length && left > 0) {
      const rest = (bufs[k] as Uint8Array).length - skip
      if (left >= rest) {
        left -= rest
        k++
        skip = 0
      } else {
        skip += left
        left = 0
      }
    }
    while (k < bufs.length && (bufs[k] as Uint8Array).length === 0) k++
  }
}

/** Buffers per pwritev(2) call (IOV_MAX is 1024 on Linux). */
const WRITEV_MAX = 1024

/** Read exactly `length` bytes at `offset`; bytes past the end of the file read as zero. */
export async function readFully(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  return await readFullyInto(fh, Buffer.allocUnsafe(length), offset, length)
}

/**
 * Like {@link readFully}, into the caller's (reused) buffer: the first
 * `length` bytes of `buf` hold the file's bytes at `offset`, zeros past its
 * end. Returns that view of `buf`.
 */
export async function readFullyInto(fh: FileHandle, buf: Buffer, offset: number, length: number): Promise<Buffer> {
  let done = 0
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, offset + done)
    if (bytesRead === 0) break
    done += bytesRead
  }
  if (done < length) buf.fill(0, done, length)
  return buf.subarray(0, length)
}
