/**
 * `@grainline/vmdk`'s {@link FileAccess} over the SFTP channel of the esxi
 * driver's SSH connection: datastores configured `{ "access": "sftp" }` are
 * read on the host itself, without a mount.
 *
 * - Reads: a read is split into requests of at most `maxReadBytes` (OpenSSH's
 *   sftp-server answers at most 255 KiB per request), up to `concurrency` in
 *   flight per call; the data lands directly in the caller's buffer, so memory
 *   is bounded by what the readers ask for.
 * - Read-only: files are opened `r` only (`r+` is refused with `EROFS`); only
 *   ESXi's snapshot operations change source files.
 * - Hostile files: the path is `stat`ed before it is opened and anything but a
 *   regular file is refused (`ENXIO`, `EISDIR`) — sftp-server opens without
 *   `O_NONBLOCK`, so opening a FIFO would stall the whole channel — and the
 *   opened handle is `fstat`ed again.
 * - A dropped connection (transport error, not an SFTP status) is retried:
 *   reconnect with backoff, reopen the handle (the file must still be a regular
 *   file), re-issue every outstanding request. Authentication, host key and
 *   configuration failures are permanent and thrown at once.
 */
import type { FileAccess, FileKind, FileStat, RandomAccessFile } from '@grainline/vmdk'
import type { Logger } from 'pino'
import type { SFTPWrapper, Stats } from 'ssh2'
import { setTimeout as sleep } from 'node:timers/promises'

/** Where the SFTP channel comes from (the driver's {@link EsxiSsh}). */
export interface SftpSession {
  /** the current channel; connects (again) when needed */
  sftp(): Promise<SFTPWrapper>
  /** forget a channel that failed with a transport error */
  invalidateSftp(channel: SFTPWrapper): void
}

/** Retry policy of a dropped connection. */
export interface SftpRetryOptions {
  /** attempts per request (the first included). @default 8 */
  readonly attempts?: number
  /** first backoff. @default 200 */
  readonly initialBackoffMs?: number
  /** largest backoff. @default 5000 */
  readonly maxBackoffMs?: number
}

/** Options of {@link SftpFileAccess}. */
export interface SftpFileAccessOptions {
  readonly logger: Logger
  /** largest request. @default 261120 (OpenSSH's max-read-length) */
  readonly maxReadBytes?: number
  /** requests in flight per load or read. @default 16 */
  readonly concurrency?: number
  readonly retry?: SftpRetryOptions
}

/** What an {@link SftpFileAccess} did (tests, logs). */
export interface SftpCounters {
  opens: number
  requests: number
  bytes: number
  /** requests (or stat/open calls) retried after a transport error */
  retried: number
  /** handles reopened on a new channel */
  reopened: number
}

/** OpenSSH sftp-server's `limits@openssh.com` max-read-length (256 KiB − 1 KiB). */
export const SFTP_MAX_READ_BYTES = 261_120

// SFTP status codes (draft-ietf-secsh-filexfer-02 §7) → Node-style codes
const STATUS_TO_CODE: Readonly<Record<number, string>> = {
  2: 'ENOENT',
  3: 'EACCES',
  4: 'EIO',
  5: 'EINVAL',
  8: 'ENOTSUP',
} as const
/** NO_CONNECTION (6), CONNECTION_LOST (7): transport failures */
const TRANSIENT_STATUS: ReadonlySet<number> = new Set([6, 7])
/** socket and stream failures of a connection going away */
const TRANSIENT_CODES: ReadonlySet<string> = new Set(['E_TIMEOUT', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNABORTED', 'ERR_STREAM_WRITE_AFTER_END', 'ERR_STREAM_DESTROYED'])
/** esxi connect failures that no retry fixes */
const PERMANENT: ReadonlySet<string> = new Set(['E_SSH_AUTH', 'E_HOST_KEY', 'E_CONFIG', 'E_ABORTED'])

/** A file-system error with a Node-style code, as vmdk's readers expect. */
function fsError(code: string, message: string, cause?: unknown): Error & { code: string } {
  const e = new Error(message, cause === undefined ? undefined : { cause }) as Error & { code: string }
  e.code = code
  return e
}

/** The kind of an SFTP `mode` (S_IFMT bits). */
export function kindOfMode(mode: number): FileKind {
  switch (mode & 0o170000) {
    case 0o100000:
      return 'file'
    case 0o040000:
      return 'directory'
    case 0o120000:
      return 'symlink'
    case 0o010000:
      return 'fifo'
    case 0o140000:
      return 'socket'
    case 0o060000:
      return 'block-device'
    case 0o020000:
      return 'character-device'
    default:
      return 'other'
  }
}

function toStat(st: Stats): FileStat {
  return { kind: kindOfMode(st.mode), size: st.size }
}

/** Is this failure a dropped transport (retry) rather than an answer (don't)? */
function isTransient(err: unknown): boolean {
  const code = (err as { code?: unknown }).code
  if (typeof code === 'number') return TRANSIENT_STATUS.has(code)
  if (typeof code === 'string') return !PERMANENT.has(code) && (code.startsWith('E_SSH') || TRANSIENT_CODES.has(code))
  // ssh2: "No response from server" (channel closed with requests outstanding), "Not connected", write after end
  return true
}

/** An SFTP answer as a Node-style error (vmdk maps ENOENT, EISDIR/ENXIO; anything else is E_IO). */
function mapError(err: unknown, path: string): unknown {
  const code = (err as { code?: unknown }).code
  if (typeof code === 'number') return fsError(STATUS_TO_CODE[code] ?? 'EIO', `sftp: ${path}: ${(err as Error).message}`, err)
  return err
}

function call<T>(fn: (cb: (err: Error | undefined | null, v: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    try {
      fn((err, v) => {
        if (err !== undefined && err !== null) reject(err)
        else resolve(v)
      })
    } catch (err) {
      reject(err)
    }
  })
}

/** {@link FileAccess} over the esxi driver's SFTP channel. */
export class SftpFileAccess implements FileAccess {
  readonly maxReadBytes: number
  readonly concurrency: number
  readonly counters: SftpCounters = { opens: 0, requests: 0, bytes: 0, retried: 0, reopened: 0 }
  readonly #session: SftpSession
  readonly #log: Logger
  readonly #retry: Required<SftpRetryOptions>

  constructor(session: SftpSession, opts: SftpFileAccessOptions) {
    this.#session = session
    this.#log = opts.logger
    this.maxReadBytes = Math.max(512, Math.min(opts.maxReadBytes ?? SFTP_MAX_READ_BYTES, SFTP_MAX_READ_BYTES))
    this.concurrency = Math.max(1, opts.concurrency ?? 16)
    this.#retry = { attempts: opts.retry?.attempts ?? 8, initialBackoffMs: opts.retry?.initialBackoffMs ?? 200, maxBackoffMs: opts.retry?.maxBackoffMs ?? 5000 }
  }

  /**
   * Run `op` on the current channel; on a transport error forget the channel,
   * back off and run it again on a new one (up to `attempts` times).
   * @internal
   */
  async withChannel<T>(what: string, path: string, op: (sftp: SFTPWrapper) => Promise<T>): Promise<T> {
    let backoff = this.#retry.initialBackoffMs
    for (let attempt = 1; ; attempt++) {
      let sftp: SFTPWrapper | undefined
      try {
        sftp = await this.#session.sftp()
        return await op(sftp)
      } catch (err) {
        if (!isTransient(err)) throw mapError(err, path)
        if (sftp !== undefined) this.#session.invalidateSftp(sftp)
        if (attempt >= this.#retry.attempts) {
          throw fsError('EIO', `sftp: ${what} ${path} failed ${attempt} times on a dropping connection: ${(err as Error).message}`, err)
        }
        this.counters.retried++
        this.#log.warn({ path, what, attempt, backoffMs: backoff, err }, 'sftp connection lost; reconnecting and retrying')
        await sleep(backoff)
        backoff = Math.min(backoff * 2, this.#retry.maxBackoffMs)
      }
    }
  }

  async stat(path: string): Promise<FileStat> {
    return toStat(await this.withChannel('stat', path, (s) => call<Stats>((cb) => s.stat(path, cb))))
  }

  async realpath(path: string): Promise<string> {
    return await this.withChannel('realpath', path, (s) => call<string>((cb) => s.realpath(path, cb)))
  }

  async open(path: string, mode: 'r' | 'r+'): Promise<RandomAccessFile> {
    if (mode !== 'r') throw fsError('EROFS', `sftp: ${path}: datastores reached over SFTP are read-only`)
    const opened = await this.withChannel('open', path, (s) => openChecked(s, path))
    this.counters.opens++
    return new SftpFile(this, path, opened)
  }
}

interface OpenHandle {
  readonly sftp: SFTPWrapper
  readonly handle: Buffer
  readonly stat: FileStat
}

/** stat, refuse non-regular files, open read-only, fstat again. */
async function openChecked(sftp: SFTPWrapper, path: string): Promise<OpenHandle> {
  const before = toStat(await call<Stats>((cb) => sftp.stat(path, cb)))
  if (before.kind !== 'file') throw fsError(before.kind === 'directory' ? 'EISDIR' : 'ENXIO', `sftp: ${path} is a ${before.kind}, not a regular file`)
  const handle = await call<Buffer>((cb) => sftp.open(path, 'r', cb))
  try {
    const st = toStat(await call<Stats>((cb) => sftp.fstat(handle, cb)))
    if (st.kind !== 'file') throw fsError('ENXIO', `sftp: ${path} became a ${st.kind} while being opened`)
    return { sftp, handle, stat: st }
  } catch (err) {
    sftp.close(handle, () => {})
    throw err
  }
}

class SftpFile implements RandomAccessFile {
  readonly stat: FileStat
  readonly #access: SftpFileAccess
  readonly #path: string
  #open: OpenHandle
  /** a reopen on a new channel in progress, shared by every request that needs it */
  #reopening: Promise<OpenHandle> | undefined
  #closed = false

  constructor(access: SftpFileAccess, path: string, opened: OpenHandle) {
    this.#access = access
    this.#path = path
    this.#open = opened
    this.stat = opened.stat
  }

  /** The handle valid on `sftp` (reopened there when the channel changed). */
  async #handleOn(sftp: SFTPWrapper): Promise<Buffer> {
    if (this.#open.sftp === sftp) return this.#open.handle
    if (this.#reopening === undefined) {
      this.#reopening = openChecked(sftp, this.#path).then(
        (h) => {
          this.#open = h
          this.#reopening = undefined
          this.#access.counters.reopened++
          return h
        },
        (err: unknown) => {
          this.#reopening = undefined
          throw err
        },
      )
    }
    const h = await this.#reopening
    if (h.sftp !== sftp) throw fsError('ECONNRESET', `sftp: ${this.#path}: the channel changed while reopening`)
    return h.handle
  }

  async read(buf: Uint8Array, bufOffset: number, length: number, position: number): Promise<number> {
    if (this.#closed) throw fsError('EBADF', `sftp: ${this.#path}: read after close`)
    if (length <= 0) return 0
    const target = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)
    const piece = this.#access.maxReadBytes
    const count = Math.ceil(length / piece)
    const got = new Array<number>(count).fill(0)
    let next = 0
    const worker = async (): Promise<void> => {
      for (;;) {
        const i = next++
        if (i >= count) return
        const off = i * piece
        const len = Math.min(piece, length - off)
        got[i] = await this.#readPiece(target, bufOffset + off, len, position + off)
      }
    }
    await Promise.all(Array.from({ length: Math.min(count, this.#access.concurrency) }, worker))
    // contiguous bytes from the start (a short piece is the end of the file)
    let total = 0
    for (let i = 0; i < count; i++) {
      total += got[i] as number
      if ((got[i] as number) < Math.min(piece, length - i * piece)) break
    }
    return total
  }

  /** One request, read to its end (SFTP may answer short), retried on a new channel after a drop. */
  async #readPiece(target: Buffer, off: number, len: number, pos: number): Promise<number> {
    let done = 0
    while (done < len) {
      const n = await this.#access.withChannel('read', this.#path, async (sftp) => {
        const handle = await this.#handleOn(sftp)
        this.#access.counters.requests++
        return await call<number>((cb) => sftp.read(handle, target, off + done, len - done, pos + done, cb))
      })
      if (n === 0) break
      this.#access.counters.bytes += n
      done += n
    }
    return done
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    const { sftp, handle } = this.#open
    // not awaited: a channel that dropped never answers, and the handle dies with it
    try {
      sftp.close(handle, () => {})
    } catch {}
  }
}
