/**
 * The mirror's own descriptor, checked against the one the receiver wrote
 * at the last commit before anything reads through it (restore, open,
 * failover, archive) or reports the mirror unchanged (status, DiskOpen).
 *
 * A restore point's chain ends at the mirror descriptor (point-chain.ts
 * checks the points up to it), and the vmdk readers follow whatever extent
 * it names, through symbolic links: a descriptor that keeps its recorded CID
 * but names `../../outside/secret.bin` would make a failover boot, or a
 * restore copy, another file while status says OK and the receiver keeps
 * writing the real flat. So the descriptor must be a regular file of a
 * descriptor's size, be exactly what {@link mirrorLayoutProblem} allows,
 * carry the recorded CID, and its flat must be a regular file.
 */
import { decodeDescriptor, formatCid, parseDescriptor, type Descriptor } from '@grainline/vmdk'
import { basename } from 'node:path'
import { ReceiverError } from './errors.ts'
import { MIRROR_DESCRIPTOR_MAX_BYTES, mirrorLayoutProblem } from './mirror-descriptor.ts'
import { openStoreFile, regularFileSize } from './store-fs.ts'
import type { DiskRecord } from './state-file.ts'
import type { VmPaths } from './vm-paths.ts'

/** A mirror descriptor is a few hundred bytes, up to what the source's DDB entries it keeps allow (mirror-descriptor.ts); anything larger is not one the receiver wrote. */
const MAX_MIRROR_DESCRIPTOR_BYTES = MIRROR_DESCRIPTOR_MAX_BYTES

/** What the mirror descriptor of a disk says: its CID ("" when it has none), and how it is not the receiver's layout (undefined: it is). */
export interface MirrorDescriptorFacts {
  readonly cid: string
  readonly foreign: string | undefined
}

/**
 * Read the mirror descriptor of `rec` through one checked handle (never a
 * link or a FIFO, store-fs.ts) and compare it with the receiver's layout.
 * Read-only.
 * @throws the file-system error (ENOENT when missing), ReceiverError E_STORE_FILE (a link, FIFO, folder or device)
 */
export async function readMirrorDescriptor(paths: VmPaths, rec: Pick<DiskRecord, 'stem' | 'capacity'>): Promise<MirrorDescriptorFacts> {
  const fh = await openStoreFile(paths.descriptor(rec.stem), 'read')
  let text: string
  try {
    const size = (await fh.stat()).size
    if (size > MAX_MIRROR_DESCRIPTOR_BYTES) return { cid: '', foreign: `its descriptor is ${size} bytes (the receiver's is a few hundred)` }
    const buf = Buffer.alloc(size)
    const { bytesRead } = await fh.read(buf, 0, size, 0)
    // in the encoding it declares (UTF-8 as the receiver writes it): a disk named "café disk.vmdk" names its flat in UTF-8
    try {
      text = decodeDescriptor(buf.subarray(0, bytesRead), paths.descriptor(rec.stem))
    } catch (err) {
      return { cid: '', foreign: `its descriptor is not text in the encoding it declares (${(err as Error).message})` }
    }
  } finally {
    await fh.close()
  }
  let d: Descriptor
  try {
    d = parseDescriptor(text)
  } catch (err) {
    return { cid: '', foreign: `its descriptor does not parse (${(err as Error).message})` }
  }
  return { cid: d.get('CID') === undefined ? '' : formatCid(d.cid), foreign: mirrorLayoutProblem(d, rec.stem, rec.capacity) }
}

/**
 * Check the mirror of `rec` before a chain is opened through it: its
 * descriptor as the receiver wrote it at the last commit (layout and CID),
 * its flat a regular file.
 * @throws ReceiverError E_STATE (edited, replaced, missing), E_STORE_FILE (a link, FIFO, folder or device)
 */
export async function checkMirrorFiles(paths: VmPaths, rec: DiskRecord): Promise<void> {
  let why: string | undefined
  try {
    const facts = await readMirrorDescriptor(paths, rec)
    why = facts.foreign ?? (facts.cid === rec.mirrorCid ? undefined : `its descriptor's CID is ${facts.cid || '(none)'}, the last commit recorded ${rec.mirrorCid}`)
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'ENOENT') throw err
    why = 'its descriptor is missing'
  }
  if (why === undefined && (await regularFileSize(paths.flat(rec.stem))) === undefined) why = `its flat ${rec.stem}-flat.vmdk is missing`
  if (why === undefined) return
  const vm = basename(paths.dir)
  throw new ReceiverError(
    'E_STATE',
    `mirror ${paths.descriptor(rec.stem)} of disk ${rec.name} of VM ${vm}: ${why}; it is not as the receiver committed it (booted, edited or replaced), so nothing was read through it. Put back the descriptor the receiver wrote (from a backup), or let the next cycle of the VM resync the disk (its restore points are then dropped)`,
  )
}
