import { createRequire } from 'node:module'

/**
 * This package's version, read at run time from its own package.json
 * (`dist/src/version.js` → `../../package.json`): one source for
 * `grainline --version` and the release.
 */
export const VERSION: string = (createRequire(import.meta.url)('../../package.json') as { version: string }).version
