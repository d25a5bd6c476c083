/**
 * Replacing a small file atomically (descriptors here; the receiver's state and
 * the agent's .vmx/.vmsd use the same function). One definition, one temp-name
 * pattern, one clean-up rule.
 */
import { randomBytes } from 'node:crypto'
import { open, rename, stat, unlink, type FileHandle } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { ioError } from './errors.ts'

/**
 * Names of the temporary files {@link writeFileAtomic} creates, in the target's
 * folder: `.<target name>.tmp-<pid>-<8 hex digits>` (the target name cut to 200
 * bytes). A leftover one (after a crash between create and rename) never
 * matches `*.vmdk`; recovery code may delete every name that matches.
 */
export const ATOMIC_TEMP_RE = /^\..*\.tmp-\d+-[0-9a-f]{8}$/s

/** True if `name` (a base name, or a path whose base name is tested) is a {@link writeFileAtomic} temp file. */
export function isAtomicTempName(name: string): boolean {
  return ATOMIC_TEMP_RE.test(basename(name))
}

/** Longest part of the target's name kept in a temp name (bytes), so the temp name stays under NAME_MAX. */
const MAX_STEM_BYTES = 200

function tempPath(path: string): string {
  let stem = basename(path)
  while (Buffer.byteLength(stem) > MAX_STEM_BYTES) stem = stem.slice(0, -1)
  return join(dirname(path), `.${stem}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`)
}

/** Errors of fsync on a folder that only mean "this file system does not do that". */
const DIR_SYNC_UNSUPPORTED = new Set(['EINVAL', 'ENOTSUP', 'EOPNOTSUPP', 'EISDIR'])

/**
 * fsync a directory so a rename or create in it is durable. File systems that
 * cannot fsync a folder are tolerated; any other failure is `E_IO`.
 */
export async function syncDir(dir: string): Promise<void> {
  let fh: FileHandle | undefined
  try {
    fh = await open(dir, 'r')
    await fh.sync()
  } catch (err) {
    if (!DIR_SYNC_UNSUPPORTED.has(String((err as { code?: unknown }).code))) throw ioError(err, dir, 'fsync folder')
  } finally {
    await fh?.close().catch(() => {})
  }
}

/** Options of {@link writeFileAtomic}. */
export interface WriteFileAtomicOptions {
  /** permission bits of the new file @default the replaced file's, or 0o644 for a new file */
  mode?: number
}

/**
 * Replace `path` atomically: write a temp file in the same folder (named by
 * {@link ATOMIC_TEMP_RE}, created exclusively), fsync it, rename it over `path`,
 * fsync the folder. On any failure before the rename the temp file is removed
 * and `path` is untouched; the error is a `VmdkError` (`E_NOT_FOUND` for a
 * missing folder, `E_IO` otherwise, the cause attached). A failure of the final
 * folder fsync is reported too (the file is then replaced, but maybe not durably).
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, opts: WriteFileAtomicOptions = {}): Promise<void> {
  let mode = opts.mode
  if (mode === undefined) {
    try {
      mode = (await stat(path)).mode & 0o7777
    } catch {
      mode = 0o644
    }
  }
  const tmp = tempPath(path)
  let created = false
  try {
    const fh = await open(tmp, 'wx', mode)
    created = true
    try {
      await fh.writeFile(data)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await rename(tmp, path)
  } catch (err) {
    if (created) await unlink(tmp).catch(() => {})
    throw ioError(err, path, 'atomic write')
  }
  await syncDir(dirname(path))
}

/** Create a new file with `data` (fails with `E_EXISTS` if it exists), fsynced. */
export async function writeNewFile(path: string, data: string | Uint8Array): Promise<void> {
  try {
    const fh = await open(path, 'wx')
    try {
      await fh.writeFile(data)
      await fh.sync()
    } finally {
      await fh.close()
    }
  } catch (err) {
    throw ioError(err, path, 'create')
  }
}
