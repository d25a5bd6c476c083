/**
 * Sizes, rates and durations as operators write them (`16M`, `1.5G`,
 * `500k`, `30s`, `15m`, `7d`), parsed and printed in one place so that the
 * agent, the receiver and the CLI agree on what `0` and `10M` mean.
 */

const SIZE_UNITS: Readonly<Record<string, number>> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1024 ** 4,
  tib: 1024 ** 4,
}

/** A size or rate that is not one. */
export class UnitError extends Error {
  override readonly name = 'UnitError'
  readonly code = 'E_CONFIG'
}

/**
 * Parse a byte size: a non-negative number with an optional binary unit
 * (`k`/`KiB`/`KB` = 1024, `M` = 1024², `G`, `T`; case-insensitive), or a
 * non-negative safe integer. `0` means zero bytes; what zero means to a
 * setting (for a rate: unlimited) is the setting's business. Results are
 * rounded down to whole bytes.
 * @throws UnitError (code E_CONFIG) for anything else, naming `what`
 */
export function parseByteSize(text: string | number, what = 'size'): number {
  if (typeof text === 'number') {
    if (Number.isSafeInteger(text) && text >= 0) return text
    throw new UnitError(`${what}: ${String(text)} is not a non-negative whole number of bytes`)
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text)
  const unit = m === null ? undefined : SIZE_UNITS[(m[2] as string).toLowerCase()]
  if (m === null || unit === undefined) throw new UnitError(`${what}: ${JSON.stringify(text)} is not a size (e.g. 512k, 16M, 1.5G)`)
  const v = Math.floor(Number(m[1]) * unit)
  if (!Number.isSafeInteger(v)) throw new UnitError(`${what}: ${JSON.stringify(text)} is too large`)
  return v
}

/**
 * Parse a rate in bytes per second (`10M` = 10 MiB/s, an optional `/s`).
 * `0` means unlimited and is returned as `Infinity`.
 * @throws UnitError (code E_CONFIG)
 */
export function parseRate(text: string | number, what = 'rate'): number {
  const v = parseByteSize(typeof text === 'string' ? text.replace(/\/s$/i, '') : text, what)
  return v === 0 ? Infinity : v
}

const DURATION_UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 }

/**
 * Parse a duration (`250ms`, `30s`, `15m`, `2h`, `7d`, `4w`; several parts
 * may follow each other, `1h30m`) into milliseconds. A bare number is seconds.
 * @throws UnitError (code E_CONFIG)
 */
export function parseDuration(text: string | number, what = 'duration'): number {
  if (typeof text === 'number') {
    if (Number.isFinite(text) && text >= 0) return Math.round(text * 1000)
    throw new UnitError(`${what}: ${String(text)} is not a duration`)
  }
  const s = text.trim()
  if (/^\d+(?:\.\d+)?$/.test(s)) return Math.round(Number(s) * 1000)
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/gy
  let total = 0
  let end = 0
  for (let m = re.exec(s); m !== null; m = re.exec(s)) {
    total += Number(m[1]) * (DURATION_UNITS[m[2] as string] as number)
    end = re.lastIndex
  }
  if (s === '' || end !== s.length || !Number.isSafeInteger(Math.round(total))) throw new UnitError(`${what}: ${JSON.stringify(text)} is not a duration (e.g. 30s, 15m, 2h, 7d)`)
  return Math.round(total)
}

/** Bytes for people: `45.3 MiB`, `512 B`, `1.50 GiB`. */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return String(n)
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let v = Math.abs(n)
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  const sign = n < 0 ? '-' : ''
  if (i === 0) return `${sign}${v} B`
  return `${sign}${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${units[i] as string}`
}

/** A duration for people: `850 ms`, `12.4 s`, `3 min 05 s`, `2 h 07 min`, `3 d 04 h`. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return '—'
  if (ms < 1000) return `${Math.round(ms)} ms`
  const s = ms / 1000
  if (s < 60) return `${s.toFixed(1)} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m} min ${String(Math.floor(s % 60)).padStart(2, '0')} s`
  const h = Math.floor(m / 60)
  if (h < 48) return `${h} h ${String(m % 60).padStart(2, '0')} min`
  return `${Math.floor(h / 24)} d ${String(h % 24).padStart(2, '0')} h`
}
