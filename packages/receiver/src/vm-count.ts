/**
 * How many VMs a token keeps in a folder store (`maxVms`, auth.ts): a VmOpen
 * of a VM the store does not hold yet creates its folder and writes its
 * staged configuration files (up to a message's size) before any DiskOpen —
 * so before any quota check. Without a bound, one token could create VM
 * folders without end (disk, inodes, status and metrics rows).
 */
import { join } from 'node:path'
import { DEFAULT_MAX_VMS, mayAccess, type TokenEntry } from './auth.ts'
import { ReceiverError } from './errors.ts'
import { hasStateDir, listVmFolders } from './vm-folders.ts'

/**
 * Refuse a VmOpen of `vm` when the store does not hold it yet and `token`
 * keeps `maxVms` VMs already (the VM folders of the store its globs cover,
 * vm-folders.ts: what `status` lists; a link, a file or a
 * folder without `.grainline` is no VM). Two sessions of one token creating VMs at the
 * same moment may both pass: the count can exceed the bound by the token's
 * sessions less one.
 * @throws ReceiverError E_QUOTA, E_IO
 */
export async function checkVmCount(storeDir: string, token: TokenEntry, vm: string): Promise<void> {
  // a VM the store holds (every cycle's VmOpen): one lstat, no listing; a folder without `.grainline` is none (lost+found, a VmOpen that died between its two mkdirs): counted like a new VM
  if (await hasStateDir(join(storeDir, vm))) return
  const max = token.maxVms ?? DEFAULT_MAX_VMS
  const n = (await listVmFolders(storeDir)).filter((name) => mayAccess(token, name)).length
  if (n >= max)
    throw new ReceiverError(
      'E_QUOTA',
      `token ${token.name} keeps ${n} VMs in this store, its limit (maxVms ${max}): VM ${vm} is not created; raise maxVms in the tokens file, or remove the mirrors of VMs no longer replicated`,
    )
}
