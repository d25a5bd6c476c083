/**
 * Building blocks of the settings schemas (zod): sizes, rates and durations as
 * operators write them (parsed by `@grainline/protocol`), paths relative to
 * the file that names them, files read and checked while validating, and the
 * documentation attached to each field (`doc`), from which docs/config/*.md
 * is generated.
 */
import { readFile, realpath, stat } from 'node:fs/promises'
import { isAbsolute, resolve } from 'node:path'
import { z } from 'zod'
import { parseByteSize, parseDuration, parseRate } from '@grainline/protocol'
import { parseBandwidth, type Bandwidth } from '../rate-schedule.ts'

/** What the generated reference says about a field. */
export interface FieldDoc {
  /** one or two sentences */
  readonly description: string
  /** the default, as an operator would write it */
  readonly default?: string
  /** the type in words when the schema's own is not telling (`size`, `duration`) */
  readonly type?: string
  /** an example value, as JSON */
  readonly example?: string
}

/** Attach documentation to a schema (zod's global registry; the reference generator reads it). */
export function doc<T extends z.ZodType>(schema: T, d: FieldDoc): T {
  return schema.meta({ ...d }) as T
}

/** Where relative paths of a settings source resolve (the file's folder, or the working folder for flags). */
export interface SchemaContext {
  readonly baseDir: string
}

const sizeOrNumber = z.union([z.string(), z.number()])

/** A byte size (`512k`, `16M`, `1.5G` or a number of bytes) within bounds. */
export function sizeField(opts: { min?: number; max?: number; multipleOf?: number } = {}) {
  return sizeOrNumber.transform((v, ctx) => {
    let n: number
    try {
      n = parseByteSize(v, 'size')
    } catch {
      ctx.addIssue({ code: 'custom', message: `${JSON.stringify(v)} is not a size (e.g. 512k, 16M, 1.5G)` })
      return z.NEVER
    }
    if (opts.min !== undefined && n < opts.min) {
      ctx.addIssue({ code: 'custom', message: `must be at least ${opts.min} bytes` })
      return z.NEVER
    }
    if (opts.max !== undefined && n > opts.max) {
      ctx.addIssue({ code: 'custom', message: `must be at most ${opts.max} bytes` })
      return z.NEVER
    }
    if (opts.multipleOf !== undefined && n % opts.multipleOf !== 0) {
      ctx.addIssue({ code: 'custom', message: `must be a multiple of ${opts.multipleOf} bytes` })
      return z.NEVER
    }
    return n
  })
}

/** A rate in bytes per second (`20M`, `500k/s`); `0` = unlimited (Infinity). */
export function rateField() {
  return sizeOrNumber.transform((v, ctx) => {
    try {
      return parseRate(v, 'rate')
    } catch {
      ctx.addIssue({ code: 'custom', message: `${JSON.stringify(v)} is not a rate (e.g. 500k, 20M; 0 = unlimited)` })
      return z.NEVER
    }
  })
}

/** A bandwidth limit: a rate (`20M`, `0`/`off` = unlimited) or a timetable (`"08:00,512k 18:00,off"`, rate-schedule.ts). */
export function bandwidthField() {
  return sizeOrNumber.transform((v, ctx): Bandwidth => {
    try {
      return parseBandwidth(v, 'bwlimit')
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message.replace(/^bwlimit: /, '') })
      return z.NEVER
    }
  })
}

/** A duration (`30s`, `15m`, `2h`; a bare number is seconds) in ms, within bounds. */
export function durationField(opts: { min?: number; max?: number } = {}) {
  return sizeOrNumber.transform((v, ctx) => {
    let ms: number
    try {
      ms = parseDuration(v, 'duration')
    } catch {
      ctx.addIssue({ code: 'custom', message: `${JSON.stringify(v)} is not a duration (e.g. 30s, 15m, 2h; a bare number is seconds)` })
      return z.NEVER
    }
    if (opts.min !== undefined && ms < opts.min) {
      ctx.addIssue({ code: 'custom', message: `must be at least ${opts.min} ms` })
      return z.NEVER
    }
    if (opts.max !== undefined && ms > opts.max) {
      ctx.addIssue({ code: 'custom', message: `must be at most ${opts.max} ms` })
      return z.NEVER
    }
    return ms
  })
}

/** A path; a relative one resolves against `ctx.baseDir`. */
export function pathField(ctx: SchemaContext) {
  return z
    .string()
    .min(1)
    .transform((p) => (isAbsolute(p) ? p : resolve(ctx.baseDir, p)))
}

/** A folder that exists (checked while validating). */
export function existingDirField(ctx: SchemaContext) {
  return pathField(ctx).transform(async (p, c) => {
    const st = await stat(p).catch((err: NodeJS.ErrnoException) => err)
    if (st instanceof Error) {
      c.addIssue({ code: 'custom', message: `${p}: ${st.code ?? st.message}` })
      return z.NEVER
    }
    if (!st.isDirectory()) {
      c.addIssue({ code: 'custom', message: `${p} is not a folder` })
      return z.NEVER
    }
    return p
  })
}

/**
 * An absolute path of a folder that exists (checked while validating),
 * normalized. A relative path is refused, not resolved: for folders that
 * bound what the agent may read, where the path is written must not change
 * what it means.
 */
export function absoluteDirField() {
  return z
    .string()
    .min(1)
    .transform(async (p, c) => {
      if (!isAbsolute(p)) {
        c.addIssue({ code: 'custom', message: `${JSON.stringify(p)} is not an absolute path: give the folder from / (e.g. /vmfs/volumes/ds2 or /mnt/nfs/ds2)` })
        return z.NEVER
      }
      // where the path is written must not change what it means: `/mnt/ds2/..` is `/mnt`
      if (p.split('/').includes('..')) {
        c.addIssue({ code: 'custom', message: `${JSON.stringify(p)} contains "..": give the folder without ".." (e.g. /vmfs/volumes/ds2 or /mnt/nfs/ds2)` })
        return z.NEVER
      }
      const abs = resolve(p)
      const real = abs === '/' ? abs : await realpath(abs).catch(() => abs)
      if (real === '/') {
        c.addIssue({
          code: 'custom',
          message: `${abs}${abs === '/' ? '' : ' leads to / and'} is the whole filesystem, which would let a descriptor read any file of this machine: give the folder a datastore is mounted at (e.g. /vmfs/volumes/ds2)`,
        })
        return z.NEVER
      }
      const st = await stat(abs).catch((err: NodeJS.ErrnoException) => err)
      if (st instanceof Error) {
        c.addIssue({ code: 'custom', message: st.code === 'ENOENT' ? `${abs} does not exist (is the datastore mounted?)` : `${abs}: ${st.code ?? st.message}` })
        return z.NEVER
      }
      if (!st.isDirectory()) {
        c.addIssue({ code: 'custom', message: `${abs} is not a folder` })
        return z.NEVER
      }
      return abs
    })
}

/** Largest secret/token/CA file read while validating. */
const MAX_SMALL_FILE = 1024 * 1024

async function readSmall(p: string): Promise<string | Error> {
  try {
    const st = await stat(p)
    if (!st.isFile()) return new Error(`${p} is not a regular file`)
    if (st.size > MAX_SMALL_FILE) return new Error(`${p} is larger than 1 MiB`)
    return await readFile(p, 'utf8')
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    return new Error(`cannot read ${p} (${e.code ?? e.message})`)
  }
}

/** A file holding one secret (a token, a password): its first non-empty line, read now. */
export function secretFileField(ctx: SchemaContext) {
  return pathField(ctx).transform(async (p, c) => {
    const text = await readSmall(p)
    if (text instanceof Error) {
      c.addIssue({ code: 'custom', message: text.message })
      return z.NEVER
    }
    const secret = text
      .split(/\r?\n/)
      .map((l) => l.trim())
      .find((l) => l !== '')
    if (secret === undefined) {
      c.addIssue({ code: 'custom', message: `${p} is empty` })
      return z.NEVER
    }
    return { path: p, secret }
  })
}

/** A PEM file of one or more certificates, read now. */
export function certificateFileField(ctx: SchemaContext) {
  return pathField(ctx).transform(async (p, c) => {
    const text = await readSmall(p)
    if (text instanceof Error) {
      c.addIssue({ code: 'custom', message: text.message })
      return z.NEVER
    }
    if (!text.includes('-----BEGIN CERTIFICATE-----')) {
      c.addIssue({ code: 'custom', message: `${p} holds no PEM certificate (-----BEGIN CERTIFICATE-----)` })
      return z.NEVER
    }
    return { path: p, pem: text }
  })
}

/** A private key file (OpenSSH or PEM): checked readable now, read again by the driver at connect. */
export function privateKeyFileField(ctx: SchemaContext) {
  return pathField(ctx).transform(async (p, c) => {
    const text = await readSmall(p)
    if (text instanceof Error) {
      c.addIssue({ code: 'custom', message: text.message })
      return z.NEVER
    }
    if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----|^PuTTY-User-Key-File/m.test(text)) {
      c.addIssue({ code: 'custom', message: `${p} holds no private key` })
      return z.NEVER
    }
    return p
  })
}
