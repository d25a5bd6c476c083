/** `npm run vectors`: rewrite protocol/vectors/*.json and the generated blocks of SPEC.md and README.md. */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { fillBlocks } from './spec-blocks.ts'
import { buildVectors } from './vectors.ts'

const dir = new URL('../../vectors/', import.meta.url)
mkdirSync(dir, { recursive: true })
const files = await buildVectors()
for (const f of readdirSync(dir)) if (f.endsWith('.json') && !files.has(f)) rmSync(new URL(f, dir))
for (const [name, text] of files) writeFileSync(new URL(name, dir), text)
console.log(`wrote ${files.size} vector files to ${dir.pathname}`)
for (const doc of ['SPEC.md', 'README.md']) {
  const url = new URL(`../../${doc}`, import.meta.url)
  if (!existsSync(url)) continue
  const before = readFileSync(url, 'utf8')
  const after = fillBlocks(before)
  if (after !== before) writeFileSync(url, after)
  console.log(`${doc}: ${after === before ? 'up to date' : 'blocks rewritten'}`)
}
