import { open, rename, unlink } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { ioError } from './errors.ts'

/** fsync a directory so a rename or create in it is durable. */
export async function syncDir (dir: string): Promise<void> {
  try {
    const fh = await open(dir, 'r')
    try { await fh.sync() } finally { await fh.close() }
  } catch {
    // some filesystems refuse fsync on directories; the rename is still atomic
  }
}

/** Replace `path` atomically: write a temp file in the same folder, fsync, rename, fsync the folder. */
export async function writeFileAtomic (path: string, data: string | Uint8Array): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now()}.tmp`)
  try {
    const fh = await open(tmp, 'wx')
    try {
      await fh.writeFile(data)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await rename(tmp, path)
  } catch (err) {
    await unlink(tmp).catch(() => {})
    throw ioError(err, path, 'atomic write')
  }
  await syncDir(dirname(path))
}

/** Create a new file with `data` (fails if it exists), fsynced. */
export async function writeNewFile (path: string, data: string | Uint8Array): Promise<void> {
  try {
    const fh = await open(path, 'wx')
    try {
      await fh.writeFile(data)
      await fh.sync()
    } finally {
      await fh.close()
    }
  } catch (err) {
    throw ioError(err, path, 'create')
  }
}
