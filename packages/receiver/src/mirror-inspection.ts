import { ioError } from './errors.ts'
import { entryExists, regularFileSpace } from './store-fs.ts'
import { readMirrorDescriptor } from './mirror-check.ts'
import type { MirrorFacts } from './open-decision.ts'
import type { DiskRecord, InflightDisk } from './state-file.ts'
import type { VmPaths } from './vm-paths.ts'

/**
 * Look at one disk mirror: its descriptor's CID and whether it is the
 * receiver's layout (mirror-check.ts), its flat's size and allocated bytes,
 * and whether a rollback of its in-flight cycle was interrupted. Read-only.
 */
export async function inspectMirror(paths: VmPaths, rec: DiskRecord | undefined, inflight: InflightDisk | undefined): Promise<MirrorFacts> {
  const undoing = inflight === undefined ? false : await entryExists(paths.undoing(inflight.stem))
  if (rec === undefined) return { cid: '', flatSize: 0, flatAllocated: 0, undoing }
  // a descriptor or flat that is missing, a link, a FIFO or (the descriptor) too large reads as "modified": the agent seeds, and the commit replaces the entry
  let cid = ''
  let foreign: string | undefined
  try {
    ;({ cid, foreign } = await readMirrorDescriptor(paths, rec))
  } catch (err) {
    const code = (err as { code?: unknown }).code
    if (code !== 'ENOENT' && code !== 'E_STORE_FILE') throw ioError(err, 'reading the mirror descriptor')
  }
  let flat: { size: number; allocated: number } | undefined
  try {
    flat = await regularFileSpace(paths.flat(rec.stem))
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'E_STORE_FILE') throw ioError(err, 'inspecting the mirror flat file')
  }
  return { cid, flatSize: flat?.size ?? -1, flatAllocated: flat?.allocated ?? 0, undoing, ...(foreign === undefined ? {} : { foreign }) }
}
