import { readFile, stat } from 'node:fs/promises'
import { ioError } from './errors.ts'
import { exists } from './fs-util.ts'
import { descriptorCid } from './mirror-descriptor.ts'
import type { MirrorFacts } from './open-decision.ts'
import type { DiskRecord, InflightDisk } from './state-file.ts'
import type { VmPaths } from './vm-paths.ts'

/**
 * Look at one disk mirror: its descriptor's CID, its flat's size and whether
 * a rollback of its in-flight cycle was interrupted. Read-only.
 */
export async function inspectMirror (paths: VmPaths, rec: DiskRecord | undefined, inflight: InflightDisk | undefined): Promise<MirrorFacts> {
  const undoing = inflight === undefined ? false : await exists(paths.undoing(inflight.stem))
  if (rec === undefined) return { cid: '', flatSize: 0, undoing }
  let cid = ''
  try {
    cid = descriptorCid(await readFile(paths.descriptor(rec.stem), 'latin1')) ?? ''
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'ENOENT') throw ioError(err, 'reading the mirror descriptor')
  }
  let flatSize = -1
  try {
    flatSize = (await stat(paths.flat(rec.stem))).size
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'ENOENT') throw ioError(err, 'inspecting the mirror flat file')
  }
  return { cid, flatSize, undoing }
}
