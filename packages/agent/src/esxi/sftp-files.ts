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
 * - Deadlines: every request (stat, open, read, …) and the opening of a
 *   channel must be answered within `requestTimeoutMs`. An sftp-server that
 *   hangs while SSH stays alive (a stuck datastore: keepalives still pass)
 *   counts as a dropped connection: the whole SSH connection is dropped (not
 *   only the channel: a host's sessions per connection are few, and a hung
 *   sftp-server keeps its own) and the request retried on a new one. A read
 *   lands in a scratch buffer of this access and is copied to the caller's
 *   only once answered, so an answer arriving after its deadline can never
 *   write into a buffer the caller has since reused (the abandoned scratch
 *   buffer is dropped). A read that fails returns only once none of its
 *   pieces is in flight.
 * - A stop (`signal`) ends every wait of this access at once with
 *   `E_ABORTED`: requests in flight, the opening of a channel or connection,
 *   a backoff.
 */
import type { FileAccess, FileKind, FileStat, RandomAccessFile } from '@grainline/vmdk'
import type { Logger } from 'pino'
import type { SFTPWrapper, Stats } from 'ssh2'
import { setTimeout as sleep } from 'node:timers/promises'

/** Where the SFTP channel comes from (the driver's {@link EsxiSsh}). */
export interface SftpSession {
  /**
   * the current channel; connects (again) when needed. A channel that does
   * not open within `openTimeoutMs` fails with `E_TIMEOUT` and its connection
   * is dropped (by the session); the stop ends the wait.
   */
  sftp(opts: { signal?: AbortSignal; openTimeoutMs: number }): Promise<SFTPWrapper>
  /** forget a channel that failed with a transport error */
  invalidateSftp(channel: SFTPWrapper): void
  /**
   * A request on `channel` got no answer in time (undefined: the channel
   * still opening on the current connection): drop its whole SSH connection. Its channels, their hung
   * sftp-servers' sessions and any late answer go with it; the next
   * {@link sftp} connects anew.
   */
  dropConnection(channel: SFTPWrapper | undefined): void
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
  /** how long one request may go unanswered before its connection counts as dead (1 ms … 2^31−1 ms). @default 60000 */
  readonly requestTimeoutMs?: number
  /** a stop: every request and backoff ends at once with `E_ABORTED` */
  readonly signal?: AbortSignal
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
  /** requests (or channel openings) not answered within `requestTimeoutMs` (their connection was dropped) */
  timedOut: number
  /** scratch read buffers allocated (the rest were reused) */
  scratchAllocated: number
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

/** One SFTP request as a promise, with its deadline and the stop (see {@link SftpFileAccess.call}). */
type Call = <T>(what: string, path: string, fn: (cb: (err: Error | undefined | null, v: T) => void) => void) => Promise<T>

/** Scratch buffers kept for reuse beyond this many are left to the GC. */
const SCRATCH_KEPT = 32
/** The longest timer Node keeps (a larger one fires after 1 ms). */
const MAX_TIMER_MS = 2 ** 31 - 1

/** {@link FileAccess} over the esxi driver's SFTP channel. */
export class SftpFileAccess implements FileAccess {
  readonly maxReadBytes: number
  readonly concurrency: number
  readonly requestTimeoutMs: number
  readonly counters: SftpCounters = { opens: 0, requests: 0, bytes: 0, retried: 0, reopened: 0, timedOut: 0, scratchAllocated: 0 }
  readonly #session: SftpSession
  readonly #log: Logger
  readonly #retry: Required<SftpRetryOptions>
  readonly #signal: AbortSignal | undefined
  /** how to end each request in flight at a stop */
  readonly #inFlight = new Set<() => void>()
  /** free read buffers of `maxReadBytes` (see {@link takeScratch}) */
  readonly #scratch: Buffer[] = []

  constructor(session: SftpSession, opts: SftpFileAccessOptions) {
    this.#session = session
    this.#log = opts.logger
    this.maxReadBytes = Math.max(512, Math.min(opts.maxReadBytes ?? SFTP_MAX_READ_BYTES, SFTP_MAX_READ_BYTES))
    this.concurrency = Math.max(1, opts.concurrency ?? 16)
    this.#retry = { attempts: opts.retry?.attempts ?? 8, initialBackoffMs: opts.retry?.initialBackoffMs ?? 200, maxBackoffMs: opts.retry?.maxBackoffMs ?? 5000 }
    const timeout = opts.requestTimeoutMs ?? 60_000
    this.requestTimeoutMs = Number.isFinite(timeout) ? Math.min(Math.max(1, timeout), MAX_TIMER_MS) : 60_000
    this.#signal = opts.signal
    // one listener for every request in flight (not one each: a read has many); removed by close()
    this.#signal?.addEventListener('abort', this.#onStop, { once: true })
  }

  readonly #onStop = (): void => {
    for (const stop of [...this.#inFlight]) stop()
  }

  /**
   * Done with this access (the driver closes): forget the run's signal and
   * the kept scratch buffers. Requests still in flight end at their deadline.
   */
  close(): void {
    this.#signal?.removeEventListener('abort', this.#onStop)
    this.#scratch.length = 0
  }

  #stopped(): boolean {
    return this.#signal?.aborted === true
  }

  #aborted(what: string, path: string): Error & { code: string } {
    return fsError('E_ABORTED', `sftp: ${what} ${path}: stopped`, this.#signal?.reason)
  }

  /**
   * Run one request: its answer, or `E_TIMEOUT` when none came within
   * `requestTimeoutMs` (a transient error: {@link withChannel} ends the
   * channel and retries), or `E_ABORTED` at a stop.
   * @internal
   */
  readonly call: Call = <T>(what: string, path: string, fn: (cb: (err: Error | undefined | null, v: T) => void) => void): Promise<T> => this.#bounded<T>(what, path, fn)

  /** `fn`'s answer within the deadline, E_TIMEOUT after it, E_ABORTED at a stop (see {@link call}). */
  #bounded<T>(what: string, path: string, fn: (cb: (err: Error | undefined | null, v: T) => void) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.#stopped()) {
        reject(this.#aborted(what, path))
        return
      }
      let settled = false
      const settle = (): boolean => {
        if (settled) return false
        settled = true
        clearTimeout(timer)
        this.#inFlight.delete(onAbort)
        return true
      }
      const onAbort = (): void => {
        if (settle()) reject(this.#aborted(what, path))
      }
      const timer = setTimeout(() => {
        if (!settle()) return
        this.counters.timedOut++
        reject(fsError('E_TIMEOUT', `sftp: ${what} ${path}: no answer within ${this.requestTimeoutMs} ms (the datastore or sftp-server hangs)`))
      }, this.requestTimeoutMs)
      this.#inFlight.add(onAbort)
      try {
        fn((err, v) => {
          if (!settle()) return
          if (err !== undefined && err !== null) reject(err)
          else resolve(v)
        })
      } catch (err) {
        if (settle()) reject(err)
      }
    })
  }

  /** `p`, or `E_ABORTED` at once at a stop (`p` goes on; its failure is ignored then). */
  #untilStopped<T>(p: Promise<T>, what: string, path: string): Promise<T> {
    p.catch(() => {})
    return new Promise<T>((resolve, reject) => {
      if (this.#stopped()) {
        reject(this.#aborted(what, path))
        return
      }
      const onStop = (): void => {
        this.#inFlight.delete(onStop)
        reject(this.#aborted(what, path))
      }
      this.#inFlight.add(onStop)
      p.then(
        (v) => {
          this.#inFlight.delete(onStop)
          resolve(v)
        },
        (err: unknown) => {
          this.#inFlight.delete(onStop)
          reject(err)
        },
      )
    })
  }

  /**
   * A read buffer of `maxReadBytes`; give it back with {@link keepScratch}
   * only once ssh2 answered the request it was lent to (a request that timed
   * out may still be answered into it later).
   * @internal
   */
  takeScratch(): Buffer {
    const kept = this.#scratch.pop()
    if (kept !== undefined) return kept
    this.counters.scratchAllocated++
    return Buffer.allocUnsafeSlow(this.maxReadBytes)
  }

  /** @internal */
  keepScratch(b: Buffer): void {
    if (this.#scratch.length < SCRATCH_KEPT) this.#scratch.push(b)
  }

  /**
   * Run `op` on the current channel; on a transport error forget the channel,
   * back off and run it again on a new one (up to `attempts` times).
   * @internal
   */
  async withChannel<T>(what: string, path: string, op: (sftp: SFTPWrapper) => Promise<T>): Promise<T> {
    let backoff = this.#retry.initialBackoffMs
    for (let attempt = 1; ; attempt++) {
      if (this.#stopped()) throw this.#aborted(what, path)
      let sftp: SFTPWrapper | undefined
      try {
        // connecting has its own timeout; the channel's opening has the requests' deadline (the session drops
        // a connection whose channel never opens); both hear the stop
        sftp = await this.#untilStopped(this.#session.sftp({ openTimeoutMs: this.requestTimeoutMs, ...(this.#signal === undefined ? {} : { signal: this.#signal }) }), what, path)
        return await op(sftp)
      } catch (err) {
        // a stop ends the request with E_ABORTED, and whatever failed with it is not retried
        if (this.#stopped()) throw this.#aborted(what, path)
        if (!isTransient(err)) throw mapError(err, path)
        const timedOut = (err as { code?: unknown }).code === 'E_TIMEOUT'
        // no answer in time: the whole connection goes (its hung sftp-server keeps a session of the host's few);
        // a channel that never opened took its connection with it already
        if (timedOut && sftp === undefined) this.counters.timedOut++
        if (timedOut && sftp !== undefined) this.#session.dropConnection(sftp)
        else if (sftp !== undefined) this.#session.invalidateSftp(sftp)
        if (attempt >= this.#retry.attempts) {
          const why = timedOut ? `no answer within ${this.requestTimeoutMs} ms` : 'on a dropping connection'
          throw fsError('EIO', `sftp: ${what} ${path} failed ${attempt} times (${why}): ${(err as Error).message}`, err)
        }
        this.counters.retried++
        this.#log.warn(
          { path, what, attempt, backoffMs: backoff, err },
          timedOut ? 'sftp request unanswered (a hung datastore or sftp-server?); reconnecting and retrying' : 'sftp connection lost; reconnecting and retrying',
        )
        try {
          await sleep(backoff, undefined, this.#signal === undefined ? {} : { signal: this.#signal })
        } catch {
          throw this.#aborted(what, path)
        }
        backoff = Math.min(backoff * 2, this.#retry.maxBackoffMs)
      }
    }
  }

  async stat(path: string): Promise<FileStat> {
    return toStat(await this.withChannel('stat', path, (s) => this.call<Stats>('stat', path, (cb) => s.stat(path, cb))))
  }

  async realpath(path: string): Promise<string> {
    return await this.withChannel('realpath', path, (s) => this.call<string>('realpath', path, (cb) => s.realpath(path, cb)))
  }

  async open(path: string, mode: 'r' | 'r+'): Promise<RandomAccessFile> {
    if (mode !== 'r') throw fsError('EROFS', `sftp: ${path}: datastores reached over SFTP are read-only`)
    const opened = await this.withChannel('open', path, (s) => openChecked(s, path, this.call))
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
async function openChecked(sftp: SFTPWrapper, path: string, call: Call): Promise<OpenHandle> {
  const before = toStat(await call<Stats>('stat', path, (cb) => sftp.stat(path, cb)))
  if (before.kind !== 'file') throw fsError(before.kind === 'directory' ? 'EISDIR' : 'ENXIO', `sftp: ${path} is a ${before.kind}, not a regular file`)
  // a handle opened after its deadline is never closed here: its channel is ended, which closes it
  const handle = await call<Buffer>('open', path, (cb) => sftp.open(path, 'r', cb))
  try {
    const st = toStat(await call<Stats>('fstat', path, (cb) => sftp.fstat(handle, cb)))
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
      this.#reopening = openChecked(sftp, this.#path, this.#access.call).then(
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
    let failed = false
    const worker = async (): Promise<void> => {
      for (;;) {
        const i = next++
        if (i >= count || failed) return
        const off = i * piece
        const len = Math.min(piece, length - off)
        try {
          got[i] = await this.#readPiece(target, bufOffset + off, len, position + off)
        } catch (err) {
          failed = true
          throw err
        }
      }
    }
    // a failed read returns once none of its pieces is in flight: nothing writes into `buf` after it
    const settled = await Promise.allSettled(Array.from({ length: Math.min(count, this.#access.concurrency) }, worker))
    const failure = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failure !== undefined) throw failure.reason
    // contiguous bytes from the start (a short piece is the end of the file)
    let total = 0
    for (let i = 0; i < count; i++) {
      total += got[i] as number
      if ((got[i] as number) < Math.min(piece, length - i * piece)) break
    }
    return total
  }

  /**
   * One request, read to its end (SFTP may answer short), retried on a new
   * channel after a drop or a missed deadline. The answer lands in a scratch
   * buffer and is copied to `target` once answered: a request that missed its
   * deadline keeps its scratch buffer (ssh2 may still write into it) and
   * never touches `target` again.
   */
  async #readPiece(target: Buffer, off: number, len: number, pos: number): Promise<number> {
    const access = this.#access
    let done = 0
    while (done < len) {
      const n = await access.withChannel('read', this.#path, async (sftp) => {
        const handle = await this.#handleOn(sftp)
        access.counters.requests++
        const scratch = access.takeScratch()
        const want = len - done
        let answered = false
        try {
          const got = await access.call<number>('read', this.#path, (cb) =>
            sftp.read(handle, scratch, 0, want, pos + done, (err, nb) => {
              answered = true
              cb(err, nb)
            }),
          )
          const n = Math.min(got, want)
          scratch.copy(target, off + done, 0, n)
          return n
        } finally {
          // answered (data or an error): ssh2 is done with it; otherwise it may still write into it
          if (answered) access.keepScratch(scratch)
        }
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
