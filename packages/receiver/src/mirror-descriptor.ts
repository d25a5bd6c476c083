import { randomBytes } from 'node:crypto'
import { buildDescriptor, formatCid, parseDescriptor, serializeDescriptor } from '@grainline/vmdk'
import { ReceiverError } from './errors.ts'

/**
 * The mirror disk's descriptor: `createType="vmfs"`, one flat extent, the
 * source DDB values kept (VMDK.md "descriptor file"). ESXi and QEMU open it.
 */
export function mirrorDescriptor (opts: { cid: string, capacity: number, flatFile: string, ddb: Readonly<Record<string, string>> }): string {
  const ddb: Array<[string, string]> = []
  for (const [k, v] of Object.entries(opts.ddb)) {
    const key = k.startsWith('ddb.') ? k : `ddb.${k}`
    // the content ID of the source no longer describes the mirror
    if (key === 'ddb.longContentID') continue
    ddb.push([key, v])
  }
  return serializeDescriptor(buildDescriptor({
    cid: opts.cid,
    createType: 'vmfs',
    extents: [{ access: 'RW', sectors: Math.ceil(opts.capacity / 512), type: 'VMFS', file: opts.flatFile }],
    ddb,
  }))
}

/** Validate DDB entries from the wire before they reach a descriptor. */
export function checkDdb (ddb: unknown): Record<string, string> {
  if (ddb === null || typeof ddb !== 'object' || Array.isArray(ddb)) throw new ReceiverError('E_SCHEMA', 'ddb must be a map of strings')
  const out: Record<string, string> = {}
  const entries = Object.entries(ddb as Record<string, unknown>)
  if (entries.length > 256) throw new ReceiverError('E_SCHEMA', 'ddb has more than 256 entries')
  for (const [k, v] of entries) {
    if (!/^[A-Za-z0-9_.]{1,128}$/.test(k)) throw new ReceiverError('E_SCHEMA', `ddb key ${JSON.stringify(k)} is not allowed`)
    // eslint-disable-next-line no-control-regex
    if (typeof v !== 'string' || v.length > 1024 || /["\u0000-\u001f\u007f]/.test(v)) throw new ReceiverError('E_SCHEMA', `ddb value of ${k} is not allowed`)
    out[k] = v
  }
  return out
}

/** The CID of a descriptor's text as 8 lowercase hex digits, or undefined if it is not a descriptor. */
export function descriptorCid (text: string): string | undefined {
  try {
    const d = parseDescriptor(text)
    return d.get('CID') === undefined ? undefined : formatCid(d.cid)
  } catch {
    return undefined
  }
}

/** A fresh random CID, different from `previous`. */
export function newCid (previous?: string): string {
  for (;;) {
    const cid = randomBytes(4).toString('hex')
    if (cid !== previous && cid !== 'ffffffff') return cid
  }
}
