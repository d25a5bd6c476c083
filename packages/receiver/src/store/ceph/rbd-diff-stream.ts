/**
 * The `rbd diff v1` stream `rbd import-diff -` reads (Ceph doc
 * dev/rbd-diff): a header line, optional `f`/`t` snapshot records, the image
 * size (`s`), then data (`w`) and zero (`z`) records, and `e`. Pure: builds
 * the buffers of one batch of validated extents; the caller pipes them.
 */

/** One extent of a batch: data (`data` set) or a zero range. */
export interface DiffExtent {
  readonly offset: number
  readonly length: number
  /** the bytes of a data extent; undefined for a zero extent */
  readonly data: Uint8Array | undefined
}

const HEADER = Buffer.from('rbd diff v1\n')

function snapRecord(tag: 'f' | 't', name: string): Buffer {
  const n = Buffer.from(name, 'utf8')
  const b = Buffer.alloc(5)
  b.write(tag, 0)
  b.writeUInt32LE(n.length, 1)
  return Buffer.concat([b, n])
}

/**
 * The parts of a diff stream writing `extents` into an image of `size`
 * bytes. `from`: the snapshot the image must have (import-diff refuses the
 * stream otherwise: a guard against writing onto the wrong image); `to`: a
 * snapshot import-diff creates once every record is written.
 */
export function encodeDiff(opts: { size: number; from?: string; to?: string; extents: readonly DiffExtent[] }): Buffer[] {
  const parts: Buffer[] = [HEADER]
  if (opts.from !== undefined) parts.push(snapRecord('f', opts.from))
  if (opts.to !== undefined) parts.push(snapRecord('t', opts.to))
  const s = Buffer.alloc(9)
  s.write('s', 0)
  s.writeBigUInt64LE(BigInt(opts.size), 1)
  parts.push(s)
  for (const e of opts.extents) {
    const h = Buffer.alloc(17)
    h.write(e.data === undefined ? 'z' : 'w', 0)
    h.writeBigUInt64LE(BigInt(e.offset), 1)
    h.writeBigUInt64LE(BigInt(e.length), 9)
    parts.push(h)
    if (e.data !== undefined) parts.push(Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength))
  }
  parts.push(Buffer.from('e'))
  return parts
}
