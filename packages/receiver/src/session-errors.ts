/**
 * The last session errors of a VM kept with its mirror
 * (`STORE/<vm>/.grainline/errors.json`), so that the dashboard still shows
 * why last night's cycles failed after the receiver was restarted.
 *
 * Written only into a VM folder that exists and is a real folder inside the
 * store (never created for a name that has no mirror), atomically; read with
 * a size bound and every entry checked, so a hostile or corrupt file (a
 * symlink, a FIFO, 1 GiB, wrong types) reads as "no errors", never as a crash
 * or a hang. Losing the file loses the list, never data.
 */
import { lstat } from 'node:fs/promises'
import { join } from 'node:path'
import { validateName } from '@grainline/protocol'
import { writeFileAtomic } from './fs-util.ts'
import type { SessionErrorRecord } from './live-state.ts'
import { checkVmDir, readStoreJson, regularFileSize } from './store-fs.ts'
import { VmPaths } from './vm-paths.ts'

/** File name inside the VM's state folder. */
export const ERRORS_FILE = 'errors.json'
/** An errors file larger than this is not read: 256 KiB (20 entries of ≤ 500 characters need ~12 KiB). */
export const ERRORS_MAX_FILE_BYTES = 256 * 1024

const isRecord = (e: unknown): e is SessionErrorRecord => {
  const o = e as Record<string, unknown> | null
  return (
    o !== null &&
    typeof o === 'object' &&
    typeof o['at'] === 'string' &&
    Number.isFinite(Date.parse(o['at'])) &&
    Number.isSafeInteger(o['cycle']) &&
    typeof o['code'] === 'string' &&
    o['code'].length <= 64 &&
    typeof o['message'] === 'string'
  )
}

/**
 * The kept errors of `vm`, oldest first, at most `max` of them, messages cut
 * to 500 characters; empty when the VM, its folder or the file is absent,
 * too large, not a regular file or unreadable (never throws).
 */
export async function readSessionErrors(storeDir: string, vm: string, max: number): Promise<SessionErrorRecord[]> {
  try {
    validateName(vm, 'VM name')
    const paths = new VmPaths(storeDir, vm)
    await checkVmDir(storeDir, paths.dir, paths.gdir, false)
    const file = join(paths.gdir, ERRORS_FILE)
    const size = await regularFileSize(file)
    if (size === undefined || size > ERRORS_MAX_FILE_BYTES) return []
    const json = (await readStoreJson(file, ERRORS_MAX_FILE_BYTES)) as { errors?: unknown } | null
    const list = Array.isArray(json?.errors) ? json.errors : []
    return list
      .filter(isRecord)
      .slice(-max)
      .map((e) => ({ at: e.at, cycle: e.cycle, code: e.code, message: e.message.slice(0, 500) }))
  } catch {
    return []
  }
}

/**
 * Replace the kept errors of `vm` (atomic rewrite). Does nothing when the VM
 * has no mirror folder (its `.grainline` is not created here).
 * @returns whether the file was written
 * @throws ReceiverError E_STORE_FILE when the VM folder or its `.grainline` is a symlink or a file, or an I/O error
 */
export async function writeSessionErrors(storeDir: string, vm: string, errors: readonly SessionErrorRecord[]): Promise<boolean> {
  validateName(vm, 'VM name')
  const paths = new VmPaths(storeDir, vm)
  try {
    await checkVmDir(storeDir, paths.dir, paths.gdir, false)
  } catch (err) {
    if ((err as { code?: unknown }).code === 'E_NOT_FOUND') return false
    throw err
  }
  // checkVmDir refused a .grainline that is not a real folder; an absent one is not created here
  if (
    !(await lstat(paths.gdir).then(
      (st) => st.isDirectory(),
      () => false,
    ))
  )
    return false
  await writeFileAtomic(join(paths.gdir, ERRORS_FILE), `${JSON.stringify({ version: 1, errors })}\n`)
  return true
}
