/**
 * QEMU as the independent oracle of a disk's content: `qemu-img` (convert,
 * map, info, compare) and `qemu-io` (guest writes into hosted-sparse disks).
 * QEMU reads VMDK sparse, vmfsSparse (COWD) and SEsparse; it never writes an
 * ESXi delta (TOOLCHAIN.md).
 */
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { promisify } from 'node:util'

const exec = promisify(execFile)
const BIG = 256 << 20

/** Run `qemu-img ...args` and return its stdout (rejects on a non-zero exit, with stderr in the message). */
export async function qemuImg(args: readonly string[]): Promise<string> {
  const { stdout } = await exec('qemu-img', args, { maxBuffer: BIG, encoding: 'utf8' })
  return stdout
}

/** Options of the qemu helpers reading an image. */
export interface QemuImageOptions {
  /**
   * image format (`-f`)
   * @default 'vmdk'
   */
  readonly format?: string
}

/** Run `qemu-io` commands (`'write -P 0xab 1M 64k'`, `'write -z 0 4k'`) against an image, in order. */
export async function qemuIo(image: string, commands: readonly string[], opts: QemuImageOptions = {}): Promise<void> {
  const args = ['-f', opts.format ?? 'vmdk']
  for (const c of commands) args.push('-c', c)
  args.push(image)
  await exec('qemu-io', args, { maxBuffer: BIG })
}

/** One entry of `qemu-img map --output=json` (the fields of qemu 7.2; newer versions add more). */
export interface QemuMapEntry {
  start: number
  length: number
  depth: number
  present: boolean
  zero: boolean
  data: boolean
  /** byte offset in the layer's file, when qemu knows it */
  offset?: number
}

/** `qemu-img map --output=json`, each entry cut to {@link QemuMapEntry}'s fields so that qemu versions compare equal. */
export async function qemuMap(image: string, opts: QemuImageOptions = {}): Promise<QemuMapEntry[]> {
  const raw = JSON.parse(await qemuImg(['map', '-f', opts.format ?? 'vmdk', '--output=json', image])) as QemuMapEntry[]
  return raw.map(({ start, length, depth, present, zero, data, offset }) => ({ start, length, depth, present, zero, data, ...(offset !== undefined ? { offset } : {}) }))
}

/** `qemu-img info --output=json` (with `backingChain`: one object per layer, top first). */
export async function qemuInfo(image: string, opts: QemuImageOptions & { readonly backingChain?: boolean } = {}): Promise<Record<string, unknown>[]> {
  const out = JSON.parse(await qemuImg(['info', '-f', opts.format ?? 'vmdk', '--output=json', ...(opts.backingChain === true ? ['--backing-chain'] : []), image])) as
    | Record<string, unknown>
    | Record<string, unknown>[]
  return Array.isArray(out) ? out : [out]
}

/** Options of {@link qemuRaw}. */
export interface QemuRawOptions extends QemuImageOptions {
  /**
   * datastore prefix → local folder, for ESXi descriptors whose
   * `parentFileNameHint` is absolute (`/vmfs/volumes/datastore1` → a temp
   * dir): each parent is then handed to qemu as an explicit backing node, as
   * a mount would resolve it
   */
  readonly pathMap?: Readonly<Record<string, string>>
}

/** The chain of `descriptor` as a qemu `json:` block-node spec, parents resolved through `pathMap`. */
function chainSpec(file: string, pathMap: Readonly<Record<string, string>>, depth: number): Record<string, unknown> {
  if (depth > 64) throw new Error(`${file}: chain deeper than 64 layers`)
  const o: Record<string, unknown> = { driver: 'vmdk', file: { driver: 'file', filename: file } }
  const text = readFileSync(file).subarray(0, 65536).toString('latin1')
  const hint = /^parentFileNameHint="([^"]*)"/m.exec(text)?.[1]
  if (hint !== undefined && hint !== '') {
    let p = hint
    for (const [k, v] of Object.entries(pathMap)) if (hint.startsWith(k + '/')) p = v + hint.slice(k.length)
    o['backing'] = chainSpec(resolve(dirname(file), p), pathMap, depth + 1)
  }
  return o
}

/** `qemu-img convert -O raw image out`: the disk as QEMU reads it (all layers). */
export async function qemuRaw(image: string, out: string, opts: QemuRawOptions = {}): Promise<void> {
  const src = opts.pathMap === undefined ? ['-f', opts.format ?? 'vmdk', image] : [`json:${JSON.stringify(chainSpec(resolve(image), opts.pathMap, 0))}`]
  await qemuImg(['convert', ...src, '-O', 'raw', out])
}

/** Result of {@link qemuCompare}. */
export interface QemuCompareResult {
  /** the two images have the same content (`qemu-img compare` exit 0) */
  readonly identical: boolean
  /** qemu's words, e.g. `Content mismatch at offset 1048576!` */
  readonly message: string
}

/**
 * `qemu-img compare a b`: equal guest-visible content (sizes may differ when
 * the tail of the larger one is zero). Rejects on an error (exit 2), not on a
 * difference (exit 1).
 */
export async function qemuCompare(a: string, b: string, opts: { readonly formatA?: string; readonly formatB?: string } = {}): Promise<QemuCompareResult> {
  try {
    const { stdout } = await exec('qemu-img', ['compare', '-f', opts.formatA ?? 'vmdk', '-F', opts.formatB ?? 'raw', a, b], { maxBuffer: BIG, encoding: 'utf8' })
    return { identical: true, message: stdout.trim() }
  } catch (err) {
    const e = err as { code?: unknown; stdout?: string; stderr?: string }
    if (e.code === 1) return { identical: false, message: `${e.stdout ?? ''}${e.stderr ?? ''}`.trim() }
    throw err
  }
}
