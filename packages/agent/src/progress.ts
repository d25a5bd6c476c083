/**
 * Progress of a replication: totals are known before the first extent (the
 * plan), so rate and ETA are exact. On a terminal a single refreshed line per
 * VM; otherwise structured pino logs at a slow cadence.
 */
import type { Logger } from 'pino'
import { formatBytes } from '@grainline/protocol'

/** One progress sample of a disk. */
export interface ProgressEvent {
  readonly vm: string
  readonly disk: string
  readonly phase: 'plan' | 'send' | 'end' | 'commit' | 'check' | 'done'
  /** bytes of the virtual disk covered by sent extents (data + zero) */
  readonly doneBytes: number
  readonly totalBytes: number
  /** payload bytes handed to the socket (after compression) */
  readonly wireBytes: number
  /** covered bytes per second, averaged over the last seconds */
  readonly rate: number
  /** seconds left at the current rate; undefined while unknown */
  readonly etaSeconds: number | undefined
}

/** Where progress goes. */
export type ProgressSink = (ev: ProgressEvent) => void

/** Tracks one disk's progress with a sliding-window rate. */
export class DiskProgress {
  readonly vm: string
  readonly disk: string
  totalBytes = 0
  doneBytes = 0
  wireBytes = 0
  readonly #samples: Array<{ t: number, bytes: number }> = []
  readonly #sink: ProgressSink
  #lastEmit = 0
  readonly #intervalMs: number

  constructor (vm: string, disk: string, sink: ProgressSink, intervalMs = 250) {
    this.vm = vm
    this.disk = disk
    this.#sink = sink
    this.#intervalMs = intervalMs
  }

  /** Record progress; emits at most every `intervalMs` unless `force`. */
  update (phase: ProgressEvent['phase'], force = false): void {
    const t = performance.now()
    this.#samples.push({ t, bytes: this.doneBytes })
    while (this.#samples.length > 2 && t - (this.#samples[0] as { t: number }).t > 5000) this.#samples.shift()
    if (!force && t - this.#lastEmit < this.#intervalMs) return
    this.#lastEmit = t
    const first = this.#samples[0] as { t: number, bytes: number }
    const dt = (t - first.t) / 1000
    const rate = dt > 0.05 ? (this.doneBytes - first.bytes) / dt : 0
    const left = this.totalBytes - this.doneBytes
    this.#sink({
      vm: this.vm,
      disk: this.disk,
      phase,
      doneBytes: this.doneBytes,
      totalBytes: this.totalBytes,
      wireBytes: this.wireBytes,
      rate,
      etaSeconds: left <= 0 ? 0 : rate > 0 ? left / rate : undefined,
    })
  }
}

function formatEta (s: number | undefined): string {
  if (s === undefined || !Number.isFinite(s)) return '--:--'
  const m = Math.floor(s / 60)
  return m >= 60 ? `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m` : `${m}:${String(Math.floor(s % 60)).padStart(2, '0')}`
}

/** A terminal progress line (`\r`-refreshed) on `stream`. */
export function ttyProgressSink (stream: NodeJS.WriteStream): ProgressSink {
  return (ev) => {
    const pct = ev.totalBytes > 0 ? (100 * ev.doneBytes / ev.totalBytes).toFixed(1) : '100.0'
    const line = `${ev.vm} ${ev.disk}: ${ev.phase} ${formatBytes(ev.doneBytes)}/${formatBytes(ev.totalBytes)} ${pct}% ${formatBytes(ev.rate)}/s ETA ${formatEta(ev.etaSeconds)}`
    const cols = stream.columns ?? 120
    stream.write('\r' + line.slice(0, cols - 1).padEnd(cols - 1) + (ev.phase === 'done' ? '\n' : ''))
  }
}

/** pino progress logs, at most one per disk every `everyMs`, plus phase changes. */
export function logProgressSink (logger: Logger, everyMs = 5000): ProgressSink {
  const last = new Map<string, { t: number, phase: string }>()
  return (ev) => {
    const key = `${ev.vm}\0${ev.disk}`
    const prev = last.get(key)
    const t = performance.now()
    if (prev !== undefined && prev.phase === ev.phase && t - prev.t < everyMs) return
    last.set(key, { t, phase: ev.phase })
    logger.info({ vm: ev.vm, disk: ev.disk, phase: ev.phase, doneBytes: ev.doneBytes, totalBytes: ev.totalBytes, wireBytes: ev.wireBytes, rate: Math.round(ev.rate), etaSeconds: ev.etaSeconds === undefined ? null : Math.round(ev.etaSeconds) }, 'progress')
  }
}
