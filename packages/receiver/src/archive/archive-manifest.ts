/**
 * The manifest of one archived restore point (docs/ARCHIVE.md): which
 * content-addressed chunks make each disk, the whole-disk digest that a
 * restore proves, the configuration files, and the point's identity. Pure:
 * building, encoding and the strict reading of a manifest fetched from a
 * bucket nobody should have to trust.
 */
import { ddbProblem } from '@grainline/protocol'
import { ReceiverError } from '../errors.ts'

/** The manifest format (bumped on any incompatible change). */
export const ARCHIVE_FORMAT = 'grainline-archive-v1'
/** Bytes per chunk: a chunk is the unit of upload, dedup and lock. */
export const ARCHIVE_CHUNK_BYTES = 4 * 1024 * 1024
/** The largest manifest a restore reads (16 TiB disks of 4 MiB chunks take ~70 MB). */
export const MAX_MANIFEST_BYTES = 256 * 1024 * 1024
const HEX64 = /^[0-9a-f]{64}$/

/** One disk of an archived point. */
export interface ArchivedDisk {
  /** source disk name (`web01_1.vmdk`) */
  readonly name: string
  /** file stem of the restored descriptor and flat (`web01_1`) */
  readonly stem: string
  /** virtual capacity, bytes */
  readonly capacity: number
  /** sha256 of the whole disk as the point reads (zeros included) */
  readonly sha256: string
  /** the sha256 of each chunk, or null for a chunk of zeros (not stored) */
  readonly chunks: readonly (string | null)[]
  /** the descriptor's DDB entries of the point */
  readonly ddb: Readonly<Record<string, string>>
  /**
   * what the point read matched when it was archived: the certify (whole
   * disk) or trivial-check (prefix) digest recorded at its cycle, or `none`
   * (no check recorded, or a store that keeps none); absent in manifests
   * written before archives checked it
   */
  readonly verified?: ArchiveVerified
  /**
   * the point predated a resync that repaired the disk's mirror, marked
   * diverged, and read the blocks it rewrote as the damaged mirror held them
   * (points.ts divergedResyncUnder): what the archive holds of them may be
   * that damage; absent when not, and in manifests written before it was recorded
   */
  readonly divergedResync?: { readonly cycle: number; readonly reason: string }
}

/** How an archived disk was checked against its cycle's record ({@link ArchivedDisk.verified}). */
export type ArchiveVerified = 'certify' | 'trivial' | 'none'
const VERIFIED: readonly ArchiveVerified[] = ['certify', 'trivial', 'none']

/** A configuration file of the point (`.vmx`, `.nvram`), stored as one content-addressed chunk. */
export interface ArchivedFile {
  readonly name: string
  readonly sha256: string
  readonly bytes: number
}

/** The manifest of an archived point. */
export interface ArchiveManifest {
  readonly format: typeof ARCHIVE_FORMAT
  readonly vm: string
  readonly cycle: number
  /** ISO time of the point's commit */
  readonly committedAt: string
  /** the point's generation id (SPEC §5.8) */
  readonly generation: string
  /** ISO time of the archiving */
  readonly archivedAt: string
  /** ISO time until which the objects are locked (Object Lock), or null */
  readonly retainUntil: string | null
  readonly chunkBytes: number
  readonly disks: readonly ArchivedDisk[]
  readonly files: readonly ArchivedFile[]
}

/** The object key of a chunk: `<prefix>chunks/<2 hex>/<64 hex>`. */
export function chunkKey(prefix: string, sha256: string): string {
  return `${prefix}chunks/${sha256.slice(0, 2)}/${sha256}`
}

/** The object key of a point's manifest: `<prefix>vms/<vm, URI-encoded>/points/<cycle, 12 digits>.json` (sorts by cycle). */
export function manifestKey(prefix: string, vm: string, cycle: number): string {
  return `${manifestPrefix(prefix, vm)}${String(cycle).padStart(12, '0')}.json`
}

/** The key prefix of a VM's manifests. */
export function manifestPrefix(prefix: string, vm: string): string {
  return `${prefix}vms/${encodeURIComponent(vm)}/points/`
}

function bad(what: string, why: string): ReceiverError {
  return new ReceiverError('E_ARCHIVE', `archive manifest ${what}: ${why}`)
}

const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v)
const isSafeName = (s: unknown): s is string => typeof s === 'string' && s.length > 0 && s.length <= 255 && !/[/\\\0]/.test(s) && s !== '.' && s !== '..' && !s.startsWith('.')
const isCount = (v: unknown, max = Number.MAX_SAFE_INTEGER): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= max

/**
 * Read a manifest fetched from a bucket, checking every field a restore
 * relies on: names are plain file names (a hostile manifest cannot write
 * outside the restore folder) and no two files a restore writes share one
 * (it would write one over the other), stems and DDB entries keep the
 * protocol's rules (no quote or line break to add lines to a descriptor),
 * the chunk list covers the capacity exactly, digests are hex. `where`
 * names the object in errors.
 * @throws ReceiverError E_ARCHIVE
 */
export function parseManifest(bytes: Uint8Array, where: string): ArchiveManifest {
  if (bytes.length > MAX_MANIFEST_BYTES) throw bad(where, `${bytes.length} bytes is over the ${MAX_MANIFEST_BYTES}-byte limit`)
  let j: unknown
  try {
    j = JSON.parse(Buffer.from(bytes).toString('utf8'))
  } catch (err) {
    throw bad(where, `not JSON (${(err as Error).message})`)
  }
  if (!isObj(j)) throw bad(where, 'not an object')
  if (j['format'] !== ARCHIVE_FORMAT) throw bad(where, `format ${JSON.stringify(j['format'])}, expected ${ARCHIVE_FORMAT}`)
  if (typeof j['vm'] !== 'string' || j['vm'].length === 0 || j['vm'].length > 255) throw bad(where, 'vm')
  if (!isCount(j['cycle']) || j['cycle'] < 1) throw bad(where, 'cycle')
  for (const k of ['committedAt', 'archivedAt', 'generation'] as const) if (typeof j[k] !== 'string') throw bad(where, k)
  if (j['retainUntil'] !== null && typeof j['retainUntil'] !== 'string') throw bad(where, 'retainUntil')
  if (j['chunkBytes'] !== ARCHIVE_CHUNK_BYTES) throw bad(where, `chunkBytes ${String(j['chunkBytes'])}`)
  const chunkBytes = j['chunkBytes']
  if (!Array.isArray(j['disks']) || j['disks'].length === 0 || j['disks'].length > 64) throw bad(where, 'disks')
  const disks = j['disks'].map((d: unknown, i: number): ArchivedDisk => {
    const at = `disks[${i}]`
    if (!isObj(d)) throw bad(where, at)
    if (!isSafeName(d['name'])) throw bad(where, `${at}.name`)
    if (!isSafeName(d['stem']) || /[\u0000-\u001f\u007f"]/.test(d['stem'])) throw bad(where, `${at}.stem`)
    if (!isCount(d['capacity'], 64 * 1024 ** 4) || d['capacity'] % 512 !== 0) throw bad(where, `${at}.capacity`)
    if (typeof d['sha256'] !== 'string' || !HEX64.test(d['sha256'])) throw bad(where, `${at}.sha256`)
    const chunks = d['chunks']
    if (!Array.isArray(chunks) || chunks.length !== Math.ceil(d['capacity'] / chunkBytes))
      throw bad(where, `${at}.chunks: ${Array.isArray(chunks) ? chunks.length : 'none'} for a capacity of ${d['capacity']}`)
    for (const c of chunks) if (c !== null && (typeof c !== 'string' || !HEX64.test(c))) throw bad(where, `${at}.chunks: ${JSON.stringify(c).slice(0, 80)}`)
    const ddb = d['ddb']
    if (!isObj(ddb)) throw bad(where, `${at}.ddb`)
    const ddbWrong = ddbProblem(ddb)
    if (ddbWrong !== undefined) throw bad(where, `${at}.ddb: ${ddbWrong}, which the receiver never records (a restore writes the DDB into the disk's descriptor)`)
    const verified = d['verified']
    if (verified !== undefined && !VERIFIED.includes(verified as ArchiveVerified)) throw bad(where, `${at}.verified`)
    const resync = d['divergedResync']
    if (resync !== undefined && (!isObj(resync) || !isCount(resync['cycle']) || resync['cycle'] < 1 || typeof resync['reason'] !== 'string' || resync['reason'].length > 2000))
      throw bad(where, `${at}.divergedResync`)
    return {
      name: d['name'],
      stem: d['stem'],
      capacity: d['capacity'],
      sha256: d['sha256'],
      chunks: chunks as (string | null)[],
      ddb: ddb as Record<string, string>,
      ...(verified === undefined ? {} : { verified: verified as ArchiveVerified }),
      ...(resync === undefined ? {} : { divergedResync: { cycle: resync['cycle'] as number, reason: resync['reason'] as string } }),
    }
  })
  if (!Array.isArray(j['files']) || j['files'].length > 64) throw bad(where, 'files')
  const files = j['files'].map((f: unknown, i: number): ArchivedFile => {
    if (!isObj(f) || !isSafeName(f['name']) || typeof f['sha256'] !== 'string' || !HEX64.test(f['sha256']) || !isCount(f['bytes'], 16 * 1024 * 1024)) throw bad(where, `files[${i}]`)
    return { name: f['name'], sha256: f['sha256'], bytes: f['bytes'] }
  })
  const clash = nameClash(disks, files)
  if (clash !== undefined)
    throw bad(where, `${clash}: a restore would write one over the other. Refused; no grainline archive writes such a manifest (the store refuses such disks): it was written by something else`)
  return {
    format: ARCHIVE_FORMAT,
    vm: j['vm'],
    cycle: j['cycle'],
    committedAt: j['committedAt'] as string,
    generation: j['generation'] as string,
    archivedAt: j['archivedAt'] as string,
    retainUntil: j['retainUntil'] as string | null,
    chunkBytes,
    disks,
    files,
  }
}

/**
 * The files a restore writes for its disks (`<stem>.vmdk`, `<stem>-flat.vmdk`)
 * and configuration files: two that are one name, ignoring case (as the
 * store compares disk names: vm-mirror.ts checkNames; a restore folder may be
 * on a case-insensitive file system), named: `a` and `a-flat` (`a`'s flat is
 * `a-flat`'s descriptor), two disks of one stem, a file named as a disk's.
 */
function nameClash(disks: readonly ArchivedDisk[], files: readonly ArchivedFile[]): string | undefined {
  const owner = new Map<string, string>()
  const written: [string, string][] = []
  disks.forEach((d, i) => {
    const who = `disks[${i}].stem ${JSON.stringify(d.stem)}`
    written.push([`${d.stem}.vmdk`, `the descriptor of ${who}`], [`${d.stem}-flat.vmdk`, `the flat of ${who}`])
  })
  files.forEach((f, i) => {
    written.push([f.name, `files[${i}]`])
  })
  for (const [name, what] of written) {
    const key = name.toLowerCase()
    const first = owner.get(key)
    if (first !== undefined) return `${first} and ${what} are both the file ${JSON.stringify(name)}`
    owner.set(key, what)
  }
  return undefined
}

/** A manifest as stored (JSON, one line per disk's chunk list would not help: plain). */
export function encodeManifest(m: ArchiveManifest): Buffer {
  return Buffer.from(`${JSON.stringify(m)}\n`)
}
