/** How much of the store a token's mirrors take, and how much room is left (SPEC §7 E_NO_SPACE, E_QUOTA). */
import { lstat, readdir, statfs } from 'node:fs/promises'
import { join } from 'node:path'
import { listVmFolders } from './vm-folders.ts'

/** Free bytes of the file system holding `dir`, as an unprivileged user may use them. */
export async function freeBytes(dir: string): Promise<number> {
  const s = await statfs(dir)
  return s.bavail * s.bsize
}

/** Bytes allocated (st_blocks × 512) by every file under `dir`, links not followed, sparse holes not counted. */
export async function allocatedBytes(dir: string): Promise<number> {
  let total = 0
  let names: string[]
  try {
    names = await readdir(dir)
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT' || (err as { code?: unknown }).code === 'ENOTDIR') return 0
    throw err
  }
  for (const n of names) {
    const p = join(dir, n)
    const st = await lstat(p).catch(() => undefined)
    if (st === undefined || st.isSymbolicLink()) continue
    total += st.isDirectory() ? await allocatedBytes(p) : st.blocks * 512
  }
  return total
}

/**
 * Bytes allocated by the mirrors of the VMs `covers` accepts: the VM folders
 * of the store (vm-folders.ts: links, hidden names — the tombstone of a
 * removal is nobody's, though a `*` glob matches it — and folders grainline
 * did not make skipped; a store that cannot be listed counts nothing).
 */
export async function mirrorsUsage(storeDir: string, covers: (vm: string) => boolean): Promise<number> {
  let total = 0
  // a store that cannot be listed counts nothing, as before: a failure here must not fail (and roll back) the DiskOpen of a cycle in flight
  for (const vm of await listVmFolders(storeDir).catch(() => [] as string[])) {
    if (covers(vm)) total += await allocatedBytes(join(storeDir, vm))
  }
  return total
}
