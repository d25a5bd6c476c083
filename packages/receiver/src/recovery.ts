import { readdir, rm } from 'node:fs/promises'
import { join, relative } from 'node:path'
import type { Logger } from 'pino'
import { isTempName, unlinkIfExists } from './fs-util.ts'
import { entryExists, readStoreDir } from './store-fs.ts'
import { scanJournal, type JournalHead } from './journal.ts'
import { HEADLESS_JOURNAL, checkJournalHead, journalReadFailure, journalStuck, unusableJournal, type JournalUnusable } from './journal-head.ts'
import { ReceiverError, type ReceiverErrorCode } from './errors.ts'
import { faultPoint } from './fault.ts'
import { POINTS_DIR } from './increment.ts'
import { sweepPointOrphans } from './point-sweep.ts'
import { readVmState } from './state-file.ts'
import { listVms } from './store-admin.ts'
import { COPIED_STORE, VmMirror } from './vm-mirror.ts'
import { VmPaths } from './vm-paths.ts'

/** Remove leftover temporary files of interrupted atomic writes in `dir` (exactly their names, each removal logged). */
async function removeTemps(dir: string, log: Logger): Promise<number> {
  let n = 0
  let entries: string[]
  try {
    // a link in the folder's place is refused (the VM's lock already did), never listed through
    entries = await readStoreDir(dir)
  } catch {
    return 0
  }
  for (const e of entries) {
    if (isTempName(e)) {
      await rm(join(dir, e), { force: true })
      log.info({ file: join(dir, e) }, 'temporary file of an interrupted write removed')
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
  /** per in-flight disk, the seq a resume starts at (-1: no journal) */
  readonly resume?: Readonly<Record<string, number>>
  readonly error?: string
  /** the store was copied (storeCopied) and this VM's recovery failed before its disks were marked diverged */
  readonly copyOwed?: true
}

/**
 * Start-up recovery of every VM in the store: finish commits past their
 * commit point, keep interrupted applies (journal + state) so the same cycle
 * can resume, finish interrupted rollbacks, cut torn journal tails, drop
 * stray journals, temp files and point files no state names. With `abandonAfterMs`, interrupted cycles
 * older than that are rolled back instead of kept. With `storeCopied` (the store's receiver marker was
 * a copy, store-marker.ts) every VM's cycle in flight is rolled back and its disks marked diverged.
 */
export async function recoverStore(storeDir: string, logger: Logger, opts: { abandonAfterMs?: number; storeCopied?: boolean } = {}): Promise<RecoveryReport[]> {
  const reports: RecoveryReport[] = []
  for (const vm of await listVms(storeDir)) {
    const log = logger.child({ vm })
    let m: VmMirror | undefined
    // a copied store's VM not yet marked diverged (its acquire marks it when its own lock was the copy)
    let owed = opts.storeCopied === true
    try {
      faultPoint('recovery-vm')
      const paths = new VmPaths(storeDir, vm)
      const before = await readVmState(paths)
      m = await VmMirror.acquire(storeDir, vm, log, { create: false })
      // a store copied while its receiver ran (store-marker.ts): no VM's mirror is trusted for an incremental
      if (opts.storeCopied === true && !m.copiedLock) await m.distrustCopy(COPIED_STORE)
      owed = false
      // only under the VM's lock: a temporary file of a VM another process holds (a prune, a second receiver) is its write in progress
      await removeTemps(paths.dir, log)
      await removeTemps(paths.gdir, log)
      await removeTemps(paths.incoming, log)
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
      // point files no state names: a base copy or a `.copying` partial of a crash, a base descriptor of a commit that never reached its commit point
      await removeTemps(join(paths.gdir, POINTS_DIR), log)
      await sweepPointOrphans(paths, m.state, log)
      const age = inflight === null ? 0 : Date.now() - Date.parse(inflight.startedAt)
      if (inflight !== null && (await Promise.all(Object.values(inflight.disks).map((d) => entryExists(paths.undoing(d.stem))))).some(Boolean)) {
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
          // a journal that is not the state's record of the disk, or whose records lie beyond its head, is reported
          // now, not at the agent's resume
          const jpath = paths.journal(d.stem)
          const checkHead = (h: JournalHead): void => checkJournalHead(paths, jpath, h, inflight.cycle, d)
          // one that cannot be read at all (missing, something else in its place, unreadable, no valid head) is said
          // as a resume and `grainline status` say it (journal-head.ts unusableJournal), not as the file system's error
          let failed: { readonly code: ReceiverErrorCode; readonly how: JournalUnusable } | undefined
          const c = await scanJournal(jpath, { paths, checkHead }).catch(async (err: unknown) => {
            failed = await journalReadFailure(paths, jpath, err)
            if (failed === undefined) throw err
            return undefined
          })
          if (c === undefined) failed ??= { code: 'E_STATE', how: HEADLESS_JOURNAL }
          if (failed !== undefined) {
            const problem = unusableJournal(paths, jpath, inflight.cycle, d, failed.how, false)
            // an in-place apply without its journal: every run fails until the operator acts
            if (journalStuck(d)) throw new ReceiverError(failed.code, problem)
            // a seed: the next run's resume fails, and the receiver rolls it back then (the seed file discarded)
            log.warn(
              { disk: d.name, cycle: inflight.cycle, journal: relative(storeDir, jpath), problem },
              'interrupted seed kept, but its journal cannot be used: the next run rolls it back and seeds the disk anew',
            )
          }
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
      reports.push({ vm, action: 'failed', error: (err as Error).message, ...(owed ? { copyOwed: true as const } : {}) })
    } finally {
      m?.release()
    }
  }
  return reports
}
