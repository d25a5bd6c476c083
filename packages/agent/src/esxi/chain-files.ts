/**
 * A light, read-only walk of a disk's descriptor chain at file level, used to
 * check what ESXi did after a snapshot operation: which descriptors make up
 * the chain, their CID links, and that every extent file exists. It reads
 * only the (small, text) descriptors; grain tables are @grainline/vmdk's job.
 */
import path from 'node:path'
import { decodeDescriptor, localFileAccess, type FileAccess, type RandomAccessFile } from '@grainline/vmdk'
import { EsxiError } from './errors.ts'

/** One descriptor of a chain. */
export interface ChainFile {
  /** absolute path of the descriptor (read through the driver's FileAccess) */
  readonly path: string
  readonly createType: string
  readonly cid: string
  readonly parentCid: string
  /** parentFileNameHint as written, undefined for a base disk */
  readonly parentHint?: string
  /** absolute paths of the extent files */
  readonly extents: readonly string[]
  /** the extent types as written (`VMFS`, `VMFSRDM`, `VMFSRAW`, `VSANSPARSE`, …), one per extent line */
  readonly extentTypes: readonly string[]
  /** extent file names as written (`vsan://…`, `vvol://…` are kept as is) */
  readonly extentNames: readonly string[]
}

/** Descriptor files are a few hundred bytes; refuse to slurp anything large. */
const MAX_DESCRIPTOR = 64 * 1024

/** Parse the fields we need from descriptor text (pure). */
export function parseDescriptorFields(text: string, file: string): Omit<ChainFile, 'path' | 'extents' | 'extentNames'> & { extentFiles: string[] } {
  if (!/^#\s*Disk DescriptorFile/m.test(text) && !/^\s*createType\s*=/m.test(text)) {
    throw new EsxiError('E_CHAIN', `${file}: not a VMDK text descriptor`)
  }
  const field = (key: string): string | undefined => {
    const m = new RegExp(`^\\s*${key}\\s*=\\s*(?:"([^"]*)"|(\\S*))\\s*$`, 'mi').exec(text)
    return m === null ? undefined : (m[1] ?? m[2])
  }
  const extentFiles: string[] = []
  const extentTypes: string[] = []
  for (const m of text.matchAll(/^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+([A-Za-z]+)(?:\s+"([^"]*)")?/gm)) {
    if (m[2] !== undefined) {
      extentFiles.push(m[2])
      extentTypes.push((m[1] as string).toUpperCase())
    }
  }
  const cid = field('CID')
  const parentCid = field('parentCID')
  const createType = field('createType')
  if (cid === undefined || parentCid === undefined || createType === undefined) {
    throw new EsxiError('E_CHAIN', `${file}: descriptor lacks CID, parentCID or createType`)
  }
  const hint = field('parentFileNameHint')
  return { createType, cid: cid.toLowerCase(), parentCid: parentCid.toLowerCase(), ...(hint === undefined || hint === '' ? {} : { parentHint: hint }), extentFiles, extentTypes }
}

async function readDescriptor(files: FileAccess, p: string): Promise<string> {
  let f: RandomAccessFile
  try {
    // type first: a FIFO in the chain is refused instead of waited on (locally and over SFTP)
    const st = await files.stat(p)
    if (st.kind !== 'file') throw new EsxiError('E_CHAIN', `${p}: not a regular file (a ${st.kind}), not a descriptor`)
    f = await files.open(p, 'r')
  } catch (err) {
    if (err instanceof EsxiError) throw err
    throw new EsxiError('E_CHAIN', `cannot open descriptor ${p}: ${(err as Error).message}`, { cause: err })
  }
  try {
    if (f.stat.kind !== 'file') throw new EsxiError('E_CHAIN', `${p}: not a regular file (a ${f.stat.kind}), not a descriptor`)
    const buf = Buffer.alloc(MAX_DESCRIPTOR)
    let n = 0
    for (;;) {
      const got = await f.read(buf, n, MAX_DESCRIPTOR - n, n)
      if (got === 0) break
      n += got
      if (n === MAX_DESCRIPTOR) throw new EsxiError('E_CHAIN', `${p}: larger than ${MAX_DESCRIPTOR} bytes, not a text descriptor`)
    }
    const bytes = buf.subarray(0, n)
    if (bytes.includes(0)) throw new EsxiError('E_CHAIN', `${p}: binary file, not a text descriptor`)
    try {
      // by its own encoding= key (windows-1252 descriptors name files in that code page)
      return decodeDescriptor(bytes, p)
    } catch (err) {
      throw new EsxiError('E_CHAIN', `${p}: ${(err as Error).message}`, { cause: err })
    }
  } finally {
    await f.close()
  }
}

/** Extent names that are not files on a datastore (vSAN objects, vVols). */
export const OBJECT_EXTENT = /^(vsan|vvol):\/\//i

/**
 * Walk from the top descriptor through parentFileNameHint to the base.
 * `resolve(baseDir, name)` maps a file name found in a descriptor (relative,
 * absolute `/vmfs/volumes/...`) to a local path.
 * @throws EsxiError E_CHAIN on a missing or unreadable file (the reason in its message), a broken CID link or a loop
 */
export async function readChainFiles(
  top: string,
  resolve: (baseDir: string, name: string) => string,
  opts: { maxDepth?: number; files?: FileAccess; checkExtents?: boolean } = {},
): Promise<ChainFile[]> {
  const maxDepth = opts.maxDepth ?? 64
  const files = opts.files ?? localFileAccess
  const out: ChainFile[] = []
  const seen = new Set<string>()
  let current: string | undefined = path.resolve(top)
  while (current !== undefined) {
    if (seen.has(current)) throw new EsxiError('E_CHAIN', `descriptor chain loops at ${current}`)
    if (out.length >= maxDepth) throw new EsxiError('E_CHAIN', `descriptor chain of ${top} deeper than ${maxDepth}`)
    seen.add(current)
    const f = parseDescriptorFields(await readDescriptor(files, current), current)
    const dir = path.dirname(current)
    // vsan:// and vvol:// extents are objects, not files: kept as written (the driver refuses such disks)
    const extents = f.extentFiles.map((e) => (OBJECT_EXTENT.test(e) ? e : resolve(dir, e)))
    if (opts.checkExtents !== false) {
      for (const e of extents) {
        if (OBJECT_EXTENT.test(e)) continue
        try {
          await files.stat(e)
        } catch (err) {
          // missing only when it is (ENOENT); one that exists but may not be read (a link out of its datastore,
          // a file on no mapped datastore, EACCES) says why, which the operator's summary otherwise never shows
          if ((err as { code?: unknown }).code === 'ENOENT') throw new EsxiError('E_CHAIN', `extent ${e} of ${current} is missing`, { cause: err })
          throw new EsxiError('E_CHAIN', `extent ${e} of ${current} cannot be read: ${(err as Error).message}`, { cause: err })
        }
      }
    }
    const child = out[out.length - 1]
    // fffffffe: ESXi wrote "no CID to check" (after a Storage vMotion); accepted, reported unverified
    if (child !== undefined && child.parentCid !== f.cid && child.parentCid !== 'fffffffe') {
      throw new EsxiError('E_CHAIN', `CID link broken: ${child.path} has parentCID=${child.parentCid} but its parent ${current} has CID=${f.cid}`)
    }
    out.push({
      path: current,
      createType: f.createType,
      cid: f.cid,
      parentCid: f.parentCid,
      ...(f.parentHint === undefined ? {} : { parentHint: f.parentHint }),
      extents,
      extentTypes: f.extentTypes,
      extentNames: f.extentFiles,
    })
    current = f.parentHint === undefined ? undefined : resolve(dir, f.parentHint)
  }
  const base = out[out.length - 1]
  if (base !== undefined && base.parentCid !== 'ffffffff') {
    throw new EsxiError('E_CHAIN', `${base.path} names no parent but its parentCID is ${base.parentCid}, not ffffffff`)
  }
  return out
}
