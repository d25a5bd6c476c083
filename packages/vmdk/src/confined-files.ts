/**
 * Keeping a chain's reads on its datastores. A descriptor names its extent
 * files and its parent, a .vmx its disks; anyone who can write to a
 * datastore can write `RW 8 VMFS "/etc/grainline/token"`, a parent hint of
 * `../../../../root/.ssh/id_ed25519`, or a link `vm-flat.vmdk -> /etc/…` on an
 * NFS mount. A reader that follows them ships the proxy's own files as disk
 * data. {@link confineFileAccess} wraps a {@link FileAccess} so that every
 * path stat'ed, opened or resolved lies inside one of a set of root folders,
 * by name and again after its symbolic links are resolved (links inside a
 * datastore are legitimate: ESXi uses them).
 */
import { resolve } from 'node:path'
import { VmdkError } from './errors.ts'
import type { FileAccess, FileStat, RandomAccessFile } from './file-access.ts'

/** True when `p` is `root` or lies below it (both absolute and normalized). */
export function isInsideRoot(p: string, root: string): boolean {
  return p === root || p.startsWith(root.endsWith('/') ? root : `${root}/`)
}

/** What an `E_OUTSIDE_ROOT` message tells the operator to do when the caller names nothing more specific. */
export const DEFAULT_OUTSIDE_ROOT_REMEDY = 'fix the reference, or add the folder the file is on to the roots'

/** Options of {@link confineFileAccess}. */
export interface ConfineOptions {
  /**
   * What to do, ending the `E_OUTSIDE_ROOT` message: the caller knows how its
   * roots are set (the agent's local driver: `--datastore-root`; its esxi
   * driver: map the datastore). `''`: none (the caller's own message says it).
   * @default DEFAULT_OUTSIDE_ROOT_REMEDY
   */
  readonly remedy?: string
  /**
   * The roots' real paths, resolved once by the caller (pinned when its run
   * started): a file's real path must then lie below one of these, and the
   * roots themselves are never resolved again, so a root reached through a
   * symbolic link that is re-pointed later moves nothing (what the link led
   * to then is the root). The names in `roots` still bound the names a file is
   * reached by; a .vmx or descriptor keeps naming its files through them.
   * @default each root's real path, resolved at this access's first check of a path through it (a failure is retried)
   */
  readonly realRoots?: readonly string[]
}

/**
 * A {@link FileAccess} that refuses, with `VmdkError` `E_OUTSIDE_ROOT` naming
 * the path, anything outside `roots`: first by the path as given (normalized),
 * then by its real path (`files.realpath`, when the access has one) against
 * the roots' real paths (`opts.realRoots` when the caller pinned them, else
 * resolved here). A path
 * that does not exist passes (its open then reports `E_NOT_FOUND`). The check
 * runs right before each stat/open; a folder of the path replaced by a link in
 * between is not caught (the readers open what they checked a moment before).
 */
export function confineFileAccess(files: FileAccess, roots: readonly string[], opts: ConfineOptions = {}): FileAccess {
  const remedy = opts.remedy ?? DEFAULT_OUTSIDE_ROOT_REMEDY
  const named = roots.map((r) => resolve(r))
  const pinned = opts.realRoots?.map((r) => resolve(r))
  // real paths of the roots (on ESXi /vmfs/volumes/<name> is a link to /vmfs/volumes/<uuid>); a failure is retried next time
  const real = new Map<string, string>()
  const realRoot = async (r: string): Promise<string> => {
    const known = real.get(r)
    if (known !== undefined) return known
    if (files.realpath === undefined) return r
    try {
      const rp = await files.realpath(r)
      real.set(r, rp)
      return rp
    } catch {
      return r
    }
  }
  const refuse = (p: string, where: string): VmdkError =>
    new VmdkError(
      'E_OUTSIDE_ROOT',
      `${where}, outside the folders this VM's files may be read from (${named.join(', ')}): not read. A descriptor or .vmx that names a file off its datastores (an absolute path, "..", or a symbolic link that leads out) is refused${remedy === '' ? '' : `; ${remedy}`}`,
      p,
    )
  // `strict`: a missing path rejects (ENOENT, as realpath does) instead of passing to the open that reports it
  const check = async (p: string, strict = false): Promise<string> => {
    const abs = resolve(p)
    if (!named.some((r) => isInsideRoot(abs, r))) throw refuse(p, `${p} lies`)
    if (files.realpath === undefined) return abs
    let rp: string
    try {
      rp = await files.realpath(abs)
    } catch (err) {
      if (!strict && (err as { code?: unknown } | null)?.code === 'ENOENT') return abs
      throw err
    }
    if (pinned !== undefined) {
      // pinned: the real folders of then, never the ones the roots' names lead to now
      if (!pinned.some((r) => isInsideRoot(rp, r))) throw refuse(p, `${p} resolves to ${rp} (through a symbolic link)`)
      return rp
    }
    if (named.some((r) => isInsideRoot(rp, r))) return rp
    const realRoots = await Promise.all(named.map(realRoot))
    if (!realRoots.some((r) => isInsideRoot(rp, r))) throw refuse(p, `${p} resolves to ${rp} (through a symbolic link)`)
    return rp
  }
  return Object.freeze({
    stat: async (p: string): Promise<FileStat> => {
      await check(p)
      return await files.stat(p)
    },
    open: async (p: string, mode: 'r' | 'r+'): Promise<RandomAccessFile> => {
      await check(p)
      return await files.open(p, mode)
    },
    realpath: async (p: string): Promise<string> => await check(p, true),
    ...(files.maxReadBytes === undefined ? {} : { maxReadBytes: files.maxReadBytes }),
    ...(files.concurrency === undefined ? {} : { concurrency: files.concurrency }),
  })
}

/** The {@link ConfineOptions} of a reader's options (`rootsRemedy`, `realRoots`). */
export function confineOptionsOf(opts: { readonly rootsRemedy?: string; readonly realRoots?: readonly string[] }): ConfineOptions {
  return { ...(opts.rootsRemedy === undefined ? {} : { remedy: opts.rootsRemedy }), ...(opts.realRoots === undefined ? {} : { realRoots: opts.realRoots }) }
}
