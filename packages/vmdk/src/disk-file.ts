import { open, type FileHandle } from 'node:fs/promises'
import { readSync } from 'node:fs'
import { VmdkError, ioError } from './errors.ts'

/** Data reads up to this size are done synchronously (see {@link DiskFile.readInto}). */
const SYNC_READ_MAX = 64 * 1024

/**
 * A thin positional-I/O wrapper around one open file. Metadata (headers, grain
 * directories, grain tables) is read with `readSync` on purpose: a map of a large
 * delta reads tens of thousands of small tables, and the per-call cost of the
 * promise API would dominate (see scripts/bench-vmdk.mjs). Guest data is read
 * with the async API.
 */
export class DiskFile {
  readonly path: string
  readonly fh: FileHandle
  readonly writable: boolean
  #size: number
  /** bytes allocated on disk (st_blocks × 512) when opened */
  readonly allocatedBytes: number
  /** a regular file (not a block device) */
  readonly regular: boolean

  private constructor (path: string, fh: FileHandle, size: number, allocated: number, writable: boolean, regular: boolean) {
    this.path = path
    this.regular = regular
    this.fh = fh
    this.#size = size
    this.allocatedBytes = allocated
    this.writable = writable
  }

  static async open (path: string, writable = false): Promise<DiskFile> {
    let fh: FileHandle
    try {
      fh = await open(path, writable ? 'r+' : 'r')
    } catch (err) {
      throw ioError(err, path, 'open')
    }
    try {
      const st = await fh.stat()
      if (!st.isFile() && !st.isBlockDevice()) throw new VmdkError('E_FORMAT', 'not a regular file', path)
      return new DiskFile(path, fh, st.size, st.blocks * 512, writable, st.isFile())
    } catch (err) {
      await fh.close().catch(() => {})
      throw ioError(err, path, 'stat')
    }
  }

  get size (): number { return this.#size }

  /** Read exactly `length` bytes at `position` (sync); E_TRUNCATED if the file is shorter. */
  readMetaSync (position: number, length: number, what: string): Buffer {
    return this.readMetaSyncInto(Buffer.allocUnsafe(length), position, length, what)
  }

  /** Like {@link readMetaSync} into a caller's (reused) buffer; returns `buf`. */
  readMetaSyncInto (buf: Buffer, position: number, length: number, what: string): Buffer {
    if (position + length > this.#size) {
      throw new VmdkError('E_TRUNCATED', `${what} at ${position}+${length} lies past the end of the file (${this.#size} bytes)`, this.path)
    }
    let done = 0
    try {
      while (done < length) {
        const n = readSync(this.fh.fd, buf, done, length - done, position + done)
        if (n === 0) throw new VmdkError('E_TRUNCATED', `${what}: short read`, this.path)
        done += n
      }
    } catch (err) {
      throw ioError(err, this.path, `read ${what}`)
    }
    return buf
  }

  /** Read up to `length` bytes at `position` into buf; bytes past EOF read as zero (like QEMU). */
  async readInto (buf: Uint8Array, bufOffset: number, length: number, position: number): Promise<void> {
    let done = 0
    const avail = Math.max(0, Math.min(length, this.#size - position))
    try {
      if (avail <= SYNC_READ_MAX) {
        // small reads (scattered 4 KiB grains) cost more in the thread-pool hop than in the copy
        while (done < avail) {
          const n = readSync(this.fh.fd, buf, bufOffset + done, avail - done, position + done)
          if (n === 0) break
          done += n
        }
      } else {
        while (done < avail) {
          const { bytesRead } = await this.fh.read(buf, bufOffset + done, avail - done, position + done)
          if (bytesRead === 0) break
          done += bytesRead
        }
      }
    } catch (err) {
      throw ioError(err, this.path, 'read')
    }
    if (done < length) buf.fill(0, bufOffset + done, bufOffset + length)
  }

  async writeAt (data: Uint8Array, position: number): Promise<void> {
    if (!this.writable) throw new VmdkError('E_READONLY', 'file opened read-only', this.path)
    try {
      let done = 0
      while (done < data.length) {
        const { bytesWritten } = await this.fh.write(data, done, data.length - done, position + done)
        done += bytesWritten
      }
    } catch (err) {
      throw ioError(err, this.path, 'write')
    }
    if (position + data.length > this.#size) this.#size = position + data.length
  }

  async truncate (size: number): Promise<void> {
    try {
      await this.fh.truncate(size)
    } catch (err) {
      throw ioError(err, this.path, 'truncate')
    }
    this.#size = size
  }

  async sync (): Promise<void> {
    try { await this.fh.sync() } catch (err) { throw ioError(err, this.path, 'fsync') }
  }

  async close (): Promise<void> {
    await this.fh.close().catch(() => {})
  }
}
