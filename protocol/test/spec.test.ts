import { readFileSync } from 'node:fs'
import t from 'tap'
import { ProtocolErrorCodes } from '../src/errors.ts'
import { MessageKind } from '../src/messages.ts'
import { fillBlocks } from './spec-blocks.ts'

const read = (f: string): string => readFileSync(new URL(`../../${f}`, import.meta.url), 'utf8')

t.test('SPEC.md and README.md generated blocks are up to date (npm run vectors)', async (t) => {
  for (const doc of ['SPEC.md', 'README.md']) {
    const text = read(doc)
    t.equal(fillBlocks(text), text, doc)
  }
})

t.test('SPEC.md covers every kind and every error code', async (t) => {
  const spec = read('SPEC.md')
  for (const [name, kind] of Object.entries(MessageKind)) {
    const kebab = name.replace(/[A-Z]/g, (c, i: number) => (i > 0 ? '-' : '') + c.toLowerCase())
    t.match(spec, `${kebab} := u8(0x${kind.toString(16).padStart(2, '0')})`, name)
  }
  for (const [code, e] of Object.entries(ProtocolErrorCodes)) {
    t.match(spec, `| \`${code}\` | ${e.closeCode} | ${e.fatal ? 'yes' : 'no'} |`, code)
  }
})
