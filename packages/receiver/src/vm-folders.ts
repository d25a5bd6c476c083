/** Which folders of a folder store are VMs (status, the VM count, a quota's usage, recovery). */
import { lstat, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { forEachLimited } from '@grainline/vmdk'
import { ioError } from './errors.ts'
import { isVmName } from './receiver-rules.ts'
import { STATE_DIR } from './vm-paths.ts'

/**
 * The VM folders of a store, sorted: the folders a VmOpen created — a real
 * folder holding `.grainline` ({@link hasStateDir}) — whether or not a
 * state file is in them yet (the VM count counts them, vm-count.ts). A symbolic link
 * in the store is not a VM folder, nor is a hidden one (no VM name starts
 * with a dot: `.failover`, the tombstone of a removal, mirror-remove.ts),
 * nor a folder grainline did not make (`lost+found` of a store that is a
 * file system's root).
 */
export async function listVmFolders(storeDir: string): Promise<string[]> {
  let entries: string[]
  try {
    entries = await readdir(storeDir)
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return []
    throw ioError(err, `listing the store ${storeDir}`)
  }
  const names = entries.filter(isVmName).sort()
  const isVm = new Array<boolean>(names.length).fill(false)
  // a few at a time (two lstats each), the result in name order
  await forEachLimited(names, 8, async (e, i) => {
    const st = await lstat(join(storeDir, e)).catch(() => undefined)
    isVm[i] = st?.isDirectory() === true && (await hasStateDir(join(storeDir, e)))
  })
  return names.filter((_, i) => isVm[i])
}

/**
 * Whether `<dir>/.grainline` is there, whatever it is: a link, a file or a
 * FIFO in its place is a damaged VM (listed, its status an error: CRITICAL;
 * counted), never a folder that is no VM. Only ENOENT says no.
 */
export async function hasStateDir(dir: string): Promise<boolean> {
  try {
    await lstat(join(dir, STATE_DIR))
    return true
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT' || (err as { code?: unknown }).code === 'ENOTDIR') return false
    return true
  }
}
