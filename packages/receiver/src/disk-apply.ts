import type { FileHandle } from 'node:fs/promises'
import { timingSafeEqual } from 'node:crypto'
import { CycleDigest, ZERO_EXTENT_WINDOW_COST } from '@grainline/protocol'
import { ReceiverError } from './errors.ts'
import { fsyncDir, unlinkIfExists, writeFully, writevFully, writeZeros } from './fs-util.ts'
import { entryExists, openStoreFile } from './store-fs.ts'
import { JOURNAL_PIECE, JOURNAL_READ_LIMITS, Journal, journalExtents, resetJournal, type JournalExtent, type JournalScan } from './journal.ts'
import { faultPoint } from './fault.ts'
import { isAllZero } from '@grainline/vmdk'
import { READ_AHEAD, readAhead } from './read-ahead.ts'
import { PayloadPool } from './payload-pool.ts'
import { ReverseIncrement, type SaveRun } from './increment.ts'
import type { InflightDisk } from './state-file.ts'
import type { TouchedBlocks } from './kept-map.ts'
import type { VmPaths } from './vm-paths.ts'
import { scatteredRuns, seedRuns, type WriteRun } from './write-runs.ts'

/** One extent ready to apply: validated, decompressed, digest checked. */
export interface ApplyExtent {
  readonly seq: number
  readonly offset: number
  readonly length: number
  readonly zero: boolean
  /** raw bytes (`length` bytes) of a data extent; undefined for a zero extent */
  readonly data: Uint8Array | undefined
  /** the extent's digest (empty for a zero extent) */
  readonly digest: Uint8Array
}

/** What a disk's cycle has received so far (SPEC §5.4 DiskEnd counts). */
export interface ExtentCounts {
  readonly extents: number
  readonly dataBytes: number
  readonly zeroBytes: number
}

/** What the agent claims at DiskEnd. */
export interface DiskEndClaim extends ExtentCounts {
  readonly digest: Uint8Array
}

function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex')
}

/** A new, empty seed file: whatever was at its name (an older seed, a planted link) is removed first, never followed. */
async function freshSeed(path: string): Promise<FileHandle> {
  await unlinkIfExists(path)
  return await openStoreFile(path, 'create')
}

/** Writes of a scattered batch in flight at once, at most. */
const WRITE_AHEAD = 16

/**
 * Buffers the old contents of in-place ranges are read into for the journal,
 * kept for the whole receiver (issue #17): an incremental of 644 extents of
 * 64 KiB read 41 MiB of old contents into fresh buffers per cycle — page
 * faults, and garbage for V8 to collect. At most what one batch holds at
 * once: the reads in flight (read-ahead.ts, 16 MiB) plus the records queued
 * before a journal write ({@link JOURNAL_PIECE}); beyond it (several disks
 * journaling at once) fresh buffers are used.
 */
export const OLD_CONTENTS = new PayloadPool(() => READ_AHEAD.bytes + JOURNAL_PIECE)

/** An extent's journal record (as `Journal.appendExtent` takes it). */
type JournalExtentRecord = Parameters<Journal['appendExtent']>[0]

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b)
}

/**
 * The apply of one disk's in-flight cycle: its journal and its target file
 * (the flat, in place, or a fresh `.seed` file). It owns the cycle's sequence
 * numbers, counts and cycle digest: every extent — received live or replayed
 * from the journal on resume — goes through {@link DiskApply.accept}.
 *
 * Durability per batch (ARCHITECTURE §4.1): {@link DiskApply.prepareBatch}
 * journals the old contents of every in-place range and fdatasyncs the
 * journal; {@link DiskApply.writeBatchData} writes the new bytes and
 * {@link DiskApply.syncBatch} fdatasyncs the target and queues the "applied"
 * marker (the resume point), which becomes durable with the next journal sync.
 */
export class DiskApply {
  readonly info: InflightDisk
  readonly targetPath: string
  private readonly fh: FileHandle
  private readonly journal: Journal
  private readonly digest: CycleDigest
  /** the reverse increment receiving the old grains (an in-place disk that keeps points) */
  private readonly inc: ReverseIncrement | undefined
  private next = 0
  private applied = -1
  private extents = 0
  private dataBytes = 0
  private zeroBytes = 0
  private closed = false
  /** whether DiskEnd sealed the disk */
  sealed = false
  /** the cycle digest, computed once at seal time */
  sealedDigest: Uint8Array | undefined
  /** durable batches applied by this object (for logs) */
  batches = 0
  /** the blocks this cycle wrote, when the disk keeps a block map (kept-map.ts) */
  touched: TouchedBlocks | undefined = undefined
  /** time spent journaling (stage 1) and writing (stage 2) batches, ms (for logs) */
  journalMs = 0
  /** old contents journaled by length alone, being zeros (journal.ts type 2; for logs) */
  journalZeroBytes = 0
  writeMs = 0
  /** fdatasyncs of the target actually run, and batches whose sync an earlier one covered (group commit, for logs) */
  syncs = 0
  coveredBatches = 0
  /** fdatasyncs of the target started so far (a batch is durable once one started after its writes has completed) */
  private syncsStarted = 0
  /** fdatasyncs of the target completed so far (they run one at a time, in order) */
  private syncsCompleted = 0
  /** per batch: {@link syncsStarted} when its writes completed */
  private readonly writtenAt = new WeakMap<readonly ApplyExtent[], number>()

  private constructor(info: InflightDisk, targetPath: string, fh: FileHandle, journal: Journal, inc?: ReverseIncrement) {
    this.info = info
    this.targetPath = targetPath
    this.fh = fh
    this.journal = journal
    this.inc = inc
    this.digest = new CycleDigest(info.algorithm)
  }

  /** next seq expected */
  get nextSeq(): number {
    return this.next
  }
  /** highest seq durably applied (-1: none) */
  get appliedSeq(): number {
    return this.applied
  }
  /** extents accepted so far in this cycle (including those replayed on resume) */
  get counts(): ExtentCounts {
    return { extents: this.extents, dataBytes: this.dataBytes, zeroBytes: this.zeroBytes }
  }

  /** Open a fresh apply (journal already created); `touched` records the blocks it writes. */
  static async start(paths: VmPaths, info: InflightDisk, journal: Journal, touched?: TouchedBlocks): Promise<DiskApply> {
    const a = await DiskApply.#start(paths, info, journal)
    a.touched = touched
    return a
  }

  static async #start(paths: VmPaths, info: InflightDisk, journal: Journal): Promise<DiskApply> {
    if (info.target === 'seed') {
      const p = paths.seed(info.stem)
      const fh = await freshSeed(p)
      await fh.truncate(info.capacity)
      await fh.sync()
      await fsyncDir(paths.dir)
      return new DiskApply(info, p, fh, journal)
    }
    const p = paths.flat(info.stem)
    const inc = info.increment === undefined ? undefined : await ReverseIncrement.open(paths, info.stem, info.increment, [])
    let fh: FileHandle
    try {
      fh = await openStoreFile(p, 'update')
    } catch (err) {
      await inc?.close().catch(() => {})
      throw err
    }
    if (info.capacity > info.baseSize) {
      await fh.truncate(info.capacity)
      await fh.sync()
    }
    return new DiskApply(info, p, fh, journal, inc)
  }

  /** Reopen an interrupted apply at its durable resume point, replaying the journal through {@link accept}. */
  static async resume(paths: VmPaths, info: InflightDisk, journalContents: JournalScan, touched?: TouchedBlocks): Promise<DiskApply> {
    let contents = journalContents
    const p = info.target === 'seed' ? paths.seed(info.stem) : paths.flat(info.stem)
    let fh: FileHandle
    if (info.target === 'seed' && (contents.applied === null || !(await entryExists(p)))) {
      // nothing durably applied, or the seed file is gone (rolled back): start
      // the seed again at seq 0 in a FRESH file — a seed leaves zero ranges
      // unwritten, so stale bytes must not survive
      await resetJournal(paths.journal(info.stem), contents.headEnd)
      contents = { ...contents, applied: null, validEnd: contents.headEnd, extentRecords: 0, oldBytes: 0, positions: [contents.headEnd] }
      fh = await freshSeed(p)
      await fh.truncate(info.capacity)
      await fh.sync()
      await fsyncDir(paths.dir)
    } else {
      fh = await openStoreFile(p, 'update')
    }
    let journal: Journal
    let inc: ReverseIncrement | undefined
    try {
      if (info.target === 'flat' && info.increment !== undefined) inc = await ReverseIncrement.open(paths, info.stem, info.increment, contents.grains)
      if (info.target === 'flat' && (await fh.stat()).size < info.capacity) {
        // an undo cut the flat back to its base size; the cycle's capacity holds again
        await fh.truncate(info.capacity)
        await fh.sync()
      }
      journal = await Journal.reopen(paths.journal(info.stem), contents)
    } catch (err) {
      await fh.close()
      await inc?.close().catch(() => {})
      throw err
    }
    const a = new DiskApply(info, p, fh, journal, inc)
    a.touched = touched
    try {
      await a.#replay(paths, paths.journal(info.stem), contents)
    } catch (err) {
      // a replay refused (the journal changed since its scan, a seq out of order) or failed: nothing was written,
      // nothing queued to keep — the files are let go, not left open
      await a.close({ flush: false })
      throw err
    }
    a.applied = a.next - 1
    return a
  }

  /**
   * Replay the journal's extents up to its applied marker through {@link accept}: seq 0, 1, 2… for as long as
   * the journal holds the next one, each seq's FIRST record counting (a resume journals a seq again: its pieces,
   * an extent sent again). Read a window at a time (journal.ts `journalExtents`), forward: a record of a seq
   * beyond the next one waits, at most JOURNAL_READ_LIMITS.waiting seqs from the next; one beyond is skipped, and so is every
   * record of a seq at or beyond the lowest skipped one in this pass (a later record of it must not count before
   * its first). The pass ends with the next seq missing (the chain stops, as it does at the first gap) or at
   * the lowest skipped seq: then another pass from the journal's start takes it (the first skip came at least
   * JOURNAL_READ_LIMITS.waiting seqs beyond the pass's first seq, so a pass moves that far at least).
   */
  async #replay(paths: VmPaths, journalPath: string, scan: JournalScan): Promise<void> {
    const last = scan.applied?.seq ?? -1
    if (last < 0 || scan.extentRecords === 0) return
    const jfh = await openStoreFile(journalPath, 'read')
    try {
      for (;;) {
        let skipped = Number.POSITIVE_INFINITY
        const waiting = new Map<number, JournalExtent>()
        for (let w = 0; w < scan.positions.length; w++) {
          for (const e of await journalExtents(jfh, journalPath, scan, w, paths)) {
            const seq = e.seq
            if (!Number.isSafeInteger(seq) || seq > last || seq < this.next) continue
            if (seq >= Math.min(this.next + JOURNAL_READ_LIMITS.waiting, skipped)) {
              skipped = Math.min(skipped, seq)
              continue
            }
            if (!waiting.has(seq)) waiting.set(seq, e)
            for (let x = waiting.get(this.next); x !== undefined; x = waiting.get(this.next)) {
              waiting.delete(x.seq)
              this.accept({ seq: x.seq, offset: x.offset, length: x.length, zero: x.zero, data: undefined, digest: Buffer.from(x.digest, 'hex') })
            }
          }
        }
        if (this.next !== skipped) return
      }
    } finally {
      await jfh.close()
    }
  }

  /**
   * Take the next extent of the cycle: checks its seq and range against the
   * disk, counts it and adds it to the cycle digest. The caller has checked
   * the payload against its digest.
   * @throws ReceiverError E_UNEXPECTED (sealed), E_SEQUENCE, E_RANGE (beyond capacity)
   */
  accept(e: ApplyExtent): ApplyExtent {
    if (this.sealed) throw new ReceiverError('E_UNEXPECTED', `Extent after DiskEnd of ${this.info.name}`)
    if (e.seq !== this.next) throw new ReceiverError('E_SEQUENCE', `disk ${this.info.name}: expected seq ${this.next}, got ${e.seq}`)
    if (e.offset + e.length > this.info.capacity) throw new ReceiverError('E_RANGE', `extent ${e.offset}+${e.length} beyond the capacity ${this.info.capacity} of ${this.info.name}`)
    // SPEC §5.1: an incremental ships what its DiskOpen announced, no more (the token's quota reserved that much)
    const a = this.info.announced
    if (a !== undefined && (this.extents + 1 > a.extents || this.dataBytes + this.zeroBytes + e.length > a.bytes)) {
      throw new ReceiverError(
        'E_RANGE',
        `extent ${e.seq} of ${this.info.name} goes beyond the ${a.extents} extents and ${a.bytes} bytes its DiskOpen announced (${this.extents} extents, ${this.dataBytes + this.zeroBytes} bytes received)`,
      )
    }
    this.next++
    this.extents++
    this.touched?.mark(e.offset, e.length)
    if (e.zero) this.zeroBytes += e.length
    else this.dataBytes += e.length
    this.digest.add({ offset: e.offset, length: e.length, zero: e.zero, digest: e.digest })
    return e
  }

  /**
   * The part of an in-place range that holds committed bytes: below the
   * flat's size before the cycle. Above it the flat was extended by truncate
   * and reads as zeros (a hole): nothing there is journaled, and a zero
   * extent writes nothing there.
   */
  private committedPart(e: ApplyExtent): number {
    return this.info.target === 'flat' ? Math.max(0, Math.min(e.offset + e.length, this.info.baseSize) - e.offset) : 0
  }

  /**
   * The bytes an extent costs a durable batch: its length for data; for a
   * zero extent the committed bytes it overwrites (journaled, then zeroed in
   * place), at least its window cost (SPEC §5.3) — a seed's zero extent, or
   * one over grown space, writes nothing.
   */
  cost(e: ApplyExtent): number {
    return e.zero ? Math.max(ZERO_EXTENT_WINDOW_COST, this.committedPart(e)) : e.length
  }

  /**
   * Stage 1: journal the batch. In place, the old contents of every range are
   * appended and the journal fdatasync'ed before any of them is overwritten.
   * (Reading old contents while the previous batch is being written is safe:
   * undo runs newest record first, so the oldest copy of a range wins.)
   * `signal` is checked between pieces: an aborted session stops at once.
   */
  async prepareBatch(batch: readonly ApplyExtent[], opts: { signal?: AbortSignal } = {}): Promise<void> {
    if (batch.length === 0) return
    const t0 = performance.now()
    const inPlace = this.info.target === 'flat'
    if (this.inc !== undefined) {
      await this.prepareIntoIncrement(this.inc, batch, opts.signal)
      this.journalMs += performance.now() - t0
      return
    }
    // old contents in pieces of at most JOURNAL_PIECE bytes, each its own
    // record, appended in batch order and written out as we go (bounded
    // records). The reads run ahead of the appends (readAhead: at most 16
    // pieces and 16 MiB at once, bounded memory): a batch of many
    // small scattered extents waits for one read round trip at a time, not
    // one per extent. All of them read the contents from before this batch
    // (its writes start only after this stage), as the serial reads did.
    const pieces: Array<{ rec: JournalExtentRecord; pos: number; n: number }> = []
    for (const e of batch) {
      const rec = { seq: e.seq, offset: e.offset, length: e.length, zero: e.zero, digest: hex(e.digest) }
      const oldLen = this.committedPart(e)
      if (oldLen === 0) pieces.push({ rec, pos: e.offset, n: 0 })
      for (let off = 0; off < oldLen; off += JOURNAL_PIECE) pieces.push({ rec, pos: e.offset + off, n: Math.min(JOURNAL_PIECE, oldLen - off) })
    }
    // the old contents are read into buffers of the receiver's kept pool (OLD_CONTENTS), in piece order;
    // a buffer goes back once the journal has written its record, never before
    const taken: Buffer[] = []
    let yielded = 0
    let released = 0
    const take = (n: number): Buffer => {
      const b = OLD_CONTENTS.take(n)
      taken.push(b)
      return b
    }
    try {
      for await (const { range, data } of readAhead(this.fh, pieces, opts.signal === undefined ? { take } : { signal: opts.signal, take })) {
        // old zeros (a hole of the thin mirror) are journaled by their length alone (journal.ts type 2)
        if (data !== undefined && data.length > 0 && isAllZero(data)) {
          this.journal.appendExtentOverZeros(range.rec, range.pos, data.length)
          this.journalZeroBytes += data.length
        } else this.journal.appendExtent(range.rec, data, range.pos)
        if (data === undefined) continue
        yielded++
        if (this.journal.queuedBytes >= JOURNAL_PIECE) {
          await this.journal.flush(false)
          for (; released < yielded; released++) OLD_CONTENTS.give(taken[released])
          faultPoint('journal-piece')
        }
      }
      if (inPlace) {
        await this.journal.flush(true)
        faultPoint('journal-synced')
      } else {
        await this.journal.flush(false)
      }
      for (; released < taken.length; released++) OLD_CONTENTS.give(taken[released])
    } finally {
      // a failed or aborted batch: records queued but not written may still be written (a later flush, close),
      // and reads may have failed midway; such buffers are dropped, never reused
      for (; released < taken.length; released++) OLD_CONTENTS.forget(taken[released])
    }
    this.journalMs += performance.now() - t0
  }

  /**
   * Stage 1 of a disk that keeps points: the old grains go into the reverse
   * increment (first save of a grain wins), their index into the journal;
   * both are fsync'ed before stage 2 may overwrite the mirror.
   */
  private async prepareIntoIncrement(inc: ReverseIncrement, batch: readonly ApplyExtent[], signal: AbortSignal | undefined): Promise<void> {
    // the old grains of every extent, read ahead of their saving (readAhead:
    // bounded pieces and bytes in flight), in batch order; an extent with
    // nothing to save still gets its record (a piece of length 0)
    const pieces: Array<{ rec: JournalExtentRecord; first: boolean; run: SaveRun; pos: number; n: number }> = []
    for (const e of batch) {
      const rec = { seq: e.seq, offset: e.offset, length: e.length, zero: e.zero, digest: hex(e.digest) }
      const oldLen = this.committedPart(e)
      const runs = oldLen > 0 ? inc.reserve(e.offset, oldLen, this.info.baseSize) : []
      if (runs.length === 0) pieces.push({ rec, first: true, run: { grain: 0, pos: e.offset, n: 0 }, pos: e.offset, n: 0 })
      for (const [k, run] of runs.entries()) pieces.push({ rec, first: k === 0, run, pos: run.pos, n: run.n })
    }
    for await (const { range, data } of readAhead(this.fh, pieces, signal === undefined ? {} : { signal })) {
      if (range.first) this.journal.appendExtent(range.rec, undefined)
      if (data !== undefined) this.journal.appendGrains(await inc.saveRun(range.run, data))
    }
    faultPoint('increment-written')
    await Promise.all([inc.flush(), this.journal.flush(true)])
    faultPoint('journal-synced')
  }

  /** Make the reverse increment complete and durable (before the commit point). */
  async closeIncrement(): Promise<void> {
    await this.inc?.close()
  }

  /** Grains saved into the reverse increment by this object (for logs). */
  get savedGrains(): number {
    return this.inc?.savedGrains ?? 0
  }

  /**
   * Stage 2: write the batch in place (or into the seed file), fdatasync,
   * record the resume point: {@link writeBatchData} then {@link syncBatch}.
   */
  async writeBatch(batch: readonly ApplyExtent[], opts: { signal?: AbortSignal } = {}): Promise<void> {
    await this.writeBatchData(batch, opts)
    await this.syncBatch(batch)
  }

  /**
   * Stage 2a: write the batch's bytes (not yet durable). Data extents that
   * follow each other on the disk go out in one `pwritev(2)`. A zero extent
   * writes zeros only over committed bytes (a seed's file and grown space are
   * holes already), in pieces, and `signal` is checked before each piece:
   * zeroing is the one unbounded step (a range can be as large as the disk).
   * Data extents are bounded by the batch: they are finished, so that a
   * disconnect keeps the batch's resume point.
   */
  async writeBatchData(batch: readonly ApplyExtent[], opts: { signal?: AbortSignal } = {}): Promise<void> {
    if (batch.length === 0) return
    const t0 = performance.now()
    // a seed's fresh file: its zero granules stay holes (write-runs.ts)
    const runs = this.info.target === 'seed' ? seedRuns(batch) : scatteredRuns(batch)
    if (runs !== undefined) {
      await this.writeRuns(runs)
      this.writtenAt.set(batch, this.syncsStarted)
      this.writeMs += performance.now() - t0
      return
    }
    for (let k = 0; k < batch.length; ) {
      const e = batch[k] as ApplyExtent
      if (e.zero) {
        const n = this.committedPart(e)
        for (let off = 0; off < n; off += JOURNAL_PIECE) {
          opts.signal?.throwIfAborted()
          await writeZeros(this.fh, e.offset + off, Math.min(JOURNAL_PIECE, n - off))
          faultPoint('zero-piece')
        }
        faultPoint('extent-written')
        k++
        continue
      }
      // a run of data extents back to back on the disk: one vectored write
      const run: Uint8Array[] = [e.data as Uint8Array]
      let end = e.offset + e.length
      let j = k + 1
      for (; j < batch.length; j++) {
        const f = batch[j] as ApplyExtent
        if (f.zero || f.offset !== end) break
        run.push(f.data as Uint8Array)
        end += f.length
      }
      if (run.length === 1) await writeFully(this.fh, e.data as Uint8Array, e.offset)
      else await writevFully(this.fh, run, e.offset)
      for (; k < j; k++) faultPoint('extent-written')
    }
    this.writtenAt.set(batch, this.syncsStarted)
    this.writeMs += performance.now() - t0
  }

  /**
   * A batch of data extents in ascending, non-overlapping order (an
   * incremental's scattered changes, or a seed): each run of back-to-back
   * extents is one vectored write, and up to {@link WRITE_AHEAD} runs are
   * written at once, so the batch waits for one write round trip at a time
   * rather than one per run. The ranges are disjoint, so the order of the
   * writes does not matter; none is durable before the fdatasync of
   * {@link syncBatch} anyway. Other batches (zero extents, overlaps, out of
   * order: {@link scatteredRuns} gives undefined) are written in order.
   */
  private async writeRuns(runs: readonly WriteRun[]): Promise<void> {
    let next = 0
    let failed = false
    const worker = async (): Promise<void> => {
      while (next < runs.length && !failed) {
        const r = runs[next++] as WriteRun
        try {
          // a run of no bytes: extents with nothing to write (zero, or zeros in a fresh seed file)
          if (r.data.length === 1) await writeFully(this.fh, r.data[0] as Uint8Array, r.offset)
          else if (r.data.length > 1) await writevFully(this.fh, r.data, r.offset)
          for (let k = 0; k < r.extents; k++) faultPoint('extent-written')
        } catch (err) {
          failed = true // the other writers take no new run
          throw err
        }
      }
    }
    const settled = await Promise.allSettled(Array.from({ length: Math.min(WRITE_AHEAD, runs.length) }, worker))
    for (const r of settled) if (r.status === 'rejected') throw r.reason
  }

  /**
   * Stage 2b: fdatasync the target — it covers every write that completed
   * before it (this batch's, and an earlier batch's still unsynced) — and
   * queue the "applied" marker (the resume point), which becomes durable with
   * the next journal sync (next batch, seal, close). Call it for batches in
   * order, each once its {@link writeBatchData} has completed.
   */
  async syncBatch(batch: readonly ApplyExtent[]): Promise<void> {
    if (batch.length === 0) return
    this.batches++
    const t0 = performance.now()
    // Group commit: an fdatasync that started after this batch's writes had
    // completed (the one of an earlier batch, run while this one was being
    // written) already made them durable; otherwise run one, which covers
    // every write completed before it — later batches' included.
    const at = this.writtenAt.get(batch)
    if (at !== undefined && this.syncsCompleted > at) {
      this.coveredBatches++
    } else {
      this.syncsStarted++
      this.syncs++
      await this.fh.datasync()
      this.syncsCompleted++
    }
    faultPoint('target-synced')
    const last = batch[batch.length - 1] as ApplyExtent
    // The marker follows data that is already durable, so it never claims too
    // much. A lost marker only moves the resume point back.
    this.journal.appendApplied(last.seq)
    if (this.info.target !== 'flat') await this.journal.flush(false)
    this.applied = last.seq
    this.writeMs += performance.now() - t0
  }

  /**
   * The pipeline is idle (no batch being journaled or written): write out the
   * queued "applied" marker of the last durable batch. An in-place target
   * queues it in {@link syncBatch} because a write there could overlap the
   * next batch's journal records; with nothing else writing the journal it
   * goes out alone. Not synced: it survives a killed receiver; a power loss
   * only moves the resume point back, as before.
   */
  async settle(): Promise<void> {
    if (!this.closed) await this.journal.flush(false)
  }

  /**
   * DiskEnd: compare the agent's counts and cycle digest with what was
   * accepted, then make the resume point durable and seal the disk.
   * @throws ReceiverError E_END_MISMATCH
   */
  async end(claim: DiskEndClaim): Promise<void> {
    const got = this.counts
    if (claim.extents !== got.extents || claim.dataBytes !== got.dataBytes || claim.zeroBytes !== got.zeroBytes) {
      const want = { extents: claim.extents, dataBytes: claim.dataBytes, zeroBytes: claim.zeroBytes }
      throw new ReceiverError('E_END_MISMATCH', `DiskEnd counts ${JSON.stringify(want)} of ${this.info.name} differ from received ${JSON.stringify(got)}`)
    }
    const digest = this.digest.digest()
    if (!sameBytes(digest, claim.digest)) throw new ReceiverError('E_END_MISMATCH', `cycle digest of ${this.info.name} differs`)
    this.sealedDigest = digest
    await this.journal.flush(true)
    await this.fh.datasync()
    this.sealed = true
  }

  /** Release the files; `flush: false` drops queued journal records as a crash would (tests). */
  async close(opts: { flush?: boolean } = {}): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (opts.flush !== false) await this.journal.flush(true).catch(() => {})
    await Promise.allSettled([this.fh.close(), this.journal.close(), this.inc?.close()])
  }
}
