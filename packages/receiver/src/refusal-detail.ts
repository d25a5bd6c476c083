/**
 * The `detail` of a refused DiskState (SPEC §5.1, protocol version 9): the
 * text the receiver logs for the refusal, told to the agent — which the
 * token authenticates for this VM, and whose operator must act on it — but
 * without the store's absolute folder. A folder store's message may name a
 * file of the mirror by its path (a descriptor that does not decode names
 * it): `STORE/<vm>/…` is told as `<vm>/…`, the store folder itself as "the
 * store". What else the messages name stays: the VM's disks, cycles, CIDs,
 * generations, a Ceph store's `POOL/IMAGE@SNAP` and `ceph:POOL` (the remedy's
 * `--store`), and a hold's folder (the point the operator opened, named in
 * the `points close --to` that releases it).
 */
import { isAbsolute, resolve } from 'node:path'
import { refusalDetail } from '@grainline/protocol'

/** `message` without the absolute folder `storeDir` (undefined: a Ceph store), bounded for the wire ("…" when cut). Pure. */
export function peerRefusalDetail(message: string, storeDir: string | undefined): string {
  let text = message
  if (storeDir !== undefined && storeDir !== '') {
    const forms = new Set([storeDir, resolve(storeDir)].map((d) => d.replace(/[\\/]+$/, '')).filter((d) => d.length > 1 && isAbsolute(d)))
    // the longest first: a resolved form may extend the one given
    for (const d of [...forms].sort((a, b) => b.length - a.length)) {
      const at = d.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
      text = text.replace(new RegExp(`${at}[\\\\/]+`, 'g'), '').replace(new RegExp(`${at}(?![^\\s"'),;:])`, 'g'), 'the store')
    }
  }
  return refusalDetail(text)
}
