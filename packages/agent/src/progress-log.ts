/**
 * Progress when stderr is not a terminal (a systemd unit, cron, a pipe):
 * pino lines, never terminal control characters. Per disk at most one line
 * every `diskEveryMs` plus every phase change; the job's totals and ETA at
 * most every `jobEveryMs`; one line per finished VM.
 */
import type { Logger } from 'pino'
import type { JobProgressState, ProgressView } from './job-progress.ts'
import type { VmReport } from './report.ts'

/** Options of {@link LogProgressView}. */
export interface LogProgressViewInit {
  /** @default 5000 */
  readonly diskEveryMs?: number
  /** @default 10000 */
  readonly jobEveryMs?: number
  /** @default performance.now */
  readonly now?: () => number
}

const round = (n: number | undefined): number | null => (n === undefined || !Number.isFinite(n) ? null : Math.round(n))

/** Progress as structured log lines. */
export class LogProgressView implements ProgressView {
  readonly #log: Logger
  readonly #diskEvery: number
  readonly #jobEvery: number
  readonly #now: () => number
  readonly #disks = new Map<string, { t: number; phase: string }>()
  #jobAt = -Infinity

  constructor(logger: Logger, init: LogProgressViewInit = {}) {
    this.#log = logger
    this.#diskEvery = init.diskEveryMs ?? 5000
    this.#jobEvery = init.jobEveryMs ?? 10_000
    this.#now = init.now ?? (() => performance.now())
  }

  update(state: JobProgressState): void {
    const t = this.#now()
    for (const vm of state.running) {
      for (const d of vm.disks) {
        const key = `${vm.index}\0${d.disk}`
        const prev = this.#disks.get(key)
        if (prev !== undefined && prev.phase === d.phase && t - prev.t < this.#diskEvery) continue
        if (prev === undefined && d.phase === 'plan') {
          this.#disks.set(key, { t, phase: d.phase })
          continue
        }
        this.#disks.set(key, { t, phase: d.phase })
        this.#log.info(
          {
            vm: d.vm,
            disk: d.disk,
            phase: d.phase,
            doneBytes: d.doneBytes,
            totalBytes: d.totalBytes,
            wireBytes: d.wireBytes,
            rate: round(d.rate),
            etaSeconds: round(d.etaSeconds),
            // a seed that skips holes: the bytes it reads, which its ETA follows
            ...(d.workDoneBytes === undefined ? {} : { readBytes: d.workDoneBytes, ...(d.workTotalBytes === undefined ? {} : { readTotalBytes: d.workTotalBytes }) }),
          },
          'progress',
        )
      }
    }
    if (t - this.#jobAt >= this.#jobEvery) {
      this.#jobAt = t
      this.#job(state)
    }
  }

  #job(state: JobProgressState): void {
    this.#log.info(
      {
        vmsDone: state.vmsDone,
        vmsTotal: state.vmsTotal,
        vmsFailed: state.vmsFailed,
        vmsRunning: state.running.length,
        doneBytes: state.doneBytes,
        totalBytes: Math.round(state.totalBytes),
        estimated: state.estimated,
        rate: round(state.rate),
        etaSeconds: round(state.etaSeconds),
      },
      'job progress',
    )
  }

  vmFinished(vm: VmReport, _state: JobProgressState): void {
    this.#log.info({ vm: vm.vm, ok: vm.ok, cycle: vm.cycle, durationMs: vm.durationMs, ...(vm.error === undefined ? {} : { code: vm.error.code }) }, vm.ok ? 'VM replicated' : 'VM failed')
  }

  close(state: JobProgressState): void {
    this.#job(state)
  }
}
