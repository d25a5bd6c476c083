/**
 * Entry points of workspace packages, found by package name the way Node
 * resolves an import (never by a path into another package's folder).
 */
import { existsSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The repository root (this file is `test-utils/dist/src/package-files.js`). */
export const repoRoot: string = resolve(dirname(fileURLToPath(import.meta.url)), '../../..')

/**
 * A file beside the main module of package `name` (`@grainline/receiver` →
 * `.../dist/src/index.js`, so `main.js` is its runnable entry). Throws a
 * readable error when the package is not installed or not built.
 */
export function packageFile(name: string, file: string): string {
  let entry: string
  try {
    entry = fileURLToPath(import.meta.resolve(name))
  } catch (err) {
    throw new Error(`cannot resolve package ${name} (is it a workspace of this repository? run npm ci): ${(err as Error).message}`)
  }
  const path = resolve(dirname(entry), file)
  if (!existsSync(path)) throw new Error(`${path} (${file} of ${name}) does not exist: build first with npx tsc -b`)
  return path
}

/**
 * The receiver's runnable entry (`main.js` of `@grainline/receiver`), or
 * `$GRAINLINE_RECEIVER_MAIN` when set (to test another build).
 */
export function receiverMain(): string {
  return process.env['GRAINLINE_RECEIVER_MAIN'] ?? packageFile('@grainline/receiver', 'main.js')
}

/** The `grainline` command's entry (`bin.js` of package `grainline`). */
export function cliBin(): string {
  return packageFile('grainline', 'bin.js')
}
