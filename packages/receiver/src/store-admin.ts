/** Read-only and operator views of a store: listing, status, rollback (`grainline status`, `grainline mirror rollback`). */
import { lstat } from 'node:fs/promises'
import { basename, join, relative } from 'node:path'
import type { HoldRecord } from './hold-record.ts'
import type { Logger } from 'pino'
import { grainlineCommand, storeArg } from './operator-command.ts'
import { ReceiverError } from './errors.ts'
import { hasStateDir, listVmFolders } from './vm-folders.ts'
import { checkVmDir, entryExists, entryKind, readStoreDir } from './store-fs.ts'
import { scanJournal, type JournalHead } from './journal.ts'
import {
  HEADLESS_JOURNAL,
  MISSING_JOURNAL,
  SET_ASIDE_JOURNAL,
  checkJournalHead,
  halfUndone,
  journalStuck,
  misplacedJournal,
  unreadableJournal,
  undoMarkDiffers,
  unusableJournal,
  type JournalUnusable,
} from './journal-head.ts'
import { inspectMirror } from './mirror-inspection.ts'
import { damagedPointFiles, type DamagedPointFile } from './point-chain.ts'
import { mirrorModified } from './open-decision.ts'
import { readVmState, withPointsDropped, type DivergedRecord, type InflightDisk, type PointsDroppedRecord, type ProvenRecord, type VerifyRecord } from './state-file.ts'
import type { DroppedReference } from './mirror-vmx.ts'
import { VmMirror } from './vm-mirror.ts'
import type { PointRecord } from './points.ts'
import { STATE_DIR, STATE_FILE, VmPaths } from './vm-paths.ts'

/** The VM folders holding a grainline state file, sorted (recovery: a folder without one has nothing to recover). */
export async function listVms(storeDir: string): Promise<string[]> {
  const out: string[] = []
  for (const e of await listVmFolders(storeDir)) {
    if (await entryExists(join(storeDir, e, STATE_DIR, STATE_FILE)).catch(() => false)) out.push(e)
  }
  return out
}

/** Roll a VM mirror back to its last committed point (`grainline mirror rollback`). */
export async function rollbackMirror(storeDir: string, vm: string, logger?: Logger): Promise<{ vm: string; committedCycle: number; rolledBack: boolean }> {
  const { default: pino } = await import('pino')
  const log = logger ?? pino({ level: 'silent' })
  const m = await VmMirror.acquire(storeDir, vm, log, { create: false }).catch((err: unknown) => {
    if ((err as { code?: unknown }).code === 'E_NOT_FOUND') throw new ReceiverError('E_NOT_FOUND', `no mirror of VM ${vm} in ${storeDir}`)
    throw err
  })
  try {
    if ((await readVmState(m.paths)) === undefined) throw new ReceiverError('E_NOT_FOUND', `no mirror of VM ${vm} in ${storeDir}`)
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
  /** the descriptor CID or the flat size differ from the last commit (someone booted or edited the mirror) */
  readonly modified: boolean
  readonly trivial: VerifyRecord | null
  readonly certify: VerifyRecord | null
  /** a failed trivial check or certify: the next cycle must seed the disk */
  readonly diverged: DivergedRecord | null
  /** when the whole mirror was last proven equal to its source (a clean certify, a completed scrub rotation, a resync that read every block), null if never */
  readonly proven: ProvenRecord | null
  /**
   * the cycle in flight on the disk; `problem`: why its `resumeSeq` is 0 though its journal or extent log may hold
   * records — on the Ceph store a log larger than a cycle of the disk can write, or one that could not be read
   * (ceph-admin.ts resumePoint); on the folder store (journalStatus) a journal a resume refuses (E_STATE, its
   * text): its head is not the state's in-flight record of the disk (journal-head.ts), or a record says what the
   * receiver never writes (journal.ts; an in-place apply's rollback refuses it too, a seed's reads the head alone),
   * or a journal that is missing, no regular file (a FIFO, a folder), unreadable or without a valid head; `refused`
   * is true when every run fails on it until the operator acts (CRITICAL), absent when the receiver gets past it on
   * its own (WARNING: a seed it rolls back after the failed resume, an interrupted rollback it finishes)
   */
  readonly inflight: { readonly cycle: number; readonly mode: string; readonly resumeSeq: number; readonly problem?: string; readonly refused?: boolean } | null
  /** the first cycle whose .vmx no longer named the disk (removed from the VM; its mirror kept as of `committedCycle` for older points); absent while the VM has it */
  readonly removed?: number
}

/** A committed disk whose mirror (on the Ceph store: its image or committed snapshot) is missing or too small. */
export interface DamagedMirrorDisk {
  readonly disk: string
  /** the disk's committed cycle, the one its snapshot holds */
  readonly cycle: number
  /** `POOL/IMAGE@SNAP` */
  readonly file: string
  /** what is wrong: `is missing (…)`, `is N bytes, smaller than …` */
  readonly problem: string
  /** the first cycle whose .vmx no longer named the disk (its mirror kept as of `cycle` for older points); absent while the VM has it */
  readonly removed?: number
}

/** Status of one VM (json-able). */
export interface VmStatus {
  readonly vm: string
  readonly committedCycle: number
  readonly committedAt: string | null
  /** generation of the last commit (SPEC §5.8), "" if none */
  readonly generation: string
  readonly inflightCycle: number
  /** a commit to roll forward or a cycle in flight */
  readonly needsRecovery: boolean
  readonly disks: readonly DiskStatus[]
  /** references of the installed .vmx that pointed out of the mirror, dropped or neutralised */
  readonly vmxDropped: readonly DroppedReference[]
  /** opened points and failovers holding the mirror: no cycle is applied until they are released (`E_HELD`) */
  readonly holds?: readonly HoldRecord[]
  /** restore points kept (cycles, oldest first) */
  readonly points?: readonly number[]
  /** when each of {@link points} was committed (ISO times, in the same order) */
  readonly pointsCommittedAt?: readonly string[]
  /** the last commit that dropped every restore point outside the retention (absent: none did) */
  readonly pointsDropped?: PointsDroppedRecord
  /**
   * restore point files missing, not regular files, or shorter than their
   * point's capacity requires (looked at with lstat only; not while a commit
   * is to roll forward): restoring that point, or an older one, fails. On
   * the Ceph store: point snapshots missing or smaller than the point's
   * capacity (ceph-overview.ts cephStoreDamage), `file` naming `POOL/IMAGE@SNAP`
   */
  readonly damagedPoints?: readonly DamagedPointFile[]
  /**
   * On the Ceph store: committed disks whose image or committed snapshot is
   * missing, or whose snapshot is smaller than the disk's capacity
   * (ceph-overview.ts cephStoreDamage): the mirror's latest cycle cannot be
   * restored or failed over, and the next cycle cannot build on it. Absent
   * on the folder store, whose mirror flat missing or of another size is
   * `modified` (mirror-inspection.ts)
   */
  readonly damagedMirror?: readonly DamagedMirrorDisk[]
  /**
   * On the folder store: the journals rollbacks set aside in the mirror folder (journal-head.ts
   * setAsideJournalPath: a seed's journal it could not open or read), each file with the bytes it allocates. They
   * count in the token's quota (they are in the VM's folder) and nothing removes them: the operator looks at them,
   * then deletes them.
   */
  readonly setAsideJournals?: readonly SetAsideJournal[]
  /** why the VM's state could not be read */
  readonly error?: string
}

/** A journal a rollback set aside in a VM's mirror folder: its name there, the bytes it allocates, what it is when not a file. */
export interface SetAsideJournal {
  readonly file: string
  readonly bytes: number
  /** a rollback sets aside what stood in the journal's place as it was: `a FIFO`, `a folder`, `a symbolic link`… */
  readonly kind?: string
}

/** The journals rollbacks set aside in the mirror folder, by name (lstat: nothing opened or followed). */
async function setAsideJournals(paths: VmPaths): Promise<SetAsideJournal[]> {
  const out: SetAsideJournal[] = []
  for (const file of (await readStoreDir(paths.dir)).filter((n) => SET_ASIDE_JOURNAL.test(n)).sort()) {
    const st = await lstat(join(paths.dir, file)).catch(() => undefined)
    if (st === undefined) continue
    out.push(st.isFile() ? { file, bytes: st.blocks * 512 } : { file, bytes: st.isSymbolicLink() ? 0 : st.blocks * 512, kind: entryKind(st) })
  }
  return out
}

/** The damaged files of a VM's restore points (each point's files looked at with lstat, see point-chain.ts damagedPointFiles). */
async function pointsDamage(paths: VmPaths, points: readonly unknown[]): Promise<DamagedPointFile[]> {
  const out: DamagedPointFile[] = []
  for (const p of Array.isArray(points) ? points : []) {
    if (typeof p === 'object' && p !== null) out.push(...(await damagedPointFiles(paths, p as PointRecord)))
  }
  return out
}

/** What {@link journalStatus} makes of a disk's journal: the resume point, and why it is 0 (`problem`; `refused`: the next run fails on it). */
type JournalStatus = Pick<NonNullable<DiskStatus['inflight']>, 'resumeSeq' | 'problem' | 'refused'>

/**
 * The journal of disk `inf` of cycle `cycle` in flight, read as a resume and a rollback read it (lstat first: a
 * FIFO or a folder in its place is never opened): the undo journal of an interrupted rollback of an in-place
 * apply, else the journal, its head held to the state's record of the disk. Its resume point, or why there is
 * none: a journal a resume refuses (E_STATE, the refusal's text), or one it cannot read at all — missing, no
 * regular file, unreadable, no valid head (journal-head.ts unusableJournal, the text a resume and a rollback
 * refuse with). A resume fails on every such journal, and the receiver then rolls the cycle back (session.ts):
 * when that rollback fails too — an in-place apply without its undo data — every run fails until the operator
 * acts: `refused`, CRITICAL. When it goes through — a seed, whose rollback needs none of its journal (missing or
 * headless: none to reset; one it cannot open or read: set aside unopened; its head the state's and a record
 * refused: the head alone read; rollback.ts seedJournal) — and for
 * an interrupted rollback the receiver finishes (at start-up, or the next run's Rollback): a problem without
 * `refused`, a WARNING.
 */
async function journalStatus(paths: VmPaths, cycle: number, inf: InflightDisk, undoing: boolean): Promise<JournalStatus> {
  const vm = basename(paths.dir)
  const inPlace = inf.target !== 'seed'
  const jpath = inPlace && undoing ? paths.undoing(inf.stem) : paths.journal(inf.stem)
  const file = relative(paths.store, jpath)
  let headChecked = false
  const checkHead = (h: JournalHead): void => {
    checkJournalHead(paths, jpath, h, cycle, inf)
    headChecked = true
  }
  let how: JournalUnusable
  try {
    const st = await lstat(jpath).catch((err: unknown) => {
      if ((err as { code?: unknown }).code === 'ENOENT') return undefined
      throw err
    })
    if (st === undefined) how = MISSING_JOURNAL
    else if (!st.isFile()) how = misplacedJournal(entryKind(st))
    else {
      const c = await scanJournal(jpath, { paths, checkHead })
      if (c !== undefined && inPlace && undoing) {
        // an interrupted rollback whose journal is no longer the one it began with: it cannot finish (rollback.ts)
        const differs = undoMarkDiffers(inf, c)
        if (differs !== undefined) return { resumeSeq: 0, problem: halfUndone(paths, jpath, cycle, inf, differs), refused: true }
        return {
          resumeSeq: 0,
          problem: `a rollback of cycle ${cycle} on disk ${inf.name} of VM ${vm} was interrupted (journal ${file}): the cycle is not resumed; the receiver finishes the rollback at start-up, or the next run's rollback does (${grainlineCommand(['mirror', 'rollback', '--store', storeArg(paths.store), '--vm', vm])} does it now)`,
        }
      }
      if (c !== undefined) return { resumeSeq: (c.applied?.seq ?? -1) + 1 }
      how = HEADLESS_JOURNAL
    }
  } catch (err) {
    if (err instanceof ReceiverError && err.code === 'E_STATE') {
      // a seed whose head is the state's record: its rollback reads the head alone (rollback.ts seedJournal), the
      // receiver's own after the refused resume too — it gets past it on its own
      const seedRollsBack = headChecked && inf.target === 'seed' && inf.mode === 'seed'
      return { resumeSeq: 0, problem: err.message, ...(seedRollsBack ? {} : { refused: true }) }
    }
    how = unreadableJournal(paths, jpath, err)
  }
  return { resumeSeq: 0, problem: unusableJournal(paths, jpath, cycle, inf, how, undoing), ...(journalStuck(inf) ? { refused: true } : {}) }
}

/** Per VM and disk status of a store (`grainline status`). Read-only. */
export async function storeStatus(storeDir: string): Promise<{ store: string; vms: VmStatus[] }> {
  const vms: VmStatus[] = []
  for (const vm of await listVmFolders(storeDir)) {
    const paths = new VmPaths(storeDir, vm)
    try {
      // a `.grainline` that is a link or no folder, a VM folder resolving elsewhere: E_STORE_FILE, the VM CRITICAL
      await checkVmDir(storeDir, paths.dir, paths.gdir, false)
      const s = await readVmState(paths)
      if (s === undefined) {
        // gone since the listing (a removal renamed the folder to its tombstone): not a VM any more
        if (!(await hasStateDir(paths.dir))) continue
        // a VmOpen made the folder and no cycle recorded anything yet (its first DiskOpen refused, the agent stopped): never committed, as on Ceph, and counted under maxVms
        vms.push({ vm, committedCycle: 0, committedAt: null, generation: '', inflightCycle: 0, needsRecovery: false, disks: [], vmxDropped: [], holds: [], points: [] })
        continue
      }
      const names = new Set([...Object.keys(s.disks), ...Object.keys(s.inflight?.disks ?? {})])
      const disks: DiskStatus[] = []
      for (const name of [...names].sort()) {
        const rec = s.disks[name]
        const inf = s.inflight?.disks[name]
        const facts = await inspectMirror(paths, rec, inf)
        const journal = inf === undefined ? undefined : await journalStatus(paths, s.inflight?.cycle ?? 0, inf, facts.undoing)
        disks.push({
          name,
          committedCycle: rec?.cycle ?? 0,
          committedAt: rec?.committedAt ?? null,
          capacity: rec?.capacity ?? inf?.capacity ?? 0,
          size: Math.max(facts.flatSize, 0),
          mirrorCid: facts.cid,
          modified: mirrorModified(rec, inf, facts),
          trivial: rec?.trivial ?? null,
          certify: rec?.certify ?? null,
          diverged: rec?.diverged ?? null,
          proven: rec?.proven ?? null,
          inflight: inf === undefined || journal === undefined ? null : { cycle: s.inflight?.cycle ?? 0, mode: inf.mode, ...journal },
          ...(rec?.removed === undefined ? {} : { removed: rec.removed }),
        })
      }
      vms.push({
        vm,
        committedCycle: s.committedCycle,
        committedAt: s.committedAt,
        generation: s.committedCycle > 0 ? (s.generation ?? '') : '',
        inflightCycle: s.inflight?.cycle ?? 0,
        needsRecovery: s.pending !== null || s.inflight !== null,
        disks,
        vmxDropped: s.vmxDropped ?? [],
        // a hostile or damaged state: only records (health and metrics read their fields)
        holds: Array.isArray(s.holds) ? s.holds.filter((h) => typeof h === 'object' && h !== null) : [],
        points: (s.points ?? []).map((p) => p.cycle),
        pointsCommittedAt: (s.points ?? []).map((p) => (typeof p.committedAt === 'string' ? p.committedAt : '')),
        ...withPointsDropped(s),
        // a commit to roll forward moves, merges and removes point files: looked at once it is finished
        damagedPoints: s.pending === null ? await pointsDamage(paths, s.points ?? []) : [],
        setAsideJournals: await setAsideJournals(paths),
      })
    } catch (err) {
      // the folder gone since the listing (a removal's rename): not a VM any more
      if ((err as { code?: unknown }).code === 'E_NOT_FOUND') continue
      vms.push({ vm, committedCycle: 0, committedAt: null, generation: '', inflightCycle: 0, needsRecovery: true, disks: [], vmxDropped: [], holds: [], points: [], error: (err as Error).message })
    }
  }
  return { store: storeDir, vms }
}
