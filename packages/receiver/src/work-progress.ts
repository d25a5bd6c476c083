/**
 * Long store work that a request waits on before its answer — a capacity
 * change's base copy (DiskOpen), the merges of dropped restore points
 * (Commit, or a VmOpen that finishes an interrupted commit), an undo
 * (Rollback): how it is heard (bytes done of the total) and how it is logged
 * for the operator (when it starts, when it ends and every 30 s between,
 * with an ETA), so that a cycle that waits says why.
 */
import type { Logger } from 'pino'

/** A listener for long store work: bytes done of the total (SPEC §4.2 VmProgress, §5.1 DiskProgress, §5.5 CommitProgress). */
export type WorkProgress = (doneBytes: number, totalBytes: number) => void

/** How often long work is logged between its first and last report, ms. */
export const WORK_PROGRESS_LOG_MS = 30_000

/**
 * A WorkProgress that logs at info level with `fields`: `running` at the
 * start and every WORK_PROGRESS_LOG_MS, `done` at the end, each with the
 * bytes done, the total, the seconds elapsed and, between, an ETA.
 */
export function workProgressLog(log: Logger, fields: Readonly<Record<string, unknown>>, running: string, done: string, now: () => number = () => performance.now()): WorkProgress {
  const t0 = now()
  let logged = -Infinity
  return (doneBytes, totalBytes) => {
    const t = now()
    if (doneBytes !== 0 && doneBytes !== totalBytes && t - logged < WORK_PROGRESS_LOG_MS) return
    logged = t
    const elapsedS = (t - t0) / 1000
    const etaS = doneBytes > 0 && doneBytes < totalBytes ? Math.round((elapsedS * (totalBytes - doneBytes)) / doneBytes) : undefined
    log.info({ ...fields, doneBytes, totalBytes, elapsedS: Math.round(elapsedS), ...(etaS === undefined ? {} : { etaS }) }, doneBytes === totalBytes ? done : running)
  }
}

/** `logged`, and `more` too when there is one. */
export function alsoTo(logged: WorkProgress, more: WorkProgress | undefined): WorkProgress {
  return more === undefined
    ? logged
    : (doneBytes, totalBytes) => {
        logged(doneBytes, totalBytes)
        more(doneBytes, totalBytes)
      }
}
