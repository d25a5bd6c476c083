/**
 * Random reads of an RBD image or snapshot through one long-lived helper
 * process per open image: Python's `rbd`/`rados` modules from Ceph's own
 * packages (`python3-rbd`; there is no maintained Node binding for librbd),
 * run by `/usr/bin/python3` (or `GRAINLINE_PYTHON`) like the lock helper.
 * `rbd export` streams a whole image from its start; resync maps and block
 * checks need a few blocks anywhere, so one process connects once and then
 * answers framed requests on stdin/stdout:
 *
 * - request: `u8 op (1 = read) • u64le offset • u32le length` (13 bytes),
 *   length at most {@link MAX_READ_BYTES} (the helper refuses more);
 * - answer: `u8 status (0 ok, 1 error) • u32le length • bytes` (the data, or
 *   the error message in UTF-8), in request order (requests may be pipelined).
 *
 * The helper opens the image read-only (a snapshot when given), exits at EOF
 * on stdin, so it dies with its parent (a receiver killed with -9 leaves no
 * helper behind), and is killed by {@link RbdReader.close}.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { ReceiverError } from '../../errors.ts'
import type { CephTarget } from './rbd-cli.ts'

/** Largest single read the helper answers (bounds its memory and each frame). @default 4 MiB */
export const MAX_READ_BYTES = 4 * 1024 * 1024

/** The Python the Ceph helpers run (Debian's, which has python3-rados/python3-rbd). */
export function cephPython(): string {
  return process.env['GRAINLINE_PYTHON'] ?? '/usr/bin/python3'
}

const HELPER = `
import sys, struct, rados, rbd
conf, cid, keyring, pool, image, snap, maxlen = sys.argv[1:8]
maxlen = int(maxlen)
out = sys.stdout.buffer
inp = sys.stdin.buffer
def frame(status, data):
    out.write(struct.pack('<BI', status, len(data)))
    out.write(data)
    out.flush()
kw = {}
if keyring: kw['conf'] = {'keyring': keyring}
try:
    c = rados.Rados(conffile=conf or '', rados_id=(cid or None), **kw)
    c.connect(timeout=20)
    io = c.open_ioctx(pool)
    img = rbd.Image(io, image, snapshot=(snap or None), read_only=True)
    size = img.size()
except Exception as e:
    frame(1, (type(e).__name__ + ': ' + str(e)).encode('utf-8', 'replace'))
    sys.exit(2)
frame(0, struct.pack('<Q', size))
while True:
    h = inp.read(13)
    if h is None or len(h) < 13:
        break
    op, off, ln = struct.unpack('<BQI', h)
    if op != 1 or ln > maxlen or off + ln > size:
        frame(1, ('bad request op %d offset %d length %d (size %d, at most %d per read)' % (op, off, ln, size, maxlen)).encode())
        continue
    try:
        data = img.read(off, ln) if ln > 0 else b''
        if len(data) < ln:
            data = data + bytes(ln - len(data))
        frame(0, data)
    except Exception as e:
        frame(1, (type(e).__name__ + ': ' + str(e)).encode('utf-8', 'replace'))
img.close(); io.close(); c.shutdown()
`

interface Waiter {
  resolve(b: Buffer): void
  reject(e: Error): void
}

/** An open image (or snapshot) answering reads; see the file comment. */
export class RbdReader {
  readonly size: number
  readonly label: string
  private readonly proc: ChildProcess
  private readonly waiting: Waiter[] = []
  private buf: Buffer = Buffer.alloc(0)
  private dead: Error | undefined
  /** bytes read through this reader */
  bytesRead = 0

  private constructor(proc: ChildProcess, size: number, label: string, rest: Buffer) {
    this.proc = proc
    this.size = size
    this.label = label
    this.buf = rest
    proc.stdout?.on('data', (b: Buffer) => this.onData(b))
    proc.on('close', (code) => this.fail(new ReceiverError('E_IO', `the librbd reader of ${label} exited (${code ?? 'signal'})`)))
    this.onData(Buffer.alloc(0))
  }

  /**
   * Open `image` (at `snap` when given) of the target's pool for reading.
   * @throws ReceiverError E_IO when Python, its rbd module or the cluster fail (Ceph's message quoted)
   */
  static async open(t: CephTarget, image: string, snap: string | null): Promise<RbdReader> {
    const label = `${t.pool}/${image}${snap === null ? '' : `@${snap}`}`
    const args = ['-c', HELPER, t.conf ?? '', t.id ?? '', t.keyring ?? '', t.pool, image, snap ?? '', String(MAX_READ_BYTES)]
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
        if (n > 65536) return resolve(`a first frame of ${n} bytes`)
        if (acc.length < 5 + n) return
        proc.stdout?.off('data', onData)
        resolve({ status: acc[0] as number, data: acc.subarray(5, 5 + n), rest: acc.subarray(5 + n) })
      }
      proc.stdout?.on('data', onData)
      proc.on('error', (e) => resolve(`cannot run ${cephPython()}: ${e.message}`))
      proc.on('close', (code) => resolve(`exit ${code}`))
    })
    if (typeof first !== 'string' && first.status === 0 && first.data.length === 8) {
      return new RbdReader(proc, Number(first.data.readBigUInt64LE(0)), label, first.rest)
    }
    proc.kill('SIGKILL')
    const why = typeof first === 'string' ? `${first}: ${Buffer.concat(err).toString('utf8').trim().slice(-1024)}` : first.data.toString('utf8')
    throw new ReceiverError('E_IO', `cannot open ${label} for reading (librbd helper, python3-rbd): ${why}`)
  }

  private onData(b: Buffer): void {
    this.buf = this.buf.length === 0 ? b : Buffer.concat([this.buf, b])
    while (this.buf.length >= 5) {
      const n = this.buf.readUInt32LE(1)
      if (n > MAX_READ_BYTES) return this.fail(new ReceiverError('E_IO', `the librbd reader of ${this.label} sent a frame of ${n} bytes`))
      if (this.buf.length < 5 + n) return
      const status = this.buf[0] as number
      const data = Buffer.from(this.buf.subarray(5, 5 + n))
      this.buf = this.buf.subarray(5 + n)
      const w = this.waiting.shift()
      if (w === undefined) return this.fail(new ReceiverError('E_IO', `the librbd reader of ${this.label} answered a request never made`))
      if (status === 0) w.resolve(data)
      else w.reject(new ReceiverError('E_IO', `reading ${this.label}: ${data.toString('utf8').slice(0, 1024)}`))
    }
  }

  private fail(e: Error): void {
    if (this.dead === undefined) this.dead = e
    for (const w of this.waiting.splice(0)) w.reject(e)
    this.proc.kill('SIGKILL')
  }

  /** One request of at most MAX_READ_BYTES. */
  private readOne(offset: number, length: number): Promise<Buffer> {
    if (this.dead !== undefined) return Promise.reject(this.dead)
    return new Promise<Buffer>((resolve, reject) => {
      this.waiting.push({ resolve, reject })
      const h = Buffer.alloc(13)
      h.writeUInt8(1, 0)
      h.writeBigUInt64LE(BigInt(offset), 1)
      h.writeUInt32LE(length, 9)
      this.proc.stdin?.write(h)
    })
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

  /** Stop the helper (idempotent). */
  close(): void {
    if (this.dead === undefined) this.dead = new ReceiverError('E_IO', `the librbd reader of ${this.label} is closed`)
    for (const w of this.waiting.splice(0)) w.reject(this.dead)
    this.proc.stdin?.end()
    this.proc.kill('SIGKILL')
  }
}
