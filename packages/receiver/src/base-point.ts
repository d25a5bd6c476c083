/**
 * Base points (docs/POINTS.md "Re-seeds and capacity changes keep the
 * points"): a disk's old mirror kept whole as its file of a restore point, a
 * flat with no parent that ends the disk's chain. A seed moves the old flat
 * there at the roll-forward (commit.ts retireMirrors); an in-place apply
 * that changes the disk's capacity — which no reverse increment can sit on:
 * every layer of a VMDK chain has one capacity — copies it there before its
 * first write ({@link copyBasePoint}).
 */
import { rename } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fsyncDir, unlinkIfExists, writeFileAtomic } from './fs-util.ts'
import { POINTS_DIR, pointFlatName, pointPath, removePointFiles } from './increment.ts'
import { mirrorDescriptor } from './mirror-descriptor.ts'
import { checkPointFiles } from './point-chain.ts'
import { formatCid } from '@grainline/vmdk'
import { ReceiverError } from './errors.ts'
import { spawnTied } from './tied-spawn.ts'
import { faultPoint } from './fault.ts'
import { ensureStoreDir, entryExists, openStoreFile, regularFileSize } from './store-fs.ts'
import type { DiskRecord } from './state-file.ts'
import type { VmPaths } from './vm-paths.ts'
import type { WorkProgress } from './work-progress.ts'

/** The descriptor of a base point `file` over the committed mirror `rec`: its CID, capacity and DDB, the flat beside it, no parent. */
export function baseDescriptor(rec: Pick<DiskRecord, 'mirrorCid' | 'capacity' | 'ddb'>, file: string): string {
  return mirrorDescriptor({ cid: rec.mirrorCid, capacity: rec.capacity, flatFile: pointFlatName(file), ddb: rec.ddb })
}

/** The partial copy of base point `file`'s flat while {@link copyBasePoint} runs. */
function copyingPath(paths: VmPaths, file: string): string {
  return `${pointPath(paths, pointFlatName(file))}.copying`
}

/**
 * Copy the committed mirror flat of `rec` into `.grainline/points` as base
 * point `file`, durable before the caller writes the mirror: the flat to a
 * `.copying` file (`cp --reflink=auto --sparse=always`: a clone where the
 * file system shares blocks, XFS or Btrfs; else the allocated data only,
 * holes kept), fsync'ed and renamed, then the descriptor, written last, so
 * that an existing descriptor means a complete copy (idempotent: a copy
 * made for this committed cycle before a crash is kept).
 * `onProgress` hears of the copy (SPEC §5.1 DiskProgress): when it starts
 * (0 bytes done), every BASE_COPY_PROGRESS_MS while it runs (the size of
 * the copy so far) and when it is durable (all of it).
 * @throws ReceiverError E_STORE_FILE (the flat is a link, FIFO, folder), E_IO (the copy failed: no space, cp missing)
 */
export async function copyBasePoint(paths: VmPaths, rec: DiskRecord, file: string, onProgress?: CopyProgress): Promise<void> {
  const descriptor = pointPath(paths, file)
  if (await completeBaseCopy(paths, rec, file)) return
  // anything else under the name (a seed's base descriptor left by a failed commit, a partial copy, a planted entry) goes
  await removeBasePoint(paths, file)
  const flat = paths.flat(rec.stem)
  // cp reads the file this open checked (O_NOFOLLOW | O_NONBLOCK, fstat: a regular file), not whatever the
  // name holds when cp starts: a FIFO or a link swapped in meanwhile would block it, or copy another file
  const src = await openStoreFile(flat, 'read').catch((err: unknown) => {
    if ((err as { code?: unknown }).code === 'ENOENT') throw new ReceiverError('E_STORE_FILE', `mirror flat ${flat} is missing: no base point`)
    throw err
  })
  const partial = copyingPath(paths, file)
  try {
    await ensureStoreDir(join(paths.gdir, POINTS_DIR))
    await unlinkIfExists(partial)
    const dst = await openStoreFile(partial, 'create')
    const total = (await src.stat()).size
    // the size of the copy so far: cp writes in order, seeking over holes, so the size is where it has got to
    // a stat still under way when the copy ends must not report after it (nor after the DiskState)
    let running = true
    const tick = setInterval(() => {
      dst.stat().then(
        (st) => {
          if (running) onProgress?.(Math.min(st.size, total), total)
        },
        () => {},
      )
    }, BASE_COPY_PROGRESS_MS)
    try {
      onProgress?.(0, total)
      faultPoint('base-copy-opened')
      await cpFd(src.fd, dst.fd)
      await dst.sync()
    } finally {
      running = false
      clearInterval(tick)
      await dst.close()
    }
    onProgress?.(total, total)
  } catch (err) {
    await unlinkIfExists(partial).catch(() => {})
    if (err instanceof ReceiverError) throw err
    throw new ReceiverError('E_IO', `copying the mirror ${flat} into a base point failed: ${(err as Error).message}`)
  } finally {
    await src.close()
  }
  await rename(partial, pointPath(paths, pointFlatName(file)))
  faultPoint('base-copied')
  await writeFileAtomic(descriptor, baseDescriptor(rec, file))
  await fsyncDir(dirname(descriptor))
}

/** How often a running base copy reports its progress, ms (SPEC §5.1: at least every 10 s). */
export const BASE_COPY_PROGRESS_MS = 5000

/** Hears of a base copy's progress: bytes done of the flat's size. */
export type CopyProgress = WorkProgress

/** At most this much of cp's error output is kept for the message. */
const MAX_CP_STDERR = 4096

/**
 * `cp --reflink=auto --sparse=always` from open file `from` into open file
 * `to`, both handed to cp as its descriptors 3 and 4 (`/proc/self/fd/N`
 * reopens the same files): a clone where the file system shares blocks
 * (XFS, Btrfs), else the allocated data only, holes kept. cp dies with
 * the receiver (tied-spawn.ts): a killed receiver's copy does not run on.
 */
function cpFd(from: number, to: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawnTied('cp', ['--reflink=auto', '--sparse=always', '--', '/proc/self/fd/3', '/proc/self/fd/4'], { stdio: ['ignore', 'ignore', 'pipe', from, to] })
    let stderr = ''
    child.stderr?.on('data', (d: Buffer) => {
      if (stderr.length < MAX_CP_STDERR) stderr += d.toString('utf8').slice(0, MAX_CP_STDERR - stderr.length)
    })
    child.once('error', reject)
    child.once('close', (code, signal) => {
      if (code === 0) resolve()
      else reject(new Error(stderr.trim() || `cp ended with ${signal ?? `code ${code}`}`))
    })
  })
}

/**
 * Whether base point `file` is a complete copy of the committed mirror
 * `rec`: its descriptor and flat are the receiver's layout of a base point
 * (point-chain.ts checkPointFiles: regular files, no parent), with the
 * mirror's CID and the flat's committed size. False when missing.
 */
export async function completeBaseCopy(paths: VmPaths, rec: DiskRecord, file: string): Promise<boolean> {
  if (!(await entryExists(pointPath(paths, file)))) return false
  try {
    const d = await checkPointFiles(paths, file)
    return d.parentFileNameHint === undefined && formatCid(d.cid) === rec.mirrorCid && (await regularFileSize(pointPath(paths, pointFlatName(file)))) === rec.size
  } catch {
    return false
  }
}

/** Remove a base point made for an apply that did not commit (its files and a partial copy; idempotent). */
export async function removeBasePoint(paths: VmPaths, file: string): Promise<void> {
  await removePointFiles(paths, file)
  await unlinkIfExists(copyingPath(paths, file))
}
