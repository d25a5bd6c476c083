import { resolve } from 'node:path'
import { VmdkError, ioError, isVmdkError } from './errors.ts'
import { sameCid } from './descriptor.ts'
import { RunState } from './extent.ts'
import { SparseExtent } from './sparse-extent.ts'
import { FlatExtent } from './extent.ts'
import type { DataRange } from './data-ranges.ts'
import { DEFAULT_CONCURRENCY, type FileAccess, localFileAccess } from './file-access.ts'
import { forEachLimited } from './concurrency.ts'
import { confineFileAccess, confineOptionsOf } from './confined-files.ts'
import { type Layer, type PathMap, openLayer, resolveVmdkPath } from './layer.ts'
import { MapMerger } from './map-merger.ts'
import { flattenBatches } from './batch-iterator.ts'

/** A range held by one layer: bytes, disk order; `zero` = reads as zeros (no data to copy). */
export interface Range {
  offset: number
  length: number
  zero: boolean
}

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
  /**
   * How files are reached (a local folder, or e.g. a remote datastore over SFTP).
   * @default localFileAccess (node:fs/promises)
   */
  files?: FileAccess
  /**
   * Folders every file of the chain — the disk named, its extent files, every
   * parent — must lie in, by name and after symbolic links are resolved (e.g.
   * the local folders or host paths of the mapped datastores). A file outside
   * all of them is refused with `E_OUTSIDE_ROOT` before it is opened, so a
   * hostile descriptor cannot make the reader ship another file (an extent
   * `/etc/…` or `../../…`, a link out of the datastore) as disk data.
   * @default not confined (for files you trust: your own store, a test)
   */
  roots?: readonly string[]
  /**
   * With `roots`: what an `E_OUTSIDE_ROOT` message tells the operator to do
   * (how the caller's roots are set), as confineFileAccess's `remedy`.
   * @default DEFAULT_OUTSIDE_ROOT_REMEDY
   */
  rootsRemedy?: string
  /**
   * With `roots`: their real paths, pinned by the caller (confineFileAccess's
   * `realRoots`): a file's real path must lie below one of them, the roots are
   * not resolved again.
   * @default each root's real path, resolved when the chain is opened
   */
  realRoots?: readonly string[]
  /** @internal open the top layer's files read-write (the writer) */
  writableTop?: boolean
}

/** Largest single read() we serve; callers stream larger spans in pieces. */
export const MAX_READ = 256 * 1024 * 1024

/** `parentCID` value ESXi writes when it does not know the parent's CID (after Storage vMotion). */
export const UNKNOWN_PARENT_CID = 'fffffffe'

/** An opened chain of layers: [0] = the file named, [k] = its k-th parent. Read-only. */
export class DiskChain {
  readonly layers: readonly Layer[]
  readonly capacity: number
  readonly #concurrency: number

  /** @internal use {@link openChain} */
  constructor(layers: readonly Layer[], concurrency = DEFAULT_CONCURRENCY) {
    this.layers = layers
    this.capacity = layers[0]?.capacity ?? 0
    this.#concurrency = Math.max(1, concurrency)
  }

  /**
   * False when some link of the chain could not be checked (a layer's
   * `parentCID` is `fffffffe`, see {@link Layer.cidVerified}); the chain was
   * accepted, but nothing proves a parent is the one its child was made from.
   */
  get cidVerified(): boolean {
    return this.layers.every((l) => l.cidVerified)
  }

  #layer(depth: number): Layer {
    const l = this.layers[depth]
    if (!Number.isSafeInteger(depth) || l === undefined) throw new VmdkError('E_RANGE', `no layer at depth ${depth}`, this.layers[0]?.path ?? '')
    return l
  }

  /**
   * Ranges held by layer `depth` alone, coalesced, in disk order, tagged data or zero —
   * from the grain directory and tables only (a flat layer holds its whole size).
   */
  changedRanges(depth: number, opts: { signal?: AbortSignal } = {}): AsyncIterableIterator<Range> {
    return flattenBatches(this.#changedBatches(depth, opts.signal))
  }

  async *#changedBatches(depth: number, signal: AbortSignal | undefined): AsyncGenerator<Range[], void, undefined> {
    const layer = this.#layer(depth)
    let pending: Range | undefined
    let out: Range[] = []
    for (let i = 0; i < layer.extents.length; i++) {
      const e = layer.extents[i]
      const base = layer.extentStarts[i] ?? 0
      if (e === undefined) continue
      for await (const batch of e.allocated(signal)) {
        if (signal?.aborted === true) throw new VmdkError('E_ABORTED', 'changedRanges aborted', layer.path)
        for (const r of batch) {
          const zero = r.state === RunState.Zero
          const off = base + r.start
          if (pending !== undefined && pending.zero === zero && pending.offset + pending.length === off) {
            pending.length += r.length
            continue
          }
          if (pending !== undefined) out.push(pending)
          pending = { offset: off, length: r.length, zero }
        }
        if (out.length >= 1024) {
          yield out
          out = []
          // tables already in memory resolve without I/O: let timers and sockets run
          await new Promise((resolve) => setImmediate(resolve))
        }
      }
    }
    if (pending !== undefined) out.push(pending)
    if (out.length > 0) yield out
  }

  /** Read bytes of the disk as seen at layer `depth` (falling through to parents). */
  async read(offset: number, length: number, opts: { depth?: number } = {}): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(this.#checkRange(offset, length))
    await this.readInto(buf, 0, offset, length, opts)
    return buf
  }

  /** Like {@link read} into a caller's buffer. */
  async readInto(buf: Uint8Array, bufOffset: number, offset: number, length: number, opts: { depth?: number } = {}): Promise<void> {
    this.#checkRange(offset, length)
    if (bufOffset < 0 || bufOffset + length > buf.length) throw new VmdkError('E_RANGE', 'buffer too small', '')
    await this.#readAt(opts.depth ?? 0, buf, bufOffset, offset, length)
  }

  #checkRange(offset: number, length: number): number {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.capacity) {
      throw new VmdkError('E_RANGE', `read ${offset}+${length} outside the disk (${this.capacity} bytes)`, this.layers[0]?.path ?? '')
    }
    if (length > MAX_READ) throw new VmdkError('E_RANGE', `read of ${length} bytes exceeds ${MAX_READ}`, this.layers[0]?.path ?? '')
    return length
  }

  /** The runs of one layer read concurrently (data pieces and parent fall-throughs). */
  async #readAt(depth: number, buf: Uint8Array, bufOffset: number, offset: number, length: number): Promise<void> {
    const layer = this.#layer(depth)
    const tasks: Array<() => Promise<void>> = []
    for (const r of await layer.runs(offset, length)) {
      const at = bufOffset + (r.start - offset)
      if (r.state === RunState.Data) {
        const ext = layer.extents[r.ext]
        if (ext !== undefined)
          tasks.push(async () => {
            await ext.readRun(r, r.start, r.length, buf, at)
          })
      } else if (r.state === RunState.None && depth + 1 < this.layers.length) {
        tasks.push(async () => {
          await this.#readAt(depth + 1, buf, at, r.start, r.length)
        })
      } else {
        buf.fill(0, at, at + r.length)
      }
    }
    if (tasks.length === 1) await (tasks[0] as () => Promise<void>)()
    else if (tasks.length > 1)
      await forEachLimited(tasks, this.#concurrency, async (t) => {
        await t()
      })
  }

  /**
   * The parts of `[offset, offset + length)` of the view at layer `depth` that
   * may hold data, found without reading data: grain tables of sparse layers
   * (unallocated → the parent, zero grains → none) and, for a flat layer,
   * `SEEK_DATA`/`SEEK_HOLE` on its file (data-ranges.ts). Everything outside
   * `ranges` reads as zeros. `unknownBytes` counts flat bytes whose holes could
   * not be asked for (no python3, SFTP, a refusal): they are listed as data.
   */
  async dataRanges(offset: number, length: number, opts: { depth?: number } = {}): Promise<{ ranges: DataRange[]; unknownBytes: number }> {
    // no MAX_READ here: nothing is read (a window of a GiB or more is one question)
    this.#checkRange(offset, Math.min(length, MAX_READ))
    if (offset + length > this.capacity) this.#checkRange(offset, length)
    const out: Array<[number, number]> = []
    const acc = { unknownBytes: 0 }
    await this.#dataAt(opts.depth ?? 0, offset, length, out, acc)
    out.sort((a, b) => a[0] - b[0])
    const merged: Array<[number, number]> = []
    for (const r of out) {
      const last = merged[merged.length - 1]
      if (last !== undefined && r[0] <= last[1]) last[1] = Math.max(last[1], r[1])
      else merged.push([r[0], r[1]])
    }
    return { ranges: merged, unknownBytes: acc.unknownBytes }
  }

  async #dataAt(depth: number, offset: number, length: number, out: Array<[number, number]>, acc: { unknownBytes: number }): Promise<void> {
    const layer = this.#layer(depth)
    for (const r of await layer.runs(offset, length)) {
      if (r.state === RunState.Data) {
        const ext = layer.extents[r.ext]
        if (ext instanceof FlatExtent && r.off >= 0) {
          const file = await ext.fileDataRanges(r.off, r.length)
          if (file === undefined) {
            acc.unknownBytes += r.length
            out.push([r.start, r.start + r.length])
          } else for (const [a, b] of file) out.push([r.start + (a - r.off), r.start + (b - r.off)])
        } else out.push([r.start, r.start + r.length])
      } else if (r.state === RunState.None && depth + 1 < this.layers.length) await this.#dataAt(depth + 1, r.start, r.length, out, acc)
    }
  }

  /**
   * What each layer holds, entry by entry, like `qemu-img map --output=json` on the
   * layer at `depth` (depths in the output are relative to it). Adjacent entries that
   * agree (and whose file offsets continue) are merged.
   */
  map(opts: { depth?: number; signal?: AbortSignal } = {}): AsyncIterableIterator<MapEntry> {
    return flattenBatches(this.#mapBatches(opts.depth ?? 0, opts.signal))
  }

  async *#mapBatches(top: number, signal: AbortSignal | undefined): AsyncGenerator<MapEntry[], void, undefined> {
    this.#layer(top)
    const layers = this.layers.slice(top)
    // one window = 64 grain tables of the finest layer (1 GiB for SEsparse, 128 MiB for COWD),
    // which bounds the entries held at once (512-byte COWD grains can alternate)
    let cover = 2 ** 30
    for (const l of layers) for (const e of l.extents) if (e instanceof SparseExtent) cover = Math.min(cover, e.tableCover * 64)
    const windowBytes = Math.max(64 * 2 ** 20, cover)
    const walks = layers.map((l) => l.walk(0, this.capacity))
    const merger = new MapMerger(layers)
    let breath = performance.now()
    for (let w = 0; w < this.capacity; w += windowBytes) {
      if (signal?.aborted === true) throw new VmdkError('E_ABORTED', 'map aborted', this.layers[top]?.path ?? '')
      const len = Math.min(windowBytes, this.capacity - w)
      const runs = await Promise.all(walks.map(async (wk) => await wk.runs(w, len)))
      const out = merger.window(runs, w, len)
      if (out.length > 0) yield out
      // tables already in memory resolve without I/O: let timers and sockets run now and then
      if (performance.now() - breath > 10) {
        await new Promise((resolve) => setImmediate(resolve))
        breath = performance.now()
      }
    }
    const last = merger.finish()
    if (last !== undefined) yield [last]
  }

  async close(): Promise<void> {
    await Promise.all(
      this.layers.map(async (l) => {
        await l.close()
      }),
    )
  }
}

/**
 * Open a disk and its whole parent chain (read-only). Follows `parentFileNameHint`
 * (relative to the child, or absolute through `pathMap`), checks each `parentCID`
 * against the parent's `CID` (a `parentCID` of `fffffffe` is accepted but leaves
 * the link unverified, see {@link DiskChain.cidVerified}) and the capacities, and
 * refuses loops. Symbolic links are followed (ESXi datastores use them) —
 * with `roots`, only as far as they stay inside them; loops
 * are detected on resolved paths. Anything but a regular file — a FIFO, socket,
 * device or directory — as the disk, a parent or an extent is `E_NOT_REGULAR`,
 * before it is opened.
 */
export async function openChain(path: string, opts: OpenChainOptions = {}): Promise<DiskChain> {
  const maxDepth = opts.maxDepth ?? 64
  const files = opts.roots === undefined ? (opts.files ?? localFileAccess) : confineFileAccess(opts.files ?? localFileAccess, opts.roots, confineOptionsOf(opts))
  const layers: Layer[] = []
  const seen = new Set<string>()
  const missingParent = (p: string, err: unknown): VmdkError => {
    const child = layers[layers.length - 1] as Layer
    return new VmdkError('E_CHAIN_MISSING', `parent ${JSON.stringify(child.parentFileNameHint)} of ${child.file} not found at ${p}`, child.path, { cause: err })
  }
  // a parent out of the roots: name the child whose hint leads there (the descriptor to fix)
  const outsideParent = (err: VmdkError): VmdkError => {
    const child = layers[layers.length - 1] as Layer
    return new VmdkError('E_OUTSIDE_ROOT', `parent ${JSON.stringify(child.parentFileNameHint)} of ${child.file}: ${err.message}`, child.path, { cause: err })
  }
  try {
    let p = path
    for (;;) {
      let real: string
      try {
        real = files.realpath !== undefined ? await files.realpath(p) : resolve(p)
      } catch (err) {
        const e = ioError(err, p, 'open')
        if (layers.length > 0 && e.code === 'E_NOT_FOUND') throw missingParent(p, err)
        if (layers.length > 0 && e.code === 'E_OUTSIDE_ROOT') throw outsideParent(e)
        throw e
      }
      if (seen.has(real)) throw new VmdkError('E_CHAIN_LOOP', `chain loops back to ${p}`, layers[layers.length - 1]?.path ?? p)
      if (layers.length >= maxDepth) throw new VmdkError('E_CHAIN_LOOP', `chain deeper than ${maxDepth} layers`, p)
      seen.add(real)
      let layer: Layer
      try {
        layer = await openLayer(p, {
          ...(opts.pathMap !== undefined ? { pathMap: opts.pathMap } : {}),
          files,
          writable: opts.writableTop === true && layers.length === 0,
          role: layers.length === 0 ? 'disk' : 'parent descriptor',
        })
      } catch (err) {
        if (layers.length > 0 && isVmdkError(err) && err.code === 'E_NOT_FOUND' && err.file === p) throw missingParent(p, err)
        throw err
      }
      const child = layers[layers.length - 1]
      layers.push(layer)
      if (child !== undefined) {
        if (sameCid(child.parentCid, UNKNOWN_PARENT_CID)) {
          child.setCidVerified(false)
        } else if (!sameCid(child.parentCid, layer.cid)) {
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
    return new DiskChain(layers, files.concurrency)
  } catch (err) {
    await Promise.all(
      layers.map(async (l) => {
        await l.close()
      }),
    )
    throw err
  }
}
