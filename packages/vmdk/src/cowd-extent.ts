import type { DiskFile } from './disk-file.ts'
import { VmdkError } from './errors.ts'
import { MAX_CAPACITY, SparseExtent } from './sparse-extent.ts'
import { ENTRY_HITS, ENTRY_LO, GTE_ZERO, TableBuilder, nonZeroEntries, type GrainTable } from './grain-table.ts'

export const COWD_MAGIC = 0x44574f43
/** VMDK.md §2.2: ESX sparse grain tables always hold 4096 entries; the count is not stored. */
export const COWD_GT_ENTRIES = 4096
export const COWD_HEADER_BYTES = 2048

/** The COWD (vmfsSparse redo log) header, VMDK.md §2.1. */
export interface CowdHeader {
  readonly version: number
  readonly flags: number
  /** sectors */
  readonly numSectors: number
  /** sectors per grain */
  readonly grainSize: number
  /** sector of the grain directory */
  readonly gdOffset: number
  readonly numGDEntries: number
  readonly freeSector: number
  readonly generation: number
  readonly uncleanShutdown: number
}

/**
 * Parse a COWD header (pure). Only version 1 / flags 3 is the ESX sparse format;
 * VMDK3 (Workstation 3) also says "COWD" but has 512-entry tables [FZ].
 */
export function parseCowdHeader(buf: Uint8Array, file = ''): CowdHeader {
  if (buf.length < COWD_HEADER_BYTES) throw new VmdkError('E_TRUNCATED', 'COWD header shorter than 2048 bytes', file)
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)
  if (b.readUInt32LE(0) !== COWD_MAGIC) throw new VmdkError('E_FORMAT', 'not a COWD sparse extent (bad magic)', file)
  const h: CowdHeader = Object.freeze({
    version: b.readUInt32LE(4),
    flags: b.readUInt32LE(8),
    numSectors: b.readUInt32LE(12),
    grainSize: b.readUInt32LE(16),
    gdOffset: b.readUInt32LE(20),
    numGDEntries: b.readUInt32LE(24),
    freeSector: b.readUInt32LE(28),
    generation: b.readUInt32LE(1060),
    uncleanShutdown: b.readUInt32LE(1648),
  })
  if (h.version !== 1) throw new VmdkError('E_VERSION', `unsupported COWD version ${h.version}`, file)
  if (h.flags !== 3) throw new VmdkError('E_UNSUPPORTED', `unsupported COWD flags ${h.flags}`, file)
  if (h.grainSize < 1 || h.grainSize > 128 || (h.grainSize & (h.grainSize - 1)) !== 0) {
    throw new VmdkError('E_FORMAT', `COWD grainSize ${h.grainSize} is not a power of 2 in 1..128`, file)
  }
  if (h.numSectors * 512 > MAX_CAPACITY) throw new VmdkError('E_RANGE', `capacity ${h.numSectors} sectors is absurd`, file)
  const need = Math.ceil(h.numSectors / (COWD_GT_ENTRIES * h.grainSize))
  if (h.numGDEntries < need || h.numGDEntries > need + 1) {
    throw new VmdkError('E_FORMAT', `numGDEntries ${h.numGDEntries} does not match capacity (${need})`, file)
  }
  if (h.gdOffset < COWD_HEADER_BYTES / 512) throw new VmdkError('E_FORMAT', `grain directory (sector ${h.gdOffset}) overlaps the header`, file)
  return h
}

/** VMFSSPARSE extent (COWD redo log, `-delta.vmdk`). */
export class CowdExtent extends SparseExtent {
  readonly format = 'cowd' as const
  readonly header: CowdHeader

  private constructor(file: DiskFile, size: number, header: CowdHeader, gd: Float64Array) {
    super(file, size, header.grainSize * 512, COWD_GT_ENTRIES, COWD_GT_ENTRIES * 4, gd)
    this.header = header
  }

  static async open(file: DiskFile, size?: number): Promise<CowdExtent> {
    const header = parseCowdHeader(await file.readExact(0, COWD_HEADER_BYTES, 'COWD header'), file.path)
    const extentSize = size ?? header.numSectors * 512
    if (extentSize !== header.numSectors * 512) {
      throw new VmdkError('E_FORMAT', `extent line says ${extentSize / 512} sectors, COWD header ${header.numSectors}`, file.path)
    }
    const raw = await file.readExact(header.gdOffset * 512, header.numGDEntries * 4, 'grain directory')
    const gdEnd = header.gdOffset + Math.ceil((header.numGDEntries * 4) / 512)
    const gd = new Float64Array(header.numGDEntries)
    for (let i = 0; i < header.numGDEntries; i++) {
      const s = raw.readUInt32LE(i * 4)
      if (s === 0) continue
      if (s < gdEnd && s >= header.gdOffset) throw new VmdkError('E_FORMAT', `grain directory entry ${i} points into the grain directory`, file.path)
      if (s < COWD_HEADER_BYTES / 512) throw new VmdkError('E_FORMAT', `grain directory entry ${i} points into the header (sector ${s})`, file.path)
      if (s * 512 + COWD_GT_ENTRIES * 4 > file.size) throw new VmdkError('E_FORMAT', `grain directory entry ${i} points past the end of file (sector ${s})`, file.path)
      gd[i] = s * 512
    }
    return new CowdExtent(file, extentSize, header, gd)
  }

  decodeTable(buf: Buffer, offset: number, gdIndex: number): GrainTable {
    const tb = new TableBuilder()
    const fileSectors = Math.ceil(this.file.size / 512)
    const hits = nonZeroEntries(buf, offset, COWD_GT_ENTRIES * 4, 4)
    for (let h = 0; h < hits; h++) {
      const j = ENTRY_HITS[h] as number
      const s = ENTRY_LO[h] as number
      // VMDK.md §2.2: GTE 1 lies inside the header; the only tool known to write it means "zero"
      if (s === 1) {
        tb.push(j, GTE_ZERO)
        continue
      }
      if (s < COWD_HEADER_BYTES / 512) throw new VmdkError('E_FORMAT', `grain table ${gdIndex} entry ${j} points into the header (sector ${s})`, this.file.path)
      if (s >= fileSectors) throw new VmdkError('E_FORMAT', `grain table ${gdIndex} entry ${j} points past the end of file (sector ${s})`, this.file.path)
      tb.push(j, s * 512)
    }
    return tb.done()
  }
}
