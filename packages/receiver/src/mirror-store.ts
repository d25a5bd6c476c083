import { randomBytes } from 'node:crypto'
import { mkdir, open, readdir, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { CycleDigest, type CompatRecord, type DigestAlgorithm, type SourceIdentity, type DiskOpenMessage } from '@grainline/protocol'
import { ReceiverError, ioError } from './errors.ts'
import { TMP_MARK, exists, fsyncDir, readFully, readJsonIfExists, unlinkIfExists, writeFileAtomic, writeFully, writeZeros } from './fs-util.ts'
import { JOURNAL_PIECE, Journal, readJournal, resetJournal, undoJournal, type JournalContents } from './journal.ts'
import { descriptorCid, mirrorDescriptor, newCid } from './mirror-descriptor.ts'
import { DEFAULT_DISPLAY_SUFFIX, baseDiskName, mirrorVmx } from './mirror-vmx.ts'
import { faultPoint } from './fault.ts'

/** Hidden folder beside the mirror holding grainline's own state. */
export const STATE_DIR = '.grainline'
const STATE_FILE = 'state.json'
const INCOMING = 'incoming'

/** Result of the last trivial check or certify of a disk. */
export interface VerifyRecord {
  readonly ok: boolean
  readonly at: string
  readonly algorithm: DigestAlgorithm
  readonly digest: string
  readonly bytes: number
}

/** Per-disk committed state. */
export interface DiskRecord {
  /** source disk name, e.g. "web01_1.vmdk" */
  readonly name: string
  /** mirror file stem: `<stem>.vmdk`, `<stem>-flat.vmdk` */
  readonly stem: string
  readonly capacity: number
  /** flat file size at commit */
  readonly size: number
  readonly cycle: number
  readonly committedAt: string
  readonly source: SourceIdentity
  readonly cycleId: string
  /** generation of the commit that last wrote this disk (SPEC §5.8); "" for a point committed before generations */
  readonly generation?: string
  readonly mirrorCid: string
  readonly ddb: Readonly<Record<string, string>>
  readonly cycleDigest: { readonly algorithm: DigestAlgorithm, readonly digest: string }
  readonly trivial?: VerifyRecord
  readonly certify?: VerifyRecord
}

/** Per-disk in-flight (uncommitted) cycle. */
export interface InflightDisk {
  readonly name: string
  readonly stem: string
  readonly cycleId: string
  readonly mode: 'seed' | 'incremental'
  readonly capacity: number
  /** flat size before the cycle (0 for a seed) */
  readonly baseSize: number
  /** `flat`: in place with undo journal; `seed`: a new `-flat.vmdk.seed` file renamed at commit */
  readonly target: 'flat' | 'seed'
  readonly source: SourceIdentity
  readonly ddb: Readonly<Record<string, string>>
  readonly algorithm: DigestAlgorithm
}

/** Roll-forward work after the commit point (state.json says committed). */
export interface PendingCommit {
  readonly cycle: number
  readonly renames: ReadonlyArray<{ readonly from: string, readonly to: string }>
  readonly descriptors: readonly string[]
  readonly journals: readonly string[]
  readonly files: boolean
}

/** `.grainline/state.json`. */
export interface VmStateFile {
  readonly format: 1
  readonly vm: string
  readonly compat: CompatRecord | null
  readonly committedCycle: number
  readonly committedAt: string | null
  /** generation of the last commit (SPEC §5.8); absent before the first commit or in state files older than generations */
  readonly generation?: string
  readonly displaySuffix: string
  readonly disks: Readonly<Record<string, DiskRecord>>
  readonly inflight: { readonly cycle: number, readonly startedAt: string, readonly disks: Readonly<Record<string, InflightDisk>> } | null
  readonly pending: PendingCommit | null
}

function emptyState (vm: string): VmStateFile {
  return { format: 1, vm, compat: null, committedCycle: 0, committedAt: null, displaySuffix: DEFAULT_DISPLAY_SUFFIX, disks: {}, inflight: null, pending: null }
}

/** The file stem of a disk name: "web01_1.vmdk" → "web01_1". */
export function diskStem (name: string): string {
  return name.replace(/\.vmdk$/i, '')
}

function hex (b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex')
}

const locks = new Set<string>()

function processAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as { code?: unknown }).code === 'EPERM'
  }
}

/** This boot's id (Linux), or '' where there is none. */
function bootId (): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
  } catch {
    return ''
  }
}

/**
 * Start time of a process in clock ticks since boot (field 22 of
 * /proc/<pid>/stat), '' where /proc cannot tell, undefined when it is gone.
 */
export function processStartTime (pid: number): string | undefined {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch (err) {
    const code = (err as { code?: unknown }).code
    if (code === 'ENOENT' || code === 'ESRCH') return existsSync('/proc/self/stat') ? undefined : ''
    return ''
  }
  // "pid (comm) state ppid …": comm may hold spaces and parentheses
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ')
  return rest[22 - 3] ?? ''
}

/** What the lock file says: `pid\nboot id\nstart time\n` (older locks: the pid only). */
export function lockText (): string {
  return `${process.pid}\n${bootId()}\n${processStartTime(process.pid) ?? ''}\n`
}

/**
 * Whether the process that wrote a lock still holds it: its pid is alive
 * and, when the lock records them, this is the same boot and the pid's
 * process started at the recorded time (a pid reused after a reboot or in a
 * container by an unrelated process does not hold the lock).
 */
export function lockHolderAlive (text: string): boolean {
  const [pidText = '', boot = '', start = ''] = text.split('\n')
  const pid = Number.parseInt(pidText, 10)
  if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid || !processAlive(pid)) return false
  if (boot !== '' && bootId() !== '' && boot !== bootId()) return false
  if (start !== '') {
    const now = processStartTime(pid)
    if (now === undefined) return false
    if (now !== '' && now !== start) return false
  }
  return true
}

/**
 * Take the VM's lock file (`.grainline/lock`, created exclusively, holding
 * our pid, boot id and process start time) so that two processes — a receiver and `grainline mirror
 * rollback`, say — never write one mirror at once. A lock whose process is
 * gone is taken over. Returns false when the VM folder does not exist yet (a
 * first VmOpen creates it under the in-process lock) or the lock cannot be
 * written for lack of space (a rollback must still work on a full disk).
 */
async function lockFile (paths: VmPaths, vm: string, log: Logger): Promise<boolean> {
  for (let attempt = 0; attempt < 3; attempt++) {
    let fh: FileHandle
    try {
      fh = await open(paths.lock, 'wx', 0o644)
    } catch (err) {
      const code = (err as { code?: unknown }).code
      if (code === 'ENOENT') return false
      if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EROFS') {
        log.warn({ vm, code }, 'VM lock file not written')
        return false
      }
      if (code !== 'EEXIST') throw ioError(err, 'taking the VM lock')
      const text = await readFile(paths.lock, 'utf8').catch(() => '')
      const pid = Number.parseInt(text, 10)
      if (lockHolderAlive(text)) {
        throw new ReceiverError('E_BUSY', `VM ${vm} is being written by process ${pid}`)
      }
      if (!Number.isSafeInteger(pid) && attempt === 0) {
        // being written right now by its creator: look again shortly
        await new Promise((resolve) => setTimeout(resolve, 50))
        continue
      }
      log.warn({ vm, pid: Number.isSafeInteger(pid) ? pid : null }, 'stale VM lock taken over')
      try {
        await unlinkIfExists(paths.lock)
      } catch (e) {
        // a read-only store: nobody can write it, ours to report when we try
        if ((e as { code?: unknown }).code === 'EROFS') return false
        throw ioError(e, 'taking over a stale VM lock')
      }
      continue
    }
    try {
      await fh.writeFile(lockText())
    } catch (err) {
      log.warn({ vm, code: (err as { code?: unknown }).code }, 'VM lock file without pid')
    } finally {
      await fh.close()
    }
    return true
  }
  throw new ReceiverError('E_BUSY', `VM ${vm}: could not take its lock`)
}

/** Journals larger than this are deleted rather than kept as spares. */
const MAX_SPARE_BYTES = 4 * 1024 ** 3

/** Keep a finished journal as `<name>.spare` for reuse (or delete it if huge). */
async function retireJournal (path: string): Promise<void> {
  let size: number
  try {
    size = (await stat(path)).size
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return
    throw err
  }
  if (size > MAX_SPARE_BYTES) await unlinkIfExists(path)
  else await rename(path, `${path}.spare`)
}

/** Paths of one VM mirror. */
export class VmPaths {
  readonly dir: string
  readonly gdir: string
  readonly state: string
  readonly incoming: string
  constructor (storeDir: string, vm: string) {
    this.dir = join(storeDir, vm)
    this.gdir = join(this.dir, STATE_DIR)
    this.state = join(this.gdir, STATE_FILE)
    this.incoming = join(this.gdir, INCOMING)
  }

  descriptor (stem: string): string { return join(this.dir, `${stem}.vmdk`) }
  flat (stem: string): string { return join(this.dir, `${stem}-flat.vmdk`) }
  seed (stem: string): string { return join(this.dir, `${stem}-flat.vmdk.seed`) }
  journal (stem: string): string { return join(this.gdir, `${stem}.journal`) }
  /** a finished journal kept for reuse by the next cycle of the disk */
  spare (stem: string): string { return join(this.gdir, `${stem}.journal.spare`) }
  /** held by the process writing the VM (its pid, boot id and start time inside) */
  get lock (): string { return join(this.gdir, 'lock') }
  /** the journal while a rollback undoes it */
  undoing (stem: string): string { return join(this.gdir, `${stem}.journal.undo`) }
}

/** Read a VM's state file (undefined when the VM has none). */
export async function readVmState (paths: VmPaths): Promise<VmStateFile | undefined> {
  let json: unknown
  try {
    json = await readJsonIfExists(paths.state)
  } catch (err) {
    if (err instanceof SyntaxError) throw new ReceiverError('E_STATE', `${paths.state} is not valid JSON: ${err.message}`)
    throw ioError(err, `reading ${paths.state}`)
  }
  if (json === undefined) return undefined
  const s = json as Partial<VmStateFile>
  if (s.format !== 1 || typeof s.vm !== 'string' || typeof s.disks !== 'object' || s.disks === null) {
    throw new ReceiverError('E_STATE', `${paths.state} is not a grainline state file`)
  }
  return { ...emptyState(s.vm), ...s } as VmStateFile
}

/** What a disk mirror looks like on disk right now. */
export interface MirrorInspection {
  readonly cid: string
  readonly flatSize: number
  readonly modified: boolean
}

async function inspectMirror (paths: VmPaths, rec: DiskRecord | undefined, inflight: InflightDisk | undefined): Promise<MirrorInspection> {
  if (rec === undefined) return { cid: '', flatSize: 0, modified: false }
  let cid = ''
  try {
    cid = descriptorCid(await readFile(paths.descriptor(rec.stem), 'latin1')) ?? ''
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'ENOENT') throw ioError(err, 'reading the mirror descriptor')
  }
  let flatSize = -1
  try {
    flatSize = (await stat(paths.flat(rec.stem))).size
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'ENOENT') throw ioError(err, 'inspecting the mirror flat file')
  }
  // an in-place apply in flight may have grown the flat: its size is ours, not a modification
  const sizeOk = inflight?.target === 'flat' ? flatSize >= rec.size : flatSize === rec.size
  return { cid, flatSize, modified: cid !== rec.mirrorCid || !sizeOk }
}

/** One extent ready to apply (validated, decompressed, digest checked). */
export interface ApplyExtent {
  readonly seq: number
  readonly offset: number
  readonly length: number
  readonly zero: boolean
  /** raw bytes (length bytes) for data extents */
  readonly data: Uint8Array | undefined
  readonly digest: Uint8Array
}

/** The apply of one disk's in-flight cycle: journal + target file. */
export class DiskApply {
  readonly info: InflightDisk
  readonly targetPath: string
  private readonly fh: FileHandle
  private readonly journal: Journal
  readonly cycleDigest: CycleDigest
  /** next seq expected */
  nextSeq: number
  /** highest seq durably applied (-1: none) */
  appliedSeq: number
  extents: number
  dataBytes: number
  zeroBytes: number
  sealed = false
  /** durable batches applied in this session (for logs) */
  batches = 0
  /** time spent journaling (stage 1) and writing (stage 2) batches in this session, ms (for logs) */
  journalMs = 0
  writeMs = 0
  /** the cycle digest, computed once at seal time */
  sealedDigest: Uint8Array | undefined
  private closed = false

  private constructor (info: InflightDisk, targetPath: string, fh: FileHandle, journal: Journal, digest: CycleDigest, next: number) {
    this.info = info
    this.targetPath = targetPath
    this.fh = fh
    this.journal = journal
    this.cycleDigest = digest
    this.nextSeq = next
    this.appliedSeq = next - 1
    this.extents = 0
    this.dataBytes = 0
    this.zeroBytes = 0
  }

  /** Open a fresh apply (journal already created). */
  static async start (paths: VmPaths, info: InflightDisk, journal: Journal): Promise<DiskApply> {
    let fh: FileHandle
    if (info.target === 'seed') {
      const p = paths.seed(info.stem)
      fh = await open(p, 'w', 0o644)
      await fh.truncate(info.capacity)
      await fh.sync()
      await fsyncDir(paths.dir)
      return new DiskApply(info, p, fh, journal, new CycleDigest(info.algorithm), 0)
    }
    const p = paths.flat(info.stem)
    fh = await open(p, 'r+')
    if (info.capacity > info.baseSize) {
      await fh.truncate(info.capacity)
      await fh.sync()
    }
    return new DiskApply(info, p, fh, journal, new CycleDigest(info.algorithm), 0)
  }

  /** Reopen an interrupted apply at its durable resume point. */
  static async resume (paths: VmPaths, info: InflightDisk, journalContents: JournalContents): Promise<DiskApply> {
    let contents = journalContents
    const p = info.target === 'seed' ? paths.seed(info.stem) : paths.flat(info.stem)
    let fh: FileHandle
    if (info.target === 'seed' && (contents.applied === null || !await exists(p))) {
      // nothing durably applied, or the seed file is gone (rolled back): start
      // the seed again at seq 0 in a FRESH file — a seed leaves zero ranges
      // unwritten, so stale bytes must not survive
      await resetJournal(paths.journal(info.stem), contents.headEnd)
      contents = { ...contents, extents: [], applied: null, validEnd: contents.headEnd }
      fh = await open(p, 'w', 0o644)
      await fh.truncate(info.capacity)
      await fh.sync()
      await fsyncDir(paths.dir)
    } else {
      fh = await open(p, 'r+')
    }
    if (info.target === 'flat' && (await fh.stat()).size < info.capacity) {
      // an undo cut the flat back to its base size; the cycle's capacity holds again
      await fh.truncate(info.capacity)
      await fh.sync()
    }
    let journal: Journal
    try {
      journal = await Journal.reopen(paths.journal(info.stem), contents)
    } catch (err) {
      await fh.close()
      throw err
    }
    const applied = contents.applied?.seq ?? -1
    const bySeq = new Map<number, (typeof contents.extents)[number]>()
    for (const e of contents.extents) if (e.seq <= applied && !bySeq.has(e.seq)) bySeq.set(e.seq, e)
    const digest = new CycleDigest(info.algorithm)
    let next = 0
    let dataBytes = 0
    let zeroBytes = 0
    for (; next <= applied; next++) {
      const e = bySeq.get(next)
      if (e === undefined) break
      digest.add({ offset: e.offset, length: e.length, zero: e.zero, digest: Buffer.from(e.digest, 'hex') })
      if (e.zero) zeroBytes += e.length
      else dataBytes += e.length
    }
    const a = new DiskApply(info, p, fh, journal, digest, next)
    a.extents = next
    a.dataBytes = dataBytes
    a.zeroBytes = zeroBytes
    return a
  }

  /**
   * Apply a batch of consecutive extents durably: `prepareBatch` then
   * `writeBatch`. The session pipelines them: batch n+1 is journaled while
   * batch n is written.
   */
  async applyBatch (batch: readonly ApplyExtent[]): Promise<void> {
    await this.prepareBatch(batch)
    await this.writeBatch(batch)
  }

  /**
   * Stage 1: journal the batch. In place, the old contents of every range are
   * appended and the journal fdatasync'ed before any of them is overwritten.
   * (Reading old contents while the previous batch is being written is safe:
   * undo runs newest record first, so the oldest copy of a range wins.)
   */
  async prepareBatch (batch: readonly ApplyExtent[]): Promise<void> {
    if (batch.length === 0) return
    const t0 = performance.now()
    const inPlace = this.info.target === 'flat'
    for (const e of batch) {
      const rec = { seq: e.seq, offset: e.offset, length: e.length, zero: e.zero, digest: hex(e.digest) }
      const oldLen = inPlace ? Math.max(0, Math.min(e.offset + e.length, this.info.baseSize) - e.offset) : 0
      if (oldLen === 0) {
        this.journal.appendExtent(rec, undefined)
        continue
      }
      // old contents in pieces of at most JOURNAL_PIECE bytes, each its own
      // record, written out as we go: bounded records and bounded memory
      for (let off = 0; off < oldLen; off += JOURNAL_PIECE) {
        const n = Math.min(JOURNAL_PIECE, oldLen - off)
        this.journal.appendExtent(rec, await readFully(this.fh, e.offset + off, n), e.offset + off)
        if (this.journal.queuedBytes >= JOURNAL_PIECE) {
          await this.journal.flush(false)
          faultPoint('journal-piece')
        }
      }
    }
    if (inPlace) {
      await this.journal.flush(true)
      faultPoint('journal-synced')
    } else {
      await this.journal.flush(false)
    }
    this.journalMs += performance.now() - t0
  }

  /** Stage 2: write the batch in place (or into the seed file), fdatasync, record the resume point. */
  async writeBatch (batch: readonly ApplyExtent[]): Promise<void> {
    if (batch.length === 0) return
    this.batches++
    const t0 = performance.now()
    const inPlace = this.info.target === 'flat'
    for (const e of batch) {
      if (e.zero) {
        // a seed writes into a fresh sparse file: zero ranges stay holes
        if (inPlace) {
          for (let off = 0; off < e.length; off += JOURNAL_PIECE) {
            await writeZeros(this.fh, e.offset + off, Math.min(JOURNAL_PIECE, e.length - off))
            faultPoint('zero-piece')
          }
        }
      } else {
        await writeFully(this.fh, e.data as Uint8Array, e.offset)
      }
      faultPoint('extent-written')
    }
    await this.fh.datasync()
    faultPoint('target-synced')
    const last = batch[batch.length - 1] as ApplyExtent
    // The marker follows data that is already durable, so it never claims too
    // much; it becomes durable with the next journal sync (next batch, seal,
    // close). A lost marker only moves the resume point back.
    this.journal.appendApplied(last.seq)
    if (!inPlace) await this.journal.flush(false)
    this.appliedSeq = last.seq
    this.writeMs += performance.now() - t0
  }

  /** Make the resume point durable and mark the disk sealed. */
  async seal (digest: Uint8Array): Promise<void> {
    this.sealedDigest = digest
    await this.journal.flush(true)
    await this.fh.datasync()
    this.sealed = true
  }

  /** Release the files; `flush: false` drops queued journal records as a crash would (tests). */
  async close (opts: { flush?: boolean } = {}): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (opts.flush !== false) await this.journal.flush(true).catch(() => {})
    await Promise.allSettled([this.fh.close(), this.journal.close()])
  }
}

/** Outcome of a DiskOpen against the store. */
export interface OpenDiskResult {
  readonly accepted: boolean
  readonly reason: string
  readonly message: string
  readonly committedCycle: number
  readonly committedSource: SourceIdentity | null
  readonly mirrorCid: string
  readonly modified: boolean
  readonly apply?: DiskApply
}

/** The parameters of a DiskOpen the store needs. */
export interface DiskOpenRequest extends Pick<DiskOpenMessage, 'name' | 'capacity' | 'cycle' | 'mode' | 'baseCycle' | 'baseGeneration' | 'source' | 'cycleId' | 'ddb'> {
  readonly algorithm: DigestAlgorithm
}

/** A locked VM mirror: all mutations go through here, one writer per VM. */
export class VmMirror {
  readonly paths: VmPaths
  readonly vm: string
  state: VmStateFile
  private readonly log: Logger
  private released = false
  private fileLocked = false

  private constructor (paths: VmPaths, vm: string, state: VmStateFile, log: Logger) {
    this.paths = paths
    this.vm = vm
    this.state = state
    this.log = log
  }

  /** Lock and load a VM mirror. Throws E_BUSY when another writer holds it. */
  static async acquire (storeDir: string, vm: string, log: Logger): Promise<VmMirror> {
    const paths = new VmPaths(storeDir, vm)
    if (locks.has(paths.dir)) throw new ReceiverError('E_BUSY', `VM ${vm} is being written by another session`)
    locks.add(paths.dir)
    let fileLocked = false
    try {
      fileLocked = await lockFile(paths, vm, log)
      const state = (await readVmState(paths)) ?? emptyState(vm)
      const m = new VmMirror(paths, vm, state, log)
      if (state.pending !== null) await m.rollForward()
      m.fileLocked = fileLocked
      return m
    } catch (err) {
      locks.delete(paths.dir)
      if (fileLocked) {
        try { rmSync(paths.lock, { force: true }) } catch { /* taken over later: it names our pid */ }
      }
      throw err
    }
  }

  /** Like `acquire`, but waits up to `waitMs` for a lock held by a closing session. */
  static async acquireWait (storeDir: string, vm: string, log: Logger, waitMs: number, signal?: AbortSignal): Promise<VmMirror> {
    const deadline = Date.now() + waitMs
    for (;;) {
      try {
        return await VmMirror.acquire(storeDir, vm, log)
      } catch (err) {
        if ((err as { code?: unknown }).code !== 'E_BUSY' || Date.now() >= deadline) throw err
      }
      signal?.throwIfAborted()
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
  }

  release (): void {
    if (this.released) return
    this.released = true
    locks.delete(this.paths.dir)
    try {
      if (this.fileLocked) rmSync(this.paths.lock, { force: true })
    } catch (err) {
      // a read-only or vanished store: the lock names our pid, and is taken over once we are gone
      this.log.warn({ vm: this.vm, code: (err as { code?: unknown }).code }, 'VM lock file not removed')
    }
  }

  private async save (next: VmStateFile): Promise<void> {
    await mkdir(this.paths.gdir, { recursive: true })
    await writeFileAtomic(this.paths.state, JSON.stringify(next, null, 1) + '\n')
    this.state = next
  }

  /** Create the folders and stage the VM's config files for the next commit. */
  async stageFiles (files: ReadonlyArray<{ name: string, data: Uint8Array }>, compat: CompatRecord): Promise<void> {
    try {
      await mkdir(this.paths.incoming, { recursive: true })
      for (const old of await readdir(this.paths.incoming)) {
        if (!files.some((f) => f.name === old)) await unlinkIfExists(join(this.paths.incoming, old))
      }
      for (const f of files) await writeFileAtomic(join(this.paths.incoming, f.name), f.data)
      await writeFileAtomic(join(this.paths.gdir, 'compat.json'), JSON.stringify(compat) + '\n')
    } catch (err) {
      throw ioError(err, 'staging the VM configuration files')
    }
  }

  /** Whether a mirror's compat record matches (true when there is none yet). */
  compatible (compat: CompatRecord): boolean {
    const c = this.state.compat
    if (c === null) return true
    return c.hwVersion === compat.hwVersion && c.datastoreType === compat.datastoreType
  }

  /**
   * Throw E_BAD_NAME when `name`'s file stem equals, ignoring case, the stem
   * of another disk of this VM (committed, in flight, or in `open`) with a
   * different name: `a.vmdk`, `a.VMDK` and `a` would share one flat, seed and
   * journal file (and clash on case-insensitive file systems).
   */
  checkStem (name: string, open: Iterable<string> = []): void {
    const key = diskStem(name).toLowerCase()
    const others = new Set([...Object.keys(this.state.disks), ...Object.keys(this.state.inflight?.disks ?? {}), ...open])
    for (const other of others) {
      if (other !== name && diskStem(other).toLowerCase() === key) {
        throw new ReceiverError('E_BAD_NAME', `disk name ${JSON.stringify(name)} collides with disk ${JSON.stringify(other)} of VM ${this.vm} (same file stem)`)
      }
    }
  }

  /** Inspect and (if acceptable) open a disk for the session's cycle. */
  async openDisk (req: DiskOpenRequest, open: Iterable<string> = []): Promise<OpenDiskResult> {
    this.checkStem(req.name, open)
    const rec = this.state.disks[req.name]
    const inf = this.state.inflight?.disks[req.name]
    const look = await inspectMirror(this.paths, rec, inf)
    const base = {
      committedCycle: rec?.cycle ?? 0,
      committedSource: rec?.source ?? null,
      mirrorCid: look.cid,
      modified: look.modified,
    }
    const refuse = (reason: string, message: string): OpenDiskResult => ({ ...base, accepted: false, reason, message })
    const infl = this.state.inflight
    if (infl !== null && infl.cycle !== req.cycle) {
      return refuse('E_CYCLE_MISMATCH', `cycle ${infl.cycle} of VM ${this.vm} is in flight; roll it back first`)
    }
    if (inf !== undefined && await exists(this.paths.undoing(inf.stem))) {
      return refuse('E_CYCLE_MISMATCH', `an interrupted rollback of disk ${req.name} must be finished first: send Rollback`)
    }
    if (inf !== undefined) {
      if (inf.cycleId !== req.cycleId || inf.mode !== req.mode || inf.capacity !== req.capacity || inf.algorithm !== req.algorithm) {
        return refuse('E_CYCLE_MISMATCH', `disk ${req.name} has an interrupted apply of a different cycle identity; roll it back first`)
      }
      if (inf.target === 'flat' && look.modified) {
        // the committed mirror under an in-place apply changed (CID or size)
        // while the cycle was interrupted: its journal no longer describes it
        return refuse('E_MIRROR_MODIFIED', `mirror of ${req.name} changed since the last commit (CID ${look.cid || 'missing'}, recorded ${rec?.mirrorCid ?? ''}); roll back, then seed`)
      }
      const contents = await readJournal(this.paths.journal(inf.stem)).catch((err: unknown) => { throw ioError(err, 'reading the journal') })
      if (contents === undefined || contents.head.cycleId !== inf.cycleId) {
        throw new ReceiverError('E_STATE', `journal of disk ${req.name} is missing or unreadable`)
      }
      const apply = await DiskApply.resume(this.paths, inf, contents).catch((err: unknown) => { throw ioError(err, 'reopening the in-flight apply') })
      this.log.info({ vm: this.vm, disk: req.name, cycle: req.cycle, resumeSeq: apply.nextSeq }, 'resuming in-flight apply')
      return { ...base, accepted: true, reason: '', message: '', apply }
    }
    if (req.cycle <= this.state.committedCycle) {
      return refuse('E_CYCLE_MISMATCH', `cycle ${req.cycle} is not after the committed cycle ${this.state.committedCycle}`)
    }
    if (req.mode === 'incremental') {
      if (rec === undefined) return refuse('E_CHAIN_MISMATCH', `disk ${req.name} has no committed mirror to apply an incremental on`)
      if (look.modified) return refuse('E_MIRROR_MODIFIED', `mirror of ${req.name} changed since the last commit (CID ${look.cid || 'missing'}, recorded ${rec.mirrorCid})`)
      if (req.baseCycle !== rec.cycle) return refuse('E_CHAIN_MISMATCH', `incremental on cycle ${req.baseCycle} but the mirror is at cycle ${rec.cycle}`)
      if (req.source.layers[0]?.file !== rec.source.successor) {
        return refuse('E_CHAIN_MISMATCH', `first delta ${req.source.layers[0]?.file ?? '(none)'} is not the successor ${rec.source.successor} recorded at the last commit`)
      }
      // SPEC §5.8: only onto the exact point it was planned against
      if (req.baseGeneration !== (rec.generation ?? '')) {
        return refuse('E_GENERATION', `incremental planned against generation ${req.baseGeneration || '(none)'}, but the mirror of ${req.name} is at generation ${rec.generation ?? '(none: committed before generations)'}; resync`)
      }
      if (req.capacity < rec.capacity) return refuse('E_CHAIN_MISMATCH', `capacity shrank from ${rec.capacity} to ${req.capacity}`)
    }
    const stem = diskStem(req.name)
    const info: InflightDisk = {
      name: req.name,
      stem,
      cycleId: req.cycleId,
      mode: req.mode,
      capacity: req.capacity,
      baseSize: req.mode === 'incremental' ? look.flatSize : 0,
      target: req.mode === 'incremental' ? 'flat' : 'seed',
      source: req.source,
      ddb: req.ddb,
      algorithm: req.algorithm,
    }
    try {
      await mkdir(this.paths.gdir, { recursive: true })
      // order: journal head durable → state lists the disk → target touched
      const journal = await Journal.create(this.paths.journal(stem), {
        cycleId: info.cycleId, cycle: req.cycle, name: info.name, mode: info.mode, capacity: info.capacity, baseSize: info.baseSize,
      }, this.paths.spare(stem))
      try {
        const prev = this.state.inflight
        await this.save({
          ...this.state,
          inflight: { cycle: req.cycle, startedAt: prev?.startedAt ?? new Date().toISOString(), disks: { ...(prev?.disks ?? {}), [req.name]: info } },
        })
        const apply = await DiskApply.start(this.paths, info, journal)
        return { ...base, accepted: true, reason: '', message: '', apply }
      } catch (err) {
        await journal.close().catch(() => {})
        throw err
      }
    } catch (err) {
      throw ioError(err, `opening disk ${req.name}`)
    }
  }

  /**
   * Commit sealed applies atomically: one state.json replace records every
   * disk's new cycle, CID and size (the commit point), then roll forward:
   * seed renames, descriptors, .vmx and config files, journal removal.
   */
  async commit (cycle: number, applies: readonly DiskApply[], suffix: string): Promise<DiskRecord[]> {
    const infl = this.state.inflight
    if (infl === null || infl.cycle !== cycle) throw new ReceiverError('E_UNEXPECTED', `no in-flight cycle ${cycle} to commit`)
    const names = new Set(applies.map((a) => a.info.name))
    for (const n of Object.keys(infl.disks)) {
      if (!names.has(n)) throw new ReceiverError('E_UNEXPECTED', `disk ${n} of cycle ${cycle} was not sealed in this session; roll back first`)
    }
    const now = new Date().toISOString()
    // SPEC §5.8: a new random generation for every commit
    const generation = randomBytes(16).toString('hex')
    const disks: Record<string, DiskRecord> = { ...this.state.disks }
    const renames: Array<{ from: string, to: string }> = []
    const out: DiskRecord[] = []
    try {
      for (const a of applies) {
        if (!a.sealed) throw new ReceiverError('E_UNEXPECTED', `disk ${a.info.name} is not sealed`)
        const size = (await stat(a.targetPath)).size
        const prev = disks[a.info.name]
        const rec: DiskRecord = {
          name: a.info.name,
          stem: a.info.stem,
          capacity: a.info.capacity,
          size,
          cycle,
          committedAt: now,
          source: a.info.source,
          cycleId: a.info.cycleId,
          generation,
          mirrorCid: newCid(prev?.mirrorCid),
          ddb: a.info.ddb,
          cycleDigest: { algorithm: a.info.algorithm, digest: hex(a.sealedDigest ?? new Uint8Array(0)) },
        }
        disks[a.info.name] = rec
        out.push(rec)
        if (a.info.target === 'seed') renames.push({ from: `${a.info.stem}-flat.vmdk.seed`, to: `${a.info.stem}-flat.vmdk` })
      }
      const compat = await readJsonIfExists(join(this.paths.gdir, 'compat.json')) as CompatRecord | undefined
      faultPoint('commit-before-state')
      await this.save({
        ...this.state,
        compat: compat ?? this.state.compat,
        committedCycle: cycle,
        committedAt: now,
        generation,
        displaySuffix: suffix,
        disks,
        inflight: null,
        pending: {
          cycle,
          renames,
          descriptors: applies.map((a) => a.info.name),
          journals: Object.values(infl.disks).map((d) => `${d.stem}.journal`),
          files: true,
        },
      })
    } catch (err) {
      throw ioError(err, 'committing')
    }
    faultPoint('commit-after-state')
    await Promise.allSettled(applies.map((a) => a.close()))
    await this.rollForward()
    return out
  }

  /** Finish a commit whose state.json is already written (idempotent). */
  async rollForward (): Promise<void> {
    const p = this.state.pending
    if (p === null) return
    try {
      for (const r of p.renames) {
        if (await exists(join(this.paths.dir, r.from))) {
          await rename(join(this.paths.dir, r.from), join(this.paths.dir, r.to))
          faultPoint('commit-renamed')
        }
      }
      if (p.renames.length > 0) await fsyncDir(this.paths.dir)
      for (const name of p.descriptors) {
        const rec = this.state.disks[name]
        if (rec === undefined) continue
        await writeFileAtomic(this.paths.descriptor(rec.stem), mirrorDescriptor({ cid: rec.mirrorCid, capacity: rec.capacity, flatFile: `${rec.stem}-flat.vmdk`, ddb: rec.ddb }))
      }
      faultPoint('commit-descriptors')
      if (p.files) await this.installFiles()
      for (const j of p.journals) await retireJournal(join(this.paths.gdir, j))
      await fsyncDir(this.paths.gdir)
      await this.save({ ...this.state, pending: null })
    } catch (err) {
      throw ioError(err, 'finishing a commit')
    }
    this.log.info({ vm: this.vm, cycle: p.cycle }, 'commit rolled forward')
  }

  private async installFiles (): Promise<void> {
    let names: string[]
    try {
      names = await readdir(this.paths.incoming)
    } catch (err) {
      if ((err as { code?: unknown }).code === 'ENOENT') return
      throw err
    }
    const diskMap = new Map<string, string>()
    for (const rec of Object.values(this.state.disks)) diskMap.set(rec.name, `${rec.stem}.vmdk`)
    for (const name of names) {
      if (name.includes(TMP_MARK)) continue
      const data = await readFile(join(this.paths.incoming, name))
      if (/\.vmx$/i.test(name)) {
        const text = mirrorVmx(data.toString('utf8'), { suffix: this.state.displaySuffix, diskMap })
        await writeFileAtomic(join(this.paths.dir, `${this.vm}.vmx`), text)
      } else if (!/\.(vmsd|vmdk|lck|log)$/i.test(name)) {
        await writeFileAtomic(join(this.paths.dir, name), data)
      }
    }
  }

  /** Roll the VM back to its last committed point (undo every in-flight disk). */
  async rollback (): Promise<number> {
    const infl = this.state.inflight
    if (infl === null) return this.state.committedCycle
    try {
      for (const d of Object.values(infl.disks)) {
        const jpath = this.paths.journal(d.stem)
        const contents = await readJournal(jpath).catch((err: unknown) => {
          if ((err as { code?: unknown }).code === 'ENOENT') return undefined
          throw err
        })
        if (d.target === 'seed') {
          // forget the resume point first, then the data it described
          if (contents !== undefined) await resetJournal(jpath, contents.headEnd)
          await unlinkIfExists(this.paths.seed(d.stem))
          continue
        }
        // An undo in progress is marked by the journal's name (a rename needs
        // no free space): a half-undone flat must never be resumed from the
        // journal's markers; recovery and the next rollback finish the undo.
        const upath = this.paths.undoing(d.stem)
        let ucontents = await readJournal(upath).catch((err: unknown) => {
          if ((err as { code?: unknown }).code === 'ENOENT') return undefined
          throw err
        })
        if (ucontents === undefined) {
          if (contents === undefined) throw new ReceiverError('E_STATE', `journal of disk ${d.name} is missing: cannot undo`)
          await rename(jpath, upath)
          await fsyncDir(this.paths.gdir)
          ucontents = contents
        }
        await undoJournal(upath, ucontents, this.paths.flat(d.stem))
        faultPoint('rollback-undone')
        // the flat is back at its committed point: forget the markers, so that
        // a resume after a failed state write starts again at seq 0
        await resetJournal(upath, ucontents.headEnd)
        await rename(upath, jpath)
        await fsyncDir(this.paths.gdir)
        faultPoint('rollback-reset')
      }
      await fsyncDir(this.paths.dir)
      await this.save({ ...this.state, inflight: null })
      for (const d of Object.values(infl.disks)) await retireJournal(this.paths.journal(d.stem))
      await fsyncDir(this.paths.gdir)
    } catch (err) {
      throw ioError(err, `rolling back VM ${this.vm}`)
    }
    this.log.info({ vm: this.vm, cycle: infl.cycle, disks: Object.keys(infl.disks) }, 'in-flight cycle rolled back')
    return this.state.committedCycle
  }

  /** Record a trivial-check or certify result. */
  async recordVerify (name: string, kind: 'trivial' | 'certify', r: VerifyRecord): Promise<void> {
    const rec = this.state.disks[name]
    if (rec === undefined) return
    await this.save({ ...this.state, disks: { ...this.state.disks, [name]: { ...rec, [kind]: r } } })
  }
}

/** Digest the first `bytes` of a file (bytes past its end read as zero). */
export async function digestFile (path: string, bytes: number, update: (b: Uint8Array) => void, opts: { signal?: AbortSignal } = {}): Promise<number> {
  const fh = await open(path, 'r')
  try {
    const chunk = 4 * 1024 * 1024
    let done = 0
    while (done < bytes) {
      opts.signal?.throwIfAborted()
      const n = Math.min(chunk, bytes - done)
      update(await readFully(fh, done, n))
      done += n
    }
    return done
  } finally {
    await fh.close()
  }
}

/** List VM folders holding a grainline state file. */
export async function listVms (storeDir: string): Promise<string[]> {
  let entries: string[]
  try {
    entries = await readdir(storeDir)
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return []
    throw ioError(err, `listing the store ${storeDir}`)
  }
  const out: string[] = []
  for (const e of entries.sort()) {
    if (await exists(join(storeDir, e, STATE_DIR, STATE_FILE)).catch(() => false)) out.push(e)
  }
  return out
}

/** Remove leftover temporary files of interrupted atomic writes. */
async function removeTemps (dir: string): Promise<number> {
  let n = 0
  let entries: string[]
  try {
    entries = await readdir(dir)
  } catch {
    return 0
  }
  for (const e of entries) {
    if (e.includes(TMP_MARK)) {
      await rm(join(dir, e), { force: true })
      n++
    }
  }
  return n
}

/** What recovery did to one VM. */
export interface RecoveryReport {
  readonly vm: string
  readonly action: 'none' | 'rolled-forward' | 'rolled-back' | 'kept-for-resume' | 'failed'
  readonly inflightCycle?: number
  readonly resume?: Readonly<Record<string, number>>
  readonly error?: string
}

/**
 * Start-up recovery of every VM in the store: finish commits past their
 * commit point, keep interrupted applies (journal + state) so the same cycle
 * can resume, cut torn journal tails, drop stray journals and temp files.
 */
export async function recoverStore (storeDir: string, logger: Logger, opts: { abandonAfterMs?: number } = {}): Promise<RecoveryReport[]> {
  const reports: RecoveryReport[] = []
  for (const vm of await listVms(storeDir)) {
    const log = logger.child({ vm })
    let m: VmMirror | undefined
    try {
      const paths = new VmPaths(storeDir, vm)
      await removeTemps(paths.dir)
      await removeTemps(paths.gdir)
      await removeTemps(paths.incoming)
      const before = await readVmState(paths)
      m = await VmMirror.acquire(storeDir, vm, log)
      const rolled = before?.pending != null
      const inflight = m.state.inflight
      // stray journals: not listed in the state (crash between journal creation and state write)
      const listed = new Set(Object.values(inflight?.disks ?? {}).map((d) => `${d.stem}.journal`))
      for (const f of await readdir(paths.gdir)) {
        if (f.endsWith('.journal') && !listed.has(f)) {
          await unlinkIfExists(join(paths.gdir, f))
          log.info({ journal: f }, 'stray journal removed')
        }
      }
      const age = inflight === null ? 0 : Date.now() - Date.parse(inflight.startedAt)
      if (inflight !== null && (await Promise.all(Object.values(inflight.disks).map((d) => exists(paths.undoing(d.stem))))).some(Boolean)) {
        const committedCycle = await m.rollback()
        log.info({ cycle: inflight.cycle, committedCycle }, 'interrupted rollback completed')
        reports.push({ vm, action: 'rolled-back' })
      } else if (inflight !== null && opts.abandonAfterMs !== undefined && !(age < opts.abandonAfterMs)) {
        // policy: an interrupted cycle nobody resumed in time is abandoned
        const committedCycle = await m.rollback()
        log.info({ cycle: inflight.cycle, committedCycle, ageMs: age }, 'abandoned cycle rolled back')
        reports.push({ vm, action: 'rolled-back' })
      } else if (inflight !== null) {
        const resume: Record<string, number> = {}
        for (const d of Object.values(inflight.disks)) {
          const c = await readJournal(paths.journal(d.stem))
          resume[d.name] = c === undefined ? -1 : (c.applied?.seq ?? -1) + 1
        }
        log.info({ cycle: inflight.cycle, resume }, 'interrupted cycle kept for resume or rollback')
        reports.push({ vm, action: 'kept-for-resume', inflightCycle: inflight.cycle, resume })
      } else {
        if (rolled) log.info({ cycle: m.state.committedCycle }, 'interrupted commit completed')
        reports.push({ vm, action: rolled ? 'rolled-forward' : 'none' })
      }
    } catch (err) {
      log.error({ err, code: (err as { code?: unknown }).code }, 'recovery failed')
      reports.push({ vm, action: 'failed', error: (err as Error).message })
    } finally {
      m?.release()
    }
  }
  return reports
}

/** Roll a VM mirror back to its last committed point (`grainline mirror rollback`). */
export async function rollbackMirror (storeDir: string, vm: string, logger?: Logger): Promise<{ vm: string, committedCycle: number, rolledBack: boolean }> {
  const { default: pino } = await import('pino')
  const log = logger ?? pino({ level: 'silent' })
  const paths = new VmPaths(storeDir, vm)
  if (await readVmState(paths) === undefined) throw new ReceiverError('E_NOT_FOUND', `no mirror of VM ${vm} in ${storeDir}`)
  const m = await VmMirror.acquire(storeDir, vm, log)
  try {
    const had = m.state.inflight !== null
    const committedCycle = await m.rollback()
    return { vm, committedCycle, rolledBack: had }
  } finally {
    m.release()
  }
}

/** Status of one disk (json-able). */
export interface DiskStatus {
  readonly name: string
  readonly committedCycle: number
  readonly committedAt: string | null
  readonly capacity: number
  readonly size: number
  readonly mirrorCid: string
  readonly modified: boolean
  readonly trivial: VerifyRecord | null
  readonly certify: VerifyRecord | null
  readonly inflight: { readonly cycle: number, readonly mode: string, readonly resumeSeq: number } | null
}

/** Status of one VM (json-able). */
export interface VmStatus {
  readonly vm: string
  readonly committedCycle: number
  readonly committedAt: string | null
  readonly inflightCycle: number
  readonly needsRecovery: boolean
  readonly disks: readonly DiskStatus[]
  readonly error?: string
}

/** Per VM and disk status of a store (`grainline status`). Read-only. */
export async function storeStatus (storeDir: string): Promise<{ store: string, vms: VmStatus[] }> {
  const vms: VmStatus[] = []
  for (const vm of await listVms(storeDir)) {
    const paths = new VmPaths(storeDir, vm)
    try {
      const s = await readVmState(paths)
      if (s === undefined) continue
      const names = new Set([...Object.keys(s.disks), ...Object.keys(s.inflight?.disks ?? {})])
      const disks: DiskStatus[] = []
      for (const name of [...names].sort()) {
        const rec = s.disks[name]
        const inf = s.inflight?.disks[name]
        const look = await inspectMirror(paths, rec, inf)
        let resumeSeq = 0
        if (inf !== undefined) {
          const c = await readJournal(paths.journal(inf.stem)).catch(() => undefined)
          resumeSeq = (c?.applied?.seq ?? -1) + 1
        }
        disks.push({
          name,
          committedCycle: rec?.cycle ?? 0,
          committedAt: rec?.committedAt ?? null,
          capacity: rec?.capacity ?? inf?.capacity ?? 0,
          size: look.flatSize < 0 ? 0 : look.flatSize,
          mirrorCid: look.cid,
          modified: look.modified,
          trivial: rec?.trivial ?? null,
          certify: rec?.certify ?? null,
          inflight: inf === undefined ? null : { cycle: s.inflight?.cycle ?? 0, mode: inf.mode, resumeSeq },
        })
      }
      vms.push({
        vm,
        committedCycle: s.committedCycle,
        committedAt: s.committedAt,
        inflightCycle: s.inflight?.cycle ?? 0,
        needsRecovery: s.pending !== null || s.inflight !== null,
        disks,
      })
    } catch (err) {
      vms.push({ vm, committedCycle: 0, committedAt: null, inflightCycle: 0, needsRecovery: true, disks: [], error: (err as Error).message })
    }
  }
  return { store: storeDir, vms }
}
