import { randomBytes } from 'node:crypto'
import { buildDescriptor, formatCid, parseDescriptor, serializeDescriptor } from '@grainline/vmdk'

/**
 * The most a mirror descriptor holds: its few lines and the source's DDB, at
 * most 256 entries of a 128-byte key and a 4 KiB value (SPEC §6 DiskOpen.ddb),
 * about 1.1 MiB.
 */
export const MIRROR_DESCRIPTOR_MAX_BYTES = 2 * 1024 * 1024

/**
 * The mirror disk's descriptor: `createType="vmfs"`, one flat extent, the
 * source DDB values kept (VMDK.md "descriptor file"). ESXi and QEMU open it.
 */
export function mirrorDescriptor(opts: { cid: string; capacity: number; flatFile: string; ddb: Readonly<Record<string, string>> }): string {
  const ddb: Array<[string, string]> = []
  for (const [k, v] of Object.entries(opts.ddb)) {
    const key = k.startsWith('ddb.') ? k : `ddb.${k}`
    // the content ID of the source no longer describes the mirror
    if (key === 'ddb.longContentID') continue
    ddb.push([key, v])
  }
  return serializeDescriptor(
    buildDescriptor({
      cid: opts.cid,
      createType: 'vmfs',
      extents: [{ access: 'RW', sectors: Math.ceil(opts.capacity / 512), type: 'VMFS', file: opts.flatFile }],
      ddb,
    }),
  )
}

/** The CID of a descriptor's text as 8 lowercase hex digits, or undefined if it is not a descriptor. */
export function descriptorCid(text: string): string | undefined {
  try {
    const d = parseDescriptor(text)
    return d.get('CID') === undefined ? undefined : formatCid(d.cid)
  } catch {
    return undefined
  }
}

/** A fresh random CID, different from `previous`. */
export function newCid(previous?: string): string {
  for (;;) {
    const cid = randomBytes(4).toString('hex')
    if (cid !== previous && cid !== 'ffffffff') return cid
  }
}
