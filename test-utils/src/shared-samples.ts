/**
 * The read-only folder of samples beside the repository (`../shared`), which
 * a clone may not have. Tests run without it; a test that needs a file that
 * may not be copied into the repository (the AGPL ESXi SEsparse extent) reads
 * it from here when present and says so plainly when absent.
 */
import { existsSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { repoRoot } from './package-files.ts'

/** `$GRAINLINE_SHARED_DIR` when set, else `../shared` beside the repository root. */
export function sharedDir(): string {
  const env = process.env['GRAINLINE_SHARED_DIR']
  return env !== undefined && env !== '' ? resolve(env) : resolve(repoRoot, '../shared')
}

/**
 * Path of `samples/<rel>` in the shared folder, or `undefined` when it is not
 * there. With `t`, an absent sample is reported as a tap comment naming the
 * file and the variable that points elsewhere.
 */
export function sharedSample(rel: string, t?: { comment(...args: unknown[]): void }): string | undefined {
  const path = join(sharedDir(), 'samples', rel)
  if (existsSync(path)) return path
  t?.comment(`shared sample ${rel} is absent (${path}): the checks that need it did not run; set GRAINLINE_SHARED_DIR to a folder holding samples/${rel} to run them`)
  return undefined
}
