import { VmdkError } from './errors.ts'
import { randomCid, formatCid } from './descriptor.ts'
import type { Descriptor } from './descriptor.ts'
import { type DiskChain, openChain } from './chain.ts'
import { type Extent, RunState, FlatExtent } from './extent.ts'
import { SparseExtent, GTE_ZERO } from './sparse-extent.ts'
import { HostedSparseExtent } from './hosted-sparse-extent.ts'
import type { Layer, PathMap } from './layer.ts'
import { type SparseAllocator, allocatorFor } from './sparse-allocator.ts'
import { writeFileAtomic } from './atomic-file.ts'
import { encodeDescriptor, isUtf8 } from './descriptor-encoding.ts'
import type { FileAccess } from './file-access.ts'

/** Writes guest data into the top layer of a chain, like a hypervisor would. */
export interface DiskWriter {
  /** Write `data` at byte `offset` (any alignment; partial grains are filled from the parent). */
  write(offset: number, data: Uint8Array): Promise<void>
  /** Make [offset, offset+length) read as zeros (zero-grain entries where the format has them). */
  writeZeroes(offset: number, length: number): Promise<void>
  /** fsync every file written so far. */
  flush(): Promise<void>
  /** flush, persist header counters, close. */
  close(): Promise<void>
}

export interface OpenWriterOptions {
  pathMap?: PathMap
  /** @default localFileAccess; must support writing */
  files?: FileAccess
  /**
   * How a changed descriptor is written: `'utf-8'` converts it to UTF-8 (and its
   * `encoding=` key with it), `'keep'` re-encodes it in the encoding it declares.
   * @default 'utf-8'
   */
  descriptorEncoding?: DescriptorEncodingOption
  /**
   * When to give the disk a new CID: `first-write` (as VMware and QEMU do: before the
   * first byte changes) or `close` (consolidate: only once all data is durable).
   * @default 'first-write'
   */
  newCid?: 'first-write' | 'close'
}

const ZERO_CHUNK = 4 * 1024 * 1024

/**
 * Changed grain tables a writer keeps in memory until its flush (32 KiB each
 * for SEsparse, 2–4 KiB for the other formats): past it they are written out.
 * @default 256
 */
export const PENDING_TABLES_MAX = 256

/** How the writers write a descriptor they change: in UTF-8, or in the encoding it declares. */
export type DescriptorEncodingOption = 'utf-8' | 'keep'

/**
 * The bytes to write for a descriptor: UTF-8 (its `encoding=` key, if it declares
 * another one, rewritten to UTF-8) unless `'keep'` asks for its own encoding.
 */
export function descriptorBytes(d: Descriptor, encoding: DescriptorEncodingOption = 'utf-8', file = ''): Buffer {
  if (encoding === 'keep') return encodeDescriptor(d.toString(), undefined, file)
  const dd = isUtf8(d.encoding) ? d : d.with('encoding', 'UTF-8')
  return encodeDescriptor(dd.toString(), 'UTF-8', file)
}

/** Persist a layer's descriptor: atomic replace for a text file, in place for an embedded one. */
export async function persistDescriptor(layer: Layer, d: Descriptor, encoding: DescriptorEncodingOption = 'utf-8'): Promise<void> {
  const bytes = descriptorBytes(d, encoding, layer.path)
  const written = encoding === 'keep' || isUtf8(d.encoding) ? d : d.with('encoding', 'UTF-8')
  if (layer.descriptorKind === 'text') {
    await writeFileAtomic(layer.path, bytes)
  } else if (layer.descriptorKind === 'embedded') {
    const ext = layer.extents[0]
    if (!(ext instanceof HostedSparseExtent)) throw new VmdkError('E_FORMAT', 'embedded descriptor without a KDMV extent', layer.path)
    const size = ext.header.descriptorSize * 512
    if (bytes.length > size) throw new VmdkError('E_RANGE', `descriptor (${bytes.length} bytes) does not fit the embedded area (${size})`, layer.path)
    const area = Buffer.alloc(size)
    bytes.copy(area)
    await ext.file.writeAt(area, ext.header.descriptorOffset * 512)
    await ext.file.sync()
  }
  layer.setDescriptor(written)
}

class ChainWriter implements DiskWriter {
  readonly #chain: DiskChain
  readonly #layer: Layer
  readonly #alloc = new Map<Extent, SparseAllocator>()
  readonly #cidMode: 'first-write' | 'close'
  readonly #encoding: DescriptorEncodingOption
  #cid: string | undefined
  #closed = false
  #queue: Promise<void> = Promise.resolve()
  /**
   * Grain tables changed since the last flush, by extent and GD index, and
   * the GD entries of new tables: written once at flush (tables, then
   * directory entries, then header counters, then fsync) instead of once per
   * write call. A write of a few 64 KiB extents into an SEsparse delta used
   * to rewrite its 32 KiB table each time. Until the fsync nothing is durable
   * either way; the crash order inside the flush is kept. Bounded: past
   * {@link PENDING_TABLES_MAX} tables they are written out at once.
   */
  readonly #pendingTables = new Map<SparseExtent, Map<number, Float64Array>>()
  readonly #pendingGd = new Map<SparseExtent, Set<number>>()
  #pendingCount = 0

  constructor(chain: DiskChain, cidMode: 'first-write' | 'close', allocators: ReadonlyMap<Extent, SparseAllocator>, encoding: DescriptorEncodingOption) {
    this.#chain = chain
    this.#layer = chain.layers[0] as Layer
    this.#cidMode = cidMode
    this.#encoding = encoding
    for (const [e, a] of allocators) this.#alloc.set(e, a)
  }

  /** The CID the disk will carry (set on first write or at close). */
  get cid(): string {
    return this.#cid ?? this.#layer.cid
  }

  async #touch(): Promise<void> {
    if (this.#cid !== undefined) return
    this.#cid = randomCid()
    if (this.#cidMode === 'first-write') await persistDescriptor(this.#layer, this.#layer.descriptor.withCid(this.#cid), this.#encoding)
  }

  /** Force a new CID even without writes (consolidate). */
  async renewCid(cid?: string): Promise<string> {
    this.#cid = formatCid(cid ?? randomCid())
    if (this.#cidMode === 'first-write') await persistDescriptor(this.#layer, this.#layer.descriptor.withCid(this.#cid), this.#encoding)
    return this.#cid
  }

  #check(offset: number, length: number): void {
    if (this.#closed) throw new VmdkError('E_IO', 'writer is closed', this.#layer.path)
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.#chain.capacity) {
      throw new VmdkError('E_RANGE', `write ${offset}+${length} outside the disk (${this.#chain.capacity} bytes)`, this.#layer.path)
    }
  }

  /** Run writer operations one at a time (allocation is not re-entrant). */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#queue.then(fn)
    this.#queue = p.then(
      () => {},
      () => {},
    )
    return p
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#check(offset, data.length)
    if (data.length === 0) return
    await this.#serial(async () => {
      await this.#touch()
      await this.#each(offset, data.length, async (ext, s, at, len) => {
        await this.#writeExtent(ext, s, data.subarray(at, at + len), false)
      })
    })
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#check(offset, length)
    if (length === 0) return
    await this.#serial(async () => {
      await this.#writeZeroes(offset, length)
    })
  }

  async #writeZeroes(offset: number, length: number): Promise<void> {
    await this.#touch()
    await this.#each(offset, length, async (ext, s, _at, len) => {
      const sparse = ext instanceof SparseExtent ? ext : undefined
      const alloc = sparse !== undefined ? this.#alloc.get(sparse) : undefined
      if (sparse !== undefined && alloc?.zeroMarker === true) {
        const g = sparse.grainSize
        const a = Math.ceil(s / g) * g
        const b = s + len === sparse.size ? sparse.size : Math.floor((s + len) / g) * g
        if (a < b) {
          if (a > s) await this.#zeroData(ext, s, a - s)
          await this.#zeroGrains(sparse, alloc, a, b - a)
          if (s + len > b) await this.#zeroData(ext, b, s + len - b)
          return
        }
      }
      await this.#zeroData(ext, s, len)
    })
  }

  async #zeroData(ext: Extent, start: number, length: number): Promise<void> {
    const z = Buffer.alloc(Math.min(length, ZERO_CHUNK))
    for (let p = 0; p < length; p += z.length) {
      const n = Math.min(z.length, length - p)
      await this.#writeExtent(ext, start + p, z.subarray(0, n), true)
    }
  }

  /** Whole grains [start, start+length) become zero-grain entries. */
  async #zeroGrains(ext: SparseExtent, alloc: SparseAllocator, start: number, length: number): Promise<void> {
    const g = ext.grainSize
    const dirty = new Map<number, Float64Array>()
    const newTables: number[] = []
    for (let gi = start / g; gi < Math.ceil((start + length) / g); gi++) {
      const gdIndex = Math.floor(gi / ext.gtEntries)
      let t = dirty.get(gdIndex) ?? (await this.#denseTable(ext, gdIndex))
      if (t === null) {
        t = await alloc.newTable(gdIndex)
        newTables.push(gdIndex)
      }
      dirty.set(gdIndex, t)
      t[gi - gdIndex * ext.gtEntries] = GTE_ZERO
    }
    await this.#defer(ext, dirty, newTables)
  }

  /** A table to change: the one waiting for the flush, else the extent's (cached or read). */
  async #denseTable(ext: SparseExtent, gdIndex: number): Promise<Float64Array | null> {
    return this.#pendingTables.get(ext)?.get(gdIndex) ?? (await ext.denseTable(gdIndex))
  }

  /** Tables changed by one write (its data already written): cached for reads now, written at the flush. */
  async #defer(ext: SparseExtent, dirty: ReadonlyMap<number, Float64Array>, newTables: readonly number[]): Promise<void> {
    let tables = this.#pendingTables.get(ext)
    if (tables === undefined) {
      tables = new Map()
      this.#pendingTables.set(ext, tables)
    }
    for (const [i, t] of dirty) {
      ext.setTable(i, t)
      if (!tables.has(i)) this.#pendingCount++
      tables.set(i, t)
    }
    if (newTables.length > 0) {
      let gd = this.#pendingGd.get(ext)
      if (gd === undefined) {
        gd = new Set()
        this.#pendingGd.set(ext, gd)
      }
      for (const i of newTables) gd.add(i)
    }
    if (this.#pendingCount > PENDING_TABLES_MAX) await this.#writeTables()
  }

  /** Write the waiting tables, then the GD entries of new ones (crash order: data, tables, directory). */
  async #writeTables(): Promise<void> {
    for (const [ext, tables] of this.#pendingTables) {
      const alloc = this.#alloc.get(ext) as SparseAllocator
      for (const [i, t] of tables) await alloc.writeTable(i, t)
    }
    for (const [ext, gd] of this.#pendingGd) {
      const alloc = this.#alloc.get(ext) as SparseAllocator
      for (const i of gd) await alloc.writeGdEntry(i)
    }
    this.#pendingTables.clear()
    this.#pendingGd.clear()
    this.#pendingCount = 0
  }

  /** Split a disk range over the top layer's extents. */
  async #each(offset: number, length: number, fn: (ext: Extent, start: number, at: number, len: number) => Promise<void>): Promise<void> {
    const l = this.#layer
    let pos = offset
    const end = offset + length
    for (let i = 0; i < l.extents.length && pos < end; i++) {
      const e = l.extents[i] as Extent
      const es = l.extentStarts[i] ?? 0
      if (pos >= es + e.size) continue
      const len = Math.min(end, es + e.size) - pos
      await fn(e, pos - es, pos - offset, len)
      pos += len
    }
  }

  async #writeExtent(ext: Extent, start: number, data: Uint8Array, zeros: boolean): Promise<void> {
    if (ext instanceof FlatExtent) {
      await ext.file.writeAt(data, ext.base + start)
      return
    }
    if (!(ext instanceof SparseExtent)) throw new VmdkError('E_READONLY', `cannot write a ${ext.format} extent`, this.#layer.path)
    const alloc = this.#alloc.get(ext)
    if (alloc === undefined) throw new VmdkError('E_READONLY', 'extent is not writable', ext.file.path)
    const g = ext.grainSize
    const end = start + data.length
    const aStart = Math.floor(start / g) * g
    const aEnd = Math.min(ext.size, Math.ceil(end / g) * g)
    const extBase = this.#extentBase(ext)
    const dirty = new Map<number, Float64Array>()
    const newTables: number[] = []
    for (const run of await ext.runs(aStart, aEnd - aStart)) {
      const s = Math.max(start, run.start)
      const e = Math.min(end, run.start + run.length)
      if (run.state === RunState.Data) {
        if (run.off < 0) throw new VmdkError('E_READONLY', 'compressed grains are read-only', ext.file.path)
        await ext.file.writeAt(data.subarray(s - start, e - start), run.off + (s - run.start))
        continue
      }
      if (run.state === RunState.Zero && zeros) continue
      // allocate fresh grains for the whole run, fill partial grains with what the guest saw
      const n = Math.ceil(run.length / g)
      const buf = Buffer.alloc(n * g)
      if (run.state === RunState.None && this.#chain.layers.length > 1) {
        // copy on write: only the first and last grain can be partly covered
        const runEnd = run.start + run.length
        if (s > run.start) {
          const hEnd = Math.min(runEnd, run.start + g)
          await this.#chain.readInto(buf, 0, extBase + run.start, hEnd - run.start, { depth: 1 })
        }
        if (e < runEnd) {
          const tStart = Math.max(run.start, Math.floor((e - 1) / g) * g)
          if (!(s > run.start && tStart === run.start)) {
            await this.#chain.readInto(buf, tStart - run.start, extBase + tStart, runEnd - tStart, { depth: 1 })
          }
        }
      }
      buf.set(data.subarray(s - start, e - start), s - run.start)
      const firstGrain = run.start / g
      const off = await alloc.allocGrains(n, firstGrain)
      await ext.file.writeAt(buf, off)
      for (let k = 0; k < n; k++) {
        const gi = firstGrain + k
        const gdIndex = Math.floor(gi / ext.gtEntries)
        let t = dirty.get(gdIndex) ?? (await this.#denseTable(ext, gdIndex))
        if (t === null) {
          t = await alloc.newTable(gdIndex)
          newTables.push(gdIndex)
        }
        dirty.set(gdIndex, t)
        t[gi - gdIndex * ext.gtEntries] = off + k * g
      }
    }
    // crash order: data (above), then tables, then directory entries (at the flush)
    await this.#defer(ext, dirty, newTables)
  }

  #extentBase(ext: Extent): number {
    const i = this.#layer.extents.indexOf(ext)
    return this.#layer.extentStarts[i] ?? 0
  }

  async flush(): Promise<void> {
    await this.#serial(async () => {
      await this.#writeTables()
      for (const a of this.#alloc.values()) await a.finish()
    })
    const files = new Set(this.#layer.extents.map((e) => e.file).filter((f) => f !== undefined))
    for (const f of files) await f.sync()
  }

  /** Close after a failure: flush data written so far but keep the old CID (mode `close`). */
  async abandon(): Promise<void> {
    if (this.#closed) return
    this.#cid = undefined
    this.#closed = true
    try {
      await this.flush()
    } finally {
      await this.#chain.close()
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return
    try {
      await this.flush()
      if (this.#cidMode === 'close' && this.#cid !== undefined) await persistDescriptor(this.#layer, this.#layer.descriptor.withCid(this.#cid), this.#encoding)
    } finally {
      this.#closed = true
      await this.#chain.close()
    }
  }
}

/**
 * Open the disk at `path` (and its parents, read-only) for writing into its TOP layer
 * only. The first write gives the disk a new random CID, as VMware and QEMU do.
 */
export async function openWriter(
  path: string,
  opts: OpenWriterOptions = {},
): Promise<DiskWriter & { readonly cid: string; renewCid: (cid?: string) => Promise<string>; abandon: () => Promise<void> }> {
  const chain = await openChain(path, { ...(opts.pathMap !== undefined ? { pathMap: opts.pathMap } : {}), ...(opts.files !== undefined ? { files: opts.files } : {}), writableTop: true })
  try {
    const allocators = new Map<Extent, SparseAllocator>()
    for (const e of chain.layers[0]?.extents ?? []) if (e instanceof SparseExtent) allocators.set(e, await allocatorFor(e))
    return new ChainWriter(chain, opts.newCid ?? 'first-write', allocators, opts.descriptorEncoding ?? 'utf-8')
  } catch (err) {
    await chain.close()
    throw err
  }
}
