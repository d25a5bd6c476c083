/**
 * The configuration of a restore point (docs/POINTS.md): the mirror's .vmx
 * as it was while the VM was at that point, kept in `.grainline/points`
 * under a name derived from its contents (`config-<sha256>.vmx`), so that
 * points with the same configuration share one file. A restored, opened or
 * archived point boots with the devices it had — a disk removed from the VM
 * since is attached again, a NIC or memory change after it is not carried
 * back into the past.
 */
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { ReceiverError } from './errors.ts'
import { unlinkIfExists, writeFileAtomicIfChanged } from './fs-util.ts'
import { POINTS_DIR } from './increment.ts'
import { pointsOf, pointVmx } from './points.ts'
import { CONFIG_FILE_MAX_BYTES, ensureStoreDir, readStoreDir, readStoreFile } from './store-fs.ts'
import type { VmStateFile } from './state-file.ts'
import type { VmPaths } from './vm-paths.ts'

const CONFIG_NAME = /^config-[0-9a-f]{32}\.vmx$/

/** The name a point's saved .vmx gets: the first 128 bits of its sha256. */
export function pointConfigName(data: Uint8Array): string {
  return `config-${createHash('sha256').update(data).digest('hex').slice(0, 32)}.vmx`
}

/**
 * Absolute path of the saved configuration `name`. The name comes from
 * `state.json`: anything but a name {@link pointConfigName} makes (a
 * separator, `..`) would have a prune remove, or a restore read, a file
 * outside the store.
 * @throws ReceiverError E_STATE
 */
export function pointConfigPath(paths: VmPaths, name: string): string {
  if (typeof name !== 'string' || !CONFIG_NAME.test(name))
    throw new ReceiverError(
      'E_STATE',
      `${paths.state} names the point configuration ${JSON.stringify(name)}, which is not a configuration file of .grainline/points: the state file was changed by hand; nothing was read or removed`,
    )
  return join(paths.gdir, POINTS_DIR, name)
}

/**
 * Save the mirror's current .vmx as the configuration of the point a commit
 * is about to record (durable before the state names it). Returns its name,
 * or undefined when the mirror has no .vmx — or something else than a
 * regular file there (logged: the point then boots with the mirror's .vmx of
 * the day it is restored, as points recorded before configurations were kept).
 */
export async function savePointConfig(paths: VmPaths, vm: string, log: Logger): Promise<string | undefined> {
  let data: Buffer
  try {
    data = await readStoreFile(join(paths.dir, `${vm}.vmx`), CONFIG_FILE_MAX_BYTES)
  } catch (err) {
    const code = (err as { code?: unknown }).code
    if (code === 'ENOENT') return undefined
    if (code !== 'E_STORE_FILE') throw err
    log.warn({ vm, why: (err as Error).message }, "the mirror's .vmx is not a regular file: the new restore point keeps no configuration of its own")
    return undefined
  }
  const name = pointConfigName(data)
  await ensureStoreDir(join(paths.gdir, POINTS_DIR))
  // the same configuration as an earlier point: only read and compared (a link or another content there is replaced)
  await writeFileAtomicIfChanged(pointConfigPath(paths, name), data)
  return name
}

/**
 * The .vmx point `cycle` runs with (disks added after it disabled:
 * {@link pointVmx}): its saved configuration, or the mirror's .vmx for the
 * latest cycle and for points recorded without one. A saved configuration
 * gone from the store is logged and the mirror's used — a restore is never
 * refused for its .vmx. Undefined when neither exists.
 * @throws ReceiverError E_STORE_FILE (a link or FIFO in place of the file), E_STATE (a hand-edited name)
 */
export async function pointConfigText(paths: VmPaths, state: VmStateFile, cycle: number, log: Logger): Promise<string | undefined> {
  const name = pointsOf(state).find((p) => p.cycle === cycle)?.config
  if (name !== undefined && cycle !== state.committedCycle) {
    try {
      return pointVmx((await readStoreFile(pointConfigPath(paths, name), CONFIG_FILE_MAX_BYTES)).toString('utf8'), state, cycle)
    } catch (err) {
      if ((err as { code?: unknown }).code !== 'ENOENT') throw err
      log.warn({ vm: state.vm, cycle, file: name }, "the point's saved .vmx is missing from .grainline/points: the mirror's current .vmx is used instead; check the VM's devices before booting it")
    }
  }
  try {
    return pointVmx((await readStoreFile(join(paths.dir, `${state.vm}.vmx`), CONFIG_FILE_MAX_BYTES)).toString('utf8'), state, cycle)
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'ENOENT') throw err
    return undefined
  }
}

/**
 * Remove the saved configurations no point of `state` names any more (after
 * a prune, a commit that dropped points, or one that crashed before its
 * state named the file). Idempotent.
 */
export async function removeUnusedConfigs(paths: VmPaths, state: VmStateFile): Promise<void> {
  const used = new Set(pointsOf(state).flatMap((p) => (p.config === undefined ? [] : [p.config])))
  for (const name of await readStoreDir(join(paths.gdir, POINTS_DIR))) {
    if (CONFIG_NAME.test(name) && !used.has(name)) await unlinkIfExists(join(paths.gdir, POINTS_DIR, name))
  }
}
