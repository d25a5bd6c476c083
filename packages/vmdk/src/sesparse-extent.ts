import type { DiskFile } from './disk-file.ts'
import { VmdkError, toSafeInteger } from './errors.ts'
import { MAX_CAPACITY, MAX_GD_BYTES, SparseExtent } from './sparse-extent.ts'
import { ENTRY_HI, ENTRY_HITS, ENTRY_LO, GTE_ZERO, TableBuilder, nonZeroEntries, type GrainTable } from './grain-table.ts'

export const SESPARSE_CONST_MAGIC = 0xcafebaben
export const SESPARSE_VOLATILE_MAGIC = 0xcafecafen
/** VMDK.md §3.1: "2.1" — the only version QEMU (and we) know. */
export const SESPARSE_VERSION = 0x0000000200000001n
export const SESPARSE_GRAIN_SECTORS = 8
export const SESPARSE_GT_SECTORS = 64
export const SESPARSE_GT_ENTRIES = 4096

/** The constant header (sector 0) of an SEsparse extent, all in sectors. */
export interface SeSparseHeader {
  readonly capacity: number
  readonly grainSize: number
  readonly grainTableSize: number
  readonly volatileHeaderOffset: number
  readonly volatileHeaderSize: number
  readonly journalHeaderOffset: number
  readonly journalHeaderSize: number
  readonly journalOffset: number
  readonly journalSize: number
  readonly grainDirOffset: number
  readonly grainDirSize: number
  readonly grainTablesOffset: number
  readonly grainTablesSize: number
  readonly freeBitmapOffset: number
  readonly freeBitmapSize: number
  readonly backmapOffset: number
  readonly backmapSize: number
  readonly grainsOffset: number
  readonly grainsSize: number
}

/** The volatile header (VMDK.md §3.2). */
export interface SeSparseVolatileHeader {
  readonly freeGtNumber: number
  readonly nextTxnSeqNumber: bigint
  readonly replayJournal: bigint
}

/** Parse the SEsparse constant header (pure) with QEMU's strict checks (VMDK.md §3.7). */
export function parseSeSparseHeader(buf: Uint8Array, file = ''): SeSparseHeader {
  if (buf.length < 512) throw new VmdkError('E_TRUNCATED', 'SEsparse header shorter than 512 bytes', file)
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)
  if (b.readBigUInt64LE(0) !== SESPARSE_CONST_MAGIC) throw new VmdkError('E_FORMAT', 'not an SEsparse extent (bad magic)', file)
  const version = b.readBigUInt64LE(8)
  if (version !== SESPARSE_VERSION) throw new VmdkError('E_VERSION', `unsupported SEsparse version 0x${version.toString(16)}`, file)
  const u = (off: number, name: string): number => toSafeInteger(b.readBigUInt64LE(off), name, file)
  const flags = b.readBigUInt64LE(40)
  if (flags !== 0n) throw new VmdkError('E_UNSUPPORTED', `unsupported SEsparse flags 0x${flags.toString(16)}`, file)
  for (let off = 48; off < 80; off += 8) {
    if (b.readBigUInt64LE(off) !== 0n) throw new VmdkError('E_FORMAT', 'SEsparse reserved fields are not zero', file)
  }
  for (let off = 208; off < 512; off++) {
    if (b[off] !== 0) throw new VmdkError('E_FORMAT', 'SEsparse header padding is not zero', file)
  }
  const h: SeSparseHeader = Object.freeze({
    capacity: u(16, 'capacity'),
    grainSize: u(24, 'grain_size'),
    grainTableSize: u(32, 'grain_table_size'),
    volatileHeaderOffset: u(80, 'volatile_header_offset'),
    volatileHeaderSize: u(88, 'volatile_header_size'),
    journalHeaderOffset: u(96, 'journal_header_offset'),
    journalHeaderSize: u(104, 'journal_header_size'),
    journalOffset: u(112, 'journal_offset'),
    journalSize: u(120, 'journal_size'),
    grainDirOffset: u(128, 'grain_dir_offset'),
    grainDirSize: u(136, 'grain_dir_size'),
    grainTablesOffset: u(144, 'grain_tables_offset'),
    grainTablesSize: u(152, 'grain_tables_size'),
    freeBitmapOffset: u(160, 'free_bitmap_offset'),
    freeBitmapSize: u(168, 'free_bitmap_size'),
    backmapOffset: u(176, 'backmap_offset'),
    backmapSize: u(184, 'backmap_size'),
    grainsOffset: u(192, 'grains_offset'),
    grainsSize: u(200, 'grains_size'),
  })
  if (h.grainSize !== SESPARSE_GRAIN_SECTORS) throw new VmdkError('E_UNSUPPORTED', `SEsparse grain_size ${h.grainSize} (only 8 is known)`, file)
  if (h.grainTableSize !== SESPARSE_GT_SECTORS) throw new VmdkError('E_UNSUPPORTED', `SEsparse grain_table_size ${h.grainTableSize} (only 64 is known)`, file)
  if (h.capacity * 512 > MAX_CAPACITY) throw new VmdkError('E_RANGE', `capacity ${h.capacity} sectors is absurd`, file)
  if (h.volatileHeaderOffset < 1 || h.grainDirOffset < 1 || h.grainTablesOffset < 1 || h.grainsOffset < 1) {
    throw new VmdkError('E_FORMAT', 'SEsparse region overlaps the constant header', file)
  }
  const needGd = Math.ceil(h.capacity / (SESPARSE_GT_ENTRIES * SESPARSE_GRAIN_SECTORS))
  if (h.grainDirSize * 64 < needGd) throw new VmdkError('E_FORMAT', `grain directory too small for capacity (${h.grainDirSize} sectors)`, file)
  if (needGd * 8 > MAX_GD_BYTES) throw new VmdkError('E_RANGE', 'grain directory is absurdly large', file)
  // the GD and GT regions must not overlap each other or the header
  if (h.grainDirOffset < h.volatileHeaderOffset + h.volatileHeaderSize && h.grainDirOffset + h.grainDirSize > h.volatileHeaderOffset) {
    throw new VmdkError('E_FORMAT', 'grain directory overlaps the volatile header', file)
  }
  if (h.grainTablesOffset < h.grainDirOffset + h.grainDirSize && h.grainTablesOffset + h.grainTablesSize > h.grainDirOffset) {
    throw new VmdkError('E_FORMAT', 'grain tables overlap the grain directory', file)
  }
  return h
}

/** Parse the volatile header (pure); E_DIRTY when the journal needs a replay. */
export function parseSeSparseVolatileHeader(buf: Uint8Array, file = ''): SeSparseVolatileHeader {
  if (buf.length < 512) throw new VmdkError('E_TRUNCATED', 'SEsparse volatile header shorter than 512 bytes', file)
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)
  if (b.readBigUInt64LE(0) !== SESPARSE_VOLATILE_MAGIC) throw new VmdkError('E_FORMAT', 'bad SEsparse volatile header magic', file)
  const v = {
    freeGtNumber: toSafeInteger(b.readBigUInt64LE(8), 'free_gt_number', file),
    nextTxnSeqNumber: b.readBigUInt64LE(16),
    replayJournal: b.readBigUInt64LE(24),
  }
  if (v.replayJournal !== 0n) throw new VmdkError('E_DIRTY', 'SEsparse journal needs replay (replay_journal != 0); open it on ESXi first', file)
  // QEMU block/vmdk.c check_se_sparse_volatile_header: non-zero padding is an unknown variant (ENOTSUP)
  for (let off = 32; off < 512; off++) {
    if (b[off] !== 0) throw new VmdkError('E_UNSUPPORTED', `SEsparse volatile header padding is not zero (byte ${off}); an unknown variant, refusing to guess`, file)
  }
  return Object.freeze(v)
}

/** SESPARSE extent (`-sesparse.vmdk`). */
export class SeSparseExtent extends SparseExtent {
  readonly format = 'sesparse' as const
  readonly header: SeSparseHeader
  readonly volatile: SeSparseVolatileHeader
  /** raw GD entries' GT indices (−1 = none), for the writer */
  readonly gtIndex: Float64Array

  private constructor(file: DiskFile, size: number, header: SeSparseHeader, vol: SeSparseVolatileHeader, gd: Float64Array, gtIndex: Float64Array) {
    super(file, size, SESPARSE_GRAIN_SECTORS * 512, SESPARSE_GT_ENTRIES, SESPARSE_GT_SECTORS * 512, gd)
    this.header = header
    this.volatile = vol
    this.gtIndex = gtIndex
  }

  static async open(file: DiskFile, size?: number): Promise<SeSparseExtent> {
    const header = parseSeSparseHeader(await file.readExact(0, 512, 'SEsparse header'), file.path)
    const vol = parseSeSparseVolatileHeader(await file.readExact(header.volatileHeaderOffset * 512, 512, 'SEsparse volatile header'), file.path)
    const extentSize = size ?? header.capacity * 512
    if (extentSize !== header.capacity * 512) {
      throw new VmdkError('E_FORMAT', `extent line says ${extentSize / 512} sectors, SEsparse header ${header.capacity}`, file.path)
    }
    const n = Math.ceil(header.capacity / (SESPARSE_GT_ENTRIES * SESPARSE_GRAIN_SECTORS))
    const raw = await file.readExact(header.grainDirOffset * 512, n * 8, 'grain directory')
    const gd = new Float64Array(n)
    const gtIndex = new Float64Array(n).fill(-1)
    const maxTables = Math.floor(header.grainTablesSize / SESPARSE_GT_SECTORS)
    for (let i = 0; i < n; i++) {
      const lo = raw.readUInt32LE(i * 8)
      const hi = raw.readUInt32LE(i * 8 + 4)
      if (lo === 0 && hi === 0) continue
      // VMDK.md §3.4: an allocated entry's upper half is exactly 0x10000000
      if (hi !== 0x10000000) throw new VmdkError('E_FORMAT', `grain directory entry ${i} is corrupt (0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')})`, file.path)
      if (lo >= maxTables) throw new VmdkError('E_FORMAT', `grain directory entry ${i} names grain table ${lo} beyond the table region`, file.path)
      const off = (header.grainTablesOffset + lo * SESPARSE_GT_SECTORS) * 512
      if (off + SESPARSE_GT_SECTORS * 512 > file.size) throw new VmdkError('E_FORMAT', `grain directory entry ${i} points past the end of file`, file.path)
      gd[i] = off
      gtIndex[i] = lo
    }
    return new SeSparseExtent(file, extentSize, header, vol, gd, gtIndex)
  }

  decodeTable(buf: Buffer, offset: number, gdIndex: number): GrainTable {
    const tb = new TableBuilder()
    const grainsBase = this.header.grainsOffset * 512
    const maxSlot = Math.floor(this.header.grainsSize / SESPARSE_GRAIN_SECTORS)
    const fileSize = this.file.size
    const hits = nonZeroEntries(buf, offset, SESPARSE_GT_ENTRIES * 8, 8)
    for (let h = 0; h < hits; h++) {
      const j = ENTRY_HITS[h] as number
      const lo = ENTRY_LO[h] as number
      const hi = ENTRY_HI[h] as number
      const type = hi >>> 28
      if (type === 1 || type === 2) {
        tb.push(j, GTE_ZERO)
        continue
      }
      if (type !== 3) throw new VmdkError('E_FORMAT', `grain table ${gdIndex} entry ${j} has invalid type ${type}`, this.file.path)
      // VMDK.md §3.5: slot = ((e >> 48) & 0xFFF) | ((e & 0xFFFF_FFFF_FFFF) << 12)
      const slot = ((hi >>> 16) & 0xfff) + ((hi & 0xffff) * 0x100000000 + lo) * 4096
      if (slot >= maxSlot) throw new VmdkError('E_FORMAT', `grain table ${gdIndex} entry ${j} names slot ${slot} beyond the grain region`, this.file.path)
      const off = grainsBase + slot * 4096
      if (off >= fileSize) throw new VmdkError('E_FORMAT', `grain table ${gdIndex} entry ${j} points past the end of file`, this.file.path)
      tb.push(j, off)
    }
    return tb.done()
  }
}
