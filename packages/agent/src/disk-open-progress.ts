/**
 * What the agent shows while the receiver works on a DiskOpen before it
 * answers (SPEC §5.1 DiskProgress, v3): today the copy of a disk's mirror
 * into a base point when the disk changes capacity, which takes minutes on a
 * store without reflinks. Logged when it starts, when it ends and every 30 s
 * between, with the bytes done, the total and an ETA, so that the operator
 * sees why a cycle waits.
 */
import type { Logger } from 'pino'
import type { DiskProgressMessage } from '@grainline/protocol'

/** How often a long DiskOpen's progress is logged between its first and last report, ms. */
export const DISK_OPEN_PROGRESS_LOG_MS = 30_000

/** A DiskProgress listener for one DiskOpen of disk `disk` (its source name). */
export function diskOpenProgress(log: Logger, disk: string, now: () => number = () => performance.now()): (p: DiskProgressMessage) => void {
  const t0 = now()
  let logged = -Infinity
  return (p) => {
    const t = now()
    const edge = p.doneBytes === 0 || p.doneBytes === p.totalBytes
    if (!edge && t - logged < DISK_OPEN_PROGRESS_LOG_MS) return
    logged = t
    const elapsedS = (t - t0) / 1000
    const etaS = p.doneBytes > 0 && p.doneBytes < p.totalBytes ? Math.round((elapsedS * (p.totalBytes - p.doneBytes)) / p.doneBytes) : undefined
    const what = p.step === 'base-copy' ? 'the receiver copies the mirror of the disk into a restore point before it changes capacity' : `the receiver works on the disk (${p.step})`
    log.info(
      { disk, step: p.step, doneBytes: p.doneBytes, totalBytes: p.totalBytes, elapsedS: Math.round(elapsedS), ...(etaS === undefined ? {} : { etaS }) },
      p.doneBytes === p.totalBytes ? `${what}: done` : what,
    )
  }
}
