/**
 * The apply of one disk's cycle into an RBD image: every batch of validated
 * extents is written into the image's head through the disk's long-lived
 * librbd helper (rbd-image.ts: librbd `write`/`write_zeroes`), and only once
 * the helper's `flush` has returned are the batch's extent records appended
 * to the disk's log object (one atomic RADOS append, by the same helper) —
 * the resume point — and the batch acknowledged. (Until this round each batch
 * was one `rbd import-diff -` and one `rados append` process: two cluster
 * connections per batch; the diff stream encoder, rbd-diff-stream.ts, stays
 * for tests and tools.) A crash anywhere leaves the committed snapshot intact
 * and the log a prefix of what is in the head; the agent resends from the
 * log's end, and writing an extent again writes the same bytes. It owns the
 * cycle's sequence numbers, counts and cycle digest like the folder store's
 * DiskApply, and offers the same batch interface to the ApplyPipeline.
 */
import { timingSafeEqual } from 'node:crypto'
import { CycleDigest, DigestLengths, ZERO_EXTENT_WINDOW_COST } from '@grainline/protocol'
import { ReceiverError } from '../../errors.ts'
import type { ApplyExtent, DiskEndClaim, ExtentCounts } from '../../disk-apply.ts'
import { isFenced, type CephLock } from './ceph-lock.ts'
import { RbdImage } from './rbd-image.ts'
import type { TouchedBlocks } from '../../kept-map.ts'
import { unlessPoolFull } from './ceph-space.ts'
import { CephCommandError, runCeph, streamCeph, type CephTarget } from './rbd-cli.ts'
import type { CephInflightDisk } from './ceph-state.ts'
import { grainlineCommand } from '../../operator-command.ts'

/** One logged extent (a line of the log object). */
interface LogRecord {
  readonly seq: number
  readonly offset: number
  readonly length: number
  readonly zero: boolean
  readonly digest: string
}

/** What a log's records are checked against: the disk's capacity and its digest algorithm's length in bytes. */
export interface ExtentLogShape {
  readonly capacity: number
  readonly digestBytes: number
}

/** The shape of the log of `info` (its capacity, its algorithm's digest length). */
export function extentLogShape(info: Pick<CephInflightDisk, 'capacity' | 'algorithm'>): ExtentLogShape {
  return { capacity: info.capacity, digestBytes: DigestLengths[info.algorithm] ?? 64 }
}

const SECTOR = 512

/**
 * The most extents one cycle of a disk of `capacity` bytes may ship (and its
 * log list): every extent covers at least a 512-byte sector (protocol
 * checks.ts) and a cycle's extents never overlap, so one per sector at most.
 * {@link CephDiskApply.accept} holds a cycle to it.
 */
export function maxLogRecords(capacity: number): number {
  return Math.ceil(Math.max(0, capacity) / SECTOR)
}

/**
 * The most bytes the extent log of a disk of this shape can legitimately
 * hold: {@link maxLogRecords} lines of the longest a record of it can be
 * (`{"seq":…,"offset":…,"length":…,"zero":false,"digest":"…"}` and its
 * newline, with the seq, offset and length of the most digits they can have
 * and a digest of the algorithm's length) — a log larger than this is not
 * this store's (a `rados get` of it is killed there, never read whole).
 */
export function extentLogMaxBytes(shape: ExtentLogShape): number {
  const records = maxLogRecords(shape.capacity)
  const line = '{"seq":,"offset":,"length":,"zero":false,"digest":""}\n'.length + String(records).length + 2 * String(shape.capacity).length + 2 * shape.digestBytes
  return records * line
}

/** Whether `r` is a whole record of a log of `shape` (its seq checked by the caller): types, sector alignment, the range within the capacity, the digest's form (empty for a zero extent, the algorithm's length in hex otherwise). */
function wholeRecord(r: LogRecord, shape: ExtentLogShape | undefined): boolean {
  if (!Number.isSafeInteger(r.offset) || !Number.isSafeInteger(r.length) || typeof r.zero !== 'boolean' || typeof r.digest !== 'string') return false
  if (shape === undefined) return true
  if (r.offset < 0 || r.offset % SECTOR !== 0 || r.length < SECTOR || r.length % SECTOR !== 0 || r.offset + r.length > shape.capacity) return false
  return r.zero ? r.digest === '' : r.digest.length === 2 * shape.digestBytes && /^[0-9a-f]*$/.test(r.digest)
}

/**
 * The records of a log object, seq 0, 1, 2 … in order, one line at a time
 * straight from the bytes (never the whole object as one string, which V8
 * caps at ~512 MiB, nor every record in one array). A torn line, a line that
 * is no record, or a record that is not whole for `shape` (a `zero` that is
 * not a boolean, a digest not of the algorithm's length in hex or not empty
 * for a zero extent, an extent off the sectors or beyond the capacity) ends
 * the log, as a record with a bad crc ends the folder store's journal
 * (journal.ts): what follows is ignored, the resume starts there and the
 * agent sends those extents again (writing an extent again writes the same
 * bytes). `firstSeq`: the seq of the first line (a piece after others,
 * {@link readExtentLogRecords}). Returns (the generator's value) whether a
 * line ended the log before the bytes did.
 */
export function* extentLogRecords(raw: Uint8Array, shape?: ExtentLogShape, firstSeq = 0): Generator<LogRecord, boolean> {
  const buf = Buffer.from(raw.buffer, raw.byteOffset, raw.length)
  let seq = firstSeq
  for (let start = 0; start < buf.length; ) {
    let end = buf.indexOf(0x0a, start)
    if (end < 0) end = buf.length
    if (end > start) {
      let r: LogRecord
      try {
        r = JSON.parse(buf.toString('utf8', start, end)) as LogRecord
      } catch {
        return true
      }
      // a line that parses but is no record (`null`, a number, a list): the foreign tail ends the log, never a TypeError
      if (typeof r !== 'object' || r === null || r.seq !== seq || !wholeRecord(r, shape)) return true
      seq++
      yield r
    }
    start = end + 1
  }
  return false
}

/** An extent log larger than a cycle of its disk can write ({@link extentLogMaxBytes}): E_STATE, named, with what to do. */
export class ExtentLogTooLarge extends ReceiverError {
  constructor(message: string, cause?: unknown) {
    super('E_STATE', message, { cause })
  }
}

/**
 * How much of an extent log is read at a time (one request to the session
 * client, its answer one line of base64): what a resume holds of the log
 * besides one line carried from a piece to the next.
 */
export const EXTENT_LOG_PIECE_BYTES = 1024 * 1024

/** Where an extent log is read from: its size (undefined: no such object) and its bytes in pieces from the start. */
export interface ExtentLogSource {
  size(object: string): Promise<number | undefined>
  pieces(object: string, size: number): AsyncIterable<Uint8Array>
}

/**
 * The log read through a VM's session client (ceph-lock.ts `stat`, `read`:
 * librados at an offset), {@link EXTENT_LOG_PIECE_BYTES} at a time: a
 * resume, under the lease.
 */
export function sessionLogSource(lock: Pick<CephLock, 'objectSize' | 'readObject'>, pieceBytes = EXTENT_LOG_PIECE_BYTES): ExtentLogSource {
  return {
    size: (object) => lock.objectSize(object),
    async *pieces(object, size) {
      for (let off = 0; off < size; ) {
        const b = await lock.readObject(object, off, Math.min(pieceBytes, size - off))
        if (b.length === 0) return
        off += b.length
        yield b
      }
    },
  }
}

/**
 * The log read without the VM's lease (`grainline status`, `/metrics`: a
 * receiver may be writing it, and nothing here may take the lease): its size
 * from `rados stat`, its bytes from one `rados get OBJECT -` streamed (the
 * `rados` CLI has no read at an offset; it reads the object in pieces of its
 * op size and writes each to the pipe as it goes), handed on as the pipe
 * delivers them (64 KiB at a time) and never more than `size` bytes of it
 * (what was appended after the stat is the next look's). The pipe holds the
 * command back while the parser works; a reader that stops early
 * ({@link readExtentLogRecords} at a line no record can be) kills it.
 */
export function cliLogSource(t: CephTarget): ExtentLogSource {
  return {
    async size(object) {
      let out: string
      try {
        out = (await runCeph(t, 'rados', ['-p', t.pool, 'stat', object], undefined, { maxBytes: 64 * 1024 })).toString('utf8').trim()
      } catch (err) {
        if (err instanceof CephCommandError && err.notFound) return undefined
        throw err
      }
      // `POOL/OBJECT mtime 2026-12-07T04:20:00.000000+0000, size 1234`
      const m = /, size (\d+)$/.exec(out)
      if (m === null) throw new ReceiverError('E_IO', `\`rados -p ${t.pool} stat ${object}\` answered without a size: ${JSON.stringify(out.slice(-200))}`)
      return Number(m[1])
    },
    async *pieces(object, size) {
      if (size === 0) return
      const get = streamCeph(t, 'rados', ['-p', t.pool, 'get', object, '-'])
      let left = size
      let whole = false
      try {
        for await (const chunk of get.stdout) {
          const b = chunk as Buffer
          if (b.length >= left) {
            const last = b.subarray(0, left)
            left = 0
            yield last
            break
          }
          left -= b.length
          yield b
        }
        whole = true
      } finally {
        if (!whole || left === 0) {
          // `size` bytes read (what follows was appended since the stat), or the reader stopped: the rest is not read
          get.stop()
          get.stdout.destroy()
          await get.done.catch(() => {})
        }
      }
      if (left === 0) return
      // the command ended short of `size`: how it ended (the object removed since the stat, by a commit or a rollback: what was read is all there is)
      await get.done.catch((err: unknown) => {
        if (!(err instanceof CephCommandError && err.notFound)) throw err
      })
    },
  }
}

/** The longest line a record of a log of `shape` can be (its newline not counted). */
function longestLine(shape: ExtentLogShape): number {
  const records = maxLogRecords(shape.capacity)
  return '{"seq":,"offset":,"length":,"zero":false,"digest":""}'.length + String(records).length + 2 * String(shape.capacity).length + 2 * shape.digestBytes
}

/**
 * The records of the extent log of disk `info` of `vm` (none when there is
 * no log), read in pieces from `source` and parsed across their boundaries
 * with {@link extentLogRecords}: what is held at a time is one piece and the
 * line carried from it to the next (at most the longest record line; a
 * longer run without a newline is no record and ends the log), whatever the
 * log's size. A log larger than {@link extentLogMaxBytes} is refused before
 * a byte of it is read.
 * @throws ExtentLogTooLarge (E_STATE: a larger object, not this store's log, named with what to do), ReceiverError E_IO
 */
export async function* readExtentLogRecords(t: CephTarget, vm: string, info: Pick<CephInflightDisk, 'name' | 'log' | 'capacity' | 'algorithm'>, source: ExtentLogSource): AsyncGenerator<LogRecord> {
  const shape = extentLogShape(info)
  const maxBytes = extentLogMaxBytes(shape)
  const size = await source.size(info.log)
  if (size === undefined) return
  if (size > maxBytes) {
    throw new ExtentLogTooLarge(
      `the extent log ${info.log} of disk ${info.name} of VM ${vm} in pool ${t.pool} is ${size} bytes, larger than the ${maxBytes} bytes a cycle of its ${info.capacity}-byte capacity can log: it is not this store's log (written behind the store) and is not read; roll the cycle back (the agent does when its DiskOpen is refused for it; by hand: ${grainlineCommand(['mirror', 'rollback', '--store', `ceph:${t.pool}`, '--vm', vm])}, which removes the log unread): the cycle is then shipped again`,
    )
  }
  const lineMax = longestLine(shape)
  let seq = 0
  let carry: Buffer = Buffer.alloc(0)
  for await (const piece of source.pieces(info.log, size)) {
    const b = carry.length === 0 ? Buffer.from(piece.buffer, piece.byteOffset, piece.length) : Buffer.concat([carry, piece])
    const nl = b.lastIndexOf(0x0a)
    // the whole lines of the piece now, the rest (a line cut at the piece's end) with the next piece
    const whole = nl < 0 ? b.subarray(0, 0) : b.subarray(0, nl + 1)
    carry = Buffer.from(nl < 0 ? b : b.subarray(nl + 1))
    const lines = extentLogRecords(whole, shape, seq)
    for (let r = lines.next(); ; r = lines.next()) {
      if (r.done === true) {
        if (r.value) return
        break
      }
      seq++
      yield r.value
    }
    if (carry.length > lineMax) return
  }
  // the last line without its newline: a torn append, or a whole record the log ends with (parsed as before)
  if (carry.length > 0) for (const r of extentLogRecords(carry, shape, seq)) yield r
}

/** {@link extentLogRecords} as an array (tests and tools). */
export function parseExtentLog(raw: string | Uint8Array, shape?: ExtentLogShape): LogRecord[] {
  return [...extentLogRecords(typeof raw === 'string' ? Buffer.from(raw, 'utf8') : raw, shape)]
}

/** The apply of one disk into its RBD image (see the file comment). */
export class CephDiskApply {
  readonly info: CephInflightDisk
  private readonly target: CephTarget
  private readonly lock: CephLock
  private readonly vm: string
  private readonly digest: CycleDigest
  private next = 0
  private applied = -1
  private extents = 0
  private dataBytes = 0
  private zeroBytes = 0
  sealed = false
  sealedDigest: Uint8Array | undefined
  batches = 0
  journalMs = 0
  writeMs = 0
  /** aborted once the pool was found full: a helper still opening gives up */
  private readonly full = new AbortController()
  /** the image's helper, opened at the first batch */
  private image: Promise<RbdImage> | undefined
  /** the helper once open */
  private opened: RbdImage | undefined
  /** the blocks this cycle wrote (replayed ones included), when its commit carries or writes a kept map (ceph-kept-map.ts) */
  readonly touched: TouchedBlocks | undefined

  private constructor(target: CephTarget, lock: CephLock, vm: string, info: CephInflightDisk, touched?: TouchedBlocks) {
    this.target = target
    this.lock = lock
    this.vm = vm
    this.info = info
    this.digest = new CycleDigest(info.algorithm)
    this.touched = touched
  }

  get nextSeq(): number {
    return this.next
  }
  get appliedSeq(): number {
    return this.applied
  }
  get counts(): ExtentCounts {
    return { extents: this.extents, dataBytes: this.dataBytes, zeroBytes: this.zeroBytes }
  }

  /** A fresh apply: an empty log (and, for a seed, a new image of the capacity). */
  static async start(target: CephTarget, lock: CephLock, vm: string, info: CephInflightDisk, touched?: TouchedBlocks): Promise<CephDiskApply> {
    // through the session client (ceph-lock.ts): its writes are fenced with the lease
    await lock.put(info.log, Buffer.alloc(0))
    if (info.baseSnap === null) {
      // a crash may have left the image of an earlier attempt: start from zeros
      await lock.removeImage(info.image)
      await lock.createImage(info.image, info.capacity)
    }
    return new CephDiskApply(target, lock, vm, info, touched)
  }

  /** Reopen an interrupted apply at the end of its log, replaying the logged extents through {@link accept}. */
  static async resume(target: CephTarget, lock: CephLock, vm: string, info: CephInflightDisk, touched?: TouchedBlocks): Promise<CephDiskApply> {
    // the log's size first (a log no cycle of the disk can write is refused unread), its records after the image is found
    const records = readExtentLogRecords(target, vm, info, sessionLogSource(lock))
    const first = await records.next()
    const imageThere = await imageExists(target, info.image)
    if (!imageThere) {
      await records.return(undefined)
      if (info.baseSnap !== null) throw new ReceiverError('E_STATE', `image ${info.image} of disk ${info.name} of VM ${vm} is missing from pool ${target.pool}: roll back, then seed`)
      return await CephDiskApply.start(target, lock, vm, info, touched)
    }
    // replayed one record at a time: the apply keeps of each its counts, the running cycle digest and (a kept map)
    // a bit of its blocks, no record itself; the log is held a piece at a time (readExtentLogRecords)
    const a = new CephDiskApply(target, lock, vm, info, touched)
    const replay = (r: LogRecord): void => {
      a.accept({ seq: r.seq, offset: r.offset, length: r.length, zero: r.zero, data: undefined, digest: Buffer.from(r.digest, 'hex') })
    }
    if (first.done !== true) replay(first.value)
    for await (const r of records) replay(r)
    a.applied = a.next - 1
    return a
  }

  /**
   * Take the next extent: checks seq and range, counts it, adds it to the cycle digest.
   * @throws ReceiverError E_UNEXPECTED (sealed), E_SEQUENCE, E_RANGE
   */
  accept(e: ApplyExtent): ApplyExtent {
    if (this.sealed) throw new ReceiverError('E_UNEXPECTED', `Extent after DiskEnd of ${this.info.name}`)
    if (e.seq !== this.next) throw new ReceiverError('E_SEQUENCE', `disk ${this.info.name}: expected seq ${this.next}, got ${e.seq}`)
    if (e.offset + e.length > this.info.capacity) throw new ReceiverError('E_RANGE', `extent ${e.offset}+${e.length} beyond the capacity ${this.info.capacity} of ${this.info.name}`)
    // the bound of the extent log (extentLogMaxBytes): a cycle's extents never overlap, so one per sector at most
    if (this.extents >= maxLogRecords(this.info.capacity)) {
      throw new ReceiverError(
        'E_RANGE',
        `extent ${e.seq} of disk ${this.info.name} of VM ${this.vm} is more than the ${maxLogRecords(this.info.capacity)} extents (one per 512-byte sector) a cycle of its capacity can ship`,
      )
    }
    this.next++
    this.extents++
    if (e.zero) this.zeroBytes += e.length
    else this.dataBytes += e.length
    this.digest.add({ offset: e.offset, length: e.length, zero: e.zero, digest: e.digest })
    this.touched?.mark(e.offset, e.length)
    return e
  }

  /** What an extent costs a batch: its bytes, a zero extent (a discard in RBD) its window cost. */
  cost(e: ApplyExtent): number {
    return e.zero ? ZERO_EXTENT_WINDOW_COST : e.length
  }

  /** Nothing to journal: the committed snapshot is the undo. Checks that the lock is still ours. */
  async prepareBatch(_batch: readonly ApplyExtent[], opts: { signal?: AbortSignal } = {}): Promise<void> {
    opts.signal?.throwIfAborted()
    this.lock.check(this.vm)
  }

  /** The helper writing this disk's head (opened once; it checks the base snapshot exists and grows the image). */
  private helper(): Promise<RbdImage> {
    if (this.image === undefined) {
      const opening = (async () => {
        // grown by the session client; the helper registers its address for the lease before it writes, and the
        // lease is confirmed after that (ceph-lock.ts: a later taker fences it, or this fails and it never writes)
        await this.lock.growImage(this.info.image, this.info.capacity)
        const img = await RbdImage.open(this.target, this.info.image, this.info.baseSnap, { log: this.info.log, capacity: this.info.capacity, signal: this.full.signal, fence: this.lock.fence })
        this.opened = img
        await this.lock.confirm().catch(async (err: unknown) => {
          await img.close()
          throw err
        })
        return img
      })()
      this.image = this.guarded(opening)
      this.image.catch(() => {})
    }
    return this.image
  }

  /** Wait for `op` (the helper's open, a batch's writes, its flush) unless the pool is full: then E_NO_SPACE, the helper killed (what it wrote but did not log is resent when the cycle resumes). */
  private guarded<T>(op: Promise<T>): Promise<T> {
    const watched = unlessPoolFull(this.target, op, `writing disk ${this.info.name} of VM ${this.vm}`, (err) => {
      this.full.abort(err)
      this.opened?.kill(err)
    })
    // a writer refused as blocklisted: the whole session is fenced (no other write of it is sent)
    return watched.catch((err: unknown) => {
      if (isFenced(err)) this.lock.noteFenced((err as Error).message)
      throw err
    })
  }

  /** Write the batch into the image's head (pipelined requests to the helper); not durable before {@link syncBatch}. */
  async writeBatchData(batch: readonly ApplyExtent[], opts: { signal?: AbortSignal } = {}): Promise<void> {
    if (batch.length === 0) return
    opts.signal?.throwIfAborted()
    this.lock.check(this.vm)
    const t0 = performance.now()
    const img = await this.helper()
    const writes = batch.map((e) => (e.zero ? img.zero(e.offset, e.length) : img.write(e.offset, e.data as Uint8Array)))
    for (const w of writes) w.catch(() => {})
    await this.guarded(Promise.all(writes))
    this.writeMs += performance.now() - t0
  }

  /** Flush the head, then append the batch's records to the log (the resume point): the batch is durable once this returns. */
  async syncBatch(batch: readonly ApplyExtent[]): Promise<void> {
    if (batch.length === 0) return
    const t0 = performance.now()
    const lines = batch.map((e) => JSON.stringify({ seq: e.seq, offset: e.offset, length: e.length, zero: e.zero, digest: Buffer.from(e.digest).toString('hex') })).join('\n')
    this.lock.check(this.vm)
    const img = await this.helper()
    await this.guarded(img.flushAndLog(Buffer.from(`${lines}\n`)))
    this.batches++
    this.applied = (batch[batch.length - 1] as ApplyExtent).seq
    this.journalMs += performance.now() - t0
  }

  /**
   * DiskEnd: compare counts and cycle digest with what was accepted, seal.
   * @throws ReceiverError E_END_MISMATCH
   */
  async end(claim: DiskEndClaim): Promise<void> {
    const got = this.counts
    if (claim.extents !== got.extents || claim.dataBytes !== got.dataBytes || claim.zeroBytes !== got.zeroBytes) {
      const want = { extents: claim.extents, dataBytes: claim.dataBytes, zeroBytes: claim.zeroBytes }
      throw new ReceiverError('E_END_MISMATCH', `DiskEnd counts ${JSON.stringify(want)} of ${this.info.name} differ from received ${JSON.stringify(got)}`)
    }
    const digest = this.digest.digest()
    if (!(digest.length === claim.digest.length && timingSafeEqual(digest, claim.digest))) throw new ReceiverError('E_END_MISMATCH', `cycle digest of ${this.info.name} differs`)
    this.sealedDigest = digest
    this.sealed = true
    // every batch is flushed and logged: the helper goes before the commit snapshots the image
    await this.close()
  }

  /** Stop the helper (what it wrote but did not log is resent by the agent). */
  async close(_opts: { flush?: boolean } = {}): Promise<void> {
    const img = this.image
    this.image = undefined
    if (img !== undefined) await (await img.catch(() => undefined))?.close()
  }
}

/** Whether an image exists in the pool. */
export async function imageExists(t: CephTarget, image: string): Promise<boolean> {
  try {
    await runCeph(t, 'rbd', ['info', `${t.pool}/${image}`])
    return true
  } catch (err) {
    if ((err as { notFound?: boolean }).notFound) return false
    throw err
  }
}
