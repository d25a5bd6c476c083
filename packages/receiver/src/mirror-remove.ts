/**
 * `grainline mirror remove` on a folder store: a VM no longer replicated
 * leaves the store — its mirror, restore points, journals, history and
 * staged files, everything under `STORE/<vm>` — and its place under its
 * token's `maxVms` and quota is free again.
 *
 * Crash-safe in one step: under the VM's lock the folder is renamed to a
 * hidden tombstone in the store (`.removed-<vm key>-<random>`, one
 * `rename`, the store folder synced), so from that moment the VM is gone for
 * every reader, session and count; the tombstone is then deleted. A removal
 * killed after the rename leaves a tombstone, which the next `mirror
 * remove` deletes — of any VM, or of the same one run again (a name
 * starting with a dot is no VM). Refused
 * while the VM is held by a failover or an opened point (its disks are
 * children of the mirror's) and while a session writes it (E_BUSY).
 * Archives of its points (`points archive`) are not touched: they are the
 * historic record, kept by their own retention.
 */
import { createHash, randomBytes } from 'node:crypto'
import { lstat, readdir, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { validateName } from '@grainline/protocol'
import { checkVmName } from './receiver-rules.ts'
import { ReceiverError, ioError } from './errors.ts'
import { faultPoint } from './fault.ts'
import { fsyncDir } from './fs-util.ts'
import { heldMessage } from './hold-record.ts'
import { ADMIN_LOCK_WAIT_MS } from './points-admin.ts'
import { pointsOf } from './points.ts'
import { allocatedBytes } from './store-usage.ts'
import { VmMirror } from './vm-mirror.ts'

/** Prefix of a removed VM's folder until it is deleted. */
export const REMOVED_PREFIX = '.removed-'

/** What a removal took away. */
export interface RemovedMirror {
  readonly vm: string
  /** the last committed cycle (0: nothing committed) */
  readonly committedCycle: number
  readonly disks: readonly string[]
  /** restore points removed with it */
  readonly points: readonly number[]
  /** bytes the VM's folder took (allocated) */
  readonly bytes: number
  /** tombstones of earlier removals that were interrupted, deleted now */
  readonly leftovers: number
  /** this VM was already gone (a removal of it interrupted after its rename, or on Ceph after its state object): this run finished that removal */
  readonly resumed: boolean
}

/** The VM's part of its tombstone's name: 64 bits of the sha256 of its name (any name, no separator). */
function vmKey(vm: string): string {
  return createHash('sha256').update(vm, 'utf8').digest('hex').slice(0, 16)
}

/** Delete the tombstones interrupted removals left in `storeDir`; how many. */
async function deleteTombstones(storeDir: string, log: Logger): Promise<number> {
  let n = 0
  for (const name of await readdir(storeDir).catch(() => [] as string[])) {
    if (!name.startsWith(REMOVED_PREFIX)) continue
    const path = join(storeDir, name)
    const st = await lstat(path).catch(() => undefined)
    if (st === undefined) continue
    // rm never follows a link: a link named like a tombstone goes, never what it points to
    await rm(path, { recursive: true, force: true }).catch((err: unknown) => {
      throw ioError(err, `deleting ${path} (the folder of a removed VM)`)
    })
    log.info({ path }, 'deleted the folder of an interrupted removal')
    n++
  }
  return n
}

/**
 * Remove VM `vm`'s mirror from the folder store (see the file comment).
 * @throws ReceiverError E_BAD_NAME, E_NOT_FOUND (no such VM folder), E_BUSY (a session or another command holds it), E_HELD, E_IO
 */
export async function removeMirror(storeDir: string, vm: string, log: Logger): Promise<RemovedMirror> {
  // the name is checked here, not only by the lock: '' or '..' would name the store or what holds it
  validateName(vm, 'VM name')
  checkVmName(vm)
  const key = vmKey(vm)
  let m: VmMirror
  try {
    m = await VmMirror.acquireWait(storeDir, vm, log, ADMIN_LOCK_WAIT_MS, undefined, { create: false })
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'E_NOT_FOUND') throw err
    // a removal of this VM killed after its rename left its tombstone: running it again finishes it (as on Ceph)
    const own = (await readdir(storeDir).catch(() => [] as string[])).filter((n) => n.startsWith(`${REMOVED_PREFIX}${key}-`))
    if (own.length === 0) throw new ReceiverError('E_NOT_FOUND', `no mirror of VM ${vm} in ${storeDir}`)
    let bytes = 0
    for (const n of own) {
      // a link named like a tombstone is not followed, not even to count its bytes
      const st = await lstat(join(storeDir, n)).catch(() => undefined)
      if (st?.isDirectory() === true) bytes += await allocatedBytes(join(storeDir, n)).catch(() => 0)
    }
    log.info({ vm, tombstones: own.length, bytes }, 'finishing an interrupted removal')
    return { vm, committedCycle: 0, disks: [], points: [], bytes, leftovers: await deleteTombstones(storeDir, log), resumed: true }
  }
  let removed: Omit<RemovedMirror, 'leftovers' | 'resumed'>
  let tombstone: string
  let renamed = false
  try {
    const s = m.state
    const holds = s.holds ?? []
    if (holds.length > 0) throw new ReceiverError('E_HELD', `${heldMessage(vm, holds, storeDir)}; then remove it`)
    const bytes = await allocatedBytes(m.paths.dir)
    tombstone = join(storeDir, `${REMOVED_PREFIX}${key}-${randomBytes(4).toString('hex')}`)
    try {
      await rename(m.paths.dir, tombstone)
      renamed = true
      await fsyncDir(storeDir)
    } catch (err) {
      throw ioError(err, `renaming ${m.paths.dir} to ${tombstone}`)
    }
    faultPoint('remove-renamed')
    log.info({ vm, tombstone, committedCycle: s.committedCycle, bytes }, 'VM removed from the store; deleting its files')
    removed = {
      vm,
      committedCycle: s.committedCycle,
      disks: Object.keys(s.disks).sort(),
      points: pointsOf(s).map((p) => p.cycle),
      bytes,
    }
  } finally {
    // once renamed, our lock file is in the tombstone: the VM's name may already be a new folder of a session, with its lock
    m.release({ moved: renamed })
  }
  await rm(tombstone, { recursive: true, force: true }).catch((err: unknown) => {
    throw ioError(err, `deleting ${tombstone}, the files of VM ${vm} (the VM is removed: the next mirror remove deletes the rest)`)
  })
  return { ...removed, leftovers: await deleteTombstones(storeDir, log), resumed: false }
}
