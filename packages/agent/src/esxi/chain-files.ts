/**
 * A light, read-only walk of a disk's descriptor chain at file level, used to
 * check what ESXi did after a snapshot operation: which descriptors make up
 * the chain, their CID links, and that every extent file exists. It reads
 * only the (small, text) descriptors; grain tables are @grainline/vmdk's job.
 */
import { constants } from 'node:fs'
import { open, stat, type FileHandle } from 'node:fs/promises'
import path from 'node:path'
import { EsxiError } from './errors.ts'

/** One descriptor of a chain. */
export interface ChainFile {
  /** absolute local path of the descriptor */
  readonly path: string
  readonly createType: string
  readonly cid: string
  readonly parentCid: string
  /** parentFileNameHint as written, undefined for a base disk */
  readonly parentHint?: string
  /** absolute local paths of the extent files */
  readonly extents: readonly string[]
}

/** Descriptor files are a few hundred bytes; refuse to slurp anything large. */
const MAX_DESCRIPTOR = 64 * 1024

/** Parse the fields we need from descriptor text (pure). */
export function parseDescriptorFields(text: string, file: string): Omit<ChainFile, 'path' | 'extents'> & { extentFiles: string[] } {
  if (!/^#\s*Disk DescriptorFile/m.test(text) && !/^\s*createType\s*=/m.test(text)) {
    throw new EsxiError('E_CHAIN', `${file}: not a VMDK text descriptor`)
  }
  const field = (key: string): string | undefined => {
    const m = new RegExp(`^\\s*${key}\\s*=\\s*(?:"([^"]*)"|(\\S*))\\s*$`, 'mi').exec(text)
    return m === null ? undefined : (m[1] ?? m[2])
  }
  const extentFiles: string[] = []
  for (const m of text.matchAll(/^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+[A-Za-z]+(?:\s+"([^"]*)")?/gm)) {
    if (m[1] !== undefined) extentFiles.push(m[1])
  }
  const cid = field('CID')
  const parentCid = field('parentCID')
  const createType = field('createType')
  if (cid === undefined || parentCid === undefined || createType === undefined) {
    throw new EsxiError('E_CHAIN', `${file}: descriptor lacks CID, parentCID or createType`)
  }
  const hint = field('parentFileNameHint')
  return { createType, cid: cid.toLowerCase(), parentCid: parentCid.toLowerCase(), ...(hint === undefined || hint === '' ? {} : { parentHint: hint }), extentFiles }
}

async function readDescriptor(p: string): Promise<string> {
  let fh: FileHandle
  try {
    // non-blocking: a FIFO in the chain opens at once (and is refused below) instead of waiting for a writer
    fh = await open(p, constants.O_RDONLY | constants.O_NONBLOCK)
  } catch (err) {
    throw new EsxiError('E_CHAIN', `cannot open descriptor ${p}: ${(err as Error).message}`, { cause: err })
  }
  try {
    if (!(await fh.stat()).isFile()) throw new EsxiError('E_CHAIN', `${p}: not a regular file (a FIFO, device or folder), not a descriptor`)
    const buf = Buffer.alloc(MAX_DESCRIPTOR)
    const { bytesRead } = await fh.read(buf, 0, MAX_DESCRIPTOR, 0)
    if (bytesRead === MAX_DESCRIPTOR) throw new EsxiError('E_CHAIN', `${p}: larger than ${MAX_DESCRIPTOR} bytes, not a text descriptor`)
    const text = buf.subarray(0, bytesRead).toString('utf8')
    if (text.includes('\0')) throw new EsxiError('E_CHAIN', `${p}: binary file, not a text descriptor`)
    return text
  } finally {
    await fh.close()
  }
}

/**
 * Walk from the top descriptor through parentFileNameHint to the base.
 * `resolve(baseDir, name)` maps a file name found in a descriptor (relative,
 * absolute `/vmfs/volumes/...`) to a local path.
 * @throws EsxiError E_CHAIN on a missing file, a broken CID link or a loop
 */
export async function readChainFiles(top: string, resolve: (baseDir: string, name: string) => string, opts: { maxDepth?: number } = {}): Promise<ChainFile[]> {
  const maxDepth = opts.maxDepth ?? 64
  const out: ChainFile[] = []
  const seen = new Set<string>()
  let current: string | undefined = path.resolve(top)
  while (current !== undefined) {
    if (seen.has(current)) throw new EsxiError('E_CHAIN', `descriptor chain loops at ${current}`)
    if (out.length >= maxDepth) throw new EsxiError('E_CHAIN', `descriptor chain of ${top} deeper than ${maxDepth}`)
    seen.add(current)
    const f = parseDescriptorFields(await readDescriptor(current), current)
    const dir = path.dirname(current)
    const extents = f.extentFiles.map((e) => resolve(dir, e))
    for (const e of extents) {
      try {
        await stat(e)
      } catch (err) {
        throw new EsxiError('E_CHAIN', `extent ${e} of ${current} is missing`, { cause: err })
      }
    }
    const child = out[out.length - 1]
    if (child !== undefined && child.parentCid !== f.cid) {
      throw new EsxiError('E_CHAIN', `CID link broken: ${child.path} has parentCID=${child.parentCid} but its parent ${current} has CID=${f.cid}`)
    }
    out.push({ path: current, createType: f.createType, cid: f.cid, parentCid: f.parentCid, ...(f.parentHint === undefined ? {} : { parentHint: f.parentHint }), extents })
    current = f.parentHint === undefined ? undefined : resolve(dir, f.parentHint)
  }
  const base = out[out.length - 1]
  if (base !== undefined && base.parentCid !== 'ffffffff') {
    throw new EsxiError('E_CHAIN', `${base.path} names no parent but its parentCID is ${base.parentCid}, not ffffffff`)
  }
  return out
}
