/**
 * A bandwidth timetable: a different `bwlimit` by time of day and weekday,
 * in the form operators know from rclone's `--bwlimit`:
 *
 *     "08:00,512k 12:00,10M 13:00,512k 18:00,30M 23:00,off"
 *     "Mon-08:00,2M Fri-18:00,off"
 *     "20M"                      (a constant, as before)
 *
 * Each entry is `[Day-]HH:MM,RATE` (RATE as `--bwlimit`: `500k`, `20M`, `0`
 * or `off` = unlimited). Entries without a day repeat every day; with a day
 * (`Mon` … `Sun`) the timetable is weekly, and every entry must name its day.
 * The rate in force is the one of the latest entry at or before now, wrapping
 * round: before the first entry of the day (or week) the last one applies.
 * Times are the proxy's local time (`TZ` sets it).
 *
 * Pure: parsing and lookups take the time as an argument.
 */
import { parseRate } from '@grainline/protocol'

/** Day names as `Date.getDay()` numbers them. */
const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] as const
const WEEK_MINUTES = 7 * 24 * 60
const DAY_MINUTES = 24 * 60

/** One timetable entry. */
export interface RateScheduleEntry {
  /** minute of the day (daily) or of the week from Sunday 00:00 (weekly) */
  readonly minute: number
  /** bytes per second; Infinity = unlimited */
  readonly rate: number
}

/** A parsed timetable, entries sorted by minute. */
export interface RateSchedule {
  readonly kind: 'daily' | 'weekly'
  readonly entries: readonly RateScheduleEntry[]
  /** the text it was parsed from, for logs and reports */
  readonly text: string
}

/** Most entries a timetable may have (one an hour for a week is 168). */
export const MAX_SCHEDULE_ENTRIES = 256

/** A bandwidth limit: a constant rate (bytes/s, Infinity = unlimited) or a timetable. */
export type Bandwidth = number | RateSchedule

/** Thrown for a malformed limit; its message names the value and the entry. */
export class RateScheduleError extends Error {
  readonly code = 'E_CONFIG'
}

/** True when `text` looks like a timetable rather than a single rate. */
export function isTimetable(text: string): boolean {
  return /\d:\d\d/.test(text)
}

/**
 * Parse a `bwlimit` value: a number or a single rate is a constant, a
 * timetable a {@link RateSchedule}.
 * @throws RateScheduleError naming the bad entry
 */
export function parseBandwidth(value: string | number, what = 'bwlimit'): Bandwidth {
  if (typeof value === 'number' || !isTimetable(value)) {
    try {
      return rateOrOff(value)
    } catch {
      throw new RateScheduleError(`${what}: ${JSON.stringify(value)} is not a rate (e.g. 500k, 20M, off) or a timetable (e.g. "08:00,512k 18:00,off")`)
    }
  }
  const parts = value.trim().split(/\s+/)
  if (parts.length > MAX_SCHEDULE_ENTRIES) throw new RateScheduleError(`${what}: ${parts.length} timetable entries; at most ${MAX_SCHEDULE_ENTRIES}`)
  const entries: RateScheduleEntry[] = []
  const seen = new Set<number>()
  let weekly: boolean | undefined
  for (const part of parts) {
    const m = /^(?:([A-Za-z]{3})-)?(\d{1,2}):(\d{2}),(.+)$/.exec(part)
    if (m === null) throw new RateScheduleError(`${what}: timetable entry ${JSON.stringify(part)} is not [Day-]HH:MM,RATE (e.g. 08:00,512k or Mon-08:00,2M)`)
    const [, dayText, hh, mm, rateText] = m as unknown as [string, string | undefined, string, string, string]
    const hour = Number(hh)
    const min = Number(mm)
    if (hour > 23 || min > 59) throw new RateScheduleError(`${what}: ${JSON.stringify(part)}: ${hh}:${mm} is not a time of day (00:00 … 23:59)`)
    let rate: number
    try {
      rate = rateOrOff(rateText)
    } catch {
      throw new RateScheduleError(`${what}: ${JSON.stringify(part)}: ${JSON.stringify(rateText)} is not a rate (e.g. 500k, 20M, off)`)
    }
    const isWeekly = dayText !== undefined
    if (weekly !== undefined && weekly !== isWeekly)
      throw new RateScheduleError(`${what}: mix of entries with and without a day (${JSON.stringify(part)}): give every entry a day (Mon-08:00,…) or none`)
    weekly = isWeekly
    let minute = hour * 60 + min
    if (dayText !== undefined) {
      const day = DAYS.indexOf(dayText.toLowerCase() as (typeof DAYS)[number])
      if (day < 0) throw new RateScheduleError(`${what}: ${JSON.stringify(part)}: ${JSON.stringify(dayText)} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)`)
      minute += day * DAY_MINUTES
    }
    if (seen.has(minute)) throw new RateScheduleError(`${what}: two entries for the same time (${JSON.stringify(part)})`)
    seen.add(minute)
    entries.push({ minute, rate })
  }
  entries.sort((a, b) => a.minute - b.minute)
  return { kind: weekly === true ? 'weekly' : 'daily', entries, text: value.trim() }
}

function rateOrOff(v: string | number): number {
  if (typeof v === 'string' && v.trim().toLowerCase() === 'off') return Infinity
  return parseRate(v, 'bwlimit')
}

/** Minute of the day or week of `at` in local time. */
function minuteOf(s: RateSchedule, at: Date): number {
  const m = at.getHours() * 60 + at.getMinutes()
  return s.kind === 'weekly' ? at.getDay() * DAY_MINUTES + m : m
}

/** The rate in force at `at` (bytes/s; Infinity = unlimited). */
export function rateAt(b: Bandwidth, at: Date): number {
  if (typeof b === 'number') return b
  const now = minuteOf(b, at)
  let current = b.entries[b.entries.length - 1] as RateScheduleEntry
  for (const e of b.entries) if (e.minute <= now) current = e
  return current.rate
}

/** Milliseconds from `at` until the rate may next change (Infinity for a constant). */
export function msUntilChange(b: Bandwidth, at: Date): number {
  if (typeof b === 'number' || b.entries.length < 2) return Infinity
  const period = b.kind === 'weekly' ? WEEK_MINUTES : DAY_MINUTES
  const now = minuteOf(b, at)
  const next = b.entries.find((e) => e.minute > now) ?? (b.entries[0] as RateScheduleEntry)
  const minutes = (next.minute - now + period) % period || period
  return minutes * 60_000 - at.getSeconds() * 1000 - at.getMilliseconds()
}

/** The limit for logs and reports: `20 MiB/s`-style number, or the timetable's text. */
export function describeBandwidth(b: Bandwidth): string {
  if (typeof b !== 'number') return b.text
  return b === Infinity ? 'unlimited' : `${b} B/s`
}
