/**
 * Reads and writes of an RBD image through one long-lived helper process
 * per open image: Python's `rbd`/`rados` modules from Ceph's own
 * packages (`python3-rbd`; there is no maintained Node binding for librbd),
 * run by `/usr/bin/python3` (or `GRAINLINE_PYTHON`) like the lock helper.
 * `rbd export` streams a whole image from its start; resync maps and block
 * checks need a few blocks anywhere, and the apply writes batch after batch
 * (one `rbd import-diff` plus one `rados append` process per batch cost
 * two cluster connections each), so one process connects once and then
 * answers framed requests on stdin/stdout:
 *
 * - request: `u8 op • u64le offset • u32le length` (13 bytes), then for a
 *   write or a log append `length` bytes; ops: 1 read, 2 write, 3 write
 *   zeros, 4 flush the image and then append the bytes to the log object,
 *   5 read the side object, 6 write the side object at an offset, 7 replace
 *   the side object (write_full); a read, write or append of at most
 *   {@link MAX_READ_BYTES} (the helper refuses more). The side object is a
 *   kept block map (ceph-kept-map.ts): readable by a reader, writable only by
 *   a helper opened `side.writable` (the image stays read-only);
 * - the first answer: `u64le size • u64le snapshot id` (0 for a head);
 * - answer: `u8 status (0 ok, 1 error, 2 no such side object, 3 the pool is full:
 *   ENOSPC or EDQUOT, 4 this client is blocklisted: fenced) • u32le length • bytes` (read data,
 *   or the error message in UTF-8), in request order (requests are pipelined).
 *
 * Opened for reading, the image (a snapshot when given) is read-only.
 * Opened for writing, it is the head: the helper first checks that the base
 * snapshot exists (what `import-diff`'s from-snapshot guard checked; the
 * image was grown to the capacity by the session client, ceph-lock.ts); a
 * writer (and a side writer) first registers its client address for the
 * VM's lease (`fence`: ceph-lock.ts, fencing); the log append (op 4) returns only after
 * `flush` returned, so an acknowledged batch is in the cluster. The helper
 * exits at EOF on stdin, so it dies with its parent (a receiver killed with
 * -9 leaves no helper behind: unflushed writes are not in the log and are
 * resent).
 *
 * Deadline: a request (or the open) without an answer for
 * `cephTimeouts.helperMs` kills the helper; every request waiting fails with
 * `E_IO` naming the helper and the request (a helper that hangs never hangs
 * the session).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { ReceiverError } from '../../errors.ts'
import { CephCommandError, cephTimeouts, type CephTarget } from './rbd-cli.ts'
import { fencedError, type CephFence } from './ceph-lock.ts'
import { IMAGE_HELPER } from './rbd-image-helper.ts'

/** Largest single read the helper answers (bounds its memory and each frame). @default 4 MiB */
export const MAX_READ_BYTES = 4 * 1024 * 1024

/** How long a writer may take to close its image and exit before it is killed. @default 30 s */
const WRITER_EXIT_MS = 30_000

/** Write-zeros requests are split at this size (the u32 length). */
const ZERO_CHUNK = 1024 * 1024 * 1024

/** The Python the Ceph helpers run (Debian's, which has python3-rados/python3-rbd). */
export function cephPython(): string {
  return process.env['GRAINLINE_PYTHON'] ?? '/usr/bin/python3'
}

interface Waiter {
  resolve(b: Buffer): void
  reject(e: Error): void
  /** the request, named in a deadline's error */
  what: string
  /** a write (the longer deadline) */
  write: boolean
}

const OPS = ['', 'read', 'write', 'write zeros', 'flush and log', 'read side object', 'write side object', 'replace side object']

/** The deadline of a helper's requests: reads as Ceph queries, anything else as Ceph writes (rbd-cli.ts `cephTimeouts`). */
function helperDeadlineMs(write: boolean): number {
  return write ? cephTimeouts.commandMs : cephTimeouts.queryMs
}

/** An open image (or snapshot) answering reads; see the file comment. */
export class RbdImage {
  readonly size: number
  readonly label: string
  private readonly proc: ChildProcess
  private readonly writing: boolean
  private readonly waiting: Waiter[] = []
  private buf: Buffer = Buffer.alloc(0)
  private dead: Error | undefined
  /** the deadline of the oldest request waiting (restarted by every answer) */
  private timer: NodeJS.Timeout | undefined
  /** the VM whose lease a writer is registered for (named by a fencing error) */
  private readonly vm: string
  /** bytes read through this reader */
  bytesRead = 0
  /** the id of the snapshot opened for reading (a snapshot removed and taken again under its name has another id); 0 for a head */
  snapId = 0

  private constructor(proc: ChildProcess, size: number, label: string, rest: Buffer, writing: boolean, vm: string) {
    this.writing = writing
    this.vm = vm
    this.proc = proc
    this.size = size
    this.label = label
    this.buf = rest
    proc.stdout?.on('data', (b: Buffer) => this.onData(b))
    proc.on('close', (code) => this.fail(new ReceiverError('E_IO', `the librbd helper of ${label} exited (${code ?? 'signal'})`)))
    this.onData(Buffer.alloc(0))
  }

  /**
   * Open `image` (at `snap` when given) of the target's pool for reading;
   * with `write`, its head for writing (`snap` is then the base snapshot
   * that must exist, `log` the extent log object, `capacity` the image's size).
   * `fence` (a writer, a side writer): the lease its address is registered
   * for before it writes — the caller confirms the lease (CephLock.confirm) before its first write.
   * @throws ReceiverError E_IO when Python, its rbd module or the cluster fail (Ceph's message quoted)
   */
  static async open(
    t: CephTarget,
    image: string,
    snap: string | null,
    write?: { readonly log: string; readonly capacity: number; readonly signal?: AbortSignal; readonly fence?: CephFence },
    side?: { readonly object: string; readonly writable?: boolean; readonly fence?: CephFence },
  ): Promise<RbdImage> {
    const label = `${t.pool}/${image}${snap === null ? '' : `@${snap}`}`
    const mode = write !== undefined ? ['write', write.log, String(write.capacity)] : [side?.writable === true ? 'side' : 'read', side?.object ?? '', '0']
    const args = ['-c', IMAGE_HELPER, t.conf ?? '', t.id ?? '', t.keyring ?? '', t.pool, image, snap ?? '', String(MAX_READ_BYTES), ...mode]
    const fence = write?.fence ?? side?.fence
    args.push(fence?.object ?? '', fence === undefined ? '' : `${fence.cookie}.img`)
    const proc = spawn(cephPython(), args, { stdio: ['pipe', 'pipe', 'pipe'] })
    proc.stdin?.on('error', () => {})
    const err: Buffer[] = []
    proc.stderr?.on('data', (b: Buffer) => {
      if (err.length < 32) err.push(b)
    })
    const first = await new Promise<{ status: number; data: Buffer; rest: Buffer } | string>((resolve) => {
      let acc = Buffer.alloc(0)
      const onData = (b: Buffer): void => {
        acc = Buffer.concat([acc, b])
        if (acc.length < 5) return
        const n = acc.readUInt32LE(1)
        if (n > 65536) {
          resolve(`a first frame of ${n} bytes`)
          return
        }
        if (acc.length < 5 + n) return
        proc.stdout?.off('data', onData)
        resolve({ status: acc[0] as number, data: acc.subarray(5, 5 + n), rest: acc.subarray(5 + n) })
      }
      proc.stdout?.on('data', onData)
      proc.on('error', (e) => resolve(`cannot run ${cephPython()}: ${e.message}`))
      proc.on('close', (code) => resolve(`exit ${code}`))
      const ms = helperDeadlineMs(write !== undefined)
      const timer = setTimeout(() => resolve(`no answer in ${Math.round(ms / 1000)} s, killed: is the cluster healthy (ceph -s)?`), ms)
      proc.on('close', () => clearTimeout(timer))
      proc.stdout?.once('data', () => clearTimeout(timer))
      // a writer's open waits for the cluster (a full pool pauses it): its owner may give up
      write?.signal?.addEventListener('abort', () => resolve('aborted'), { once: true })
    })
    if (first === 'aborted') {
      proc.kill('SIGKILL')
      throw write?.signal?.reason instanceof Error ? write.signal.reason : new ReceiverError('E_IO', `opening ${label} was given up`)
    }
    if (typeof first !== 'string' && first.status === 0 && first.data.length === 16) {
      const img = new RbdImage(proc, Number(first.data.readBigUInt64LE(0)), label, first.rest, write !== undefined, fence?.vm ?? label)
      img.snapId = Number(first.data.readBigUInt64LE(8))
      return img
    }
    proc.kill('SIGKILL')
    const why = typeof first === 'string' ? `${first}: ${Buffer.concat(err).toString('utf8').trim().slice(-1024)}` : first.data.toString('utf8')
    // the helper's stderr may name the client's ceph.conf or keyring and the cluster's addresses: the log keeps it (SPEC §7)
    throw new ReceiverError('E_IO', `cannot open ${label} (librbd helper, python3-rbd): ${why}`, {
      peerMessage: `cannot open ${label} on the receiver (librbd helper): its error is in the receiver's log, for its operator`,
    })
  }

  private onData(b: Buffer): void {
    this.buf = this.buf.length === 0 ? b : Buffer.concat([this.buf, b])
    while (this.buf.length >= 5) {
      const n = this.buf.readUInt32LE(1)
      if (n > MAX_READ_BYTES) {
        this.fail(new ReceiverError('E_IO', `the librbd helper of ${this.label} sent a frame of ${n} bytes`))
        return
      }
      if (this.buf.length < 5 + n) return
      const status = this.buf[0] as number
      const data = Buffer.from(this.buf.subarray(5, 5 + n))
      this.buf = this.buf.subarray(5 + n)
      const w = this.waiting.shift()
      this.rearm()
      if (w === undefined) {
        this.fail(new ReceiverError('E_IO', `the librbd helper of ${this.label} answered a request never made`))
        return
      }
      if (status === 0) w.resolve(data)
      else if (status === 2) w.reject(new ReceiverError('E_NOT_FOUND', `${this.label}: the side object does not exist`))
      else if (status === 4) w.reject(fencedError(this.vm, `${this.label}: ${data.toString('utf8').slice(0, 512)}`))
      else if (status === 3)
        w.reject(
          new ReceiverError('E_NO_SPACE', `${this.label}: the pool is full (${data.toString('utf8').slice(0, 512)}): free space in the pool or raise its quota; the cycle then resumes`, {
            peerMessage: `${this.label}: the Ceph pool is full: the receiver's operator frees space in the pool or raises its quota; the cycle then resumes`,
          }),
        )
      // librbd's own text (the helper's exception) stays in the log (SPEC §7)
      else
        w.reject(
          new ReceiverError('E_IO', `${this.label}: ${data.toString('utf8').slice(0, 1024)}`, {
            peerMessage: `${this.label}: the librbd helper's request failed on the receiver: its error is in the receiver's log`,
          }),
        )
    }
  }

  /** Give up every request in flight with `e` and kill the helper (a writer paused by a full pool: what it did not log is resent). */
  kill(e: Error): void {
    this.fail(e)
  }

  /** Restart the deadline for the oldest request waiting (none: stop it). */
  private rearm(): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    if (this.waiting.length === 0 || this.dead !== undefined) return
    const ms = helperDeadlineMs(this.waiting.some((w) => w.write))
    const what = (this.waiting[0] as Waiter).what
    this.timer = setTimeout(() => {
      this.fail(new CephCommandError(`librbd helper of ${this.label}: ${what}`, null, `no answer in ${Math.round(ms / 1000)} s, killed: is the cluster healthy (ceph -s)?`, true))
    }, ms)
  }

  private fail(e: Error): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    if (this.dead === undefined) this.dead = e
    for (const w of this.waiting.splice(0)) w.reject(e)
    this.proc.kill('SIGKILL')
  }

  /** One request (op, offset, length, body) of at most MAX_READ_BYTES of data. */
  private request(op: number, offset: number, length: number, body?: Uint8Array): Promise<Buffer> {
    if (this.dead !== undefined) return Promise.reject(this.dead)
    return new Promise<Buffer>((resolve, reject) => {
      this.waiting.push({ resolve, reject, what: `${OPS[op] ?? `op ${op}`} at ${offset} (${length} bytes)`, write: op !== 1 && op !== 5 })
      if (this.timer === undefined) this.rearm()
      const h = Buffer.alloc(13)
      h.writeUInt8(op, 0)
      h.writeBigUInt64LE(BigInt(offset), 1)
      h.writeUInt32LE(length, 9)
      this.proc.stdin?.write(h)
      if (body !== undefined && body.length > 0) this.proc.stdin?.write(body)
    })
  }

  private readOne(offset: number, length: number): Promise<Buffer> {
    return this.request(1, offset, length)
  }

  /**
   * Write `data` at `offset` into the head (split into requests of at most
   * MAX_READ_BYTES, pipelined); not durable before {@link flushAndLog}.
   * @throws ReceiverError E_IO
   */
  async write(offset: number, data: Uint8Array): Promise<void> {
    const parts: Array<Promise<Buffer>> = []
    for (let at = 0; at < data.length; at += MAX_READ_BYTES) parts.push(this.request(2, offset + at, Math.min(MAX_READ_BYTES, data.length - at), data.subarray(at, at + MAX_READ_BYTES)))
    for (const p of parts) p.catch(() => {})
    await Promise.all(parts)
  }

  /** Make `length` bytes at `offset` read as zeros (librbd write_zeroes, split at 1 GiB). */
  async zero(offset: number, length: number): Promise<void> {
    const parts: Array<Promise<Buffer>> = []
    for (let at = 0; at < length; at += ZERO_CHUNK) parts.push(this.request(3, offset + at, Math.min(ZERO_CHUNK, length - at)))
    for (const p of parts) p.catch(() => {})
    await Promise.all(parts)
  }

  /**
   * Flush every write before it, then append `record` to the log object:
   * once this returns, the writes and their record are in the cluster.
   * @throws ReceiverError E_IO (the record is not appended when the flush failed)
   */
  async flushAndLog(record: Uint8Array): Promise<void> {
    if (record.length > MAX_READ_BYTES) throw new ReceiverError('E_IO', `a log record of ${record.length} bytes for ${this.label}, at most ${MAX_READ_BYTES}`)
    await this.request(4, 0, record.length, record)
  }

  /**
   * Read `length` bytes at `offset` (split into requests of at most
   * MAX_READ_BYTES, pipelined). Bytes past the image's end read as zeros.
   * @throws ReceiverError E_IO
   */
  async read(offset: number, length: number): Promise<Buffer> {
    const inside = Math.max(0, Math.min(length, this.size - offset))
    const parts: Array<Promise<Buffer>> = []
    for (let at = 0; at < inside; at += MAX_READ_BYTES) parts.push(this.readOne(offset + at, Math.min(MAX_READ_BYTES, inside - at)))
    // every part settles (none left unhandled when an earlier one fails)
    for (const p of parts) p.catch(() => {})
    const got = await Promise.all(parts)
    this.bytesRead += inside
    if (inside === length) return got.length === 1 ? (got[0] as Buffer) : Buffer.concat(got)
    return Buffer.concat([...got, Buffer.alloc(length - inside)])
  }

  /**
   * Read `length` bytes at `offset` of the side object (opened with `side`:
   * a kept block map), split into requests of at most MAX_READ_BYTES; shorter
   * when the object ends first.
   * @throws ReceiverError E_NOT_FOUND (no such object), E_IO
   */
  async readSide(offset: number, length: number): Promise<Buffer> {
    const parts: Array<Promise<Buffer>> = []
    for (let at = 0; at < length; at += MAX_READ_BYTES) parts.push(this.request(5, offset + at, Math.min(MAX_READ_BYTES, length - at)))
    for (const p of parts) p.catch(() => {})
    return Buffer.concat(await Promise.all(parts))
  }

  /**
   * Write `data` into the side object (opened with `side.writable`): the
   * first part replaces the object whole when `full` (RADOS write_full), the
   * rest is written at its offsets; parts of at most MAX_READ_BYTES.
   * @throws ReceiverError E_IO
   */
  async writeSide(offset: number, data: Uint8Array, full = false): Promise<void> {
    for (let at = 0; at < data.length || (at === 0 && full); at += MAX_READ_BYTES) {
      const part = data.subarray(at, at + MAX_READ_BYTES)
      await this.request(full && at === 0 ? 7 : 6, offset + at, part.length, part)
    }
  }

  /**
   * Stop the helper (idempotent). A reader is killed; a writer is let go
   * at EOF so that librbd releases the image's exclusive lock (a killed
   * owner's lock holds the next writer — `rbd snap create` at commit — until
   * the cluster times its watch out), and killed only if it has not exited
   * within {@link WRITER_EXIT_MS}.
   */
  async close(): Promise<void> {
    if (this.dead === undefined) this.dead = new ReceiverError('E_IO', `the librbd helper of ${this.label} is closed`)
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    for (const w of this.waiting.splice(0)) w.reject(this.dead)
    this.proc.stdin?.end()
    if (!this.writing || this.proc.exitCode !== null || this.proc.signalCode !== null) {
      this.proc.kill('SIGKILL')
      return
    }
    const exited = new Promise<void>((resolve) => this.proc.once('close', () => resolve()))
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), WRITER_EXIT_MS)
    await exited
    clearTimeout(timer)
  }
}
