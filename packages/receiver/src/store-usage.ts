/** How much of the store a token's mirrors take, and how much room is left (SPEC §7 E_NO_SPACE, E_QUOTA). */
import { lstat, readdir, statfs } from 'node:fs/promises'
import { join } from 'node:path'
import { forEachLimited } from '@grainline/vmdk'

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
  // a few lstats in flight (each a thread-pool round trip): a store's usage, a token's quota room, walk thousands
  await forEachLimited(names, USAGE_LSTATS_IN_FLIGHT, async (n) => {
    const p = join(dir, n)
    const st = await lstat(p).catch(() => undefined)
    if (st === undefined || st.isSymbolicLink()) return
    // the sum taken after the await: `total += await …` would add to the total read before it (calls run in parallel)
    const bytes = st.isDirectory() ? await allocatedBytes(p) : st.blocks * 512
    total += bytes
  })
  return total
}

/** lstats of one folder {@link allocatedBytes} keeps in flight. */
const USAGE_LSTATS_IN_FLIGHT = 8
