/**
 * What the agent shows while the receiver works long before it answers:
 * a DiskOpen (SPEC §5.1 DiskProgress, v3: the copy of a disk's mirror into a
 * base point when the disk changes capacity) or a Commit (§5.5
 * CommitProgress, v4: the merges of the restore points the retention
 * drops), a VmOpen (§4.2 VmProgress, v5: a commit a crash interrupted,
 * finished) or a Rollback (§4.3 VmProgress, v5: the in-flight cycle undone),
 * each minutes on a large store. Logged when the work starts, when
 * it ends and every 30 s between, with the bytes done, the total and an
 * ETA, so that the operator sees why a cycle waits.
 */
import type { Logger } from 'pino'
import type { CommitProgressMessage, DiskProgressMessage, VmProgressMessage } from '@grainline/protocol'

/** How often the receiver's long work is logged between its first and last report, ms. */
export const RECEIVER_PROGRESS_LOG_MS = 30_000

/** A DiskProgress listener for one DiskOpen of disk `disk` (its source name). */
export function diskOpenProgress(log: Logger, disk: string, now: () => number = () => performance.now()): (p: DiskProgressMessage) => void {
  return progressLog(
    log,
    { disk },
    (step) => (step === 'base-copy' ? 'the receiver copies the mirror of the disk into a restore point before it changes capacity' : `the receiver works on the disk (${step})`),
    now,
  )
}

/** A CommitProgress listener for the Commit of one cycle. */
export function commitProgress(log: Logger, now: () => number = () => performance.now()): (p: CommitProgressMessage) => void {
  return progressLog(
    log,
    {},
    (step) => (step === 'merge-points' ? 'the receiver merges the restore points its retention drops before it answers the commit' : `the receiver works on the commit (${step})`),
    now,
  )
}

/** A VmProgress listener for the VmOpen or the Rollback of one VM. */
export function vmProgress(log: Logger, now: () => number = () => performance.now()): (p: VmProgressMessage) => void {
  return progressLog(
    log,
    {},
    (step) =>
      step === 'merge-points'
        ? 'the receiver finishes a commit a crash interrupted (merging the restore points it drops) before it opens the VM'
        : step === 'undo'
          ? 'the receiver rolls back the interrupted cycle (writing back what it overwrote)'
          : `the receiver works on the VM (${step})`,
    now,
  )
}

function progressLog(
  log: Logger,
  fields: Readonly<Record<string, unknown>>,
  what: (step: string) => string,
  now: () => number,
): (p: VmProgressMessage | DiskProgressMessage | CommitProgressMessage) => void {
  const t0 = now()
  let logged = -Infinity
  let ended = false
  return (p) => {
    const t = now()
    // the start and the end are logged at once, the end only once: reports that each claim to end (1 of 1, 2 of 2, …)
    // from a peer are rate-limited like the others
    const end = p.doneBytes === p.totalBytes && !ended
    const edge = p.doneBytes === 0 || end
    if (!edge && t - logged < RECEIVER_PROGRESS_LOG_MS) return
    if (end) ended = true
    logged = t
    const elapsedS = (t - t0) / 1000
    const etaS = p.doneBytes > 0 && p.doneBytes < p.totalBytes ? Math.round((elapsedS * (p.totalBytes - p.doneBytes)) / p.doneBytes) : undefined
    log.info(
      { ...fields, step: p.step, doneBytes: p.doneBytes, totalBytes: p.totalBytes, elapsedS: Math.round(elapsedS), ...(etaS === undefined ? {} : { etaS }) },
      p.doneBytes === p.totalBytes ? `${what(p.step)}: done` : what(p.step),
    )
  }
}
