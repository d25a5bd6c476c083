import { VmdkError, ioError } from './errors.ts'
import { DEFAULT_CONCURRENCY, DEFAULT_MAX_READ_BYTES, type FileAccess, type FileKind, type RandomAccessFile } from './file-access.ts'
import { forEachLimited } from './concurrency.ts'
import type { DataRange } from './data-ranges.ts'

/** What a file is to the chain, for error messages ("parent descriptor … is a FIFO"). */
export type FileRole = 'disk' | 'parent descriptor' | 'extent file' | 'file'

const KIND_NAMES: Readonly<Record<FileKind, string>> = {
  file: 'a regular file',
  directory: 'a directory',
  symlink: 'a symbolic link',
  fifo: 'a FIFO',
  socket: 'a socket',
  'block-device': 'a block device',
  'character-device': 'a character device',
  other: 'not a regular file',
}

function notRegular(path: string, role: FileRole, kind: FileKind): VmdkError {
  return new VmdkError('E_NOT_REGULAR', `${role} is ${KIND_NAMES[kind]}, not a regular file; refusing to open it`, path)
}

/**
 * One open file of a chain, read at explicit positions through a
 * {@link FileAccess}. Large reads are split into `maxReadBytes` pieces with up
 * to `concurrency` in flight; nothing here is synchronous.
 */
export class DiskFile {
  readonly path: string
  readonly writable: boolean
  /** bytes allocated on disk when opened, when the transport knows it */
  readonly allocatedBytes: number | undefined
  readonly maxReadBytes: number
  readonly concurrency: number
  readonly #f: RandomAccessFile
  #size: number

  private constructor(path: string, f: RandomAccessFile, writable: boolean, files: FileAccess) {
    this.path = path
    this.#f = f
    this.#size = f.stat.size
    this.allocatedBytes = f.stat.allocatedBytes
    this.writable = writable
    this.maxReadBytes = Math.max(4096, files.maxReadBytes ?? DEFAULT_MAX_READ_BYTES)
    this.concurrency = Math.max(1, files.concurrency ?? DEFAULT_CONCURRENCY)
  }

  /**
   * Open a regular file: `stat` first (a FIFO, socket, device or directory is
   * refused with `E_NOT_REGULAR` before anything opens it), then open and check
   * the handle's own status again (the path may have changed in between).
   */
  static async open(files: FileAccess, path: string, opts: { writable?: boolean; role?: FileRole } = {}): Promise<DiskFile> {
    const role = opts.role ?? 'file'
    const writable = opts.writable === true
    let kind: FileKind
    try {
      kind = (await files.stat(path)).kind
    } catch (err) {
      throw ioError(err, path, `open ${role}`)
    }
    if (kind !== 'file') throw notRegular(path, role, kind)
    let f: RandomAccessFile
    try {
      f = await files.open(path, writable ? 'r+' : 'r')
    } catch (err) {
      throw ioError(err, path, `open ${role}`)
    }
    if (f.stat.kind !== 'file') {
      await f.close().catch(() => {})
      throw notRegular(path, role, f.stat.kind)
    }
    if (writable && (f.write === undefined || f.sync === undefined || f.truncate === undefined)) {
      await f.close().catch(() => {})
      throw new VmdkError('E_READONLY', 'the file access in use cannot write', path)
    }
    return new DiskFile(path, f, writable, files)
  }

  get size(): number {
    return this.#size
  }

  /** The ranges of `[start, end)` that may hold data, when the transport can tell (see data-ranges.ts). */
  async dataRanges(start: number, end: number): Promise<DataRange[] | undefined> {
    return await this.#f.dataRanges?.(start, end)
  }

  /**
   * Read exactly `length` bytes at `position` (into `into` when given, reused by
   * the caller); `E_TRUNCATED` if the file is shorter.
   */
  async readExact(position: number, length: number, what: string, into?: Buffer): Promise<Buffer> {
    if (position + length > this.#size) {
      throw new VmdkError('E_TRUNCATED', `${what} at ${position}+${length} lies past the end of the file (${this.#size} bytes)`, this.path)
    }
    const buf = into ?? Buffer.allocUnsafe(length)
    const got = await this.#read(buf, 0, length, position, `read ${what}`)
    if (got < length) throw new VmdkError('E_TRUNCATED', `${what}: short read (${got} of ${length} bytes)`, this.path)
    return buf
  }

  /** Read up to `length` bytes at `position` into buf; bytes past EOF read as zero (like QEMU). */
  async readInto(buf: Uint8Array, bufOffset: number, length: number, position: number): Promise<void> {
    const avail = Math.max(0, Math.min(length, this.#size - position))
    const got = avail > 0 ? await this.#read(buf, bufOffset, avail, position, 'read') : 0
    if (got < length) buf.fill(0, bufOffset + got, bufOffset + length)
  }

  /**
   * Read `length` bytes in pieces of at most maxReadBytes, `concurrency` at a
   * time; a piece cut short by EOF zero-fills its rest. Returns the bytes read
   * contiguously from the start.
   */
  async #read(buf: Uint8Array, bufOffset: number, length: number, position: number, what: string): Promise<number> {
    if (length <= this.maxReadBytes) {
      // one piece (most reads): no bookkeeping
      let done = 0
      try {
        while (done < length) {
          const r = await this.#f.read(buf, bufOffset + done, length - done, position + done)
          if (r === 0) break
          done += r
        }
      } catch (err) {
        throw ioError(err, this.path, what)
      }
      return done
    }
    const piece = this.maxReadBytes
    const pieces = Math.ceil(length / piece)
    const got = new Array<number>(pieces).fill(0)
    const one = async (k: number): Promise<void> => {
      const start = k * piece
      const n = Math.min(piece, length - start)
      let done = 0
      while (done < n) {
        const r = await this.#f.read(buf, bufOffset + start + done, n - done, position + start + done)
        if (r === 0) break
        done += r
      }
      got[k] = done
    }
    try {
      if (pieces === 1) await one(0)
      else
        await forEachLimited(got, this.concurrency, async (_, k) => {
          await one(k)
        })
    } catch (err) {
      throw ioError(err, this.path, what)
    }
    let total = 0
    for (let k = 0; k < pieces; k++) {
      total += got[k] ?? 0
      if ((got[k] ?? 0) < Math.min(piece, length - k * piece)) break
    }
    return total
  }

  async writeAt(data: Uint8Array, position: number): Promise<void> {
    const w = this.#f.write
    if (!this.writable || w === undefined) throw new VmdkError('E_READONLY', 'file opened read-only', this.path)
    try {
      let done = 0
      while (done < data.length) {
        done += await w.call(this.#f, data, done, data.length - done, position + done)
      }
    } catch (err) {
      throw ioError(err, this.path, 'write')
    }
    if (position + data.length > this.#size) this.#size = position + data.length
  }

  async truncate(size: number): Promise<void> {
    try {
      if (this.#f.truncate === undefined) throw new VmdkError('E_READONLY', 'file opened read-only', this.path)
      await this.#f.truncate(size)
    } catch (err) {
      throw ioError(err, this.path, 'truncate')
    }
    this.#size = size
  }

  async sync(): Promise<void> {
    try {
      if (this.#f.sync === undefined) throw new VmdkError('E_READONLY', 'file opened read-only', this.path)
      await this.#f.sync()
    } catch (err) {
      throw ioError(err, this.path, 'fsync')
    }
  }

  async close(): Promise<void> {
    await this.#f.close().catch(() => {})
  }
}
