import { lstat } from 'node:fs/promises'
import { basename, join, relative } from 'node:path'
import { ReceiverError } from './errors.ts'
import { scanJournal, type JournalScan, type JournalHead } from './journal.ts'
import { entryKind } from './store-fs.ts'
import type { InflightDisk, UndoMark } from './state-file.ts'
import type { VmPaths } from './vm-paths.ts'
import { grainlineCommand, storeArg } from './operator-command.ts'

/**
 * A journal's head says which cycle of which disk it belongs to: its cycle
 * identity and number, the disk's name and mode, the capacity the cycle
 * writes up to and the flat's size before it (journal.ts), and the reverse
 * increment its grains records index. Written from the same in-flight record
 * the state file keeps (vm-mirror.ts, `Journal.create`), it must agree with it
 * whenever it is read to resume or undo a cycle: a journal left from another
 * disk or cycle, a state file edited by hand, a store restored from a backup
 * mixing files of different times would pair the journal with the wrong disk —
 * a rollback would cut the flat to another base size (or undo ranges of
 * another capacity), a resume would accept extents journaled against another
 * base. Nothing in the head is compared with the file system's facts here
 * (the mirror's CID and size are decideOpen's): only with the state's record.
 */

/** What differs between a journal's head and the state's in-flight record of its disk (empty when they agree). */
export function journalHeadDiffers(head: JournalHead, cycle: number, d: InflightDisk): string[] {
  const out: string[] = []
  const h = head as Partial<Record<keyof JournalHead, unknown>>
  const field = (what: string, got: unknown, want: unknown, unit = ''): void => {
    if (got !== want) out.push(`${what} ${show(got)}${unit} in the journal, ${show(want)}${unit} in the state`)
  }
  field('capacity', h.capacity, d.capacity, ' bytes')
  field('base size', h.baseSize, d.baseSize, ' bytes')
  field('cycle', h.cycle, cycle)
  field('cycle identity', h.cycleId, d.cycleId)
  field('disk', h.name, d.name)
  field('mode', h.mode, d.mode)
  field('reverse increment', h.increment ?? null, d.increment ?? null)
  return out
}

function show(v: unknown): string {
  if (v === null || v === undefined) return 'none'
  return typeof v === 'string' ? JSON.stringify(v) : String(v)
}

/**
 * Refuse (E_STATE) a journal whose head does not match the state's in-flight
 * record of disk `d` of cycle `cycle` of the VM of `paths`; call it before anything of
 * the journal is trusted or written. The message names the journal relative
 * to the store (`<vm>/.grainline/<stem>.journal`), both values of each field
 * that differs and the operator's remedy.
 */
export function checkJournalHead(paths: VmPaths, journalPath: string, head: JournalHead, cycle: number, d: InflightDisk): void {
  const diffs = journalHeadDiffers(head, cycle, d)
  if (diffs.length === 0) return
  const file = relative(paths.store, journalPath)
  const vm = basename(paths.dir)
  throw new ReceiverError(
    'E_STATE',
    `journal ${file} of disk ${d.name} of VM ${vm} does not belong to cycle ${cycle} in flight that the VM's state records: ${diffs.join('; ')}. ` +
      'It comes from another disk or cycle (a state file edited by hand, a folder restored from backups of different times), and its undo data and resume point describe another flat. ' +
      `Nothing was resumed or undone: cycle ${cycle} can neither resume nor roll back from this journal. Restore the VM's folder whole from one backup, ` +
      `or remove the mirror (${grainlineCommand(['mirror', 'remove', '--store', storeArg(paths.store), '--vm', vm, '--yes'])}): the next run seeds the VM anew`,
  )
}

/** How a journal a resume or a rollback needs failed to read, short of a refusal (E_STATE), and `what` says it. */
export interface JournalUnusable {
  /** absent; something else in its place (a FIFO, a folder: never opened); open or read failed; no valid head record */
  readonly failed: 'missing' | 'entry' | 'unreadable' | 'headless'
  /** "is missing", "is a FIFO, not the journal file …", "cannot be read (permission denied, EACCES)", … */
  readonly what: string
}

/**
 * Whether a journal that cannot be read leaves disk `d`'s cycle stuck: every run fails on it until the
 * operator acts. A resume fails on any such journal; the receiver then rolls the cycle back on its own (session.ts:
 * a failed apply's E_STATE is an E_IO, rolled back). A seed's rollback needs none of its journal (it discards the
 * seed file; rollback.ts): one missing or without a valid head is none to reset, one it cannot open or read is set
 * aside unopened ({@link setAsideJournalPath}), so the run after seeds the disk anew. An in-place apply's rollback
 * cannot do without its undo data.
 */
export function journalStuck(d: InflightDisk): boolean {
  return d.target !== 'seed'
}

/**
 * Where a seed's rollback sets aside a journal it cannot open or read (rollback.ts): in the VM's folder, out of
 * `.grainline` (no sweep of the receiver's own files touches it), named after the journal and the cycle, e.g.
 * `<vm>/d.journal.set-aside-cycle-2` (`-2`, `-3`… after it when that name is taken: an earlier one is never replaced).
 */
/** A journal a rollback set aside in the mirror folder ({@link setAsideJournalPath}): `<stem>.journal.set-aside-cycle-<N>[-<n>]`. */
export const SET_ASIDE_JOURNAL = /\.journal\.set-aside-cycle-\d+(?:-\d+)?$/

export function setAsideJournalPath(paths: VmPaths, d: InflightDisk, cycle: number, n = 1): string {
  return join(paths.dir, `${d.stem}.journal.set-aside-cycle-${cycle}${n > 1 ? `-${n}` : ''}`)
}

/**
 * The text for journal `journalPath` of disk `d` of cycle `cycle` in flight (`undoing`: the undo journal of an
 * interrupted rollback) that cannot be read at all (`how`): what it means — a resume fails on it; an in-place
 * apply can neither resume nor roll back without it (its undo data is there), a seed rolls back without it
 * ({@link journalStuck}; one it cannot open or read set aside) — and what the operator does. `grainline status` says it as the disk's problem, a resume
 * and a rollback refuse with it.
 */
export function unusableJournal(paths: VmPaths, journalPath: string, cycle: number, d: InflightDisk, how: JournalUnusable, undoing: boolean): string {
  const vm = basename(paths.dir)
  const rollback = grainlineCommand(['mirror', 'rollback', '--store', storeArg(paths.store), '--vm', vm])
  const remove = `remove the mirror (${grainlineCommand(['mirror', 'remove', '--store', storeArg(paths.store), '--vm', vm, '--yes'])}): the next run seeds the VM anew`
  const access = "let the receiver's user read and write it again (its permissions; an I/O error: the store's file system, see the system log)"
  let says: string
  if (d.target === 'seed') {
    const aside = how.failed === 'entry' || how.failed === 'unreadable' ? `, sets the journal aside unopened as ${relative(paths.store, setAsideJournalPath(paths, d, cycle))}` : ''
    says =
      `a resume of cycle ${cycle}, a seed, fails on it; the receiver then rolls the cycle back on its own, which discards the seed file${aside} ` +
      `(the committed mirror stays as it is), and the run after seeds disk ${d.name} anew. ${cap(rollback)} rolls it back now` +
      (how.failed === 'unreadable' ? `; to resume the seed instead, ${access} before the next run` : '')
  } else {
    const undo = d.increment === undefined ? 'its undo data (the old contents of what the cycle overwrote in the mirror flat)' : 'its index of the old grains saved in the reverse increment'
    says =
      `${undoing ? `an interrupted rollback of cycle ${cycle} cannot finish` : `cycle ${cycle} can neither resume nor roll back`}: a resume needs the journal's resume point and a rollback ${undo}, ` +
      `and the mirror flat may hold part of cycle ${cycle}; every run of VM ${vm} fails until it is dealt with. ` +
      (how.failed === 'unreadable'
        ? `${cap(access)}: the next run ${undoing ? 'finishes the rollback' : 'resumes the cycle'}; if it cannot be read again, restore the VM's folder whole from one backup, or ${remove}`
        : `${how.failed === 'entry' ? 'Move it out of .grainline, then p' : 'P'}ut the journal back (restore the VM's folder whole from one backup), or ${remove}`)
  }
  return `journal ${relative(paths.store, journalPath)} of disk ${d.name} of VM ${vm} ${how.what}: ${says}`
}

/** How a journal that could not be opened or read (`err`, not a refusal) failed: the code and its meaning, the path relative to the store. */
export function unreadableJournal(paths: VmPaths, journalPath: string, err: unknown): JournalUnusable {
  const code = (err as { code?: unknown } | null)?.code
  const message = err instanceof Error ? err.message : String(err)
  const why = code === 'EACCES' || code === 'EPERM' ? 'permission denied' : code === 'EIO' ? 'an I/O error' : message.replaceAll(journalPath, relative(paths.store, journalPath))
  return { failed: 'unreadable', what: `cannot be read (${why}${typeof code === 'string' && !why.includes(code) ? `, ${code}` : ''})` }
}

/** A journal that does not exist ({@link unusableJournal}). */
export const MISSING_JOURNAL: JournalUnusable = { failed: 'missing', what: 'is missing' }

/** Something else than a regular file in a journal's place, `kind` ("a FIFO", "a folder": store-fs.ts entryKind) ({@link unusableJournal}). */
export function misplacedJournal(kind: string): JournalUnusable {
  return { failed: 'entry', what: `is ${kind}, not the journal file (the receiver never opens it)` }
}

/** A journal with no valid head record ({@link unusableJournal}). */
export const HEADLESS_JOURNAL: JournalUnusable = { failed: 'headless', what: 'has no valid head record (truncated or overwritten)' }

const cap = (s: string): string => s.charAt(0).toUpperCase() + s.slice(1)

/**
 * Read journal `journalPath` of disk `d` of cycle `cycle` in flight to resume it (a DiskOpen's resume, start-up
 * recovery keeping the cycle): its contents, or the error a resume fails with — a refusal (E_STATE) as it is, and a
 * journal that cannot be read at all with {@link unusableJournal}'s text: missing or without a valid head
 * (E_STATE), something else in its place (E_STORE_FILE), unreadable (E_IO).
 */
export async function readResumeJournal(paths: VmPaths, journalPath: string, cycle: number, d: InflightDisk, checkHead: (head: JournalHead) => void): Promise<JournalScan> {
  const unusable = (how: JournalUnusable): string => unusableJournal(paths, journalPath, cycle, d, how, false)
  const contents = await scanJournal(journalPath, { paths, checkHead }).catch(async (err: unknown) => {
    const failed = await journalReadFailure(paths, journalPath, err)
    if (failed === undefined) throw err
    throw new ReceiverError(failed.code, unusable(failed.how), { cause: err })
  })
  if (contents === undefined) throw new ReceiverError('E_STATE', unusable(HEADLESS_JOURNAL))
  return contents
}

/**
 * How reading journal `journalPath` failed (`err`, thrown by scanJournal), short of a refusal: missing (E_STATE),
 * something else in its place (E_STORE_FILE: lstat says what, never opened), unreadable (E_IO); undefined for a
 * refusal (a ReceiverError of another kind), which stands as it is.
 */
export async function journalReadFailure(
  paths: VmPaths,
  journalPath: string,
  err: unknown,
): Promise<{ readonly code: 'E_STATE' | 'E_STORE_FILE' | 'E_IO'; readonly how: JournalUnusable } | undefined> {
  if (err instanceof ReceiverError && err.code === 'E_STORE_FILE') {
    const st = await lstat(journalPath).catch(() => undefined)
    return { code: 'E_STORE_FILE', how: misplacedJournal(st === undefined ? 'no regular file' : entryKind(st)) }
  }
  if (err instanceof ReceiverError) return undefined
  if ((err as { code?: unknown }).code === 'ENOENT') return { code: 'E_STATE', how: MISSING_JOURNAL }
  return { code: 'E_IO', how: unreadableJournal(paths, journalPath, err) }
}

/** What a rollback records of journal `scan` before it writes anything (state-file.ts `InflightDisk.undoFrom`). */
export function undoMark(scan: JournalScan): UndoMark {
  return { validEnd: scan.validEnd, extentRecords: scan.extentRecords, print: scan.print }
}

/**
 * How the undoing journal `scan` of disk `d` differs from what its rollback recorded before it wrote anything
 * (`d.undoFrom`), or undefined when it is the same journal or nothing was recorded (a rollback of an older receiver).
 */
export function undoMarkDiffers(d: InflightDisk, scan: JournalScan): string | undefined {
  const m = d.undoFrom as Partial<Record<keyof UndoMark, unknown>> | undefined
  if (m === undefined || m === null) return undefined
  if (m.validEnd === scan.validEnd && m.extentRecords === scan.extentRecords && m.print === scan.print) return undefined
  const was = `${show(m.extentRecords)} extent records to byte ${show(m.validEnd)}`
  const now = `${scan.extentRecords} to byte ${scan.validEnd}`
  return `is not the journal its rollback began with: ${was} then, ${now} now${m.validEnd === scan.validEnd && m.extentRecords === scan.extentRecords ? ', their contents differ' : ''}`
}

/**
 * The text of a rollback that cannot finish because journal `journalPath` of disk `d` of cycle `cycle` is no longer
 * the one it began with (`what`: how it differs, or the refusal of a window read again): part of the flat may have
 * been written back already, so the mirror is neither the committed one nor the cycle's. A rollback that finishes
 * the interrupted one, and `grainline status`, say the same.
 */
export function halfUndone(paths: VmPaths, journalPath: string, cycle: number, d: InflightDisk, what: string): string {
  const vm = basename(paths.dir)
  const rollback = grainlineCommand(['mirror', 'rollback', '--store', storeArg(paths.store), '--vm', vm])
  const remove = grainlineCommand(['mirror', 'remove', '--store', storeArg(paths.store), '--vm', vm, '--yes'])
  return (
    `journal ${relative(paths.store, journalPath)} of disk ${d.name} of VM ${vm} (cycle ${cycle}) ${what}. ` +
    `The rollback of cycle ${cycle} may have put part of the mirror flat back from it already: disk ${d.name} of VM ${vm} is half undone, ` +
    `neither its committed mirror nor cycle ${cycle}'s, and nothing more is written from this journal; every run of VM ${vm} fails until it is dealt with. ` +
    `Stop what else writes in the folder of VM ${vm}; put the journal back as it was when the rollback began (from the backup the folder comes from), then ${rollback} finishes the rollback; ` +
    `or restore the folder of VM ${vm} whole from one backup, or remove the mirror (${remove}): the next run seeds the VM anew`
  )
}
