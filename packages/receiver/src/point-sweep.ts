/**
 * Start-up sweep of a VM's points folder (recovery.ts): the files of restore
 * points that no state names. A base copy made for a capacity change before
 * the in-flight record named it (a crash right then), the `.copying` file of
 * a killed copy, a base descriptor written for a commit that never reached
 * its commit point: each is named by no state, and a base copy is a whole
 * disk. Only the receiver's own names are touched (`<stem>.p<n>.vmdk`, its
 * `-sesparse`/`-flat` extent, a `.copying` partial); configurations
 * (point-config.ts) and anything else stay.
 */
import { lstat } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { unlinkIfExists } from './fs-util.ts'
import { POINTS_DIR, pointExtentName, pointFlatName } from './increment.ts'
import { pointFiles, pointsOf } from './points.ts'
import type { VmStateFile } from './state-file.ts'
import { readStoreDir } from './store-fs.ts'
import type { VmPaths } from './vm-paths.ts'

/** A name the receiver gives a point's files in `.grainline/points`, or the partial of a base copy. */
const POINT_FILE = /^.+\.p[1-9]\d*(-sesparse|-flat)?\.vmdk(\.copying)?$/

/** Every file name in `.grainline/points` that `state` needs: its points' files and the in-flight cycle's increments and base copies, each with its extent. */
export function namedPointFiles(state: VmStateFile): Set<string> {
  const files = [...pointFiles(pointsOf(state))]
  for (const d of Object.values(state.inflight?.disks ?? {})) {
    if (d.increment !== undefined) files.push(d.increment)
    if (d.baseCopy !== undefined) files.push(d.baseCopy)
  }
  return new Set(files.flatMap((f) => [f, pointExtentName(f), pointFlatName(f)]))
}

/**
 * Remove the point files of `state`'s VM that no state names (see the module
 * comment). Call it under the VM's lock, with nothing left to roll forward:
 * a pending commit's merges and moves name files its state does not yet
 * list. Each removal is logged with its size; one that fails is logged and
 * left. Returns the names removed.
 */
export async function sweepPointOrphans(paths: VmPaths, state: VmStateFile, log: Logger): Promise<string[]> {
  if (state.pending != null) return []
  const named = namedPointFiles(state)
  const dir = join(paths.gdir, POINTS_DIR)
  const removed: string[] = []
  for (const name of await readStoreDir(dir)) {
    if (!POINT_FILE.test(name) || named.has(name)) continue
    const path = join(dir, name)
    try {
      const st = await lstat(path)
      if (st.isDirectory()) continue
      if (await unlinkIfExists(path)) {
        removed.push(name)
        log.info({ file: path, bytes: st.blocks * 512 }, 'restore point file no state names removed (a copy or an increment of an interrupted cycle)')
      }
    } catch (err) {
      log.warn({ file: path, err: (err as Error).message }, 'restore point file no state names could not be removed: remove it by hand')
    }
  }
  return removed
}
