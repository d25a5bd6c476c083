/**
 * The job's restore-point retention request (SPEC §5.5), as an operator
 * writes it: an object `{"keep": 14, "maxAge": "30d", "maxBytes": "200G",
 * "gfs": "daily=7,weekly=4"}` in a job file, or a string
 * `keep=14,maxAge=30d,daily=7,weekly=4` on the command line. The receiver
 * applies it within the limits its operator allows and says what it applied.
 */
import { z } from 'zod'
import { parseByteSize, parseDuration, type RetentionSpec } from '@grainline/protocol'

const COUNT_KEYS = ['keep', 'hourly', 'daily', 'weekly', 'monthly'] as const
const MAX_COUNT = 1_000_000

/** Parse the command line form `keep=14,maxAge=30d,maxBytes=200G,hourly=24,daily=7,weekly=4,monthly=12` (any subset). */
export function parseRetentionText(text: string): RetentionSpec {
  const spec: Record<keyof RetentionSpec, number> = { keep: 0, maxAgeSeconds: 0, maxBytes: 0, hourly: 0, daily: 0, weekly: 0, monthly: 0 }
  const seen = new Set<string>()
  for (const part of text.split(',')) {
    const m = /^\s*([A-Za-z]+)\s*=\s*(\S+)\s*$/.exec(part)
    if (m === null) throw new Error(`${JSON.stringify(part.trim())} is not KEY=VALUE (keys: keep, maxAge, maxBytes, hourly, daily, weekly, monthly)`)
    const key = m[1] as string
    const value = m[2] as string
    if (seen.has(key)) throw new Error(`${key} given twice`)
    seen.add(key)
    if ((COUNT_KEYS as readonly string[]).includes(key)) {
      if (!/^\d{1,7}$/.test(value) || Number(value) > MAX_COUNT) throw new Error(`${key} must be a whole number 0…${MAX_COUNT}`)
      spec[key as (typeof COUNT_KEYS)[number]] = Number(value)
    } else if (key === 'maxAge') {
      spec.maxAgeSeconds = Math.ceil(parseDuration(value, 'maxAge') / 1000)
    } else if (key === 'maxBytes') {
      spec.maxBytes = parseByteSize(value, 'maxBytes')
    } else {
      throw new Error(`unknown retention key ${key} (keys: keep, maxAge, maxBytes, hourly, daily, weekly, monthly)`)
    }
  }
  if (COUNT_KEYS.every((k) => spec[k] === 0) && spec.maxAgeSeconds === 0) throw new Error('a retention request needs keep, maxAge or a GFS level (hourly, daily, weekly, monthly)')
  return spec
}

/** The object form of a job file, as the string form. */
function objectToText(o: { keep?: number | undefined; maxAge?: string | undefined; maxBytes?: string | number | undefined; gfs?: string | undefined }): string {
  const parts: string[] = []
  if (o.keep !== undefined) parts.push(`keep=${o.keep}`)
  if (o.maxAge !== undefined) parts.push(`maxAge=${o.maxAge}`)
  if (o.maxBytes !== undefined) parts.push(`maxBytes=${o.maxBytes}`)
  if (o.gfs !== undefined) parts.push(o.gfs)
  return parts.join(',')
}

/** The zod field of `retention` (both forms), giving the wire spec. */
export function retentionField() {
  return z
    .union([
      z.string().min(1),
      z.strictObject({
        keep: z.int().min(0).max(MAX_COUNT).optional(),
        maxAge: z.string().min(1).optional(),
        maxBytes: z.union([z.string().min(1), z.int().min(0)]).optional(),
        gfs: z.string().min(1).optional(),
      }),
    ])
    .transform((v, ctx) => {
      try {
        return parseRetentionText(typeof v === 'string' ? v : objectToText(v))
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message })
        return z.NEVER
      }
    })
}
