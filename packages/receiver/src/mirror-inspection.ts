import { ioError } from './errors.ts'
import { entryExists, regularFileSize } from './store-fs.ts'
import { readMirrorDescriptor } from './mirror-check.ts'
import type { MirrorFacts } from './open-decision.ts'
import type { DiskRecord, InflightDisk } from './state-file.ts'
import type { VmPaths } from './vm-paths.ts'

/**
 * Look at one disk mirror: its descriptor's CID and whether it is the
 * receiver's layout (mirror-check.ts), its flat's size and whether a
 * rollback of its in-flight cycle was interrupted. Read-only.
 */
export async function inspectMirror(paths: VmPaths, rec: DiskRecord | undefined, inflight: InflightDisk | undefined): Promise<MirrorFacts> {
  const undoing = inflight === undefined ? false : await entryExists(paths.undoing(inflight.stem))
  if (rec === undefined) return { cid: '', flatSize: 0, undoing }
  // a descriptor or flat that is missing, a link or a FIFO reads as "modified": the agent seeds, and the commit replaces the entry
  let cid = ''
  let foreign: string | undefined
  try {
    ;({ cid, foreign } = await readMirrorDescriptor(paths, rec))
  } catch (err) {
    const code = (err as { code?: unknown }).code
    if (code !== 'ENOENT' && code !== 'E_STORE_FILE') throw ioError(err, 'reading the mirror descriptor')
  }
  let flatSize = -1
  try {
    flatSize = (await regularFileSize(paths.flat(rec.stem))) ?? -1
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'E_STORE_FILE') throw ioError(err, 'inspecting the mirror flat file')
  }
  return { cid, flatSize, undoing, ...(foreign === undefined ? {} : { foreign }) }
}
