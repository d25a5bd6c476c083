/** `npm run vectors`: rewrite protocol/vectors/*.json from the current encoder. */
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { buildVectors } from './vectors.ts'

const dir = new URL('../../vectors/', import.meta.url)
mkdirSync(dir, { recursive: true })
const files = buildVectors()
for (const f of readdirSync(dir)) if (f.endsWith('.json') && !files.has(f)) rmSync(new URL(f, dir))
for (const [name, text] of files) writeFileSync(new URL(name, dir), text)
console.log(`wrote ${files.size} vector files to ${dir.pathname}`)
