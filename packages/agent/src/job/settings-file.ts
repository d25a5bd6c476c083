/**
 * Reading one JSON settings file against its schema: every problem found,
 * each named by file and key (`/etc/grainline/esxi.json: ssh.hostKeyFingerprint: …`).
 */
import { readFile, stat } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import type { z } from 'zod'
import { configIssues, describeIssues } from './issues.ts'
import type { SchemaContext } from './fields.ts'

/** Largest settings file read (a job naming thousands of VMs fits easily). */
export const MAX_SETTINGS_BYTES = 4 * 1024 * 1024

/** A parsed file or its problems. */
export type SettingsResult<T> = { readonly ok: true; readonly value: T; readonly input: unknown } | { readonly ok: false; readonly problems: readonly string[] }

/** Read a JSON file (bounded, a regular file), or say why not. */
export async function readJsonFile(file: string): Promise<{ ok: true; value: unknown } | { ok: false; problem: string }> {
  try {
    const st = await stat(file)
    if (!st.isFile()) return { ok: false, problem: `${file} is not a regular file` }
    if (st.size > MAX_SETTINGS_BYTES) return { ok: false, problem: `${file} is larger than ${MAX_SETTINGS_BYTES} bytes` }
    const text = await readFile(file, 'utf8')
    try {
      return { ok: true, value: JSON.parse(text) as unknown }
    } catch (err) {
      return { ok: false, problem: `${file}: not JSON (${(err as Error).message})` }
    }
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    return { ok: false, problem: `cannot read ${file} (${e.code ?? e.message})` }
  }
}

/** Validate a value against `makeSchema(ctx)`; problems named under `root`. */
export async function validateSettings<S extends z.ZodType>(input: unknown, makeSchema: (ctx: SchemaContext) => S, ctx: SchemaContext, root: string): Promise<SettingsResult<z.output<S>>> {
  const r = await makeSchema(ctx).safeParseAsync(input)
  if (r.success) return { ok: true, value: r.data, input }
  return { ok: false, problems: describeIssues(root, configIssues(r.error.issues as never, input)) }
}

/** Read and validate a JSON settings file; relative paths inside resolve against its folder. */
export async function loadSettingsFile<S extends z.ZodType>(file: string, makeSchema: (ctx: SchemaContext) => S): Promise<SettingsResult<z.output<S>>> {
  const abs = resolve(file)
  const json = await readJsonFile(abs)
  if (!json.ok) return { ok: false, problems: [json.problem] }
  return await validateSettings(json.value, makeSchema, { baseDir: dirname(abs) }, abs)
}
