import { basename, relative } from 'node:path'
import { lstat, rename } from 'node:fs/promises'
import { ReceiverError } from './errors.ts'
import { fsyncDir, fsyncFile, unlinkIfExists } from './fs-util.ts'
import { journalChange, scanJournal, resetJournal, undoJournal, type JournalScan, type JournalHead } from './journal.ts'
import { faultPoint } from './fault.ts'
import {
  HEADLESS_JOURNAL,
  MISSING_JOURNAL,
  checkJournalHead,
  halfUndone,
  journalReadFailure,
  misplacedJournal,
  setAsideJournalPath,
  undoMark,
  undoMarkDiffers,
  unusableJournal,
  type JournalUnusable,
} from './journal-head.ts'
import { POINT_GRAIN, pointPath, removePointFiles, undoFromIncrement } from './increment.ts'
import { checkPointChain } from './point-chain.ts'
import { entryExists, entryKind } from './store-fs.ts'
import type { InflightCycle, InflightDisk, UndoMark } from './state-file.ts'
import type { VmPaths } from './vm-paths.ts'
import type { WorkProgress } from './work-progress.ts'

async function readIfExists(path: string, paths: VmPaths, checkHead?: (head: JournalHead) => void): Promise<JournalScan | undefined> {
  try {
    return await scanJournal(path, checkHead === undefined ? { paths } : { paths, checkHead })
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return undefined
    throw err
  }
}

/** What a seed's rollback does with its journal: reset it (its contents: the head at least), nothing (none there), or set it aside unopened. */
type SeedJournal = { readonly contents: JournalScan | undefined; readonly odd?: JournalUnusable }

/**
 * The journal of a seed in flight, for its rollback: its head must be the state's record of the disk
 * (journal-head.ts), as for an in-place undo — a journal of another cycle paired with this seed may hold the undo
 * data of an in-place apply, which resetting it would lose. Its records are not needed: the rollback drops the seed
 * file whole and writes nothing else (no byte of the flat: a seed never wrote there, its head says mode seed and
 * base size 0, the state's record too). So a record refused (E_STATE, one the receiver never writes) after that head
 * passed does not stop the rollback: the head alone is read, and `onIgnored` hears why the records were ignored.
 * A missing journal, or one with no valid head, is none to reset (the seed file goes all the same). One that cannot
 * be opened or read — something else in its place (lstat first: a FIFO, a folder, a link is never opened nor
 * followed), or a file whose open or read fails (EACCES, EIO) — is `odd`: the rollback sets it aside whole
 * ({@link setAside}), so nothing of it is lost whatever it holds.
 */
async function seedJournal(paths: VmPaths, d: InflightDisk, cycle: number, onIgnored: ((disk: string, why: string) => void) | undefined): Promise<SeedJournal> {
  const path = paths.journal(d.stem)
  const st = await lstat(path).catch((err: unknown) => {
    if ((err as { code?: unknown }).code === 'ENOENT') return undefined
    throw err
  })
  if (st === undefined) return { contents: undefined }
  if (!st.isFile()) return { contents: undefined, odd: misplacedJournal(entryKind(st)) }
  let headChecked = false
  const checkHead = (h: JournalHead): void => {
    checkJournalHead(paths, path, h, cycle, d)
    headChecked = true
  }
  try {
    return { contents: await readIfExists(path, paths, checkHead) }
  } catch (err) {
    const failed = await journalReadFailure(paths, path, err)
    // replaced by something else since the lstat, or its open or read failed
    if (failed !== undefined && failed.how.failed !== 'missing') return { contents: undefined, odd: failed.how }
    if (!(headChecked && d.mode === 'seed' && err instanceof ReceiverError && err.code === 'E_STATE')) throw err
    const head = await scanJournal(path, { paths, checkHead, headOnly: true })
    if (head === undefined) throw err
    onIgnored?.(d.name, err.message)
    return { contents: head }
  }
}

/**
 * Set journal `path` of seed disk `d` aside whole, unopened (a rename: a link is moved, not followed), at the first
 * free {@link setAsideJournalPath}; the path it now has.
 */
async function setAside(paths: VmPaths, path: string, d: InflightDisk, cycle: number): Promise<string> {
  for (let n = 1; ; n++) {
    const to = setAsideJournalPath(paths, d, cycle, n)
    if (await entryExists(to)) continue
    await rename(path, to)
    await fsyncDir(paths.gdir)
    await fsyncDir(paths.dir)
    return to
  }
}

type UndoWork = { readonly d: InflightDisk; readonly contents: JournalScan | undefined; readonly ucontents: JournalScan | undefined; readonly odd?: JournalUnusable; readonly bytes: number }

/** Errors {@link undoInflight} threw before it wrote anything: its checks of every disk's journal. */
const wroteNothing = new WeakSet<object>()

/** Refusals of a rollback that may have written part of a flat back (an interrupted one's journal no longer the one it began with): never {@link wroteNothing}. */
const halfUndoneErrors = new WeakSet<object>()

/** The refusal of a rollback that cannot finish disk `d`'s undo from its undoing journal `upath` ({@link halfUndone}). */
function halfUndoneError(paths: VmPaths, upath: string, cycle: number, d: InflightDisk, what: string, cause?: unknown): ReceiverError {
  const err = new ReceiverError('E_STATE', halfUndone(paths, upath, cycle, d, what), cause === undefined ? undefined : { cause })
  halfUndoneErrors.add(err)
  return err
}

/**
 * Whether `err`, thrown by a rollback ({@link undoInflight}, VmMirror.rollback), was thrown before anything of
 * any disk was written: a journal refused or unusable — the mirror is as it was before the rollback began.
 */
export function rollbackWroteNothing(err: unknown): boolean {
  return typeof err === 'object' && err !== null && wroteNothing.has(err)
}

/** What {@link undoInflight} is to undo, per disk, read and checked before anything is written; refused (typed, the journal's text) when a disk cannot be. */
async function planUndo(paths: VmPaths, infl: InflightCycle, onIgnored: ((disk: string, why: string) => void) | undefined): Promise<UndoWork[]> {
  const work: UndoWork[] = []
  for (const d of Object.values(infl.disks)) {
    if (d.target === 'seed') {
      work.push({ d, ...(await seedJournal(paths, d, infl.cycle, onIgnored)), ucontents: undefined, bytes: 0 })
      continue
    }
    // an in-place undo trusts the head (base size, capacity, increment): it must be this cycle's record of the
    // disk, checked for every disk before anything of any is written, and before its records are held to it
    // (scanJournal); one that cannot be read at all is said as `grainline status` says it (journal-head.ts)
    const read = async (path: string, undoing: boolean): Promise<JournalScan | undefined> =>
      readIfExists(path, paths, (h: JournalHead): void => checkJournalHead(paths, path, h, infl.cycle, d)).catch(async (err: unknown) => {
        const failed = await journalReadFailure(paths, path, err)
        if (failed === undefined) throw err
        throw new ReceiverError(failed.code, `${unusableJournal(paths, path, infl.cycle, d, failed.how, undoing)}. Nothing was undone`, { cause: err })
      })
    const ucontents = await read(paths.undoing(d.stem), true)
    // an interrupted rollback may have written part of the flat back: it finishes from the journal it began with, or not at all
    const differs = ucontents === undefined ? undefined : undoMarkDiffers(d, ucontents)
    if (differs !== undefined) throw halfUndoneError(paths, paths.undoing(d.stem), infl.cycle, d, differs)
    const contents = ucontents === undefined ? await read(paths.journal(d.stem), false) : undefined
    // nothing to undo from: refused before anything of any disk is written
    if (ucontents === undefined && contents === undefined) {
      const jpath = paths.journal(d.stem)
      const how = (await entryExists(jpath)) ? HEADLESS_JOURNAL : MISSING_JOURNAL
      throw new ReceiverError('E_STATE', `${unusableJournal(paths, jpath, infl.cycle, d, how, false)}. Nothing was undone`)
    }
    work.push({ d, contents, ucontents, bytes: undoBytes(ucontents ?? contents, d.increment !== undefined) })
  }
  return work
}

/**
 * Put every disk of an in-flight cycle back at its committed point: a seed's
 * file is dropped (its resume point forgotten first; its journal's records are
 * not read, and one that cannot be opened or read is set aside, `onSetAside`
 * hears where: see {@link seedJournal}); an in-place apply is
 * undone from its journal, newest record first, and the flat cut back to its
 * committed size. Idempotent: after a crash mid-undo, running it again
 * finishes the job. The caller then clears the in-flight state, and only
 * then removes the disks' base copies (InflightDisk.baseCopy): until that
 * state is written the cycle may be resumed, and its commit keeps the copy.
 * `onProgress` hears of the bytes written back of the total (the journals'
 * old bytes, the increments' grains): 0 at the start, at most every
 * UNDO_PROGRESS_MS while they are written, the total at the end; nothing
 * when there is nothing to write back (seeds only).
 */
export async function undoInflight(
  paths: VmPaths,
  infl: InflightCycle,
  onProgress?: WorkProgress,
  now: () => number = () => performance.now(),
  onIgnored?: (disk: string, why: string) => void,
  onSetAside?: (disk: string, journal: string, to: string, why: string) => void,
  onBegin?: (marks: ReadonlyMap<string, UndoMark>) => Promise<void>,
): Promise<void> {
  // what is to undo, per disk, before any of it is: each journal is scanned (its data streamed and checked) once,
  // here, keeping no record (scanJournal: the head, counts and the positions the undo reads the records back from)
  const work = await planUndo(paths, infl, onIgnored).catch((err: unknown) => {
    // refused before anything of any disk was written by this run (rollbackWroteNothing); a half undone flat of an
    // interrupted one is not as the failed apply left it
    if (typeof err === 'object' && err !== null && !halfUndoneErrors.has(err)) wroteNothing.add(err)
    throw err
  })
  // the journals of the in-place disks as read now, recorded (the VM's state) before any of them is renamed to its
  // undoing name and anything is written back: finishing an interrupted rollback holds the journal to it
  const marks = new Map<string, UndoMark>()
  for (const w of work) if (w.d.target !== 'seed' && w.contents !== undefined) marks.set(w.d.name, undoMark(w.contents))
  if (marks.size > 0 && onBegin !== undefined)
    await (async () => {
      // the journals on disk as they were read before they are recorded: the page cache may hold records nobody
      // synced (the resume marker a receiver killed before wrote last, a store just copied), which a power loss
      // would take, and the rollback that finishes this one would find a journal other than the recorded one
      for (const w of work) if (marks.has(w.d.name)) await fsyncFile(paths.journal(w.d.stem), 'store')
      await onBegin(marks)
    })().catch((err: unknown) => {
      // not recorded: nothing renamed, nothing written
      if (typeof err === 'object' && err !== null) wroteNothing.add(err)
      throw err
    })
  const total = work.reduce((n, w) => n + w.bytes, 0)
  let before = 0
  let reported = now()
  if (total > 0) onProgress?.(0, total)
  const undone = (w: { bytes: number }) => (bytes: number) => {
    if (onProgress === undefined || now() - reported < UNDO_PROGRESS_MS) return
    reported = now()
    onProgress(before + Math.min(bytes, w.bytes), total)
  }
  for (const w of work) {
    const { d, contents } = w
    const jpath = paths.journal(d.stem)
    if (d.target === 'seed') {
      // forget the resume point first, then the data it described
      if (contents !== undefined) await resetJournal(jpath, contents.headEnd)
      if (w.odd !== undefined) {
        const to = await setAside(paths, jpath, d, infl.cycle)
        onSetAside?.(d.name, relative(paths.store, jpath), relative(paths.store, to), w.odd.what)
      }
      await unlinkIfExists(paths.seed(d.stem))
      continue
    }
    // An undo in progress is marked by the journal's name (a rename needs
    // no free space): a half-undone flat must never be resumed from the
    // journal's markers; recovery and the next rollback finish the undo.
    const upath = paths.undoing(d.stem)
    let ucontents = w.ucontents
    if (ucontents === undefined) {
      // refused above, before any disk was undone
      if (contents === undefined) throw new ReceiverError('E_INTERNAL', `journal of disk ${d.name} of VM ${basename(paths.dir)} vanished during its rollback`)
      await rename(jpath, upath)
      await fsyncDir(paths.gdir)
      ucontents = contents
    }
    if (d.increment !== undefined) {
      // the old grains are in the reverse increment; the journal indexes them — read into the mirror,
      // so its files must be the receiver's own (point-chain.ts), not a link to another file
      if (ucontents.grains.length > 0 && (await entryExists(pointPath(paths, d.increment)))) await checkPointChain(paths, d.increment, d.stem)
      await undoFromIncrement(pointPath(paths, d.increment), ucontents.grains, paths.flat(d.stem), ucontents.head.baseSize, undone(w))
    } else {
      let wrote = false
      const progress = undone(w)
      await undoJournal(
        upath,
        ucontents,
        paths.flat(d.stem),
        (bytes) => {
          wrote = true
          progress(bytes)
        },
        paths,
      ).catch(async (err: unknown) => {
        const what = journalChange(err)
        if (what === undefined) throw err
        // the journal changed since it was read: nothing of it written back (by this rollback or an interrupted
        // one), it is put back under its name, the cycle in flight as the failed apply left it, and the refusal
        // says nothing was written; once a part is, the flat is half undone, and the rollback stops there
        if (!wrote && w.ucontents === undefined) {
          await rename(upath, jpath)
          await fsyncDir(paths.gdir)
          throw err
        }
        throw halfUndoneError(paths, upath, infl.cycle, d, what, err)
      })
    }
    before += w.bytes
    faultPoint('rollback-undone')
    // the flat is back at its committed point: forget the markers, so that
    // a resume after a failed state write starts again at seq 0
    await resetJournal(upath, ucontents.headEnd)
    // the increment is no point: nothing refers to it once the markers are gone (a resume from seq 0 makes it afresh)
    if (d.increment !== undefined) await removePointFiles(paths, d.increment)
    // the base copy stays: it is still a copy of the committed mirror, which a resume of the cycle (after a
    // failed state write) cannot make again; the caller removes it once the in-flight record no longer names it
    await rename(upath, jpath)
    await fsyncDir(paths.gdir)
    faultPoint('rollback-reset')
  }
  await fsyncDir(paths.dir)
  if (total > 0) onProgress?.(total, total)
}

/** How often a running undo is reported, at most, between its first and last report (ms). */
export const UNDO_PROGRESS_MS = 5000

/** The bytes an undo writes back: the increment's distinct grains, or the journal's old bytes. */
function undoBytes(c: JournalScan | undefined, fromIncrement: boolean): number {
  if (c === undefined) return 0
  // the journal's grains are listed once each (journal.ts: the first entry of a grain)
  if (fromIncrement) return c.grains.length * POINT_GRAIN
  return c.oldBytes
}
