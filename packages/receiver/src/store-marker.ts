/**
 * The receiver's marker at the root of a folder store while it runs,
 * `.grainline-receiver`: its pid, boot id, start time and the marker's own
 * inode (vm-lock.ts lockText), written at start-up and removed at a clean
 * close. A store copied (cp -a, rsync, tar, a disk by courier) while a
 * receiver ran on it carries the marker with another inode than it records:
 * the copy of each file is of another moment — a flat copied before a cycle
 * that then committed, its state.json after — and nothing in a VM folder
 * tells, once the cycle's lock is gone. A crash leaves the marker with its
 * own inode: the journals' recovery is then sound, and trusted as before.
 */
import { lstat, open, rename } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { unlinkIfExists } from './fs-util.ts'
import { readStoreFile } from './store-fs.ts'
import { lockIsCopy, lockText } from './vm-lock.ts'

/** The marker's name at the store's root (hidden: never a VM name). */
export const STORE_MARKER = '.grainline-receiver'

/**
 * Look at the marker a previous receiver left (a copy: `copied`), then write
 * ours — unless it is a copy: that one stays until every VM of the store is
 * marked diverged (start-up recovery, then {@link writeStoreMarker}), so that
 * a crash or a VM whose recovery failed before its mark leaves the copy to be
 * found again at the next start, not our marker that trusts the store. A
 * store the receiver may not write its marker into (read-only) is logged, not
 * refused: the mirrors say so themselves when written.
 */
export async function markStoreOpen(store: string, log: Logger): Promise<{ readonly copied: boolean }> {
  const path = join(store, STORE_MARKER)
  let copied = false
  try {
    const st = await lstat(path, { bigint: true })
    // a link or anything else in its place is no marker of ours: replaced (rename replaces the entry, never its target)
    if (st.isFile()) copied = lockIsCopy((await readStoreFile(path, 4096)).toString('utf8'), st.ino)
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'ENOENT') log.warn({ marker: path, code: (err as { code?: unknown }).code }, 'the store marker of the previous receiver could not be read')
  }
  if (copied)
    log.warn(
      { marker: path },
      `the store ${store} was copied while a receiver was running on it (its ${STORE_MARKER} is a copy): every VM's mirror may mix two moments; each is marked diverged, so its next cycle resyncs it by block digests (copy a store only while its receiver is stopped)`,
    )
  else await writeStoreMarker(store, log)
  return { copied }
}

/** Write our marker (pid, boot, start time, its own inode), replacing the previous one. */
export async function writeStoreMarker(store: string, log: Logger): Promise<void> {
  const path = join(store, STORE_MARKER)
  const tmp = `${path}.${process.pid}.new`
  try {
    const fh = await open(tmp, 'w', 0o644)
    try {
      await fh.writeFile(lockText((await fh.stat({ bigint: true })).ino))
      await fh.sync()
    } finally {
      await fh.close()
    }
    await rename(tmp, path)
  } catch (err) {
    await unlinkIfExists(tmp).catch(() => {})
    log.warn({ marker: path, code: (err as { code?: unknown }).code }, 'store marker not written: a copy of this store made while the receiver runs will not be told from a stopped one')
  }
}

/**
 * Remove our marker at a clean close (a store copied after it is a stopped receiver's). A marker of another
 * receiver, started on the store after us (it replaced ours), is its own to remove: taken away, a copy of the store
 * made while that one runs would not be told.
 */
export async function markStoreClosed(store: string, log: Logger): Promise<void> {
  const path = join(store, STORE_MARKER)
  try {
    const text = (await readStoreFile(path, 4096)).toString('utf8')
    const ours = lockText().split('\n').slice(0, 3).join('\n')
    if (text.split('\n').slice(0, 3).join('\n') !== ours) return
    await unlinkIfExists(path)
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return
    log.warn({ code: (err as { code?: unknown }).code }, 'store marker not removed')
  }
}
