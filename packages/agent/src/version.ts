/** The agent's version, read once from its package.json (never a literal). */
import { readFileSync } from 'node:fs'

// dist/src/version.js → the package root
const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }

/** `@grainline/agent`'s version, e.g. `0.1.0`. */
export const AGENT_VERSION: string = pkg.version

/** What the agent says it is in Hello (`software`). */
export const AGENT_SOFTWARE = `grainline-agent/${AGENT_VERSION}`
