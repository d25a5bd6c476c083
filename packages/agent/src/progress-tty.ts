/**
 * The progress display on a terminal: one line per disk in flight (VM, disk,
 * bar, percent, rate, ETA) and a line for the whole job, redrawn in place,
 * every line fitted to the terminal's width (the bar shrinks first, then the
 * names; rate and ETA go only on very narrow terminals). A finished VM leaves
 * one permanent line above the live block. Log lines written while the block
 * is shown go through `print()`, so nothing is drawn over.
 *
 * Layout (`progressLines`) is pure and tested at any width; the view owns the
 * cursor.
 */
import { formatBytes, formatDuration } from '@grainline/protocol'
import type { DiskProgressState, JobProgressState, ProgressView } from './job-progress.ts'
import type { VmReport } from './report.ts'

/** Width used when the terminal reports none (0 or undefined columns, e.g. a pty nobody sized). */
export const FALLBACK_COLUMNS = 80

const MIN_BAR = 8
/** a wider bar says nothing more */
const MAX_BAR = 42
/** the bar keeps this many columns before names are cut */
const PREFERRED_BAR = 12
/** below this many columns for the names, the rate goes (then the ETA) */
const MIN_NAME = 16

/** `m:ss`, `h:mm:ss` up to 99 hours, else `>4d`. */
export function formatEta(s: number | undefined): string {
  if (s === undefined || !Number.isFinite(s) || s < 0) return '--:--'
  const total = Math.round(s)
  const h = Math.floor(total / 3600)
  const m = Math.floor((total % 3600) / 60)
  const sec = String(total % 60).padStart(2, '0')
  if (h >= 100) return `>${Math.floor(h / 24)}d`
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`
}

/** Cut `s` to `n` columns with an ellipsis. */
export function truncate(s: string, n: number): string {
  if (n <= 0) return ''
  if (s.length <= n) return s
  return n === 1 ? '…' : s.slice(0, n - 1) + '…'
}

function bar(fraction: number, width: number): string {
  const inner = width - 2
  const f = Math.min(1, Math.max(0, fraction))
  const full = Math.floor(f * inner)
  return '[' + '#'.repeat(full) + '-'.repeat(inner - full) + ']'
}

const PHASE_WORDS: Readonly<Record<string, string>> = { plan: 'queued', end: 'sealing', commit: 'committing', check: 'checking', done: 'done' }

/** One row to lay out: a name, a fraction, and the right-hand fields. */
interface Row {
  readonly name: string
  readonly vm?: string
  readonly fraction: number
  readonly pct: string
  readonly rate: string
  readonly eta: string
}

/** A disk's name beside its VM's: `web 01.vmdk` under `web 01` reads `….vmdk` (the VM name is already on the line). */
export function diskLabel(vm: string, disk: string): string {
  return disk.startsWith(vm) && disk.length > vm.length ? `…${disk.slice(vm.length)}` : disk
}

function rowOfDisk(d: DiskProgressState): Row {
  const fraction = d.totalBytes > 0 ? d.doneBytes / d.totalBytes : 1
  const busy = d.phase === 'send'
  return {
    name: diskLabel(d.vm, d.disk),
    vm: d.vm,
    fraction,
    pct: `${Math.floor(fraction * 100)}%`,
    rate: busy ? `${formatBytes(d.rate)}/s` : '',
    eta: busy ? `ETA ${formatEta(d.etaSeconds)}` : (PHASE_WORDS[d.phase] ?? d.phase),
  }
}

/** Terminals at least this wide also show the job's bytes on its line. */
const JOB_BYTES_COLUMNS = 100

function rowOfJob(s: JobProgressState, width: number): Row {
  const fraction = s.totalBytes > 0 ? s.doneBytes / s.totalBytes : s.vmsDone === s.vmsTotal ? 1 : 0
  const approx = s.estimated ? '~' : ''
  const bytes = width >= JOB_BYTES_COLUMNS ? `, ${formatBytes(s.doneBytes)} of ${approx}${formatBytes(s.totalBytes)}` : ''
  return {
    name: `job ${s.vmsDone}/${s.vmsTotal} VMs${s.vmsFailed > 0 ? `, ${s.vmsFailed} failed` : ''}${bytes}`,
    fraction,
    pct: `${Math.floor(fraction * 100)}%`,
    rate: `${formatBytes(s.rate)}/s`,
    eta: `ETA ${approx}${formatEta(s.etaSeconds)}`,
  }
}

/**
 * Lay out the block: one line per disk in flight, one per VM still preparing
 * (connecting, snapshot), then the job line. Every line is at most
 * `columns - 1` characters (never the last column: no auto-wrap);
 * `columns` of 0 or undefined means {@link FALLBACK_COLUMNS}.
 */
export function progressLines(state: JobProgressState, columns: number | undefined): string[] {
  const width = (columns !== undefined && columns > 0 ? columns : FALLBACK_COLUMNS) - 1
  const rows: Row[] = []
  for (const vm of state.running) {
    const live = vm.disks.filter((d) => d.phase !== 'plan' && d.phase !== 'done')
    if (live.length === 0) {
      const planned = vm.disks.length > 0
      rows.push({ name: vm.name, fraction: 0, pct: '', rate: '', eta: planned ? 'waiting' : 'preparing' })
      continue
    }
    for (const d of live) rows.push(rowOfDisk(d))
  }
  rows.push(rowOfJob(state, width + 1))
  // common column widths, so the bars line up
  const pctW = Math.max(...rows.map((r) => r.pct.length))
  const rateW = Math.max(...rows.map((r) => r.rate.length))
  const etaW = Math.max(...rows.map((r) => r.eta.length))
  const names = rows.map((r) => (r.vm === undefined ? r.name : `${r.vm} ${r.name}`))
  const nameMax = Math.max(...names.map((n) => n.length))
  // what fits: drop the bar first, then the rate, then the ETA
  const layouts = [
    { bar: true, rate: true, eta: true },
    { bar: false, rate: true, eta: true },
    { bar: false, rate: false, eta: true },
    { bar: false, rate: false, eta: false },
  ]
  for (const l of layouts) {
    const right = pctW + (l.rate && rateW > 0 ? rateW + 2 : 0) + (l.eta && etaW > 0 ? etaW + 2 : 0)
    const avail = width - right - 1
    // the names as long as they are, while the bar keeps PREFERRED_BAR columns
    const nameW = Math.min(nameMax, l.bar ? Math.max(MIN_NAME, avail - 1 - PREFERRED_BAR) : avail)
    const barW = l.bar ? Math.min(MAX_BAR, avail - nameW - 1) : 0
    if (l.bar && barW < MIN_BAR) continue
    if (nameW < MIN_NAME && l !== layouts[layouts.length - 1]) continue
    return rows.map((r, i) => {
      let name = names[i] as string
      if (name.length > nameW && r.vm !== undefined) {
        // keep both: cut the VM name to at most half, the disk name gets the rest
        const vmW = Math.max(1, Math.min(r.vm.length, Math.max(Math.floor(nameW / 2), nameW - r.name.length - 1)))
        name = `${truncate(r.vm, vmW)} ${truncate(r.name, nameW - vmW - 1)}`
      }
      let line = truncate(name, nameW).padEnd(nameW)
      if (l.bar) line += ' ' + (r.pct === '' ? ' '.repeat(barW) : bar(r.fraction, barW))
      line += ' ' + r.pct.padStart(pctW)
      if (l.rate && rateW > 0) line += '  ' + r.rate.padStart(rateW)
      if (l.eta && etaW > 0) line += '  ' + r.eta.padEnd(etaW)
      return truncate(line.trimEnd(), width)
    })
  }
  return rows.map((_r, i) => truncate(names[i] as string, width))
}

/** The permanent line of a finished VM. */
export function vmResultLine(vm: VmReport, columns: number | undefined): string {
  const width = (columns !== undefined && columns > 0 ? columns : FALLBACK_COLUMNS) - 1
  const changed = vm.disks.reduce((s, d) => s + d.dataBytes + d.zeroBytes, 0)
  const sent = vm.disks.reduce((s, d) => s + d.wireBytes, 0)
  const kinds = [...new Set(vm.disks.map((d) => d.mode))].filter((m) => m !== 'none').join('+')
  const text = vm.ok
    ? `ok    ${vm.vm}: cycle ${vm.cycle} ${kinds}, ${formatBytes(changed)} covered, ${formatBytes(sent)} sent, ${formatDuration(vm.durationMs)}`
    : `FAIL  ${vm.vm}${vm.cycle > 0 ? `: cycle ${vm.cycle}` : ''}: ${vm.error?.code ?? vm.disks.find((d) => d.error !== undefined)?.error?.code ?? 'failed'} ${vm.error?.message ?? vm.disks.find((d) => d.error !== undefined)?.error?.message ?? ''}`.trimEnd()
  return truncate(text, width)
}

const ESC = '\u001b['

/** Options of {@link TtyProgressView}. */
export interface TtyProgressViewInit {
  /** least time between two redraws, ms (a VM finishing always redraws). @default 100 */
  readonly minIntervalMs?: number
  /** @default performance.now */
  readonly now?: () => number
}

/** The progress block on a terminal stream (normally stderr). */
export class TtyProgressView implements ProgressView {
  readonly #stream: NodeJS.WritableStream & { columns?: number }
  readonly #minInterval: number
  readonly #now: () => number
  /** lines of the live block currently on the screen */
  #shown = 0
  #last: JobProgressState | undefined
  #lastDraw = -Infinity
  #closed = false

  constructor(stream: NodeJS.WritableStream & { columns?: number }, init: TtyProgressViewInit = {}) {
    this.#stream = stream
    this.#minInterval = init.minIntervalMs ?? 100
    this.#now = init.now ?? (() => performance.now())
  }

  /** Move to the top of the live block and erase it (as a string to write). */
  #erase(): string {
    if (this.#shown === 0) return ''
    const s = `\r${ESC}${this.#shown}A${ESC}J`
    this.#shown = 0
    return s
  }

  #block(state: JobProgressState): string {
    const lines = progressLines(state, this.#stream.columns)
    this.#shown = lines.length
    return lines.map((l) => `${ESC}2K${l}\n`).join('')
  }

  update(state: JobProgressState): void {
    this.#last = state
    if (this.#closed) return
    const t = this.#now()
    if (t - this.#lastDraw < this.#minInterval) return
    this.#lastDraw = t
    this.#stream.write(this.#erase() + this.#block(state))
  }

  vmFinished(vm: VmReport, state: JobProgressState): void {
    this.#last = state
    if (this.#closed) return
    this.#lastDraw = this.#now()
    this.#stream.write(this.#erase() + vmResultLine(vm, this.#stream.columns) + '\n' + this.#block(state))
  }

  /** Write `text` above the live block (log lines, messages). */
  print(text: string): void {
    const body = text.endsWith('\n') ? text : text + '\n'
    if (this.#closed || this.#last === undefined) {
      this.#stream.write(body)
      return
    }
    this.#stream.write(this.#erase() + body + this.#block(this.#last))
  }

  close(state: JobProgressState): void {
    if (this.#closed) return
    this.#closed = true
    this.#last = state
    // the live block goes; the permanent lines of finished VMs stay
    this.#stream.write(this.#erase())
  }
}
