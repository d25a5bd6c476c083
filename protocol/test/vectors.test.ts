import { readdirSync, readFileSync } from 'node:fs'
import t from 'tap'
import { decodeMessage, encodeMessage } from '../src/codec.ts'
import type { Message } from '../src/messages.ts'
import { canonical, fromJson } from './json.ts'
import { buildVectors, VECTOR_LIMITS, type InvalidVector, type ValidVector } from './vectors.ts'

const dir = new URL('../../vectors/', import.meta.url)
const committed = readdirSync(dir).filter((f) => f.endsWith('.json')).sort()

t.test('committed vectors equal a fresh build (run `npm run vectors` after a deliberate change)', async (t) => {
  const fresh = buildVectors()
  t.same(committed, [...fresh.keys()].sort(), 'same files')
  for (const [name, text] of fresh) t.equal(readFileSync(new URL(name, dir), 'utf8'), text, name)
})

t.test('valid vectors: encode(message) = hex and decode(hex) = message', async (t) => {
  let n = 0
  for (const file of committed.filter((f) => f !== 'invalid.json')) {
    const entries = JSON.parse(readFileSync(new URL(file, dir), 'utf8')) as ValidVector[]
    t.ok(entries.length > 0, `${file} has vectors`)
    for (const v of entries) {
      const message = fromJson(v.message) as Message
      t.equal(Buffer.from(encodeMessage(message)).toString('hex'), v.hex, `encode ${v.name}`)
      t.equal(canonical(decodeMessage(Buffer.from(v.hex, 'hex'), VECTOR_LIMITS)), canonical(message), `decode ${v.name}`)
      n++
    }
  }
  t.ok(n >= 19, `${n} valid vectors`)
})

t.test('invalid vectors fail with their code', async (t) => {
  const entries = JSON.parse(readFileSync(new URL('invalid.json', dir), 'utf8')) as InvalidVector[]
  t.ok(entries.length > 50)
  for (const v of entries) {
    t.throws(() => decodeMessage(Buffer.from(v.hex, 'hex'), VECTOR_LIMITS), { name: 'ProtocolError', code: v.error }, v.name)
  }
  const truncated = entries.filter((v) => v.name.includes('truncated'))
  t.ok(truncated.every((v) => v.error === 'E_MALFORMED'), 'every truncated frame is E_MALFORMED')
})
