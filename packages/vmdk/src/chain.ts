import { realpath } from 'node:fs/promises'
import { VmdkError, ioError } from './errors.ts'
import { sameCid } from './descriptor.ts'
import { RunState } from './extent.ts'
import { FlatExtent } from './extent.ts'
import { SparseExtent } from './sparse-extent.ts'
import { type Layer, type LayerRun, type PathMap, openLayer, resolveVmdkPath } from './layer.ts'

/** A range held by one layer: bytes, disk order; `zero` = reads as zeros (no data to copy). */
export interface Range { offset: number, length: number, zero: boolean }

/** One entry of a map, with the meaning of `qemu-img map --output=json`. */
export interface MapEntry {
  start: number
  length: number
  /** 0 = the file named, k = its k-th parent */
  depth: number
  present: boolean
  zero: boolean
  data: boolean
  /** byte offset in the layer's extent file, when the data sits there uncompressed (qemu's "offset") */
  offset?: number
}

export interface OpenChainOptions {
  /** absolute datastore prefixes → local folders, for `/vmfs/volumes/...` parent hints and extent names */
  pathMap?: PathMap
  /** @default 64 */
  maxDepth?: number
  /** @internal open the top layer's files read-write (the writer) */
  writableTop?: boolean
}

/** Largest single read() we serve; callers stream larger spans in pieces. */
export const MAX_READ = 256 * 1024 * 1024

/** An opened chain of layers: [0] = the file named, [k] = its k-th parent. Read-only. */
export class DiskChain {
  readonly layers: readonly Layer[]
  readonly capacity: number

  constructor (layers: readonly Layer[]) {
    this.layers = layers
    this.capacity = layers[0]?.capacity ?? 0
  }

  #layer (depth: number): Layer {
    const l = this.layers[depth]
    if (!Number.isSafeInteger(depth) || l === undefined) throw new VmdkError('E_RANGE', `no layer at depth ${depth}`, this.layers[0]?.path ?? '')
    return l
  }

  /**
   * Ranges held by layer `depth` alone, coalesced, in disk order, tagged data or zero —
   * from the grain directory and tables only (a flat layer holds its whole size).
   */
  async * changedRanges (depth: number, opts: { signal?: AbortSignal } = {}): AsyncGenerator<Range> {
    const layer = this.#layer(depth)
    let pending: Range | undefined
    let n = 0
    for (let i = 0; i < layer.extents.length; i++) {
      const e = layer.extents[i]
      const base = layer.extentStarts[i] ?? 0
      if (e === undefined) continue
      for (const r of e.allocated()) {
        const zero = r.state === RunState.Zero
        const off = base + r.start
        if (pending !== undefined && pending.zero === zero && pending.offset + pending.length === off) {
          pending.length += r.length
          continue
        }
        if (pending !== undefined) {
          yield pending
          if ((++n & 1023) === 0) {
            if (opts.signal?.aborted === true) throw new VmdkError('E_ABORTED', 'changedRanges aborted', layer.path)
            await new Promise(resolve => setImmediate(resolve))
          }
        }
        pending = { offset: off, length: r.length, zero }
      }
    }
    if (pending !== undefined) yield pending
  }

  /** Read bytes of the disk as seen at layer `depth` (falling through to parents). */
  async read (offset: number, length: number, opts: { depth?: number } = {}): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(this.#checkRange(offset, length))
    await this.readInto(buf, 0, offset, length, opts)
    return buf
  }

  /** Like {@link read} into a caller's buffer. */
  async readInto (buf: Uint8Array, bufOffset: number, offset: number, length: number, opts: { depth?: number } = {}): Promise<void> {
    this.#checkRange(offset, length)
    if (bufOffset < 0 || bufOffset + length > buf.length) throw new VmdkError('E_RANGE', 'buffer too small', '')
    await this.#readAt(opts.depth ?? 0, buf, bufOffset, offset, length)
  }

  #checkRange (offset: number, length: number): number {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.capacity) {
      throw new VmdkError('E_RANGE', `read ${offset}+${length} outside the disk (${this.capacity} bytes)`, this.layers[0]?.path ?? '')
    }
    if (length > MAX_READ) throw new VmdkError('E_RANGE', `read of ${length} bytes exceeds ${MAX_READ}`, this.layers[0]?.path ?? '')
    return length
  }

  async #readAt (depth: number, buf: Uint8Array, bufOffset: number, offset: number, length: number): Promise<void> {
    const layer = this.#layer(depth)
    for (const r of layer.runs(offset, length)) {
      const at = bufOffset + (r.start - offset)
      if (r.state === RunState.Data) {
        await layer.extents[r.ext]?.readRun(r, r.start, r.length, buf, at)
      } else if (r.state === RunState.None && depth + 1 < this.layers.length) {
        await this.#readAt(depth + 1, buf, at, r.start, r.length)
      } else {
        buf.fill(0, at, at + r.length)
      }
    }
  }

  /**
   * What each layer holds, entry by entry, like `qemu-img map --output=json` on the
   * layer at `depth` (depths in the output are relative to it). Adjacent entries that
   * agree (and whose file offsets continue) are merged.
   */
  async * map (opts: { depth?: number, signal?: AbortSignal } = {}): AsyncGenerator<MapEntry> {
    const top = opts.depth ?? 0
    this.#layer(top)
    let pending: (MapEntry & { key: number }) | undefined
    // one window = 64 grain tables of the finest layer (1 GiB for SEsparse, 128 MiB for COWD),
    // which bounds the entries held at once (512-byte COWD grains can alternate)
    let cover = 2 ** 30
    for (let d = top; d < this.layers.length; d++) {
      for (const e of this.layers[d]?.extents ?? []) if (e instanceof SparseExtent) cover = Math.min(cover, e.tableCover * 64)
    }
    const windowBytes = Math.max(64 * 2 ** 20, cover)
    for (let w = 0; w < this.capacity; w += windowBytes) {
      if (opts.signal?.aborted === true) throw new VmdkError('E_ABORTED', 'map aborted', this.layers[top]?.path ?? '')
      const len = Math.min(windowBytes, this.capacity - w)
      for (let d = top; d < this.layers.length; d++) this.layers[d]?.prefetch(w, len)
      const out: Array<MapEntry & { key: number }> = []
      this.#mapRange(top, top, w, len, out)
      for (const e of out) {
        if (pending !== undefined && mergeable(pending, e)) { pending.length += e.length; continue }
        if (pending !== undefined) yield strip(pending)
        pending = e
      }
      await new Promise(resolve => setImmediate(resolve))
    }
    if (pending !== undefined) yield strip(pending)
  }

  #mapRange (top: number, depth: number, start: number, length: number, out: Array<MapEntry & { key: number }>): void {
    const layer = this.#layer(depth)
    for (const r of layer.runs(start, length)) {
      if (r.state === RunState.None) {
        if (depth + 1 < this.layers.length) { this.#mapRange(top, depth + 1, r.start, r.length, out); continue }
        out.push({ start: r.start, length: r.length, depth: depth - top, present: false, zero: true, data: false, key: -1 })
        continue
      }
      const e = this.#entry(layer, r, depth - top, depth)
      const last = out[out.length - 1]
      if (last !== undefined && mergeable(last, e)) last.length += e.length
      else out.push(e)
    }
  }

  #entry (layer: Layer, r: LayerRun, rel: number, depth: number): MapEntry & { key: number } {
    if (r.state === RunState.Zero) return { start: r.start, length: r.length, depth: rel, present: true, zero: true, data: false, key: -1 }
    const ext = layer.extents[r.ext]
    // QEMU asks the protocol layer too: a hole in a flat file is data+zero
    const hole = ext instanceof FlatExtent && ext.allHole
    const e: MapEntry & { key: number } = { start: r.start, length: r.length, depth: rel, present: true, zero: hole, data: true, key: depth * 65536 + r.ext }
    if (r.off >= 0) e.offset = r.off
    return e
  }

  async close (): Promise<void> {
    await Promise.all(this.layers.map(async l => { await l.close() }))
  }
}

function mergeable (a: MapEntry & { key: number }, b: MapEntry & { key: number }): boolean {
  if (a.depth !== b.depth || a.present !== b.present || a.zero !== b.zero || a.data !== b.data) return false
  if ((a.offset === undefined) !== (b.offset === undefined)) return false
  if (a.offset !== undefined) return a.key === b.key && a.offset + a.length === b.offset
  return a.start + a.length === b.start
}

function strip (e: MapEntry & { key: number }): MapEntry {
  const o: MapEntry = { start: e.start, length: e.length, depth: e.depth, present: e.present, zero: e.zero, data: e.data }
  if (e.offset !== undefined) o.offset = e.offset
  return o
}

/**
 * Open a disk and its whole parent chain (read-only). Follows `parentFileNameHint`
 * (relative to the child, or absolute through `pathMap`), checks each `parentCID`
 * against the parent's `CID` and the capacities, and refuses loops.
 */
export async function openChain (path: string, opts: OpenChainOptions = {}): Promise<DiskChain> {
  const maxDepth = opts.maxDepth ?? 64
  const layers: Layer[] = []
  const seen = new Set<string>()
  try {
    let p = path
    for (;;) {
      let real: string
      try {
        real = await realpath(p)
      } catch (err) {
        const e = ioError(err, p, 'open')
        if (layers.length > 0 && e.code === 'E_NOT_FOUND') {
          const child = layers[layers.length - 1] as Layer
          throw new VmdkError('E_CHAIN_MISSING', `parent ${JSON.stringify(child.parentFileNameHint)} of ${child.file} not found at ${p}`, child.path, { cause: err })
        }
        throw e
      }
      if (seen.has(real)) throw new VmdkError('E_CHAIN_LOOP', `chain loops back to ${p}`, layers[layers.length - 1]?.path ?? p)
      if (layers.length >= maxDepth) throw new VmdkError('E_CHAIN_LOOP', `chain deeper than ${maxDepth} layers`, p)
      seen.add(real)
      const layer = await openLayer(p, { ...(opts.pathMap !== undefined ? { pathMap: opts.pathMap } : {}), writable: opts.writableTop === true && layers.length === 0 })
      const child = layers[layers.length - 1]
      layers.push(layer)
      if (child !== undefined) {
        if (!sameCid(child.parentCid, layer.cid)) {
          throw new VmdkError('E_CHAIN_CID', `${child.file} has parentCID=${child.parentCid} but its parent ${layer.file} has CID=${layer.cid}`, child.path)
        }
        if (child.capacity !== layer.capacity) {
          throw new VmdkError('E_CHAIN_CAPACITY', `${child.file} is ${child.capacity} bytes but its parent ${layer.file} is ${layer.capacity} bytes`, child.path)
        }
      }
      const hint = layer.parentFileNameHint
      if (hint === undefined || hint === '') break
      p = resolveVmdkPath(layer.path, hint, opts.pathMap)
    }
    return new DiskChain(layers)
  } catch (err) {
    await Promise.all(layers.map(async l => { await l.close() }))
    throw err
  }
}
