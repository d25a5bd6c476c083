import { constants } from 'node:fs'
import { open, rename, unlink, type FileHandle } from 'node:fs/promises'
import { dirname } from 'node:path'
import { randomBytes } from 'node:crypto'

/** fsync a directory so that a rename or create inside it is durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** The name of {@link writeFileAtomic}'s temporary file for `name`: `<name>.tmp-<pid>-<8 hex>`. */
export function tempName(name: string): string {
  return `${name}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`
}

/**
 * Whether a file name is exactly a temporary file of {@link writeFileAtomic}
 * (`<name>.tmp-<pid>-<8 hex>`), which start-up recovery removes. A committed
 * file whose name merely contains `.tmp-` (a disk `data.tmp-2024.vmdk`) is not.
 */
export function isTempName(name: string): boolean {
  return /^.+\.tmp-[1-9]\d{0,9}-[0-9a-f]{8}$/.test(name)
}

/**
 * Replace `path` atomically: write a temporary file beside it, fsync it,
 * rename it over `path`, fsync the directory (ARCHITECTURE §4.1).
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = tempName(path)
  let fh: FileHandle | undefined
  try {
    fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644)
    await fh.writeFile(data)
    await fh.sync()
    await fh.close()
    fh = undefined
    await rename(tmp, path)
  } catch (err) {
    if (fh !== undefined) await fh.close().catch(() => {})
    await unlink(tmp).catch(() => {})
    throw err
  }
  await fsyncDir(dirname(path))
}

/** Remove a file if it exists. */
export async function unlinkIfExists(path: string): Promise<boolean> {
  try {
    await unlink(path)
    return true
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return false
    throw err
  }
}

const ZERO = new Uint8Array(1024 * 1024)

/** Write `length` zero bytes at `offset`. */
export async function writeZeros(fh: FileHandle, offset: number, length: number): Promise<void> {
  let done = 0
  while (done < length) {
    const n = Math.min(ZERO.length, length - done)
    await writeFully(fh, ZERO.subarray(0, n), offset + done)
    done += n
  }
}

/** Write all of `data` at `offset` (loops over short writes). */
export async function writeFully(fh: FileHandle, data: Uint8Array, offset: number): Promise<void> {
  let done = 0
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, offset + done)
    if (bytesWritten <= 0) throw Object.assign(new Error('short write'), { code: 'EIO' })
    done += bytesWritten
  }
}

/**
 * Write the buffers back to back from `offset` with as few `pwritev(2)` calls
 * as the kernel allows (a short write continues where it stopped).
 */
export async function writevFully(fh: FileHandle, bufs: readonly Uint8Array[], offset: number): Promise<void> {
  let k = 0
  let skip = 0
  let pos = offset
  while (k < bufs.length) {
    const list: Uint8Array[] = []
    let want = 0
    for (let i = k; i < bufs.length && list.length < WRITEV_MAX; i++) {
      const b = bufs[i] as Uint8Array
      const part = i === k && skip > 0 ? b.subarray(skip) : b
      list.push(part)
      want += part.length
    }
    const { bytesWritten } = await fh.writev(list as NodeJS.ArrayBufferView[], pos)
    if (bytesWritten <= 0 && want > 0) throw Object.assign(new Error('short write'), { code: 'EIO' })
    pos += bytesWritten
    let left = bytesWritten
    while (k < bufs.length && left > 0) {
      const rest = (bufs[k] as Uint8Array).length - skip
      if (left >= rest) {
        left -= rest
        k++
        skip = 0
      } else {
        skip += left
        left = 0
      }
    }
    while (k < bufs.length && (bufs[k] as Uint8Array).length === 0) k++
  }
}

/**
 * File bytes one system call of the apply path's data writes covers at most
 * (issue #17, perf15). Linux 6.18's ext4 sizes a page-cache folio by the
 * write: a write of 2 MiB or more gets 2 MiB folios, allocated from the
 * large free blocks that this VM's balloon (free page reporting, order 11)
 * has handed back to the host, so every 4 KiB page of them faults on the
 * host when the copy first touches it. Measured here (512 MiB, pwritev of 32
 * MiB per batch + fdatasync, pages freed > 2 s before, 4 pairs): median 1.12
 * s of system time in 32 MiB writes, 0.23 s in 1 MiB ones; `dd bs=1M`
 * 0.09–0.15 s, `dd bs=2M` 1.03–1.54 s (receiver README "Ninth round").
 * Elsewhere a 1 MiB write costs the same as a larger one.
 */
export const WRITE_PIECE = 1024 * 1024

/**
 * Pieces of one {@link writeInPieces} call written at once, at most: the
 * thread pool runs them back to back, where one piece at a time waited for
 * the main thread between pieces (a busy session's event loop: its frames
 * held longer, more fresh memory).
 */
export const PIECES_IN_FLIGHT = 4

/**
 * Write the buffers back to back from `offset`, each system call covering at
 * most `piece` bytes of the file and none crossing a multiple of `piece` (so
 * the page cache's folios stay at most that size; see {@link WRITE_PIECE}).
 * Up to {@link PIECES_IN_FLIGHT} pieces at once (disjoint ranges: their order
 * does not matter, none is durable before an fdatasync anyway); short writes
 * continue where they stopped. Resolves, or rejects with the first error,
 * only once no write is running.
 */
export async function writeInPieces(fh: FileHandle, bufs: readonly Uint8Array[], offset: number, piece = WRITE_PIECE): Promise<void> {
  const pieces: Array<{ pos: number; list: Uint8Array[] }> = []
  let pos = offset
  for (const b of bufs) {
    let at = 0
    while (at < b.length) {
      const room = piece - (pos % piece)
      const n = Math.min(room, b.length - at)
      const last = pieces[pieces.length - 1]
      // a piece goes on until the next multiple of `piece`
      if (last !== undefined && pos % piece !== 0) last.list.push(b.subarray(at, at + n))
      else pieces.push({ pos, list: [b.subarray(at, at + n)] })
      at += n
      pos += n
    }
  }
  let next = 0
  let failed = false
  const worker = async (): Promise<void> => {
    while (next < pieces.length && !failed) {
      const p = pieces[next++] as { pos: number; list: Uint8Array[] }
      try {
        if (p.list.length === 1) await writeFully(fh, p.list[0] as Uint8Array, p.pos)
        else await writevFully(fh, p.list, p.pos)
      } catch (err) {
        failed = true // the other writers take no new piece
        throw err
      }
    }
  }
  const settled = await Promise.allSettled(Array.from({ length: Math.min(PIECES_IN_FLIGHT, pieces.length) }, worker))
  for (const r of settled) if (r.status === 'rejected') throw r.reason
}

/** Buffers per pwritev(2) call (IOV_MAX is 1024 on Linux). */
const WRITEV_MAX = 1024

/** Read exactly `length` bytes at `offset`; bytes past the end of the file read as zero. */
export async function readFully(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  return await readFullyInto(fh, Buffer.allocUnsafe(length), offset, length)
}

/**
 * Like {@link readFully}, into the caller's (reused) buffer: the first
 * `length` bytes of `buf` hold the file's bytes at `offset`, zeros past its
 * end. Returns that view of `buf`.
 */
export async function readFullyInto(fh: FileHandle, buf: Buffer, offset: number, length: number): Promise<Buffer> {
  let done = 0
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, offset + done)
    if (bytesRead === 0) break
    done += bytesRead
  }
  if (done < length) buf.fill(0, done, length)
  return buf.subarray(0, length)
}
