import { readFileSync } from 'node:fs'

/** This package's version, from its package.json (`dist/src/` → `../../package.json`). */
export const VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version

/** What the receiver calls itself in Welcome (`grainline-receiver/<version>`). */
export const SOFTWARE = `grainline-receiver/${VERSION}`
