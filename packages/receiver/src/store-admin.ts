/** Read-only and operator views of a store: listing, status, rollback (`grainline status`, `grainline mirror rollback`). */
import { join } from 'node:path'
import type { HoldRecord } from './hold-record.ts'
import type { Logger } from 'pino'
import { ReceiverError } from './errors.ts'
import { hasStateDir, listVmFolders } from './vm-folders.ts'
import { checkVmDir, entryExists } from './store-fs.ts'
import { readJournal, type JournalHead } from './journal.ts'
import { checkJournalHead } from './journal-head.ts'
import { inspectMirror } from './mirror-inspection.ts'
import { damagedPointFiles, type DamagedPointFile } from './point-chain.ts'
import { mirrorModified } from './open-decision.ts'
import { readVmState, withPointsDropped, type DivergedRecord, type PointsDroppedRecord, type ProvenRecord, type VerifyRecord } from './state-file.ts'
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
   * (ceph-admin.ts resumePoint); on the folder store a journal a resume and a rollback refuse (E_STATE, its text):
   * its head is not the state's in-flight record of the disk (journal-head.ts), or a record lies beyond the head
   * (journal.ts) — then `refused` is true: the cycle can neither resume nor roll back (CRITICAL)
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
  /** why the VM's state could not be read */
  readonly error?: string
}

/** The damaged files of a VM's restore points (each point's files looked at with lstat, see point-chain.ts damagedPointFiles). */
async function pointsDamage(paths: VmPaths, points: readonly unknown[]): Promise<DamagedPointFile[]> {
  const out: DamagedPointFile[] = []
  for (const p of Array.isArray(points) ? points : []) {
    if (typeof p === 'object' && p !== null) out.push(...(await damagedPointFiles(paths, p as PointRecord)))
  }
  return out
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
        let resumeSeq = 0
        let problem: string | undefined
        if (inf !== undefined) {
          // read as a resume reads it: a journal whose head is not the state's in-flight record of the disk, or
          // whose records lie beyond its head, is refused there (E_STATE) — its resume point is none, and why is
          // the disk's problem (the rest of the status stands); a journal that cannot be read otherwise counts 0
          const jpath = paths.journal(inf.stem)
          const checkHead = (h: JournalHead): void => checkJournalHead(paths, jpath, h, s.inflight?.cycle ?? 0, inf)
          const c = await readJournal(jpath, { paths, checkHead }).catch((err: unknown) => {
            if (err instanceof ReceiverError && err.code === 'E_STATE') problem = err.message
            return undefined
          })
          resumeSeq = (c?.applied?.seq ?? -1) + 1
        }
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
          inflight: inf === undefined ? null : { cycle: s.inflight?.cycle ?? 0, mode: inf.mode, resumeSeq, ...(problem === undefined ? {} : { problem, refused: true }) },
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
      })
    } catch (err) {
      // the folder gone since the listing (a removal's rename): not a VM any more
      if ((err as { code?: unknown }).code === 'E_NOT_FOUND') continue
      vms.push({ vm, committedCycle: 0, committedAt: null, generation: '', inflightCycle: 0, needsRecovery: true, disks: [], vmxDropped: [], holds: [], points: [], error: (err as Error).message })
    }
  }
  return { store: storeDir, vms }
}
