#!/usr/bin/env node
// Regenerates docs/config/*.md (job file, esxi settings) from the zod schemas
// that validate those files (`CONFIG_FORMATS` of the grainline package), so
// the reference can never disagree with what is accepted. `--check` exits 1
// when a committed file differs (packages/cli/test/config-reference.test.ts).
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { CONFIG_FORMATS, renderConfigReference } = await import(join(root, 'packages/cli/dist/src/index.js'))
const dir = join(root, 'docs/config')
const check = process.argv.includes('--check')
let stale = 0
for (const f of CONFIG_FORMATS) {
  const file = join(dir, f.file)
  const out = renderConfigReference(f)
  if (check) {
    let current = ''
    try {
      current = readFileSync(file, 'utf8')
    } catch {}
    if (current !== out) {
      process.stderr.write(`docs/config/${f.file} is out of date: run node scripts/gen-config-reference.mjs\n`)
      stale++
    }
  } else {
    mkdirSync(dir, { recursive: true })
    writeFileSync(file, out)
  }
}
process.exit(stale === 0 ? 0 : 1)
