import type { DiskFile } from './disk-file.ts'
import { VmdkError, toSafeInteger } from './errors.ts'
import { MAX_CAPACITY, MAX_GD_BYTES, SparseExtent, inflateBounded } from './sparse-extent.ts'
import { ENTRY_HITS, ENTRY_LO, GTE_ZERO, TableBuilder, nonZeroEntries, type GrainTable } from './grain-table.ts'

export const KDMV_MAGIC = 0x564d444b
/** VMDK 1.1 §"Hosted Sparse Extent Header": flag bits */
export const KdmvFlags = {
  ValidNewlineTest: 1 << 0,
  RedundantGd: 1 << 1,
  ZeroedGrainGte: 1 << 2,
  Compressed: 1 << 16,
  Markers: 1 << 17,
} as const
const KNOWN_FLAGS = 0x7 | 0x30000
const GD_AT_END = 0xffffffffffffffffn

/** The 512-byte SparseExtentHeader (VMDK.md §4.1), numbers narrowed once. */
export interface SparseExtentHeader {
  readonly version: number
  readonly flags: number
  /** sectors */
  readonly capacity: number
  /** sectors, power of 2 */
  readonly grainSize: number
  readonly descriptorOffset: number
  readonly descriptorSize: number
  readonly numGTEsPerGT: number
  readonly rgdOffset: number
  /** sectors; -1 for GD_AT_END */
  readonly gdOffset: number
  readonly overHead: number
  readonly uncleanShutdown: number
  readonly compressAlgorithm: number
}

/**
 * Parse a KDMV header (pure). Throws E_FORMAT / E_VERSION / E_UNSUPPORTED / E_RANGE.
 * VMDK 1.1: grainSize is a power of 2; numGTEsPerGT is 512 in every known writer.
 */
export function parseSparseExtentHeader(buf: Uint8Array, file = ''): SparseExtentHeader {
  if (buf.length < 512) throw new VmdkError('E_TRUNCATED', 'KDMV header shorter than 512 bytes', file)
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)
  if (b.readUInt32LE(0) !== KDMV_MAGIC) throw new VmdkError('E_FORMAT', 'not a KDMV sparse extent (bad magic)', file)
  const version = b.readUInt32LE(4)
  if (version < 1 || version > 3) throw new VmdkError('E_VERSION', `unsupported KDMV version ${version}`, file)
  const flags = b.readUInt32LE(8)
  if ((flags & ~KNOWN_FLAGS & 0xffff0000) !== 0) throw new VmdkError('E_UNSUPPORTED', `unknown incompatible KDMV flags 0x${flags.toString(16)}`, file)
  const capacity = toSafeInteger(b.readBigUInt64LE(12), 'capacity', file)
  const grainSize = toSafeInteger(b.readBigUInt64LE(20), 'grainSize', file)
  const descriptorOffset = toSafeInteger(b.readBigUInt64LE(28), 'descriptorOffset', file)
  const descriptorSize = toSafeInteger(b.readBigUInt64LE(36), 'descriptorSize', file)
  const numGTEsPerGT = b.readUInt32LE(44)
  const rgdOffset = toSafeInteger(b.readBigUInt64LE(48), 'rgdOffset', file)
  const gdRaw = b.readBigUInt64LE(56)
  const gdOffset = gdRaw === GD_AT_END ? -1 : toSafeInteger(gdRaw, 'gdOffset', file)
  const overHead = toSafeInteger(b.readBigUInt64LE(64), 'overHead', file)
  const h: SparseExtentHeader = Object.freeze({
    version,
    flags,
    capacity,
    grainSize,
    descriptorOffset,
    descriptorSize,
    numGTEsPerGT,
    rgdOffset,
    gdOffset,
    overHead,
    uncleanShutdown: b.readUInt8(72),
    compressAlgorithm: b.readUInt16LE(77),
  })
  if (capacity * 512 > MAX_CAPACITY) throw new VmdkError('E_RANGE', `capacity ${capacity} sectors is absurd`, file)
  if (grainSize < 1 || grainSize > 65536 || (grainSize & (grainSize - 1)) !== 0) {
    throw new VmdkError('E_FORMAT', `grainSize ${grainSize} is not a power of 2 in 1..65536`, file)
  }
  if (numGTEsPerGT < 1 || numGTEsPerGT > 4096) throw new VmdkError('E_FORMAT', `numGTEsPerGT ${numGTEsPerGT} out of range`, file)
  if (descriptorSize > 2048) throw new VmdkError('E_RANGE', `descriptorSize ${descriptorSize} sectors is absurd`, file)
  if (descriptorSize > 0 && descriptorOffset < 1) throw new VmdkError('E_FORMAT', 'embedded descriptor overlaps the header', file)
  if (gdOffset === 0) throw new VmdkError('E_FORMAT', 'grain directory overlaps the header', file)
  if ((flags & KdmvFlags.Compressed) !== 0 && h.compressAlgorithm !== 1) {
    throw new VmdkError('E_UNSUPPORTED', `compression algorithm ${h.compressAlgorithm}`, file)
  }
  return h
}

/** SPARSE extent backed by a KDMV file (monolithicSparse, -s00N extents, streamOptimized). */
export class HostedSparseExtent extends SparseExtent {
  readonly format = 'hosted' as const
  readonly header: SparseExtentHeader
  readonly gdSectorOffset: number

  private constructor(file: DiskFile, size: number, header: SparseExtentHeader, gd: Float64Array, gdSectorOffset: number) {
    super(file, size, header.grainSize * 512, header.numGTEsPerGT, Math.ceil((header.numGTEsPerGT * 4) / 512) * 512, gd)
    this.header = header
    this.gdSectorOffset = gdSectorOffset
  }

  get compressed(): boolean {
    return (this.header.flags & KdmvFlags.Compressed) !== 0
  }

  /** Open a KDMV extent of `size` bytes (from the descriptor line, or the header when undefined). */
  static async open(file: DiskFile, size?: number): Promise<HostedSparseExtent> {
    const header = parseSparseExtentHeader(await file.readExact(0, 512, 'KDMV header'), file.path)
    let gdOffset = header.gdOffset
    if (gdOffset < 0) {
      // GD_AT_END: a true stream; the footer (a copy of the header with the real gdOffset) sits at EOF-1024
      if (file.size < 1536) throw new VmdkError('E_TRUNCATED', 'stream without footer', file.path)
      const footer = parseSparseExtentHeader(await file.readExact(file.size - 1024, 512, 'KDMV footer'), file.path)
      if (footer.gdOffset < 0) throw new VmdkError('E_FORMAT', 'footer has no grain directory offset', file.path)
      gdOffset = footer.gdOffset
    }
    const extentSize = size ?? header.capacity * 512
    if (extentSize > header.capacity * 512) {
      throw new VmdkError('E_FORMAT', `extent line says ${extentSize / 512} sectors, header capacity ${header.capacity}`, file.path)
    }
    const cover = header.grainSize * 512 * header.numGTEsPerGT
    const gdEntries = Math.ceil((header.capacity * 512) / cover)
    if (gdEntries * 4 > MAX_GD_BYTES) throw new VmdkError('E_RANGE', `grain directory of ${gdEntries} entries is absurd`, file.path)
    const gtBytes = Math.ceil((header.numGTEsPerGT * 4) / 512) * 512
    const raw = await file.readExact(gdOffset * 512, gdEntries * 4, 'grain directory')
    const gd = new Float64Array(gdEntries)
    const metaEnd = header.descriptorSize > 0 ? header.descriptorOffset + header.descriptorSize : 1
    if (gdOffset < metaEnd) throw new VmdkError('E_FORMAT', `grain directory (sector ${gdOffset}) overlaps the header`, file.path)
    for (let i = 0; i < gdEntries; i++) {
      const s = raw.readUInt32LE(i * 4)
      if (s === 0) continue
      if (s < metaEnd) {
        throw new VmdkError('E_FORMAT', `grain directory entry ${i} points into the header (sector ${s})`, file.path)
      }
      if (s * 512 + gtBytes > file.size) throw new VmdkError('E_FORMAT', `grain directory entry ${i} points past the end of file (sector ${s})`, file.path)
      gd[i] = s * 512
    }
    return new HostedSparseExtent(file, extentSize, header, gd, gdOffset)
  }

  decodeTable(buf: Buffer, offset: number, gdIndex: number): GrainTable {
    const n = this.gtEntries
    const tb = new TableBuilder()
    const fileSectors = Math.ceil(this.file.size / 512)
    const minSector = Math.max(1, this.header.overHead > 0 && this.header.overHead < fileSectors ? this.header.overHead : 1)
    const compressed = this.compressed
    const hits = nonZeroEntries(buf, offset, n * 4, 4)
    for (let h = 0; h < hits; h++) {
      const j = ENTRY_HITS[h] as number
      const s = ENTRY_LO[h] as number
      // GTE 1 = zeroed grain (VMDK 5.0 §"zeroed-grain GTE"; VMware's reader honours it always)
      if (s === 1) {
        tb.push(j, GTE_ZERO)
        continue
      }
      if (s < minSector) throw new VmdkError('E_FORMAT', `grain table ${gdIndex} entry ${j} points into the metadata (sector ${s})`, this.file.path)
      if (s >= fileSectors) throw new VmdkError('E_FORMAT', `grain table ${gdIndex} entry ${j} points past the end of file (sector ${s})`, this.file.path)
      tb.push(j, compressed ? -(s * 512) : s * 512)
    }
    return tb.done()
  }

  protected override async inflateGrain(off: number): Promise<Buffer> {
    const markers = (this.header.flags & KdmvFlags.Markers) !== 0
    const prefix = markers ? 12 : 4
    const head = await this.file.readExact(off, prefix, 'compressed grain header')
    const size = head.readUInt32LE(markers ? 8 : 0)
    const maxCompressed = this.grainSize * 2 + 1024
    if (size === 0 || size > maxCompressed) throw new VmdkError('E_FORMAT', `compressed grain size ${size} at ${off} out of range`, this.file.path)
    const data = await this.file.readExact(off + prefix, size, 'compressed grain')
    // as inflated: a grain shorter than it must be is refused where it is read (SparseExtent.readRun)
    return inflateBounded(data, this.grainSize, this.file.path)
  }

  /** The embedded descriptor text (NUL-padded area cut at the first NUL), or undefined. */
  async embeddedDescriptor(): Promise<Buffer | undefined> {
    return await readEmbeddedDescriptor(this.file, this.header)
  }
}

/** The embedded descriptor area of a KDMV file, cut at the first NUL (bytes; decode with decodeDescriptor). */
export async function readEmbeddedDescriptor(file: DiskFile, header: SparseExtentHeader): Promise<Buffer | undefined> {
  if (header.descriptorSize === 0 || header.descriptorOffset === 0) return undefined
  const raw = await file.readExact(header.descriptorOffset * 512, header.descriptorSize * 512, 'embedded descriptor')
  const nul = raw.indexOf(0)
  return raw.subarray(0, nul < 0 ? raw.length : nul)
}
