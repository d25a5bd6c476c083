/**
 * The folder side of `mirror import` (ceph-import.ts): what a folder store's
 * VM must be before its mirror is carried into a pool with its lineage, and
 * the flats opened once for the import to read.
 *
 * The import keeps the committed cycle and each disk's generation, so the
 * agent's next cycle to the pool is an incremental on top of what was
 * imported. That is only true of a mirror that is still what its last commit
 * wrote: one booted or edited since (a DR test boot changes the descriptor's
 * CID and writes the flat), one a check found diverged, or one held by an
 * opened point or a failover (which may be writing through it) would carry
 * other bytes under the committed generation into Ceph — the folder receiver
 * itself would refuse the incremental (E_MIRROR_MODIFIED, E_DIVERGED,
 * E_HELD). Each flat is opened once, never through a link (store-fs.ts), and
 * that handle is what `rbd import` and the digest read: a flat swapped for a
 * link after the check is not followed.
 */
import type { FileHandle } from 'node:fs/promises'
import { ReceiverError } from '../../errors.ts'
import { heldMessage, holdsOf } from '../../hold-record.ts'
import { inspectMirror } from '../../mirror-inspection.ts'
import { mirrorModified } from '../../open-decision.ts'
import type { DiskRecord, VmStateFile } from '../../state-file.ts'
import { openStoreFile, regularFileSize } from '../../store-fs.ts'
import type { VmPaths } from '../../vm-paths.ts'

/** A disk's flat as the import reads it: opened once, checked. */
export interface ImportFlat {
  readonly record: DiskRecord
  readonly fh: FileHandle
  /** bytes of the flat (its committed size; at most the capacity) */
  readonly size: number
}

/**
 * Check that VM `src.vm` of the folder store can be imported with its
 * lineage (no hold; each disk's mirror as its last commit wrote it — the
 * descriptor's layout and CID, the flat's size — and not diverged) and open
 * its flats, sorted by disk name. The caller closes the handles
 * ({@link closeImportFlats}). Read-only.
 * @throws ReceiverError E_NOT_FOUND (a flat missing), E_STORE_FILE (a flat that is a link, FIFO, …), E_STATE (a flat above its capacity), E_HELD, E_MIRROR_MODIFIED, E_DIVERGED
 */
export async function openImportSource(paths: VmPaths, src: VmStateFile, storeDir: string): Promise<ImportFlat[]> {
  const vm = src.vm
  const holds = holdsOf(src)
  if (holds.length > 0) throw new ReceiverError('E_HELD', `${heldMessage(vm, holds, storeDir)}; then import it`)
  const records = Object.values(src.disks).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  const resync = `run a cycle of VM ${vm} to the folder receiver first (the agent resyncs the disk), then import`
  for (const r of records) {
    // each flat a regular file (never a symlink or FIFO: E_STORE_FILE) within its capacity
    const size = await regularFileSize(paths.flat(r.stem))
    if (size === undefined) throw new ReceiverError('E_NOT_FOUND', `the flat of disk ${r.name} of VM ${vm} is missing from ${paths.dir}`)
    if (size > r.capacity) throw new ReceiverError('E_STATE', `flat of disk ${r.name} of VM ${vm} is ${size} bytes, above its capacity ${r.capacity}`)
    const facts = await inspectMirror(paths, r, undefined)
    if (mirrorModified(r, undefined, facts)) {
      throw new ReceiverError(
        'E_MIRROR_MODIFIED',
        `the mirror of disk ${r.name} of VM ${vm} in ${storeDir} changed since its last commit (descriptor CID ${facts.cid || 'missing'}, recorded ${r.mirrorCid}; flat ${facts.flatSize < 0 ? 'missing' : `${facts.flatSize} bytes`}, recorded ${r.size}${facts.foreign === undefined ? '' : `; ${facts.foreign}`}): importing it would carry other bytes under the committed generation; ${resync}`,
      )
    }
    if (r.diverged !== undefined) {
      throw new ReceiverError('E_DIVERGED', `the mirror of disk ${r.name} of VM ${vm} was found to differ from its source at ${r.diverged.at} (${r.diverged.reason}); ${resync}`)
    }
  }
  const flats: ImportFlat[] = []
  try {
    for (const r of records) {
      const fh = await openStoreFile(paths.flat(r.stem), 'read')
      flats.push({ record: r, fh, size: r.size })
      // the file opened is the one inspected: its committed size (within the capacity, checked above)
      const size = (await fh.stat()).size
      if (size !== r.size)
        throw new ReceiverError('E_MIRROR_MODIFIED', `the flat of disk ${r.name} of VM ${vm} changed while it was checked (${size} bytes, recorded ${r.size}): stop its receiver, then import`)
    }
  } catch (err) {
    await closeImportFlats(flats)
    throw err
  }
  return flats
}

/** Close the flats {@link openImportSource} opened. */
export async function closeImportFlats(flats: readonly ImportFlat[]): Promise<void> {
  for (const f of flats) await f.fh.close().catch(() => {})
}
