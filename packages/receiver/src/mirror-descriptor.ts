import { randomBytes } from 'node:crypto'
import { buildDescriptor, formatCid, parseDescriptor, serializeDescriptor, type Descriptor } from '@grainline/vmdk'

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

/**
 * How a mirror descriptor differs from the one {@link mirrorDescriptor}
 * writes for disk `stem` of `capacity` bytes — exactly one flat extent, its
 * own `<stem>-flat.vmdk` of the capacity, no parent, no change-tracking
 * file — or undefined when it does not. The vmdk readers follow whatever the
 * descriptor names, so a descriptor naming another file (`../../x`) would
 * make a restore, an open or a failover read it while the receiver keeps
 * writing the real flat. Pure; the CID is compared by the caller.
 */
export function mirrorLayoutProblem(d: Descriptor, stem: string, capacity: number): string | undefined {
  const flat = `${stem}-flat.vmdk`
  const names = d.extents.map((e) => e.file)
  if (names.length !== 1 || names[0] !== flat) return `its descriptor names the extents ${JSON.stringify(names)}, not ${JSON.stringify([flat])}`
  const e = d.extents[0]
  if (e !== undefined && e.type !== 'VMFS' && e.type !== 'FLAT') return `its extent is of type ${e.type}, not a flat extent`
  if (e?.offset !== undefined && e.offset !== 0) return `its extent starts ${e.offset} sectors into the flat`
  if (e !== undefined && e.sectors !== Math.ceil(capacity / 512)) return `its extent is ${e.sectors} sectors, the disk's capacity ${Math.ceil(capacity / 512)}`
  if (d.parentFileNameHint !== undefined) return `its descriptor names a parent ${JSON.stringify(d.parentFileNameHint)}`
  if (d.changeTrackPath !== undefined) return `its descriptor names a change-tracking file ${JSON.stringify(d.changeTrackPath)}`
  return undefined
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
