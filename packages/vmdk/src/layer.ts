import { basename, dirname, isAbsolute, join, resolve } from 'node:path'
import { DiskFile } from './disk-file.ts'
import { VmdkError, isVmdkError } from './errors.ts'
import { type Descriptor, MAX_DESCRIPTOR_BYTES, parseDescriptor, buildDescriptor } from './descriptor.ts'
import { type Extent, type Run, FlatExtent, ZeroExtent } from './extent.ts'
import { HostedSparseExtent, KDMV_MAGIC } from './hosted-sparse-extent.ts'
import { CowdExtent, COWD_MAGIC } from './cowd-extent.ts'
import { SeSparseExtent } from './sesparse-extent.ts'

/** Maps absolute ESXi datastore paths to local ones: `{ '/vmfs/volumes/ds1': '/mnt/ds1' }`. */
export type PathMap = Readonly<Record<string, string>>

/** A run in disk coordinates, with the index of the extent it came from. */
export interface LayerRun extends Run { ext: number }

/** Resolve a descriptor-relative or absolute (possibly datastore) path. */
export function resolveVmdkPath (fromFile: string, target: string, pathMap?: PathMap): string {
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

  constructor (path: string, descriptor: Descriptor, kind: Layer['descriptorKind'], extents: readonly Extent[]) {
    this.path = path
    this.file = basename(path)
    this.#descriptor = descriptor
    this.descriptorKind = kind
    this.extents = extents
    const starts: number[] = []
    let s = 0
    for (const e of extents) { starts.push(s); s += e.size }
    this.extentStarts = starts
    this.capacity = s
  }

  get descriptor (): Descriptor { return this.#descriptor }
  /** @internal the writer replaces the descriptor after persisting it */
  setDescriptor (d: Descriptor): void { this.#descriptor = d }

  get cid (): string { return this.descriptor.cid }
  get parentCid (): string { return this.descriptor.parentCid }
  get createType (): string { return this.descriptor.createType }
  get parentFileNameHint (): string | undefined { return this.descriptor.parentFileNameHint }
  /** true if any extent is sparse (the layer may fall through to a parent) */
  get sparse (): boolean { return this.extents.some(e => e.sparse) }
  /** grain size in bytes of the first sparse extent */
  get grainSize (): number | undefined { return this.extents.find(e => e.sparse)?.grainSize }

  /** Runs covering [start, start+length) of the disk as this layer alone sees it. */
  runs (start: number, length: number): LayerRun[] {
    const out: LayerRun[] = []
    const end = start + length
    for (let i = 0; i < this.extents.length && start < end; i++) {
      const e = this.extents[i] as Extent
      const es = this.extentStarts[i] ?? 0
      if (start >= es + e.size) continue
      const len = Math.min(end, es + e.size) - start
      for (const r of e.runs(start - es, len)) out.push({ start: r.start + es, length: r.length, state: r.state, off: r.off, ext: i })
      start += len
    }
    return out
  }

  prefetch (start: number, length: number): void {
    const end = start + length
    for (let i = 0; i < this.extents.length; i++) {
      const e = this.extents[i] as Extent
      const es = this.extentStarts[i] ?? 0
      const s = Math.max(start, es)
      const t = Math.min(end, es + e.size)
      if (s < t) e.prefetch(s - es, t - s)
    }
  }

  async close (): Promise<void> {
    await Promise.all(this.extents.map(async e => { await e.close() }))
  }
}

async function openExtentFile (path: string, writable: boolean): Promise<DiskFile> {
  return await DiskFile.open(path, writable)
}

/**
 * Open one layer: a text descriptor and its extents, a KDMV file with an embedded
 * descriptor, or a bare COWD file. SEsparse extents need a descriptor (as in QEMU).
 */
export async function openLayer (path: string, opts: { pathMap?: PathMap, writable?: boolean } = {}): Promise<Layer> {
  const writable = opts.writable === true
  // a text descriptor is only ever replaced by rename, so open read-only until we know the kind
  let file = await DiskFile.open(path, false)
  const opened: Extent[] = []
  let keepFile = false
  try {
    const headLen = Math.min(file.size, 512)
    const head = headLen > 0 ? file.readMetaSync(0, headLen, 'first sector') : Buffer.alloc(0)
    const magic = head.length >= 4 ? head.readUInt32LE(0) : 0
    if (writable && (magic === KDMV_MAGIC || magic === COWD_MAGIC)) {
      await file.close()
      file = await DiskFile.open(path, true)
    }
    if (magic === KDMV_MAGIC) {
      const ext = HostedSparseExtent.open(file)
      keepFile = true
      opened.push(ext)
      const text = ext.embeddedDescriptor()
      let d: Descriptor
      if (text !== undefined && text.trim() !== '') {
        d = parseDescriptor(text)
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
      const ext = CowdExtent.open(file)
      keepFile = true
      opened.push(ext)
      const d = buildDescriptor({ cid: 'ffffffff', createType: 'vmfsSparse', extents: [{ access: 'RW', sectors: ext.size / 512, type: 'VMFSSPARSE', file: basename(path) }] })
      return new Layer(path, d, 'none', opened)
    }
    if (head.length >= 8 && head.readBigUInt64LE(0) === 0xcafebaben) {
      throw new VmdkError('E_DESCRIPTOR', 'an SEsparse extent cannot be opened without its descriptor', path)
    }
    if (file.size > MAX_DESCRIPTOR_BYTES) throw new VmdkError('E_DESCRIPTOR', 'not a VMDK descriptor (too large, unknown magic)', path)
    const rawText = file.readMetaSync(0, file.size, 'descriptor')
    // QEMU pads separate descriptor files with NULs, like the embedded area
    const nul = rawText.indexOf(0)
    const text = rawText.subarray(0, nul < 0 ? rawText.length : nul).toString('utf8')
    let d: Descriptor
    try {
      d = parseDescriptor(text)
    } catch (err) {
      if (isVmdkError(err)) throw new VmdkError(err.code, err.message, path, { cause: err })
      throw err
    }
    if (d.extents.length === 0) throw new VmdkError('E_DESCRIPTOR', 'descriptor has no extents', path)
    if (d.capacity > 2 ** 47) throw new VmdkError('E_RANGE', `capacity ${d.capacity} is absurd`, path)
    for (const line of d.extents) {
      const size = line.sectors * 512
      if (line.type === 'ZERO' || line.access === 'NOACCESS') { opened.push(new ZeroExtent(size)); continue }
      if (line.file === undefined) throw new VmdkError('E_DESCRIPTOR', `${line.type} extent without a file name`, path)
      const p = resolveVmdkPath(path, line.file, opts.pathMap)
      if (resolve(p) === resolve(path)) throw new VmdkError('E_DESCRIPTOR', 'extent names the descriptor itself', path)
      const f = await openExtentFile(p, writable && line.access === 'RW')
      try {
        switch (line.type) {
          case 'FLAT':
          case 'VMFS':
            opened.push(new FlatExtent(f, size, (line.offset ?? 0) * 512))
            break
          case 'SPARSE': {
            const m = f.size >= 4 ? f.readMetaSync(0, 4, 'magic').readUInt32LE(0) : 0
            if (m === KDMV_MAGIC) opened.push(HostedSparseExtent.open(f, size))
            else if (m === COWD_MAGIC) opened.push(CowdExtent.open(f, size))
            else throw new VmdkError('E_FORMAT', 'SPARSE extent is neither KDMV nor COWD', p)
            break
          }
          case 'VMFSSPARSE':
            opened.push(CowdExtent.open(f, size))
            break
          case 'SESPARSE':
            opened.push(SeSparseExtent.open(f, size))
            break
          default:
            throw new VmdkError('E_UNSUPPORTED', `extent type ${line.type} is not readable here`, p)
        }
      } catch (err) {
        await f.close()
        throw err
      }
    }
    return new Layer(path, d, 'text', opened)
  } catch (err) {
    await Promise.all(opened.map(async e => { await e.close() }))
    if (!keepFile) await file.close()
    throw err
  } finally {
    if (!keepFile) await file.close()
  }
}
