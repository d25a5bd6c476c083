/**
 * Datastore paths → the paths the agent reads. A datastore is either mounted
 * on the proxy (NFS: `localPath`) or read on the host over the driver's SSH
 * connection (`access: "sftp"`: its folder on the host, `/vmfs/volumes/<name>`
 * by default). The operator maps each datastore by name and/or UUID; one VM
 * may mix both kinds. Paths of SFTP datastores are host paths; which reader
 * serves a path is decided by {@link DatastoreMap.isSftpPath}.
 */
import path from 'node:path'
import { isInsideRoot } from '@grainline/vmdk'
import { EsxiError } from './errors.ts'

/** One mapped datastore. */
export interface DatastoreMount {
  /** datastore name as ESXi shows it (`[name] ...`, `/vmfs/volumes/name/...`) */
  readonly name: string
  /** VMFS/NFS volume UUID (`/vmfs/volumes/<uuid>/...`), when known */
  readonly uuid?: string
  /** how the agent reads it. @default 'local' */
  readonly access?: 'local' | 'sftp'
  /**
   * `local`: absolute local path where the datastore is mounted; `sftp`: the
   * datastore's folder on the host (@default `/vmfs/volumes/<name>`)
   */
  readonly localPath: string
  /**
   * `local`: the real path of `localPath`, pinned once (`pinEsxiDatastores`:
   * at job load, again checked when the VM's run starts): a file of the
   * datastore is read only when its real path lies below it, so a mount
   * reached through a symbolic link re-pointed during the run moves nothing.
   * @default resolved when a file's real path first needs it
   */
  readonly realPath?: string
  /**
   * `local`: the mount did not exist when it was to be pinned
   * (`pinEsxiDatastores` with `missing: 'defer'`): why, naming the setting.
   * Nothing on it is read: a file resolved onto it throws `E_CONFIG` with
   * this message.
   */
  readonly missing?: string
}

/** What the settings give for one datastore (`realPath`, `missing`: set by `pinEsxiDatastores`, never in a settings file). */
export type DatastoreSetting = string | { localPath: string; uuid?: string; realPath?: string; missing?: string } | { access: 'sftp'; uuid?: string; hostPath?: string }

/** A parsed datastore path. */
export interface DatastorePath {
  /** datastore name or UUID as written */
  readonly datastore: string
  /** the path inside the datastore, '/'-separated, no leading slash */
  readonly relative: string
}

const BRACKET = /^\[([^\]]+)\]\s?(.*)$/s
const VOLUMES = /^\/vmfs\/volumes\/([^/]+)(?:\/(.*))?$/s

/**
 * Parse `[datastore] dir/x.vmx` or `/vmfs/volumes/<name|uuid>/dir/x.vmx`;
 * undefined for anything else (a relative or other local path).
 */
export function parseDatastorePath(p: string): DatastorePath | undefined {
  const b = BRACKET.exec(p)
  if (b !== null) return { datastore: b[1] as string, relative: (b[2] as string).replace(/^\/+/, '') }
  const v = VOLUMES.exec(p)
  if (v !== null) return { datastore: v[1] as string, relative: v[2] ?? '' }
  return undefined
}

/** A validated lookup table from datastore name/UUID to mount path. */
export class DatastoreMap {
  readonly #byKey: ReadonlyMap<string, DatastoreMount>
  readonly #sftpRoots: readonly string[]
  readonly mounts: readonly DatastoreMount[]

  /**
   * @throws EsxiError E_CONFIG on a relative mount path, an empty name, or a
   *   name/UUID mapped twice to different places
   */
  constructor(mounts: readonly DatastoreMount[]) {
    const byKey = new Map<string, DatastoreMount>()
    const roots = mounts.map((m) => ({ m, root: m.access === 'sftp' ? path.posix.normalize(m.localPath) : path.resolve(m.localPath) }))
    for (const a of roots) {
      if (a.m.access !== 'sftp') continue
      for (const b of roots) {
        if (b.m.access === 'sftp' || !(a.root === b.root || a.root.startsWith(`${b.root}/`) || b.root.startsWith(`${a.root}/`))) continue
        throw new EsxiError('E_CONFIG', `datastore map: the SFTP folder of ${JSON.stringify(a.m.name)} (${a.root}) overlaps the local mount of ${JSON.stringify(b.m.name)} (${b.root})`)
      }
    }
    this.#sftpRoots = roots.filter((r) => r.m.access === 'sftp').map((r) => r.root)
    for (const m of mounts) {
      if (m.name === '' || m.name.includes('/') || m.name.includes(']')) throw new EsxiError('E_CONFIG', `datastore map: bad datastore name ${JSON.stringify(m.name)}`)
      if (!path.posix.isAbsolute(m.localPath)) throw new EsxiError('E_CONFIG', `datastore map: mount path of ${JSON.stringify(m.name)} must be absolute, got ${JSON.stringify(m.localPath)}`)
      for (const key of [m.name, m.uuid]) {
        if (key === undefined) continue
        const prev = byKey.get(key)
        if (prev !== undefined && (this.#root(prev) !== this.#root(m) || prev.access !== m.access)) {
          throw new EsxiError('E_CONFIG', `datastore map: ${JSON.stringify(key)} is mapped twice`)
        }
        byKey.set(key, m)
      }
    }
    this.#byKey = byKey
    this.mounts = Object.freeze([...mounts])
  }

  /** Build from `{ name: localPath }`, `{ name: { localPath, uuid } }` or `{ name: { access: "sftp", uuid?, hostPath? } }`. */
  static from(map: Readonly<Record<string, DatastoreSetting>>): DatastoreMap {
    return new DatastoreMap(
      Object.entries(map).map(([name, v]): DatastoreMount => {
        if (typeof v === 'string') return { name, localPath: v }
        const uuid = v.uuid === undefined ? {} : { uuid: v.uuid }
        if ('access' in v) return { name, access: 'sftp', localPath: v.hostPath ?? `/vmfs/volumes/${name}`, ...uuid }
        return { name, localPath: v.localPath, ...uuid, ...(v.realPath === undefined ? {} : { realPath: v.realPath }), ...(v.missing === undefined ? {} : { missing: v.missing }) }
      }),
    )
  }

  /** True when any datastore is read over SFTP. */
  get hasSftp(): boolean {
    return this.#sftpRoots.length > 0
  }

  /** True when `p` (a resolved path) lies on a datastore read over SFTP. */
  isSftpPath(p: string): boolean {
    return this.#sftpRoots.some((r) => isInsideRoot(p, r))
  }

  /** The folder of every mapped datastore: local mount paths and SFTP host folders. */
  roots(): string[] {
    return [...new Set(this.mounts.map((m) => this.#root(m)))]
  }

  /** The local mount folders (datastores read through the proxy's file system; a `missing` one is never read). */
  localRoots(): string[] {
    return [...new Set(this.mounts.filter((m) => m.access !== 'sftp' && m.missing === undefined).map((m) => this.#root(m)))]
  }

  /**
   * The pinned real paths of the local mount folders (`realPath`), when every
   * local mount has one (a `missing` one aside: never read); undefined when
   * any is unpinned (each then resolved when first needed).
   */
  localRealRoots(): string[] | undefined {
    const local = this.mounts.filter((m) => m.access !== 'sftp' && m.missing === undefined)
    if (local.some((m) => m.realPath === undefined)) return undefined
    return [...new Set(local.map((m) => path.resolve(m.realPath as string)))]
  }

  /**
   * Refuse `p` (a resolved path) when it lies on a local mount that was
   * missing when it was to be pinned (`missing`).
   * @throws EsxiError E_CONFIG with the mount's `missing` message, naming the file
   */
  checkPresent(p: string): void {
    const gone = this.mounts.find((m) => m.access !== 'sftp' && m.missing !== undefined && isInsideRoot(p, this.#root(m)))
    if (gone === undefined) return
    throw new EsxiError(
      'E_CONFIG',
      `${gone.missing}: the VM's file ${p} is on it, and nothing on a mount missing at the VM's start is read (which datastores a VM uses is known only once its .vmx is read): mount the datastore there, or map ${JSON.stringify(gone.name)} to the folder it is mounted at on this proxy`,
    )
  }

  /** True when `p` (a resolved path) lies inside a mapped datastore. */
  isMappedPath(p: string): boolean {
    return this.roots().some((r) => isInsideRoot(p, r))
  }

  /** The mount of a datastore name or UUID, or undefined. */
  lookup(nameOrUuid: string): DatastoreMount | undefined {
    return this.#byKey.get(nameOrUuid)
  }

  /**
   * Map a datastore path (`[ds] a/b`, `/vmfs/volumes/<ds>/a/b`) to a local path.
   * @throws EsxiError E_DATASTORE for an unmapped datastore, a path that is not
   *   a datastore path, or one that climbs out of its datastore with `..`
   */
  resolve(p: string): string {
    const parsed = parseDatastorePath(p)
    if (parsed === undefined) throw new EsxiError('E_DATASTORE', `not a datastore path: ${JSON.stringify(p)}`)
    const mount = this.#byKey.get(parsed.datastore)
    if (mount === undefined) {
      const known = [...this.#byKey.keys()].map((k) => JSON.stringify(k)).join(', ')
      throw new EsxiError('E_DATASTORE', `datastore ${JSON.stringify(parsed.datastore)} (in ${JSON.stringify(p)}) is not in the datastore map (known: ${known === '' ? 'none' : known})`)
    }
    if (parsed.relative.includes('\0')) throw new EsxiError('E_DATASTORE', `NUL in datastore path ${JSON.stringify(p)}`)
    const rel = path.posix.normalize(parsed.relative === '' ? '.' : parsed.relative)
    if (rel === '..' || rel.startsWith('../') || path.posix.isAbsolute(rel)) {
      throw new EsxiError('E_DATASTORE', `datastore path ${JSON.stringify(p)} leaves its datastore`)
    }
    const root = this.#root(mount)
    const out = rel === '.' ? root : path.posix.join(root, rel)
    this.checkPresent(out)
    return out
  }

  #root(m: DatastoreMount): string {
    return m.access === 'sftp' ? path.posix.normalize(m.localPath) : path.resolve(m.localPath)
  }

  /**
   * The prefix map for `openChain({ pathMap })`: `/vmfs/volumes/<name>` and
   * `/vmfs/volumes/<uuid>` → mount path, so absolute parentFileNameHint values
   * written by ESXi resolve locally.
   */
  pathMap(): Record<string, string> {
    const out: Record<string, string> = {}
    for (const [key, m] of this.#byKey) out[`/vmfs/volumes/${key}`] = this.#root(m)
    return out
  }
}

/**
 * Resolve a file name found in a .vmx or descriptor: a datastore path goes
 * through the map, a relative one is taken relative to `baseDir` (the folder
 * of the file that names it). Whoever can write to a datastore writes these
 * names, so the result must lie inside a mapped datastore: an absolute path
 * elsewhere (`/etc/…`) or a relative one that climbs out (`../../../../root/…`)
 * would otherwise be read from the proxy's own disk.
 * @throws EsxiError E_DATASTORE for a name that resolves outside every mapped datastore
 */
export function resolveVmFile(map: DatastoreMap, baseDir: string, p: string): string {
  if (parseDatastorePath(p) !== undefined) return map.resolve(p)
  if (p.includes('\0')) throw new EsxiError('E_DATASTORE', `NUL in file name ${JSON.stringify(p)}`)
  const out = path.isAbsolute(p) ? path.normalize(p) : path.resolve(baseDir, p)
  if (!map.isMappedPath(out)) {
    throw new EsxiError(
      'E_DATASTORE',
      `file name ${JSON.stringify(p)} (named in ${baseDir}) resolves to ${out}, outside every mapped datastore (${map.roots().join(', ')}): refused, nothing is read from the proxy's own disk; write the name as "[datastore] folder/file", "/vmfs/volumes/<datastore>/…" or relative to the VM's folder, and map that datastore`,
    )
  }
  map.checkPresent(out)
  return out
}
