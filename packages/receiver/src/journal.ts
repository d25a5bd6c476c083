import { rename, type FileHandle } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { crc32 } from 'node:zlib'
import { basename, dirname, relative } from 'node:path'
import { fsyncDir, readFully, unlinkIfExists, writeFully, writeZeros } from './fs-util.ts'
import { openStoreFile, regularFileSize } from './store-fs.ts'
import type { DiskMode } from '@grainline/protocol'
import { ReceiverError } from './errors.ts'
import { GrainList, type GrainEntry } from './grain-set.ts'
import { faultPoint } from './fault.ts'
import type { VmPaths } from './vm-paths.ts'
import { grainlineCommand, storeArg } from './operator-command.ts'

/**
 * The per-disk journal of an in-flight cycle (ARCHITECTURE §4.1, STYLE §7):
 *
 *   journal := record*
 *   record  := u32le(length) • u32le(crc32(payload, seed)) • payload
 *   payload := u8(type) • u32le(hlen) • utf8(json header, hlen bytes) • bytes
 *
 * The head record's crc starts from 0; every later record's crc starts from
 * the head's random `gen`. A journal file is reused across cycles (overwriting
 * allocated blocks is about twice as fast as appending to a new file), and the
 * seed makes the previous cycle's stale records beyond the end invalid.
 *
 * type 1 (head): the cycle the journal belongs to; always the first record.
 * type 2 (extent): one extent received, with the mirror's OLD contents of (a
 *   piece of) its range (undo data; empty for a seed, which writes into a
 *   fresh file). It is made durable before the range is overwritten. The old
 *   contents of a large in-place range are journaled as several records of at
 *   most JOURNAL_PIECE bytes each, all with the extent's seq/offset/length and
 *   each with its own `oldOffset` (target offset of its old bytes; absent in
 *   older journals: the extent's offset). Old contents that are all zeros (a
 *   hole of the thin mirror, never-written space) are not stored: the header
 *   says `oldZeros` (their length, at most JOURNAL_PIECE) and the record has
 *   no bytes; undo writes that many zeros back. (A receiver older than this
 *   rule reads such a record as "nothing to restore": roll an in-flight cycle
 *   back or let it commit before downgrading.)
 * type 3 (applied): every extent with seq ≤ `seq` is durably in the target
 *   file (written after the target's fdatasync) — the resume point.
 *
 * type 4 (grains): when the disk keeps restore points, the old contents go
 *   into the in-flight reverse increment instead of the journal (the same
 *   bytes become the point at commit); this record indexes the grains a batch
 *   saved there: `{n}` and n × (f64le grain index • u32le crc32 of the grain's
 *   old bytes). A grain of the increment whose bytes do not match its crc
 *   belongs to a batch whose stage 2 never started (the mirror still holds
 *   its old bytes): rollback skips it, resume saves it again.
 *   A grain is journaled once per save (a record per saved run of at most
 *   8 MiB), and saved once per cycle — except that a resume saves again a
 *   journaled grain the increment does not hold with its crc: so a grain
 *   may appear once more per resume, and the number of entries is bounded
 *   by the journal's size alone. Only the FIRST entry of a grain counts
 *   (it holds the committed bytes): `scanJournal` keeps just that one, so
 *   what it keeps is bounded by the capacity (12 bytes a grain, grain-set.ts).
 *   A grain index that is not one of the capacity's 4 KiB grains is never
 *   written: `scanJournal` refuses the journal (E_STATE), it is no torn tail.
 *
 * Nor is an extent record whose range `offset + length` ends past the head's
 * capacity, or whose old contents (`oldOffset + oldLength`, when it has any)
 * end past the head's base size or lie outside the record's own range
 * [offset, offset + length) — the old contents are a piece of the committed
 * part of the range, below the base size (disk-apply.ts `committedPart`,
 * `prepareBatch`: pieces at `offset + k × JOURNAL_PIECE`): such a record
 * passed its crc, so `scanJournal` refuses the journal (E_STATE) rather than
 * let an undo write where the head says nothing was or where the cycle never
 * wrote, or a resume trust what it records.
 *
 * A torn or corrupt tail (short record, bad crc) ends the journal: everything
 * after it is ignored and cut off when the journal is reopened.
 */

const T_HEAD = 1
const T_EXTENT = 2
const T_APPLIED = 3
const T_GRAINS = 4

/** Bytes of one entry of a grains record: f64le grain index • u32le crc32 of the old grain. */
const GRAIN_ENTRY = 12

/** Bytes of a grains record {@link scanJournal} reads at once: 64 Ki entries (768 KiB). */
const GRAIN_PIECE = GRAIN_ENTRY * 65536

/** Records larger than this are treated as corruption (bound before allocating). */
export const MAX_JOURNAL_RECORD = 256 * 1024 * 1024

/**
 * At most this many bytes of old contents per extent record: a large range
 * (an incremental zero extent may be up to the protocol limits) is journaled
 * in pieces, so no record nears MAX_JOURNAL_RECORD and memory stays bounded.
 */
export const JOURNAL_PIECE = 8 * 1024 * 1024

export interface JournalHead {
  readonly cycleId: string
  readonly cycle: number
  readonly name: string
  readonly mode: DiskMode
  readonly capacity: number
  /** size of the target file before the cycle (committed flat size; 0 for a seed) */
  readonly baseSize: number
  /** random crc seed of this journal's records (set by `Journal.create`) */
  readonly gen?: number
  /** the in-flight reverse increment's descriptor (path relative to `.grainline`) when the disk keeps points */
  readonly increment?: string
}

/** A grain saved in the in-flight reverse increment (type 4 record entry). */
export type JournalGrain = GrainEntry

export interface JournalExtent {
  readonly seq: number
  readonly offset: number
  readonly length: number
  readonly zero: boolean
  /** hex of the extent digest ("" for zero extents) */
  readonly digest: string
  /** target offset of the old contents stored in this record (a piece of the range) */
  readonly oldOffset: number
  /** bytes of old contents stored (this record's piece of range ∩ [0, baseSize)) */
  readonly oldLength: number
  /** journal file position of the old contents */
  readonly oldPos: number
  /** the old contents were `oldLength` zeros, not stored (`oldPos` means nothing) */
  readonly oldZeros: boolean
}

export interface JournalApplied {
  readonly seq: number
}

function frame(type: number, header: object, data: Uint8Array | undefined, seed: number): Buffer[] {
  const h = Buffer.from(JSON.stringify(header), 'utf8')
  const pre = Buffer.alloc(13)
  const len = 1 + 4 + h.length + (data?.length ?? 0)
  pre.writeUInt32LE(len, 0)
  pre.writeUInt8(type, 8)
  pre.writeUInt32LE(h.length, 9)
  let c = crc32(pre.subarray(8, 13), seed)
  c = crc32(h, c)
  if (data !== undefined) c = crc32(data, c)
  pre.writeUInt32LE(c >>> 0, 4)
  return data === undefined ? [pre, h] : [pre, h, Buffer.from(data.buffer, data.byteOffset, data.length)]
}

/** Bytes {@link JournalWindow} reads at once: ~7,000 extent records over zeros (~140 bytes each) per read. */
const JOURNAL_READ_WINDOW = 1024 * 1024

/**
 * A journal read front to back through one window of the file: a record's
 * prefix and header come from memory, not from a `pread` each. Reading them
 * one `pread` at a time cost two thread-pool round trips per record — on
 * this project's VMs ~0.26 ms per record under load, over four minutes for a
 * resume of 1,000,000 journaled extents (scripts/bench-journal-read.mjs).
 * A refill allocates a new buffer, so a view handed out earlier stays valid.
 */
class JournalWindow {
  private readonly fh: FileHandle
  private readonly size: number
  private buf: Buffer = Buffer.alloc(0)
  private start = 0
  constructor(fh: FileHandle, size: number) {
    this.fh = fh
    this.size = size
  }

  /** The `len` bytes at `pos` (zeros past the end of the file, as readFully). */
  async at(pos: number, len: number): Promise<Buffer> {
    if (pos < this.start || pos + len > this.start + this.buf.length) {
      const n = Math.max(len, Math.min(JOURNAL_READ_WINDOW, this.size - pos))
      this.buf = await readFully(this.fh, pos, n)
      this.start = pos
    }
    return this.buf.subarray(pos - this.start, pos - this.start + len)
  }
}

/** The generation a journal's records after its head are checksummed from (its head's random `gen`; 0 without one). */
function journalGen(head: JournalHead): number {
  return typeof head.gen === 'number' ? head.gen >>> 0 : 0
}

/** One record's frame read at `pos`, or undefined where the journal ends (no room, absurd sizes, bad crc, bad json). */
interface RecordAt {
  readonly type: number
  readonly len: number
  /** the record's crc (its prefix's second field) */
  readonly crc: number
  readonly header: Record<string, unknown>
  readonly dataPos: number
  readonly dataLen: number
}

/**
 * The record at `pos` of a file of `size` bytes, its crc checked from `seed` (the payload streamed in bounded chunks).
 */
async function recordAt(win: JournalWindow, pos: number, size: number, seed: number): Promise<RecordAt | undefined> {
  if (pos + 13 > size) return undefined
  const pre = await win.at(pos, 13)
  const len = pre.readUInt32LE(0)
  const crc = pre.readUInt32LE(4)
  const hlen = pre.readUInt32LE(9)
  if (len < 5 || len > MAX_JOURNAL_RECORD || pos + 8 + len > size || hlen > len - 5 || hlen > 1024 * 1024) return undefined
  const type = pre.readUInt8(8)
  const hbuf = await win.at(pos + 13, hlen)
  const dataLen = len - 5 - hlen
  const dataPos = pos + 13 + hlen
  let c = crc32(pre.subarray(8, 13), seed)
  c = crc32(hbuf, c)
  for (let off = 0; off < dataLen; off += 4 * 1024 * 1024) {
    const chunk = await win.at(dataPos + off, Math.min(4 * 1024 * 1024, dataLen - off))
    c = crc32(chunk, c)
  }
  if (c >>> 0 !== crc) return undefined
  let header: Record<string, unknown>
  try {
    header = JSON.parse(hbuf.toString('utf8')) as Record<string, unknown>
  } catch {
    return undefined
  }
  return { type, len, crc, header, dataPos, dataLen }
}

/** Why an extent record is no record (the journal ends there: 'end'), or the extent it holds, or what is wrong with it for the head (`beyond`). */
function extentOf(head: JournalHead, r: RecordAt): JournalExtent | 'end' | { readonly beyond: string; readonly seq: unknown } {
  const e = r.header as { seq: number; offset: number; length: number; zero: boolean; digest: string; oldOffset?: unknown; oldZeros?: unknown }
  const oldOffset = typeof e.oldOffset === 'number' ? e.oldOffset : e.offset
  const z = e.oldZeros
  if (z !== undefined && (typeof z !== 'number' || !Number.isSafeInteger(z) || z <= 0 || z > JOURNAL_PIECE || r.dataLen !== 0)) return 'end'
  const oldZeros = z !== undefined
  const oldLength = oldZeros ? z : r.dataLen
  // the writer journals ranges of the capacity, and old contents of their committed part (below the base
  // size): a record beyond passed its crc, so it is no torn tail but a journal written by something else
  const beyond = extentBeyond(head, e.offset, e.length, oldOffset, oldLength)
  if (beyond !== undefined) return { beyond, seq: e.seq }
  // what a resume keeps of a record (at most JOURNAL_READ_LIMITS.waiting of them wait): the writer's digest is hex
  // ("" for a zero extent), at most a SHA-512's 128 digits; a header may be up to 1 MiB, so nothing else is kept
  if (typeof e.zero !== 'boolean') return { beyond: `says zero = ${String(JSON.stringify(e.zero)).slice(0, 40)}, not true or false`, seq: e.seq }
  if (typeof e.digest !== 'string' || !/^[0-9a-f]{0,128}$/.test(e.digest)) return { beyond: 'holds a digest that is not hex of at most 128 digits', seq: e.seq }
  return { seq: e.seq, offset: e.offset, length: e.length, zero: e.zero, digest: e.digest, oldOffset, oldLength, oldPos: r.dataPos, oldZeros }
}

/**
 * How far apart the positions {@link JournalScan.positions} keeps are (a later pass reads the journal back a
 * window at a time from them): `records` extent records or `bytes` of journal at most — a window's records are
 * at most `records`, whatever their size —; and how many records of seqs beyond the next one a resume's replay
 * keeps waiting, at most (disk-apply.ts `#replay`). Records are ~150–200 bytes of heap each. Tests make them
 * small to read journals of a few records in many windows and passes (journal-replay.test); nothing else
 * changes them.
 */
export const JOURNAL_READ_LIMITS = { records: 4096, bytes: 1024 * 1024, waiting: 65536 }

/**
 * What one pass over a journal learnt, holding no record ({@link scanJournal}): what a resume and a rollback need
 * besides the records, which a later pass reads again (journal windows: {@link journalExtents}).
 */
export interface JournalScan {
  readonly head: JournalHead
  /** the last applied marker, or null */
  readonly applied: JournalApplied | null
  /** end of the last valid record */
  readonly validEnd: number
  /** end of the head record: truncating here forgets every extent and marker */
  readonly headEnd: number
  /**
   * grains saved in the reverse increment, in journal order, the FIRST entry
   * of each grain only (it holds the committed bytes; a later one, saved
   * again by a resume, never counts): at most the disk's capacity in grains,
   * 12 bytes each (empty without points) — bounded by the capacity, not by the
   * journal (grain-set.ts GrainList drops a grain listed already)
   */
  readonly grains: GrainList
  /** extent records in [headEnd, validEnd) */
  readonly extentRecords: number
  /** old bytes the extent records restore (stored and zeros): what an undo writes back */
  readonly oldBytes: number
  /**
   * Record starts in [headEnd, validEnd), increasing, the first `headEnd`: one where at least JOURNAL_READ_LIMITS.bytes of
   * journal or JOURNAL_READ_LIMITS.records records passed since the previous one — a window between two (or the last and
   * `validEnd`) holds at most JOURNAL_READ_LIMITS.records extent records. 8 bytes a MiB of journal or 4,096 records: a
   * journal of 100 GiB or of 1.6 M records keeps ~100 Ki of them.
   */
  readonly positions: readonly number[]
  /**
   * A fingerprint of the records in [0, validEnd): the crc32 of their lengths and crcs, in order ({@link journalPrint}).
   * A rollback records it before it writes anything (state-file.ts `InflightDisk.undoFrom`): a journal read again
   * after a part of the undo was written must be the one it began with.
   */
  readonly print: number
}

/** The fingerprint {@link JournalScan.print} goes on from `print` with a record of `len` bytes (after its prefix) and crc `crc`. */
function journalPrint(print: number, len: number, crc: number): number {
  const b = Buffer.allocUnsafe(8)
  b.writeUInt32LE(len, 0)
  b.writeUInt32LE(crc >>> 0, 4)
  return crc32(b, print)
}

export interface JournalContents extends JournalScan {
  readonly extents: readonly JournalExtent[]
}

/**
 * Read a journal file once, front to back, keeping no record ({@link JournalScan}). Returns undefined if it has
 * no valid head record. A record that passed its crc but lies outside what the head allows (see the grains and
 * extent rules above) is refused with E_STATE; with `paths` (the VM's), the message names the journal relative
 * to the store and the remedy's command names the store and the VM. `checkHead` sees the head as soon as it is
 * read, before any record is held to it (journal-head.ts `checkJournalHead`: a head of another disk or cycle is
 * said as such, not as records beyond it). With `headOnly`, the head is all that is read: no extent, marker or
 * grain is returned (`validEnd` is the head's end).
 */
export async function scanJournal(
  path: string,
  opts: { readonly paths?: VmPaths; readonly checkHead?: (head: JournalHead) => void; readonly headOnly?: boolean } = {},
): Promise<JournalScan | undefined> {
  const fh = await openStoreFile(path, 'read')
  try {
    const size = (await fh.stat()).size
    const win = new JournalWindow(fh, size)
    let pos = 0
    let head: JournalHead | undefined
    let applied: JournalApplied | null = null
    const grains = new GrainList()
    let gen = 0
    let headEnd = 0
    let extentRecords = 0
    let oldBytes = 0
    const positions: number[] = []
    let sinceRecords = 0
    let print = 0
    for (;;) {
      const r = await recordAt(win, pos, size, head === undefined ? 0 : gen)
      if (r === undefined) break
      const { type, header, dataPos, dataLen } = r
      if (head !== undefined) {
        const last = positions[positions.length - 1] as number
        if (sinceRecords >= JOURNAL_READ_LIMITS.records || pos - last >= JOURNAL_READ_LIMITS.bytes) {
          positions.push(pos)
          sinceRecords = 0
        }
      }
      if (type === T_HEAD && head === undefined && pos === 0) {
        head = header as unknown as JournalHead
        gen = journalGen(head)
        headEnd = pos + 8 + r.len
        positions.push(headEnd)
        opts.checkHead?.(head)
        print = journalPrint(0, r.len, r.crc)
        // a seed's rollback needs the head alone (rollback.ts): no record is read, none held to it
        if (opts.headOnly === true) return { head, applied: null, validEnd: headEnd, headEnd, grains: new GrainList(), extentRecords: 0, oldBytes: 0, positions: [headEnd], print }
      } else if (type === T_EXTENT && head !== undefined) {
        const e = extentOf(head, r)
        if (e === 'end') break
        if ('beyond' in e) throw journalCorrupt(path, opts, head, `its extent record of seq ${String(e.seq)} at byte ${pos} ${e.beyond}`)
        extentRecords++
        sinceRecords++
        oldBytes += e.oldLength
      } else if (type === T_APPLIED && head !== undefined) {
        // the writer marks a seq it applied (Journal.appendApplied): anything else passed its crc, so it is no torn
        // tail, and a resume must not take extents as durable that no marker vouches for
        const seq = (header as { seq?: unknown }).seq
        if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 0)
          throw journalCorrupt(path, opts, head, `its applied marker at byte ${pos} names seq ${String(JSON.stringify(seq)).slice(0, 40)}, not a seq`)
        applied = { seq }
      } else if (type === T_GRAINS && head !== undefined && dataLen % GRAIN_ENTRY === 0) {
        // the writer saves only grains of the committed part of the disk (increment.ts `reserve`, clipped to the
        // base size, never above the capacity): a grain beyond is no torn tail but a journal written by something
        // else, and the reverse increment it indexes cannot be trusted (nor can the mirror be put back from it).
        // Read in pieces of GRAIN_PIECE entries: a record may be up to MAX_JOURNAL_RECORD bytes.
        const limit = grainLimit(head)
        for (let off = 0; off < dataLen; off += GRAIN_PIECE) {
          const data = await win.at(dataPos + off, Math.min(GRAIN_PIECE, dataLen - off))
          for (let i = 0; i < data.length; i += GRAIN_ENTRY) {
            const g = data.readDoubleLE(i)
            if (!(Number.isSafeInteger(g) && g >= 0 && g < limit))
              throw journalCorrupt(
                path,
                opts,
                head,
                `its grains record at byte ${pos} names grain ${g}, not one of the ${limit} grains of 4 KiB of the disk's capacity of ${String(head.capacity)} bytes`,
              )
            grains.push(g, data.readUInt32LE(i + 8))
          }
        }
      } else {
        break
      }
      if (pos !== 0) print = journalPrint(print, r.len, r.crc)
      pos += 8 + r.len
    }
    if (head === undefined) return undefined
    return { head, applied, validEnd: pos, headEnd, grains, extentRecords, oldBytes, positions, print }
  } finally {
    await fh.close()
  }
}

/**
 * The extent records of window `w` of a scanned journal (between `scan.positions[w]` and the next position or
 * `validEnd`: at most JOURNAL_READ_LIMITS.records), in journal order, read again from `fh` (the journal `scan` read). Each
 * record's crc is checked again and each is held to the head again: a record that is not what the scan saw means the
 * file changed since (E_STATE), never a record dropped or trusted. With `paths` (the VM's), the refusal names the
 * journal relative to the store and the VM, as {@link scanJournal}'s do.
 */
export async function journalExtents(fh: FileHandle, path: string, scan: JournalScan, w: number, paths?: VmPaths): Promise<JournalExtent[]> {
  const from = scan.positions[w]
  if (from === undefined) throw new RangeError(`journal window ${w} of ${scan.positions.length}`)
  const to = scan.positions[w + 1] ?? scan.validEnd
  const win = new JournalWindow(fh, to)
  const out: JournalExtent[] = []
  // each record's crc again (the scan's generation): a record changed since the scan — its type, its header, its old
  // contents — is refused, never dropped nor trusted
  const gen = journalGen(scan.head)
  for (let pos = from; pos < to; ) {
    const r = await recordAt(win, pos, to, gen)
    const e = r?.type === T_EXTENT ? extentOf(scan.head, r) : undefined
    if (r === undefined || e === 'end' || (e !== undefined && 'beyond' in e)) throw journalChanged(path, paths, scan, pos)
    if (e !== undefined) out.push(e)
    pos += 8 + r.len
  }
  return out
}

/**
 * Read a journal file whole: its {@link scanJournal} and every extent record, in journal order (~150–200 bytes
 * a record: a small journal's, or a test's; a resume and a rollback read the records a window at a time,
 * {@link journalExtents}).
 */
export async function readJournal(
  path: string,
  opts: { readonly paths?: VmPaths; readonly checkHead?: (head: JournalHead) => void; readonly headOnly?: boolean } = {},
): Promise<JournalContents | undefined> {
  const scan = await scanJournal(path, opts)
  if (scan === undefined) return undefined
  const fh = await openStoreFile(path, 'read')
  try {
    const extents: JournalExtent[] = []
    for (let w = 0; w < scan.positions.length && scan.validEnd > scan.headEnd; w++) extents.push(...(await journalExtents(fh, path, scan, w, opts.paths)))
    return { ...scan, extents }
  } finally {
    await fh.close()
  }
}

/**
 * A journal refused (E_STATE) because its record at byte `pos` is not the one its scan read: something other than
 * this receiver wrote it meanwhile. Named as
 * {@link journalCorrupt} names it: relative to the store, its disk, cycle and VM, and what to do.
 */
function journalChanged(path: string, paths: VmPaths | undefined, scan: JournalScan, pos: number): ReceiverError {
  const file = paths === undefined ? path : relative(paths.store, path)
  const vm = paths === undefined ? undefined : basename(paths.dir)
  const folder = vm === undefined ? "the VM's folder" : `the folder of VM ${vm}`
  const rollback = paths === undefined ? 'grainline mirror rollback' : grainlineCommand(['mirror', 'rollback', '--store', storeArg(paths.store), '--vm', String(vm)])
  const what = `changed while it was read: its record at byte ${pos} is not the one read before (below its valid end at byte ${scan.validEnd})`
  const err = new ReceiverError(
    'E_STATE',
    `journal ${file} of disk ${String(scan.head.name)} (cycle ${String(scan.head.cycle)}) ${what}. ` +
      `Nothing more was read from it, nothing written from it. Something other than this receiver writes in ${folder} (a copy or restore of the store, another program): ` +
      `stop it, then run again — the agent's next run, or ${rollback} — and the journal is read anew`,
  )
  changes.set(err, what)
  return err
}

/** The refusals of {@link journalChanged}: what changed ("changed while it was read: its record at byte …"). */
const changes = new WeakMap<object, string>()

/** What changed in a journal `err` refused as changed while it was read (a window read again, {@link journalExtents}), or undefined for any other error. */
export function journalChange(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null ? changes.get(err) : undefined
}

/** Grains of 4 KiB a journal's head allows (its disk's capacity, rounded up; 0 when the head has none). */
function grainLimit(head: JournalHead): number {
  const c = head.capacity
  return typeof c === 'number' && Number.isSafeInteger(c) && c > 0 ? Math.ceil(c / GRAIN_BYTES) : 0
}

/** 4 KiB: the grain of a reverse increment (increment.ts POINT_GRAIN). */
const GRAIN_BYTES = 4096

/**
 * What is wrong with an extent record's range (`offset`, `length`) or its old contents (`oldOffset`, `oldLength`)
 * for the journal's head, or undefined: the range must lie within the capacity, old contents within the base size
 * and within the record's own range (the writer journals pieces of the range it is about to overwrite, nothing else).
 */
function extentBeyond(head: JournalHead, offset: unknown, length: unknown, oldOffset: unknown, oldLength: number): string | undefined {
  const int = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0
  if (!int(offset) || !int(length)) return `has offset ${String(offset)} and length ${String(length)}, not byte counts`
  if (!(offset + length <= head.capacity)) return `writes offset ${offset} length ${length}, ending at ${offset + length}, past the disk's capacity of ${String(head.capacity)} bytes the head gives`
  if (oldLength === 0) return undefined
  if (!int(oldOffset)) return `has old contents at offset ${String(oldOffset)}, not a byte count`
  if (!(oldOffset + oldLength <= head.baseSize)) {
    return `holds old contents at offset ${oldOffset} length ${oldLength}, ending at ${oldOffset + oldLength}, past the flat's base size of ${String(head.baseSize)} bytes the head gives (nothing was there before the cycle)`
  }
  if (!(oldOffset >= offset && oldOffset + oldLength <= offset + length)) {
    return `holds old contents at offset ${oldOffset} length ${oldLength}, ending at ${oldOffset + oldLength}, outside its own range at offset ${offset} length ${length}, ending at ${offset + length} (an undo would write them over bytes the cycle never wrote)`
  }
  return undefined
}

/**
 * A journal refused (E_STATE): a record that passed its crc says what the receiver never writes (`what`). A seed's
 * journal whose head was checked against the state (`checkHead`) still rolls back: its rollback reads the head
 * alone and drops the seed file whole (rollback.ts) — the receiver's own after a failed resume too (session.ts) —,
 * so the text says so.
 */
function journalCorrupt(path: string, opts: { readonly paths?: VmPaths; readonly checkHead?: unknown }, head: JournalHead, what: string): ReceiverError {
  const { paths } = opts
  const file = paths === undefined ? path : relative(paths.store, path)
  const cycle = String(head.cycle)
  const vm = paths === undefined ? undefined : basename(paths.dir)
  const said = `journal ${file} of disk ${String(head.name)} (cycle ${cycle}) is corrupt: ${what} — the receiver never writes such a record. `
  if (paths !== undefined && opts.checkHead !== undefined && head.mode === 'seed') {
    return new ReceiverError(
      'E_STATE',
      said +
        `Nothing was resumed: cycle ${cycle}, a seed, cannot resume from this journal. The receiver rolls it back on its own once a resume failed on it ` +
        `(${grainlineCommand(['mirror', 'rollback', '--store', storeArg(paths.store), '--vm', String(vm)])} does it now): a seed's rollback reads the journal's head alone and discards the seed file whole, ` +
        `the committed mirror stays as it is; the run after seeds disk ${String(head.name)} of VM ${String(vm)} anew`,
    )
  }
  const remedy =
    paths === undefined
      ? "Restore the VM's folder whole from one backup, or remove the mirror (grainline mirror remove): the next run seeds the VM anew"
      : `Restore the folder of VM ${String(vm)} whole from one backup, or remove the mirror (${grainlineCommand(['mirror', 'remove', '--store', storeArg(paths.store), '--vm', String(vm), '--yes'])}): the next run seeds the VM anew`
  return new ReceiverError('E_STATE', said + `Nothing was resumed or undone: cycle ${cycle} can neither resume nor roll back from this journal. ${remedy}`)
}

/** Append-only writer of a journal. Appends are buffered until `flush`. */
export class Journal {
  readonly path: string
  private readonly fh: FileHandle
  private end: number
  private pending: Buffer[] = []
  private pendingBytes = 0
  private readonly gen: number

  private constructor(path: string, fh: FileHandle, end: number, gen: number) {
    this.path = path
    this.fh = fh
    this.end = end
    this.gen = gen
  }

  /**
   * Start a journal holding only its head, durably (file and directory). When
   * `spare` names a journal file of an earlier cycle, it is renamed into place
   * and overwritten (its blocks are already allocated).
   */
  static async create(path: string, head: JournalHead, spare?: string): Promise<Journal> {
    let fh: FileHandle | undefined
    if (spare !== undefined) {
      try {
        await rename(spare, path)
        fh = await openStoreFile(path, 'update')
      } catch (err) {
        if ((err as { code?: unknown }).code !== 'ENOENT') throw err
      }
    }
    fh ??= await openStoreFile(path, 'replace', 0o600)
    try {
      const gen = randomBytes(4).readUInt32LE(0)
      const j = new Journal(path, fh, 0, gen)
      j.push(frame(T_HEAD, { ...head, gen }, undefined, 0))
      await j.flush(true)
      await fsyncDir(dirname(path))
      return j
    } catch (err) {
      await fh.close().catch(() => {})
      throw err
    }
  }

  /** Reopen an existing journal for appending, cutting off a torn tail. */
  static async reopen(path: string, contents: Pick<JournalScan, 'validEnd' | 'head'>): Promise<Journal> {
    const fh = await openStoreFile(path, 'update')
    try {
      // cut everything after the valid end: records of this generation past a
      // torn one must never be read as part of the journal again
      const size = (await fh.stat()).size
      if (size !== contents.validEnd) {
        await fh.truncate(contents.validEnd)
        await fh.sync()
      }
      return new Journal(path, fh, contents.validEnd, journalGen(contents.head))
    } catch (err) {
      await fh.close().catch(() => {})
      throw err
    }
  }

  private push(bufs: Buffer[]): void {
    for (const b of bufs) {
      this.pending.push(b)
      this.pendingBytes += b.length
    }
  }

  /**
   * Queue an extent record with old contents (at most JOURNAL_PIECE bytes)
   * of its range starting at target offset `oldOffset` (default: the extent's offset).
   */
  appendExtent(e: { seq: number; offset: number; length: number; zero: boolean; digest: string }, old: Uint8Array | undefined, oldOffset = e.offset): void {
    if (old !== undefined && old.length > JOURNAL_PIECE) throw new RangeError(`journal piece of ${old.length} bytes exceeds ${JOURNAL_PIECE}`)
    const header =
      oldOffset === e.offset
        ? { seq: e.seq, offset: e.offset, length: e.length, zero: e.zero, digest: e.digest }
        : { seq: e.seq, offset: e.offset, length: e.length, zero: e.zero, digest: e.digest, oldOffset }
    this.push(frame(T_EXTENT, header, old, this.gen))
  }

  /** Queue an extent record whose old contents at `oldOffset` were `n` zeros (none stored: see type 2). */
  appendExtentOverZeros(e: { seq: number; offset: number; length: number; zero: boolean; digest: string }, oldOffset: number, n: number): void {
    if (!Number.isSafeInteger(n) || n <= 0 || n > JOURNAL_PIECE) throw new RangeError(`journal zero piece of ${n} bytes (1 to ${JOURNAL_PIECE})`)
    this.push(frame(T_EXTENT, { seq: e.seq, offset: e.offset, length: e.length, zero: e.zero, digest: e.digest, oldOffset, oldZeros: n }, undefined, this.gen))
  }

  /** Queue a grains record: grains saved in the reverse increment (see type 4). */
  appendGrains(grains: readonly JournalGrain[]): void {
    if (grains.length === 0) return
    const data = Buffer.alloc(grains.length * GRAIN_ENTRY)
    grains.forEach((g, i) => {
      data.writeDoubleLE(g.grain, i * GRAIN_ENTRY)
      data.writeUInt32LE(g.crc >>> 0, i * GRAIN_ENTRY + 8)
    })
    this.push(frame(T_GRAINS, { n: grains.length }, data, this.gen))
  }

  /** Queue an applied marker. */
  appendApplied(seq: number): void {
    this.push(frame(T_APPLIED, { seq }, undefined, this.gen))
  }

  /** Bytes queued and not yet written. */
  get queuedBytes(): number {
    return this.pendingBytes
  }

  /**
   * Write the queued records; with `sync`, fdatasync afterwards. Resolves once
   * every record queued before the call is written (and, with `sync`,
   * durable) — also those an overlapping earlier flush took and is still
   * writing: the caller may then reuse the buffers of its records
   * (disk-apply.ts) and rely on their durability.
   */
  async flush(sync: boolean): Promise<void> {
    const earlier = this.writing
    let mine: Promise<void> | undefined
    if (this.pending.length > 0) {
      const bufs = this.pending
      const total = this.pendingBytes
      this.pending = []
      this.pendingBytes = 0
      // reserve the range now: flushes may overlap (pipelined batches)
      const pos = this.end
      this.end += total
      mine = this.writeAt(bufs, total, pos)
      this.writing = Promise.all([earlier, mine]).then(
        () => {},
        () => {},
      )
    }
    await earlier
    await mine
    if (sync) await this.fh.datasync()
  }

  /** Every write started so far settled (its error is its flush's). */
  private writing: Promise<void> = Promise.resolve()

  private async writeAt(bufs: Buffer[], total: number, start: number): Promise<void> {
    // writev may write short; fall back to per-buffer writes
    const { bytesWritten } = await this.fh.writev(bufs, start)
    if (bytesWritten !== total) {
      let pos = start
      let skip = bytesWritten
      for (const b of bufs) {
        if (skip >= b.length) {
          skip -= b.length
          pos += b.length
          continue
        }
        await writeFully(this.fh, b.subarray(skip), pos + skip)
        pos += b.length
        skip = 0
      }
    }
  }

  async close(): Promise<void> {
    await this.fh.close()
  }
}

/**
 * Forget every extent and marker of a journal (keep its head) durably. Used
 * once an undo is complete: the "applied" markers no longer describe the
 * target, and a later resume must start again from seq 0. Truncation needs no
 * free space, so this works on a full disk.
 */
export async function resetJournal(path: string, headEnd: number): Promise<void> {
  let fh: FileHandle
  try {
    fh = await openStoreFile(path, 'update')
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return
    throw err
  }
  try {
    await fh.truncate(headEnd)
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/**
 * Undo an interrupted incremental apply: write back the old contents of every
 * journaled extent in REVERSE order (so the oldest copy of a range wins when an
 * extent was journaled twice across a resume), cut the file back to its base
 * size and fdatasync it. Idempotent: safe to repeat after a crash mid-undo.
 * `onUndone` hears of the bytes written back so far (zeroed ones included). With `paths` (the VM's), a refusal names
 * the journal relative to the store ({@link journalExtents}).
 */
export async function undoJournal(journalPath: string, contents: JournalScan, targetPath: string, onUndone?: (bytes: number) => void, paths?: VmPaths): Promise<void> {
  const jfh = await openStoreFile(journalPath, 'read')
  try {
    const tfh = await openStoreFile(targetPath, 'update')
    try {
      let undone = 0
      // one extent's old contents back in place: zeros by length, stored bytes in chunks of at most 4 MiB; each
      // piece written is reported (the sum only grows: the extents of a run finish in any order)
      const undoOne = async (e: JournalExtent): Promise<void> => {
        if (e.oldZeros) {
          await writeZeros(tfh, e.oldOffset, e.oldLength)
          undone += e.oldLength
          onUndone?.(undone)
          return
        }
        for (let off = 0; off < e.oldLength; off += 4 * 1024 * 1024) {
          const n = Math.min(4 * 1024 * 1024, e.oldLength - off)
          const old = await readFully(jfh, e.oldPos + off, n)
          await writeFully(tfh, old, e.oldOffset + off)
          undone += n
          onUndone?.(undone)
        }
      }
      // Newest first, several at a time: a run of extents whose target ranges do not overlap is undone with its
      // writes in flight together (each a thread-pool round trip: one at a time, a rollback of 1,000,000
      // journaled extents took minutes); an extent overlapping one of the run starts the next run, so that
      // where a range was journaled twice the oldest contents are written last, as in order.
      let batch: JournalExtent[] = []
      let batchBytes = 0
      const flushBatch = async (): Promise<void> => {
        if (batch.length === 0) return
        // every write settled before the first failure is thrown: none still in flight when the files close
        const settled = await Promise.allSettled(batch.map(undoOne))
        const failed = settled.find((r) => r.status === 'rejected')
        if (failed !== undefined) throw failed.reason
        batch = []
        batchBytes = 0
        faultPoint('undo-written')
      }
      // The records are read back a window at a time from the end (the scan's positions: at most JOURNAL_READ_LIMITS.records
      // records a window), each window's newest first: what is held is one window's records, not the journal's.
      for (let w = contents.positions.length - 1; w >= 0; w--) {
        const extents = await journalExtents(jfh, journalPath, contents, w, paths)
        for (let i = extents.length - 1; i >= 0; i--) {
          const e = extents[i] as JournalExtent
          if (e.oldLength === 0) continue
          const overlaps = batch.some((b) => e.oldOffset < b.oldOffset + b.oldLength && b.oldOffset < e.oldOffset + e.oldLength)
          if (overlaps || batch.length >= UNDO_IN_FLIGHT || batchBytes + e.oldLength > UNDO_BATCH_BYTES) await flushBatch()
          batch.push(e)
          batchBytes += e.oldLength
        }
      }
      await flushBatch()
      const size = (await tfh.stat()).size
      if (size !== contents.head.baseSize) await tfh.truncate(contents.head.baseSize)
      await tfh.datasync()
    } finally {
      await tfh.close()
    }
  } finally {
    await jfh.close()
  }
}

/** Extents {@link undoJournal} undoes at once (non-overlapping ones only). */
const UNDO_IN_FLIGHT = 16

/** Old contents {@link undoJournal} puts back at once: a larger extent goes alone (its reads are 4 MiB at most). */
const UNDO_BATCH_BYTES = 8 * 1024 * 1024

/** Journals larger than this are deleted rather than kept as spares. */
const MAX_SPARE_BYTES = 4 * 1024 ** 3

/**
 * Retire a finished journal: keep it as `<path>.spare` so that the next cycle
 * of the disk overwrites its allocated blocks, or delete it when huge.
 */
export async function retireJournal(path: string): Promise<void> {
  const size = await regularFileSize(path)
  if (size === undefined) return
  if (size > MAX_SPARE_BYTES) await unlinkIfExists(path)
  else await rename(path, `${path}.spare`)
}
