import { basename, dirname, isAbsolute, join, resolve } from 'node:path'
import { DiskFile, type FileRole } from './disk-file.ts'
import { VmdkError, isVmdkError } from './errors.ts'
import { type Descriptor, MAX_DESCRIPTOR_BYTES, parseDescriptor, buildDescriptor } from './descriptor.ts'
import { decodeDescriptor } from './descriptor-encoding.ts'
import { type Extent, type ExtentWalk, type Run, FlatExtent, ZeroExtent } from './extent.ts'
import { type FileAccess, localFileAccess } from './file-access.ts'
import { confineFileAccess, confineOptionsOf } from './confined-files.ts'
import { HostedSparseExtent, KDMV_MAGIC } from './hosted-sparse-extent.ts'
import { CowdExtent, COWD_MAGIC } from './cowd-extent.ts'
import { SeSparseExtent } from './sesparse-extent.ts'

/** Maps absolute ESXi datastore paths to local ones: `{ '/vmfs/volumes/ds1': '/mnt/ds1' }`. */
export type PathMap = Readonly<Record<string, string>>

/** A run in disk coordinates, with the index of the extent it came from. */
export interface LayerRun extends Run {
  ext: number
}

/** Resolve a descriptor-relative or absolute (possibly datastore) path. */
export function resolveVmdkPath(fromFile: string, target: string, pathMap?: PathMap): string {
  if (isAbsolute(target)) {
    let best: string | undefined
    for (const key of Object.keys(pathMap ?? {})) {
      const k = key.replace(/\/+$/, '')
      if ((target === k || target.startsWith(k + '/')) && (best === undefined || k.length > best.length)) best = key
    }
    if (best !== undefined) {
      const k = best.replace(/\/+$/, '')
      return join(pathMap?.[best] ?? '', target.slice(k.length))
    }
    return target
  }
  return resolve(dirname(fromFile), target)
}

/** One file of a chain (a base disk or a delta), with its extents opened read-only. */
export class Layer {
  /** path as opened */
  readonly path: string
  /** base name of `path` */
  readonly file: string
  #descriptor: Descriptor
  /** where the descriptor lives: a separate text file, or embedded in a KDMV extent */
  readonly descriptorKind: 'text' | 'embedded' | 'none'
  readonly extents: readonly Extent[]
  /** byte offset of each extent within the disk */
  readonly extentStarts: readonly number[]
  readonly capacity: number
  #cidVerified = true

  constructor(path: string, descriptor: Descriptor, kind: Layer['descriptorKind'], extents: readonly Extent[]) {
    this.path = path
    this.file = basename(path)
    this.#descriptor = descriptor
    this.descriptorKind = kind
    this.extents = extents
    const starts: number[] = []
    let s = 0
    for (const e of extents) {
      starts.push(s)
      s += e.size
    }
    this.extentStarts = starts
    this.capacity = s
  }

  get descriptor(): Descriptor {
    return this.#descriptor
  }
  /** @internal the writer replaces the descriptor after persisting it */
  setDescriptor(d: Descriptor): void {
    this.#descriptor = d
  }

  get cid(): string {
    return this.descriptor.cid
  }
  get parentCid(): string {
    return this.descriptor.parentCid
  }
  get createType(): string {
    return this.descriptor.createType
  }
  get parentFileNameHint(): string | undefined {
    return this.descriptor.parentFileNameHint
  }
  /** true if any extent is sparse (the layer may fall through to a parent) */
  get sparse(): boolean {
    return this.extents.some((e) => e.sparse)
  }
  /** grain size in bytes of the first sparse extent */
  get grainSize(): number | undefined {
    return this.extents.find((e) => e.sparse)?.grainSize
  }
  /**
   * False when this layer's link to its parent could not be checked: its
   * `parentCID` is `fffffffe`, which ESXi writes after some migrations (Storage
   * vMotion) and which proves nothing. True for a verified link and for a base.
   */
  get cidVerified(): boolean {
    return this.#cidVerified
  }
  /** @internal set by openChain */
  setCidVerified(v: boolean): void {
    this.#cidVerified = v
  }

  #pieces(start: number, length: number, fn: (e: Extent, i: number, es: number, s: number, len: number) => void): void {
    const end = start + length
    for (let i = 0; i < this.extents.length && start < end; i++) {
      const e = this.extents[i] as Extent
      const es = this.extentStarts[i] ?? 0
      if (start >= es + e.size) continue
      const len = Math.min(end, es + e.size) - start
      fn(e, i, es, start - es, len)
      start += len
    }
  }

  /** Runs covering [start, start+length) of the disk as this layer alone sees it. */
  async runs(start: number, length: number): Promise<LayerRun[]> {
    const first = this.extents[0]
    if (this.extents.length === 1 && first !== undefined) {
      // one extent (almost every layer): no fan-out
      return toLayerRuns([await first.runs(start, length)], [[0, 0]])
    }
    const parts: Array<Promise<Run[]>> = []
    const meta: Array<[number, number]> = []
    this.#pieces(start, length, (e, i, es, s, len) => {
      parts.push(e.runs(s, len))
      meta.push([i, es])
    })
    return toLayerRuns(await Promise.all(parts), meta)
  }

  /** An in-order walk of [start, end) (windows passed to `runs` never go back). */
  walk(start: number, end: number): { runs: (start: number, length: number) => Promise<LayerRun[]> } {
    const walks = new Map<number, ExtentWalk>()
    return {
      runs: async (s0: number, length: number): Promise<LayerRun[]> => {
        const parts: Array<Promise<Run[]>> = []
        const meta: Array<[number, number]> = []
        this.#pieces(s0, length, (e, i, es, s, len) => {
          let w = walks.get(i)
          if (w === undefined) {
            w = e.walk(Math.max(0, start - es), Math.min(e.size, end - es))
            walks.set(i, w)
          }
          parts.push(w.runs(s, len))
          meta.push([i, es])
        })
        return toLayerRuns(await Promise.all(parts), meta)
      },
    }
  }

  async close(): Promise<void> {
    await Promise.all(
      this.extents.map(async (e) => {
        await e.close()
      }),
    )
  }
}

function toLayerRuns(parts: readonly Run[][], meta: ReadonlyArray<[number, number]>): LayerRun[] {
  if (parts.length === 1) {
    const [i, es] = meta[0] as [number, number]
    const rs = parts[0] as LayerRun[]
    for (const r of rs) {
      r.start += es
      r.ext = i
    }
    return rs
  }
  const out: LayerRun[] = []
  parts.forEach((rs, k) => {
    const [i, es] = meta[k] as [number, number]
    for (const r of rs) out.push({ start: r.start + es, length: r.length, state: r.state, off: r.off, ext: i })
  })
  return out
}

/** Options of {@link openLayer}. */
export interface OpenLayerOptions {
  pathMap?: PathMap
  /** @default localFileAccess */
  files?: FileAccess
  /** open the extents read-write (the local writer) */
  writable?: boolean
  /** what the file is to the chain, for error messages @default 'disk' */
  role?: FileRole
  /**
   * Folders the layer's files must lie in (as `openChain`'s `roots`).
   * @default not confined
   */
  roots?: readonly string[]
  /** with `roots`: what an `E_OUTSIDE_ROOT` message tells the operator to do (as `openChain`'s `rootsRemedy`) */
  rootsRemedy?: string
  /** with `roots`: their real paths, pinned by the caller (as `openChain`'s `realRoots`) */
  realRoots?: readonly string[]
}

/**
 * Open one layer: a text descriptor and its extents, a KDMV file with an embedded
 * descriptor, or a bare COWD file. SEsparse extents need a descriptor (as in QEMU).
 */
export async function openLayer(path: string, opts: OpenLayerOptions = {}): Promise<Layer> {
  const writable = opts.writable === true
  const files = opts.roots === undefined ? (opts.files ?? localFileAccess) : confineFileAccess(opts.files ?? localFileAccess, opts.roots, confineOptionsOf(opts))
  // a text descriptor is only ever replaced by rename, so open read-only until we know the kind
  let file = await DiskFile.open(files, path, { role: opts.role ?? 'disk' })
  const opened: Extent[] = []
  let keepFile = false
  try {
    // a text descriptor is small: read it whole with the first sector (one round trip)
    const headLen = file.size <= 64 * 1024 ? file.size : 512
    const head = headLen > 0 ? await file.readExact(0, headLen, 'first sector') : Buffer.alloc(0)
    const magic = head.length >= 4 ? head.readUInt32LE(0) : 0
    if (writable && (magic === KDMV_MAGIC || magic === COWD_MAGIC)) {
      await file.close()
      file = await DiskFile.open(files, path, { writable: true, role: opts.role ?? 'disk' })
    }
    if (magic === KDMV_MAGIC) {
      const ext = await HostedSparseExtent.open(file)
      keepFile = true
      opened.push(ext)
      const raw = await ext.embeddedDescriptor()
      const text = raw !== undefined ? decodeDescriptor(raw, path) : undefined
      let d: Descriptor
      if (text !== undefined && text.trim() !== '') {
        d = parseDescriptorIn(text, path)
      } else {
        d = buildDescriptor({ cid: 'ffffffff', createType: 'monolithicSparse', extents: [{ access: 'RW', sectors: ext.size / 512, type: 'SPARSE', file: basename(path) }] })
      }
      const lines = d.extents
      if (lines.length === 1 && lines[0] !== undefined && lines[0].sectors * 512 !== ext.size) {
        if (lines[0].sectors * 512 > ext.header.capacity * 512) throw new VmdkError('E_FORMAT', 'embedded descriptor extent larger than the header capacity', path)
      }
      return new Layer(path, d, text !== undefined ? 'embedded' : 'none', opened)
    }
    if (magic === COWD_MAGIC) {
      const ext = await CowdExtent.open(file)
      keepFile = true
      opened.push(ext)
      const d = buildDescriptor({ cid: 'ffffffff', createType: 'vmfsSparse', extents: [{ access: 'RW', sectors: ext.size / 512, type: 'VMFSSPARSE', file: basename(path) }] })
      return new Layer(path, d, 'none', opened)
    }
    if (head.length >= 8 && head.readBigUInt64LE(0) === 0xcafebaben) {
      throw new VmdkError('E_DESCRIPTOR', 'an SEsparse extent cannot be opened without its descriptor', path)
    }
    if (file.size > MAX_DESCRIPTOR_BYTES) throw new VmdkError('E_DESCRIPTOR', 'not a VMDK descriptor (too large, unknown magic)', path)
    const rawText = file.size <= head.length ? head : await file.readExact(0, file.size, 'descriptor')
    // QEMU pads separate descriptor files with NULs, like the embedded area
    const nul = rawText.indexOf(0)
    const d = parseDescriptorIn(decodeDescriptor(rawText.subarray(0, nul < 0 ? rawText.length : nul), path), path)
    if (d.extents.length === 0) throw new VmdkError('E_DESCRIPTOR', 'descriptor has no extents', path)
    if (d.capacity > 2 ** 47) throw new VmdkError('E_RANGE', `capacity ${d.capacity} is absurd`, path)
    // extent files open concurrently (one round trip each on a remote file system)
    const lines = d.extents
    const slots: Array<Extent | undefined> = new Array(lines.length)
    const results = await Promise.allSettled(
      lines.map(async (line, k) => {
        const size = line.sectors * 512
        if (line.type === 'ZERO' || line.access === 'NOACCESS') {
          slots[k] = new ZeroExtent(size)
          return
        }
        if (line.file === undefined) throw new VmdkError('E_DESCRIPTOR', `${line.type} extent without a file name`, path)
        const p = resolveVmdkPath(path, line.file, opts.pathMap)
        if (resolve(p) === resolve(path)) throw new VmdkError('E_DESCRIPTOR', 'extent names the descriptor itself', path)
        // VMFSRDM: the mapping file of a virtual-compatibility RDM, which VMFS presents as the LUN (read flat)
        const known = ['FLAT', 'VMFS', 'VMFSRDM', 'SPARSE', 'VMFSSPARSE', 'SESPARSE']
        if (!known.includes(line.type)) throw new VmdkError('E_UNSUPPORTED', `extent type ${line.type} is not readable here`, p)
        let f: DiskFile
        try {
          f = await DiskFile.open(files, p, { writable: writable && line.access === 'RW', role: 'extent file' })
        } catch (err) {
          // name the descriptor to fix and the reference as written
          if (isVmdkError(err) && err.code === 'E_OUTSIDE_ROOT') throw new VmdkError('E_OUTSIDE_ROOT', `extent ${JSON.stringify(line.file)} of ${basename(path)}: ${err.message}`, path, { cause: err })
          throw err
        }
        try {
          slots[k] = await openExtent(line.type, f, size, p, (line.offset ?? 0) * 512)
        } catch (err) {
          await f.close()
          throw err
        }
      }),
    )
    for (const e of slots) if (e !== undefined) opened.push(e)
    const failed = results.find((r) => r.status === 'rejected')
    if (failed !== undefined) throw failed.reason
    return new Layer(path, d, 'text', opened)
  } catch (err) {
    await Promise.all(
      opened.map(async (e) => {
        await e.close()
      }),
    )
    if (!keepFile) await file.close()
    throw err
  } finally {
    if (!keepFile) await file.close()
  }
}

function parseDescriptorIn(text: string, path: string): Descriptor {
  try {
    return parseDescriptor(text)
  } catch (err) {
    if (isVmdkError(err)) throw new VmdkError(err.code, err.message, path, { cause: err })
    throw err
  }
}

async function openExtent(type: string, f: DiskFile, size: number, p: string, base: number): Promise<Extent> {
  switch (type) {
    case 'FLAT':
    case 'VMFS':
    case 'VMFSRDM':
      return new FlatExtent(f, size, base)
    case 'SPARSE': {
      const m = f.size >= 4 ? (await f.readExact(0, 4, 'magic')).readUInt32LE(0) : 0
      if (m === KDMV_MAGIC) return await HostedSparseExtent.open(f, size)
      if (m === COWD_MAGIC) return await CowdExtent.open(f, size)
      throw new VmdkError('E_FORMAT', 'SPARSE extent is neither KDMV nor COWD', p)
    }
    case 'VMFSSPARSE':
      return await CowdExtent.open(f, size)
    case 'SESPARSE':
      return await SeSparseExtent.open(f, size)
    default:
      throw new VmdkError('E_UNSUPPORTED', `extent type ${type} is not readable here`, p)
  }
}
