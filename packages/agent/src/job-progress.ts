/**
 * The progress of a whole job: every disk in flight, the totals, the job's
 * rate and ETA. Per-disk samples (`ProgressEvent`, exact totals from each
 * disk's plan) come in from concurrent VM cycles; a view (a redrawn block on
 * a terminal, or pino lines) shows the state. VMs that have not planned yet
 * count with the mean size of those that have, and the ETA says it is an
 * estimate (`~`) until every VM has planned.
 */
import type { ProgressEvent } from './progress.ts'
import type { VmReport } from './report.ts'

/** One disk as shown. */
export interface DiskProgressState {
  readonly vm: string
  readonly disk: string
  readonly phase: ProgressEvent['phase']
  readonly doneBytes: number
  readonly totalBytes: number
  readonly wireBytes: number
  readonly rate: number
  readonly etaSeconds: number | undefined
  /** what the disk's ETA follows, when not its covered bytes (progress.ts: a seed that skips holes) */
  readonly workDoneBytes?: number
  readonly workTotalBytes?: number
}

/**
 * The bytes the ETA follows for a disk: those it reads (a seed that skips
 * holes; until counted, the bytes it has left to cover bound what it has
 * left to read), else those it covers.
 */
export function etaMeasure(d: DiskProgressState): { done: number; total: number } {
  if (d.workDoneBytes === undefined) return { done: d.doneBytes, total: d.totalBytes }
  return { done: d.workDoneBytes, total: d.workTotalBytes ?? d.workDoneBytes + Math.max(0, d.totalBytes - d.doneBytes) }
}

/** A VM being replicated. */
export interface RunningVm {
  readonly index: number
  /** the VM name once known, else what the job named */
  readonly name: string
  /** its disks, in .vmx order, once planned */
  readonly disks: readonly DiskProgressState[]
}

/** What a view shows. */
export interface JobProgressState {
  readonly vmsTotal: number
  readonly vmsDone: number
  readonly vmsFailed: number
  readonly running: readonly RunningVm[]
  /** bytes covered by all VMs so far (finished VMs count whole) */
  readonly doneBytes: number
  /** planned bytes, plus an estimate for VMs not planned yet */
  readonly totalBytes: number
  /** some VMs have not planned yet: `totalBytes` and the ETA are estimates */
  readonly estimated: boolean
  /** covered bytes per second over the job's last seconds */
  readonly rate: number
  /** seconds left for the job; undefined while unknown */
  readonly etaSeconds: number | undefined
  readonly elapsedMs: number
}

/** Something that shows the job's progress. */
export interface ProgressView {
  /** the state changed (views throttle their own output) */
  update(state: JobProgressState): void
  /** a VM finished (its result is final) */
  vmFinished(vm: VmReport, state: JobProgressState): void
  /** the job ended: leave the terminal clean */
  close(state: JobProgressState): void
}

interface VmTrack {
  name: string
  started: boolean
  finished: boolean
  planned: boolean
  disks: Map<string, DiskProgressState>
  /** bytes counted once the VM finished */
  finalDone: number
  finalTotal: number
  /** the ETA's measure once the VM finished (done = total) */
  finalEta: number
}

/** What to call a VM before its own name is known: a .vmx path by its file name. */
function shortName(ref: string): string {
  return /\.vmx$/i.test(ref) ? (ref.split('/').pop() ?? ref).replace(/\.vmx$/i, '') : ref
}

/** The job rate is measured over this window. */
const RATE_WINDOW_MS = 10_000

/** Aggregates the per-disk progress of a job's VMs and feeds a view. */
export class JobProgress {
  readonly #vms: VmTrack[]
  readonly #view: ProgressView
  readonly #now: () => number
  readonly #t0: number
  readonly #samples: Array<{ t: number; done: number; eta: number }> = []
  #failed = 0
  #closed = false

  /** @param names what the job names each VM (shown until the VM's own name is known) */
  constructor(names: readonly string[], view: ProgressView, now: () => number = () => performance.now()) {
    this.#vms = names.map((n) => ({ name: shortName(n), started: false, finished: false, planned: false, disks: new Map(), finalDone: 0, finalTotal: 0, finalEta: 0 }))
    this.#view = view
    this.#now = now
    this.#t0 = now()
  }

  #vm(index: number): VmTrack {
    const v = this.#vms[index]
    if (v === undefined) throw new RangeError(`no VM ${index} in this job`)
    return v
  }

  /** VM `index` started. */
  vmStarted(index: number): void {
    this.#vm(index).started = true
    this.#emit()
  }

  /** A disk's progress sample of VM `index`. */
  event(index: number, ev: ProgressEvent): void {
    const v = this.#vm(index)
    if (v.finished) return
    v.name = ev.vm
    v.disks.set(ev.disk, {
      vm: ev.vm,
      disk: ev.disk,
      phase: ev.phase,
      doneBytes: ev.doneBytes,
      totalBytes: ev.totalBytes,
      wireBytes: ev.wireBytes,
      rate: ev.rate,
      etaSeconds: ev.etaSeconds,
      ...(ev.workDoneBytes === undefined ? {} : { workDoneBytes: ev.workDoneBytes }),
      ...(ev.workTotalBytes === undefined ? {} : { workTotalBytes: ev.workTotalBytes }),
    })
    // the cycle plans every disk before its first extent: any sample past 'plan' means the VM's total is known
    if (ev.phase !== 'plan') v.planned = true
    this.#emit()
  }

  /** VM `index` finished with `report`. */
  vmFinished(index: number, report: VmReport): void {
    const v = this.#vm(index)
    v.finished = true
    v.started = true
    v.name = report.vm
    if (!report.ok) this.#failed++
    const covered = [...v.disks.values()].reduce((s, d) => s + d.doneBytes, 0)
    // a failed VM's remaining bytes will not be sent: it counts as what it covered
    v.finalDone = report.ok
      ? Math.max(
          covered,
          report.disks.reduce((s, d) => s + d.dataBytes + d.zeroBytes, 0),
        )
      : covered
    v.finalTotal = v.finalDone
    // its part of the ETA's measure stays what it was planned as (done = total): the job's rate does not drop
    v.finalEta = [...v.disks.values()].reduce((s, d) => s + (report.ok ? etaMeasure(d).total : etaMeasure(d).done), 0)
    v.planned = true
    const state = this.#state()
    this.#view.vmFinished(report, state)
    this.#view.update(state)
  }

  /** The job ended. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    this.#view.close(this.#state())
  }

  /** The current state. */
  state(): JobProgressState {
    return this.#state()
  }

  #emit(): void {
    if (!this.#closed) this.#view.update(this.#state())
  }

  #state(): JobProgressState {
    const t = this.#now()
    let done = 0
    let planned = 0
    let plannedVms = 0
    // the ETA's measure (etaMeasure): bytes read where a disk says so, else bytes covered
    let etaDone = 0
    let etaPlanned = 0
    const running: RunningVm[] = []
    for (const [index, v] of this.#vms.entries()) {
      if (v.finished) {
        done += v.finalDone
        planned += v.finalTotal
        etaDone += v.finalEta
        etaPlanned += v.finalEta
        plannedVms++
        continue
      }
      const disks = [...v.disks.values()]
      for (const d of disks) {
        done += d.doneBytes
        etaDone += etaMeasure(d).done
      }
      if (v.planned) {
        for (const d of disks) {
          planned += d.totalBytes
          etaPlanned += etaMeasure(d).total
        }
        plannedVms++
      }
      if (v.started) running.push({ index, name: v.name, disks })
    }
    const unplanned = this.#vms.length - plannedVms
    const mean = plannedVms > 0 ? planned / plannedVms : 0
    const total = planned + unplanned * mean
    const etaTotal = etaPlanned + unplanned * (plannedVms > 0 ? etaPlanned / plannedVms : 0)
    const last = this.#samples[this.#samples.length - 1]
    if (last === undefined || last.done !== done || last.eta !== etaDone || t - last.t > 1000) this.#samples.push({ t, done, eta: etaDone })
    while (this.#samples.length > 2 && t - (this.#samples[0] as { t: number }).t > RATE_WINDOW_MS) this.#samples.shift()
    const first = this.#samples[0] as { t: number; done: number; eta: number }
    const dt = (t - first.t) / 1000
    const rate = dt > 0.2 ? Math.max(0, (done - first.done) / dt) : 0
    const etaRate = dt > 0.2 ? Math.max(0, (etaDone - first.eta) / dt) : 0
    const left = Math.max(0, total - done)
    const etaLeft = Math.max(0, etaTotal - etaDone)
    const vmsDone = this.#vms.filter((v) => v.finished).length
    return {
      vmsTotal: this.#vms.length,
      vmsDone,
      vmsFailed: this.#failed,
      running,
      doneBytes: done,
      totalBytes: total,
      estimated: unplanned > 0,
      rate,
      etaSeconds: vmsDone === this.#vms.length || ((left === 0 || etaLeft === 0) && unplanned === 0) ? 0 : etaRate > 0 && plannedVms > 0 ? etaLeft / etaRate : undefined,
      elapsedMs: t - this.#t0,
    }
  }
}
