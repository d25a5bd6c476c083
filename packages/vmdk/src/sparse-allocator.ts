import { VmdkError } from './errors.ts'
import type { SparseExtent } from './sparse-extent.ts'
import { GTE_ZERO } from './grain-table.ts'
import { HostedSparseExtent, KdmvFlags } from './hosted-sparse-extent.ts'
import { CowdExtent, COWD_GT_ENTRIES } from './cowd-extent.ts'
import { SeSparseExtent, SESPARSE_GT_SECTORS } from './sesparse-extent.ts'

/**
 * Format-specific allocation for the sparse writer: where new grains and grain
 * tables go, how tables and directory entries are encoded, and the bookkeeping each
 * format keeps (COWD freeSector, SEsparse free bitmap/backmap/volatile header, KDMV
 * redundant directory).
 */
export interface SparseAllocator {
  readonly ext: SparseExtent
  /** the format has a "zero grain" table entry */
  readonly zeroMarker: boolean
  /** byte offset of `n` new contiguous grains */
  allocGrains(n: number, firstGrain: number): Promise<number>
  /** give GD entry `gdIndex` a new (empty) table; sets ext.gd[gdIndex] */
  newTable(gdIndex: number): Promise<Float64Array>
  /** write the table of `gdIndex` (all copies) */
  writeTable(gdIndex: number, t: Float64Array): Promise<void>
  /** persist GD entry `gdIndex` (after its table is on disk) */
  writeGdEntry(gdIndex: number): Promise<void>
  /** persist header counters */
  finish(): Promise<void>
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(v >>> 0)
  return b
}

class HostedAllocator implements SparseAllocator {
  readonly ext: HostedSparseExtent
  readonly zeroMarker: boolean
  readonly #rgd: Float64Array | undefined
  #end: number

  private constructor(ext: HostedSparseExtent, rgd: Float64Array | undefined) {
    this.ext = ext
    const h = ext.header
    this.zeroMarker = h.version >= 2 && (h.flags & KdmvFlags.ZeroedGrainGte) !== 0
    this.#rgd = rgd
    this.#end = Math.ceil(ext.file.size / 512) * 512
  }

  static async create(ext: HostedSparseExtent): Promise<HostedAllocator> {
    const h = ext.header
    if (ext.compressed) throw new VmdkError('E_READONLY', 'streamOptimized (compressed) extents are read-only', ext.file.path)
    let rgd: Float64Array | undefined
    if ((h.flags & KdmvFlags.RedundantGd) !== 0 && h.rgdOffset > 0) {
      const n = ext.gd.length
      const raw = await ext.file.readExact(h.rgdOffset * 512, n * 4, 'redundant grain directory')
      rgd = new Float64Array(n)
      for (let i = 0; i < n; i++) {
        const s = raw.readUInt32LE(i * 4)
        if (s !== 0 && s * 512 + ext.gtBytes > ext.file.size) throw new VmdkError('E_FORMAT', `redundant grain directory entry ${i} points past the end of file`, ext.file.path)
        rgd[i] = s * 512
      }
    }
    return new HostedAllocator(ext, rgd)
  }

  async allocGrains(n: number): Promise<number> {
    const off = this.#end
    this.#end += n * this.ext.grainSize
    return off
  }

  async newTable(gdIndex: number): Promise<Float64Array> {
    const off = this.#end
    this.#end += this.ext.gtBytes
    await this.ext.file.writeAt(Buffer.alloc(this.ext.gtBytes), off)
    this.ext.gd[gdIndex] = off
    if (this.#rgd !== undefined) {
      const roff = this.#end
      this.#end += this.ext.gtBytes
      await this.ext.file.writeAt(Buffer.alloc(this.ext.gtBytes), roff)
      this.#rgd[gdIndex] = roff
    }
    return new Float64Array(this.ext.gtEntries)
  }

  async writeTable(gdIndex: number, t: Float64Array): Promise<void> {
    const b = Buffer.alloc(this.ext.gtBytes)
    for (let j = 0; j < t.length; j++) {
      const v = t[j] ?? 0
      b.writeUInt32LE(v === GTE_ZERO ? 1 : v > 0 ? v / 512 : 0, j * 4)
    }
    await this.ext.file.writeAt(b, this.ext.gd[gdIndex] ?? 0)
    const r = this.#rgd?.[gdIndex] ?? 0
    if (r > 0) await this.ext.file.writeAt(b, r)
  }

  async writeGdEntry(gdIndex: number): Promise<void> {
    await this.ext.file.writeAt(u32((this.ext.gd[gdIndex] ?? 0) / 512), this.ext.gdSectorOffset * 512 + gdIndex * 4)
    if (this.#rgd !== undefined) await this.ext.file.writeAt(u32((this.#rgd[gdIndex] ?? 0) / 512), this.ext.header.rgdOffset * 512 + gdIndex * 4)
  }

  async finish(): Promise<void> {}
}

class CowdAllocator implements SparseAllocator {
  readonly ext: CowdExtent
  readonly zeroMarker = false
  #free: number
  readonly #startFree: number

  constructor(ext: CowdExtent) {
    this.ext = ext
    const gdEnd = ext.header.gdOffset + Math.ceil((ext.header.numGDEntries * 4) / 512)
    this.#free = Math.max(ext.header.freeSector, gdEnd)
    this.#startFree = ext.header.freeSector
  }

  async allocGrains(n: number): Promise<number> {
    const off = this.#free * 512
    this.#free += n * this.ext.header.grainSize
    if (this.#free > 0xffffffff) throw new VmdkError('E_RANGE', 'COWD file would exceed 2 TiB', this.ext.file.path)
    return off
  }

  async newTable(gdIndex: number): Promise<Float64Array> {
    const off = await this.allocGrains(0)
    this.#free += (COWD_GT_ENTRIES * 4) / 512
    await this.ext.file.writeAt(Buffer.alloc(COWD_GT_ENTRIES * 4), off)
    this.ext.gd[gdIndex] = off
    return new Float64Array(COWD_GT_ENTRIES)
  }

  async writeTable(gdIndex: number, t: Float64Array): Promise<void> {
    const b = Buffer.alloc(COWD_GT_ENTRIES * 4)
    for (let j = 0; j < t.length; j++) {
      const v = t[j] ?? 0
      b.writeUInt32LE(v === GTE_ZERO ? 1 : v > 0 ? v / 512 : 0, j * 4)
    }
    await this.ext.file.writeAt(b, this.ext.gd[gdIndex] ?? 0)
  }

  async writeGdEntry(gdIndex: number): Promise<void> {
    await this.ext.file.writeAt(u32((this.ext.gd[gdIndex] ?? 0) / 512), this.ext.header.gdOffset * 512 + gdIndex * 4)
  }

  async finish(): Promise<void> {
    if (this.#free !== this.#startFree) await this.ext.file.writeAt(u32(this.#free), 28)
  }
}

/** SEsparse GTE for an allocated slot: type 3, slot bits rotated by 12 (VMDK.md §3.5). */
export function seSparseDataEntry(slot: number): [lo: number, hi: number] {
  const q = Math.floor(slot / 4096)
  const lo = q % 0x100000000
  const hi = (0x30000000 | ((slot & 0xfff) << 16) | (Math.floor(q / 0x100000000) & 0xffff)) >>> 0
  return [lo, hi]
}

/**
 * New SEsparse slots whose free-bitmap bits and backmap entries wait for the
 * allocator's finish() (8 bytes each): past it they are written out.
 * @default 65536
 */
const BACKMAP_PENDING_MAX = 65536

class SeSparseAllocator implements SparseAllocator {
  readonly ext: SeSparseExtent
  readonly zeroMarker = true
  /** grain numbers of the slots allocated since the last #writeSlots, in slot order */
  readonly #backmap: number[] = []
  #nextSlot: number
  #freeGt: number
  readonly #maxSlot: number
  readonly #maxTables: number
  readonly #startGt: number

  constructor(ext: SeSparseExtent) {
    this.ext = ext
    const h = ext.header
    const grainsBase = h.grainsOffset * 512
    this.#nextSlot = Math.max(0, Math.ceil((ext.file.size - grainsBase) / 4096))
    let maxIdx = -1
    for (const v of ext.gtIndex) if (v > maxIdx) maxIdx = v
    this.#freeGt = Math.max(ext.volatile.freeGtNumber, maxIdx + 1)
    this.#startGt = ext.volatile.freeGtNumber
    this.#maxSlot = Math.floor(h.grainsSize / 8)
    this.#maxTables = Math.floor(h.grainTablesSize / SESPARSE_GT_SECTORS)
  }

  async allocGrains(n: number, firstGrain: number): Promise<number> {
    const slot = this.#nextSlot
    if (slot + n > this.#maxSlot) throw new VmdkError('E_RANGE', 'SEsparse grain region full', this.ext.file.path)
    this.#nextSlot += n
    // the free bitmap and backmap entries of new slots are written at finish()
    // (one write each per flush, not a read-modify-write per allocation), or
    // once BACKMAP_PENDING_MAX slots wait
    for (let k = 0; k < n; k++) this.#backmap.push(firstGrain + k)
    if (this.#backmap.length >= BACKMAP_PENDING_MAX) await this.#writeSlots()
    return (this.ext.header.grainsOffset + slot * 8) * 512
  }

  /** Free bitmap bits and backmap entries of the slots allocated since the last write. */
  async #writeSlots(): Promise<void> {
    const n = this.#backmap.length
    if (n === 0) return
    const slot = this.#nextSlot - n
    const h = this.ext.header
    // free bitmap: one bit per slot, LSB first (sample: 0xFF bytes for allocated slots)
    const b0 = Math.floor(slot / 8)
    const b1 = Math.floor((slot + n - 1) / 8)
    const bmOff = h.freeBitmapOffset * 512
    if (b1 < h.freeBitmapSize * 512) {
      const bm = await this.ext.file.readExact(bmOff + b0, b1 - b0 + 1, 'free bitmap')
      for (let s = slot; s < slot + n; s++) {
        const i = Math.floor(s / 8) - b0
        bm[i] = (bm[i] ?? 0) | (1 << (s % 8))
      }
      await this.ext.file.writeAt(bm, bmOff + b0)
    }
    // backmap: one u64 per slot naming its grain, encoded like a GTE with type 1
    if ((slot + n) * 8 <= h.backmapSize * 512) {
      const bk = Buffer.alloc(n * 8)
      for (let k = 0; k < n; k++) {
        const [lo, hi] = seSparseDataEntry(this.#backmap[k] as number)
        bk.writeUInt32LE(lo, k * 8)
        bk.writeUInt32LE(((hi & 0x0fffffff) | 0x10000000) >>> 0, k * 8 + 4)
      }
      await this.ext.file.writeAt(bk, h.backmapOffset * 512 + slot * 8)
    }
    this.#backmap.length = 0
  }

  async newTable(gdIndex: number): Promise<Float64Array> {
    const idx = this.#freeGt++
    if (idx >= this.#maxTables) throw new VmdkError('E_RANGE', 'SEsparse grain table region full', this.ext.file.path)
    const off = (this.ext.header.grainTablesOffset + idx * SESPARSE_GT_SECTORS) * 512
    await this.ext.file.writeAt(Buffer.alloc(SESPARSE_GT_SECTORS * 512), off)
    this.ext.gd[gdIndex] = off
    this.ext.gtIndex[gdIndex] = idx
    return new Float64Array(this.ext.gtEntries)
  }

  async writeTable(gdIndex: number, t: Float64Array): Promise<void> {
    const b = Buffer.alloc(SESPARSE_GT_SECTORS * 512)
    const base = this.ext.header.grainsOffset * 512
    for (let j = 0; j < t.length; j++) {
      const v = t[j] ?? 0
      if (v === 0) continue
      if (v === GTE_ZERO) {
        b.writeUInt32LE(0x20000000, j * 8 + 4)
        continue
      }
      const [lo, hi] = seSparseDataEntry((v - base) / 4096)
      b.writeUInt32LE(lo, j * 8)
      b.writeUInt32LE(hi, j * 8 + 4)
    }
    await this.ext.file.writeAt(b, this.ext.gd[gdIndex] ?? 0)
  }

  async writeGdEntry(gdIndex: number): Promise<void> {
    const b = Buffer.alloc(8)
    b.writeUInt32LE((this.ext.gtIndex[gdIndex] ?? 0) >>> 0, 0)
    b.writeUInt32LE(0x10000000, 4)
    await this.ext.file.writeAt(b, this.ext.header.grainDirOffset * 512 + gdIndex * 8)
  }

  async finish(): Promise<void> {
    await this.#writeSlots()
    if (this.#freeGt !== this.#startGt) {
      const b = Buffer.alloc(8)
      b.writeBigUInt64LE(BigInt(this.#freeGt))
      await this.ext.file.writeAt(b, this.ext.header.volatileHeaderOffset * 512 + 8)
    }
  }
}

/** The allocator for a sparse extent opened read-write. */
export async function allocatorFor(ext: SparseExtent): Promise<SparseAllocator> {
  if (ext instanceof HostedSparseExtent) return await HostedAllocator.create(ext)
  if (ext instanceof CowdExtent) return new CowdAllocator(ext)
  if (ext instanceof SeSparseExtent) return new SeSparseAllocator(ext)
  throw new VmdkError('E_UNSUPPORTED', 'no writer for this extent type', ext.file.path)
}
