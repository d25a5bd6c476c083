/**
 * Retention of restore points: which points a policy keeps, as a pure
 * function of the points and a clock reading (tests pass a fake one).
 */
import { parseByteSize, parseDuration, type RetentionSpec } from '@grainline/protocol'
import { ReceiverError } from './errors.ts'

/** Grandfather-father-son levels: how many hourly, daily, weekly, monthly points to keep. */
export interface GfsPolicy {
  readonly hourly?: number
  readonly daily?: number
  readonly weekly?: number
  readonly monthly?: number
}

/**
 * How many restore points a VM keeps. A point is kept when it is among the
 * newest `keep` AND younger than `maxAgeMs` (a limit left out holds for
 * every point), OR when `gfs` selects it; then the oldest kept points go
 * until they take at most `maxBytes`. The mirror itself is never dropped.
 * `keep: 0` turns points off.
 */
export interface RetentionPolicy {
  /** keep the newest N points */
  readonly keep?: number
  /** keep points younger than this, ms */
  readonly maxAgeMs?: number
  /** the points of the VM may take at most this many bytes (the oldest go first) */
  readonly maxBytes?: number
  readonly gfs?: GfsPolicy
  /** a floor: the newest N points are kept whatever the other rules say (set by {@link RetentionLimits.minKeep}) */
  readonly minKeep?: number
}

/**
 * What an agent's per-job retention request may ask (receiver config
 * `retentionLimits`): the receiver raises `keep` to `minKeep` and keeps the
 * newest `minKeep` points whatever the request says (an agent cannot erase the
 * DR site's history), and lowers `keep`, every GFS level, the age and the
 * space to the ceilings (an agent cannot fill the DR site's disk). Without
 * limits the receiver ignores requests.
 */
export interface RetentionLimits {
  readonly minKeep?: number
  readonly maxKeep?: number
  readonly maxAgeMs?: number
  readonly maxBytes?: number
}

/** What retention needs of a point. */
export interface RetainedPoint {
  readonly cycle: number
  /** ISO time of the point's commit */
  readonly committedAt: string
  /** bytes its increments take */
  readonly bytes: number
}

const GFS_LEVELS = ['hourly', 'daily', 'weekly', 'monthly'] as const
type GfsLevel = (typeof GFS_LEVELS)[number]

/** The bucket of a time at a GFS level (UTC): hour, day, ISO-like week (Monday), month. */
function bucket(level: GfsLevel, ms: number): number {
  const hour = Math.floor(ms / 3_600_000)
  const day = Math.floor(ms / 86_400_000)
  if (level === 'hourly') return hour
  if (level === 'daily') return day
  // 1970-01-01 was a Thursday: shift so that weeks start on Monday
  if (level === 'weekly') return Math.floor((day + 3) / 7)
  const d = new Date(ms)
  return d.getUTCFullYear() * 12 + d.getUTCMonth()
}

/** Parse `hourly=24,daily=7,weekly=4,monthly=12` (any subset). */
export function parseGfs(text: string): GfsPolicy {
  const out: Record<string, number> = {}
  for (const part of text.split(',')) {
    const m = /^\s*(hourly|daily|weekly|monthly)\s*=\s*(\d{1,6})\s*$/.exec(part)
    if (m === null) throw new ReceiverError('E_CONFIG', `bad GFS retention ${JSON.stringify(text)}: want e.g. "hourly=24,daily=7,weekly=4,monthly=12"`)
    out[m[1] as string] = Number(m[2])
  }
  return out
}

/**
 * Read a retention policy from config JSON:
 * `{"keep": 7, "maxAge": "30d", "maxBytes": "200G", "gfs": "daily=7,weekly=4"}`.
 * @throws ReceiverError E_CONFIG
 */
export function parseRetention(json: unknown, where: string): RetentionPolicy {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new ReceiverError('E_CONFIG', `${where}: a retention policy is an object`)
  const o = json as Record<string, unknown>
  const out: { keep?: number; maxAgeMs?: number; maxBytes?: number; gfs?: GfsPolicy } = {}
  for (const k of Object.keys(o)) if (!['keep', 'maxAge', 'maxBytes', 'gfs'].includes(k)) throw new ReceiverError('E_CONFIG', `${where}: unknown retention key ${k}`)
  try {
    if (o['keep'] !== undefined) {
      if (typeof o['keep'] !== 'number' || !Number.isSafeInteger(o['keep']) || o['keep'] < 0) throw new Error('keep must be a non-negative integer')
      out.keep = o['keep']
    }
    if (o['maxAge'] !== undefined) out.maxAgeMs = parseDuration(o['maxAge'] as string, 'maxAge')
    if (o['maxBytes'] !== undefined) out.maxBytes = parseByteSize(o['maxBytes'] as string, 'maxBytes')
    if (o['gfs'] !== undefined) {
      if (typeof o['gfs'] !== 'string') throw new Error('gfs must be a string like "daily=7,weekly=4"')
      out.gfs = parseGfs(o['gfs'])
    }
  } catch (err) {
    if (err instanceof ReceiverError) throw err
    throw new ReceiverError('E_CONFIG', `${where}: ${(err as Error).message}`)
  }
  return out
}

/**
 * Read retention limits from config JSON:
 * `{"minKeep": 3, "maxKeep": 48, "maxAge": "90d", "maxBytes": "500G"}`.
 * @throws ReceiverError E_CONFIG
 */
export function parseRetentionLimits(json: unknown, where: string): RetentionLimits {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new ReceiverError('E_CONFIG', `${where}: retention limits are an object`)
  const o = json as Record<string, unknown>
  const out: { minKeep?: number; maxKeep?: number; maxAgeMs?: number; maxBytes?: number } = {}
  for (const k of Object.keys(o)) if (!['minKeep', 'maxKeep', 'maxAge', 'maxBytes'].includes(k)) throw new ReceiverError('E_CONFIG', `${where}: unknown key ${k} (minKeep, maxKeep, maxAge, maxBytes)`)
  try {
    for (const k of ['minKeep', 'maxKeep'] as const) {
      const v = o[k]
      if (v === undefined) continue
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > 1_000_000) throw new Error(`${k} must be an integer 0…1000000`)
      out[k] = v
    }
    if (o['maxAge'] !== undefined) out.maxAgeMs = parseDuration(o['maxAge'] as string, 'maxAge')
    if (o['maxBytes'] !== undefined) out.maxBytes = parseByteSize(o['maxBytes'] as string, 'maxBytes')
  } catch (err) {
    throw new ReceiverError('E_CONFIG', `${where}: ${(err as Error).message}`)
  }
  if (out.minKeep !== undefined && out.maxKeep !== undefined && out.minKeep > out.maxKeep) throw new ReceiverError('E_CONFIG', `${where}: minKeep ${out.minKeep} is above maxKeep ${out.maxKeep}`)
  return out
}

/** A wire retention request (SPEC §5.5: 0 leaves a rule out) as a policy. */
export function policyFromSpec(spec: RetentionSpec): RetentionPolicy {
  const gfs: { -readonly [L in GfsLevel]?: number } = {}
  for (const l of GFS_LEVELS) if (spec[l] > 0) gfs[l] = spec[l]
  return {
    ...(spec.keep > 0 ? { keep: spec.keep } : {}),
    ...(spec.maxAgeSeconds > 0 ? { maxAgeMs: spec.maxAgeSeconds * 1000 } : {}),
    ...(spec.maxBytes > 0 ? { maxBytes: spec.maxBytes } : {}),
    ...(Object.keys(gfs).length > 0 ? { gfs } : {}),
  }
}

/** A policy as the wire carries it (ages rounded up to seconds); null when it keeps no points. */
export function specFromPolicy(p: RetentionPolicy | undefined): RetentionSpec | null {
  if (p === undefined || !keepsPoints(p)) return null
  return {
    keep: p.keep ?? 0,
    maxAgeSeconds: p.maxAgeMs === undefined ? 0 : Math.ceil(p.maxAgeMs / 1000),
    maxBytes: p.maxBytes ?? 0,
    hourly: p.gfs?.hourly ?? 0,
    daily: p.gfs?.daily ?? 0,
    weekly: p.gfs?.weekly ?? 0,
    monthly: p.gfs?.monthly ?? 0,
  }
}

const lower = (v: number | undefined, ceiling: number | undefined): number | undefined => (ceiling === undefined ? v : Math.min(v ?? ceiling, ceiling))

/**
 * The policy a commit applies: the receiver's own for the VM, or the agent's
 * request clamped to `limits` (pure). The receiver's policy decides whether
 * the VM keeps points at all; without limits a request is ignored.
 */
export function effectiveRetention(own: RetentionPolicy | undefined, request: RetentionSpec | null, limits: RetentionLimits | undefined): RetentionPolicy | undefined {
  if (request === null || limits === undefined || !keepsPoints(own)) return own
  const asked = policyFromSpec(request)
  let keep = lower(asked.keep, limits.maxKeep)
  if (keep !== undefined && limits.minKeep !== undefined) keep = Math.max(keep, limits.minKeep)
  const maxAgeMs = lower(asked.maxAgeMs, limits.maxAgeMs)
  const maxBytes = lower(asked.maxBytes, limits.maxBytes)
  let gfs: GfsPolicy | undefined
  if (asked.gfs !== undefined) {
    const g: { -readonly [L in GfsLevel]?: number } = {}
    for (const l of GFS_LEVELS) {
      const n = asked.gfs[l]
      if (n !== undefined) g[l] = lower(n, limits.maxKeep) as number
    }
    gfs = g
  }
  return {
    ...(keep === undefined ? {} : { keep }),
    ...(maxAgeMs === undefined ? {} : { maxAgeMs }),
    ...(maxBytes === undefined ? {} : { maxBytes }),
    ...(gfs === undefined ? {} : { gfs }),
    ...(limits.minKeep === undefined || limits.minKeep === 0 ? {} : { minKeep: limits.minKeep }),
  }
}

/** Whether a policy keeps any point at all. */
export function keepsPoints(p: RetentionPolicy | undefined): boolean {
  if (p === undefined) return false
  const gfs = p.gfs !== undefined && GFS_LEVELS.some((l) => (p.gfs?.[l] ?? 0) > 0)
  return gfs || p.keep !== 0
}

/** The cycles GFS keeps: per level, the newest point of each of the newest N buckets that hold one. */
function gfsKeeps(points: readonly RetainedPoint[], gfs: GfsPolicy): Set<number> {
  const keep = new Set<number>()
  const newestFirst = [...points].sort((a, b) => b.cycle - a.cycle)
  for (const level of GFS_LEVELS) {
    const n = gfs[level] ?? 0
    const seen = new Set<number>()
    for (const p of newestFirst) {
      if (seen.size >= n) break
      const b = bucket(level, Date.parse(p.committedAt))
      if (seen.has(b)) continue
      seen.add(b)
      keep.add(p.cycle)
    }
  }
  return keep
}

/**
 * The cycles of the points a policy drops at `nowMs`, oldest first. Pure.
 * Only a GFS policy can drop a point between two kept ones. `maxAge` and
 * `maxBytes` bound the history but never drop the newest point: after a
 * pause longer than `maxAge`, or an increment larger than `maxBytes` (a
 * ransomware rewrite of the disk makes exactly that one, and it holds the
 * last good data), they would otherwise leave only the mirror. Only the count
 * rules (`keep`, GFS) can leave no point.
 */
export function pointsToDrop(points: readonly RetainedPoint[], policy: RetentionPolicy, nowMs: number): number[] {
  const sorted = [...points].sort((a, b) => a.cycle - b.cycle)
  const kept = new Set<number>()
  const gfs = policy.gfs === undefined ? undefined : gfsKeeps(sorted, policy.gfs)
  const plain = policy.gfs === undefined || policy.keep !== undefined || policy.maxAgeMs !== undefined
  sorted.forEach((p, i) => {
    const rank = sorted.length - 1 - i // 0 = newest
    const byCount = policy.keep === undefined || rank < policy.keep
    const byAge = policy.maxAgeMs === undefined || rank === 0 || nowMs - Date.parse(p.committedAt) <= policy.maxAgeMs
    if ((plain && byCount && byAge) || gfs?.has(p.cycle) === true) kept.add(p.cycle)
  })
  if (policy.maxBytes !== undefined) {
    let total = sorted.filter((p) => kept.has(p.cycle)).reduce((s, p) => s + p.bytes, 0)
    for (const p of sorted.slice(0, -1)) {
      if (total <= policy.maxBytes) break
      if (!kept.has(p.cycle)) continue
      kept.delete(p.cycle)
      total -= p.bytes
    }
  }
  if (policy.minKeep !== undefined) for (const p of sorted.slice(Math.max(0, sorted.length - policy.minKeep))) kept.add(p.cycle)
  return sorted.filter((p) => !kept.has(p.cycle)).map((p) => p.cycle)
}
