import { open, rename } from 'node:fs/promises'
import { dirname } from 'node:path'

/** Replace a file atomically: write a temp file, fsync, rename, fsync the folder. */
export async function writeFileAtomic (path: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Date.now()}`
  const fh = await open(tmp, 'w', 0o644)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
  await rename(tmp, path)
  const dir = await open(dirname(path), 'r')
  try { await dir.sync() } catch { /* some filesystems refuse fsync on a folder */ } finally { await dir.close() }
}
