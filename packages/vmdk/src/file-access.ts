/**
 * How `@grainline/vmdk` reaches files: a small, asynchronous, positional-read
 * interface, so the same readers work on a local folder, an NFS mount or a
 * remote datastore over SFTP. Every reader of this package (descriptors, chain
 * opening, grain directories and tables, `read`, `map`, `changedRanges`,
 * `describeChain`) goes through a {@link FileAccess}; the default is
 * {@link localFileAccess} (node:fs/promises, never a synchronous call).
 *
 * Designed for high-latency transports: the readers issue few, large reads
 * (a whole grain directory, runs of grain tables back to back) and keep up to
 * {@link FileAccess.concurrency} of them in flight, each at most
 * {@link FileAccess.maxReadBytes} long.
 */
import { constants } from 'node:fs'
import { open, realpath, stat, type FileHandle } from 'node:fs/promises'
import { type DataRange, keptSeekHelper } from './data-ranges.ts'
import type { Stats } from 'node:fs'

/** What a path names. Only `'file'` is ever opened by the readers. */
export type FileKind = 'file' | 'directory' | 'symlink' | 'fifo' | 'socket' | 'block-device' | 'character-device' | 'other'

/** The part of `stat(2)` the readers need. */
export interface FileStat {
  readonly kind: FileKind
  /** bytes */
  readonly size: number
  /**
   * Bytes allocated on disk (`st_blocks × 512`), when the transport knows it.
   * Used only to report a never-written thin flat file as a hole, as QEMU does.
   */
  readonly allocatedBytes?: number
}

/** An open file, read (and for the local writer, written) at explicit positions. */
export interface RandomAccessFile {
  /** the file's status as of open (`fstat`); the readers refuse anything but `kind: 'file'` */
  readonly stat: FileStat
  /**
   * Read up to `length` bytes at `position` into `buf[bufOffset…]`; resolves the
   * number of bytes read (0 at end of file; fewer than asked is allowed, the
   * caller reads the rest). Several reads may be in flight at once.
   */
  read(buf: Uint8Array, bufOffset: number, length: number, position: number): Promise<number>
  /** Write `length` bytes of `data[offset…]` at `position`; resolves bytes written. Only on writable opens. */
  write?(data: Uint8Array, offset: number, length: number, position: number): Promise<number>
  /** Only on writable opens. */
  truncate?(size: number): Promise<void>
  /** fsync. Only on writable opens. */
  sync?(): Promise<void>
  /**
   * The ranges of `[start, end)` that may hold data (`SEEK_DATA`/`SEEK_HOLE`,
   * see data-ranges.ts); undefined when not known. Absent for transports
   * that cannot tell (SFTP): every byte is then read.
   */
  dataRanges?(start: number, end: number): Promise<DataRange[] | undefined>
  /** Release the handle. Must not throw for an already closed file. */
  close(): Promise<void>
}

/**
 * A file system as the readers see it. Implementations reject with errors that
 * carry a Node-style `code` (`'ENOENT'` for a missing path, `'EACCES'`, …) so the
 * readers can map them to `VmdkError` codes; any other error becomes `E_IO`.
 */
export interface FileAccess {
  /** Status of `path`, following symbolic links (ESXi datastores use them). */
  stat(path: string): Promise<FileStat>
  /**
   * Open a regular file. The readers call {@link stat} first and never open
   * anything but `kind: 'file'`; implementations must still not block on a FIFO
   * or device that replaced the file in between (locally: `O_NONBLOCK`).
   * `'r+'` (read-write) is only used by the local writer and may be refused.
   */
  open(path: string, mode: 'r' | 'r+'): Promise<RandomAccessFile>
  /**
   * Canonical path (symbolic links resolved), used to detect chains that loop
   * back on themselves. Without it, paths are compared as written (normalized).
   */
  realpath?(path: string): Promise<string>
  /** Largest single read worth issuing; larger reads are split. @default 1 MiB */
  readonly maxReadBytes?: number
  /** Reads kept in flight by one metadata load or one data read. @default 2 */
  readonly concurrency?: number
}

/** Default {@link FileAccess.maxReadBytes} of an implementation that does not say. */
export const DEFAULT_MAX_READ_BYTES = 1024 * 1024
/** Default {@link FileAccess.concurrency}. */
export const DEFAULT_CONCURRENCY = 2

/** The kind of a Node `Stats`. */
export function kindOf(st: Stats): FileKind {
  if (st.isFile()) return 'file'
  if (st.isDirectory()) return 'directory'
  if (st.isSymbolicLink()) return 'symlink'
  if (st.isFIFO()) return 'fifo'
  if (st.isSocket()) return 'socket'
  if (st.isBlockDevice()) return 'block-device'
  if (st.isCharacterDevice()) return 'character-device'
  return 'other'
}

function toFileStat(st: Stats): FileStat {
  return { kind: kindOf(st), size: st.size, allocatedBytes: st.blocks * 512 }
}

class LocalFile implements RandomAccessFile {
  readonly stat: FileStat
  readonly #fh: FileHandle
  #closed = false
  /** `SEEK_DATA` questions not yet answered (see {@link dataRanges}) */
  readonly #asking = new Set<Promise<DataRange[] | undefined>>()

  constructor(fh: FileHandle, st: FileStat) {
    this.#fh = fh
    this.stat = st
  }

  async read(buf: Uint8Array, bufOffset: number, length: number, position: number): Promise<number> {
    const { bytesRead } = await this.#fh.read(buf, bufOffset, length, position)
    return bytesRead
  }

  /**
   * Asked through the process's kept `SEEK_DATA` helper (data-ranges.ts
   * `keptSeekHelper`): one `python3` for the process, not one per question —
   * a scrub slice's holes, asked while an incremental ships, started 1–3
   * helpers per cycle, ~40 ms each on a quiet machine (issue #13). The
   * descriptor stays open until every question asked is answered (the
   * helper reopens it by number: a closed and reused number would be
   * another file).
   */
  async dataRanges(start: number, end: number): Promise<DataRange[] | undefined> {
    if (this.#closed) return undefined
    const answer = keptSeekHelper.dataRanges(this.#fh.fd, start, end)
    this.#asking.add(answer)
    try {
      return await answer
    } finally {
      this.#asking.delete(answer)
    }
  }

  async write(data: Uint8Array, offset: number, length: number, position: number): Promise<number> {
    const { bytesWritten } = await this.#fh.write(data, offset, length, position)
    return bytesWritten
  }

  async truncate(size: number): Promise<void> {
    await this.#fh.truncate(size)
  }
  async sync(): Promise<void> {
    await this.#fh.sync()
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    // questions never reject (unknown: undefined)
    await Promise.all(this.#asking)
    await this.#fh.close().catch(() => {})
  }
}

/**
 * The local file system through node:fs/promises (reads of up to 8 MiB, 2 in
 * flight). Files are opened with
 * `O_NONBLOCK | O_NOCTTY`, so even a FIFO or terminal swapped in after the
 * type check cannot block the open (and the `fstat` right after refuses it).
 */
export const localFileAccess: FileAccess = Object.freeze({
  async stat(path: string): Promise<FileStat> {
    return toFileStat(await stat(path))
  },
  async open(path: string, mode: 'r' | 'r+'): Promise<RandomAccessFile> {
    const flags = (mode === 'r+' ? constants.O_RDWR : constants.O_RDONLY) | constants.O_NONBLOCK | constants.O_NOCTTY
    const fh = await open(path, flags)
    try {
      return new LocalFile(fh, toFileStat(await fh.stat()))
    } catch (err) {
      await fh.close().catch(() => {})
      throw err
    }
  },
  async realpath(path: string): Promise<string> {
    return await realpath(path)
  },
  // local reads are cheap to issue large (a thread-pool hand-off each); grain tables are
  // still read 1 MiB at a time (TABLE_READ_BYTES)
  maxReadBytes: 8 * 1024 * 1024,
  concurrency: DEFAULT_CONCURRENCY,
})
