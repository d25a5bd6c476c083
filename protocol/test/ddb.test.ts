import t from 'tap'
import { decodeMessage, encodeMessage } from '../src/codec.ts'
import { ddbProblem, MAX_DDB_ENTRIES, MAX_DDB_VALUE_BYTES } from '../src/ddb.ts'
import { type DiskOpenMessage, MessageKind } from '../src/messages.ts'
import { samples } from './samples.ts'

const diskOpen = samples.find((s) => s.message.kind === MessageKind.DiskOpen)?.message as DiskOpenMessage

/** Whether the wire takes `ddb` on a DiskOpen: encoded and decoded back unchanged. */
function wireTakes(ddb: Record<string, string>): boolean {
  try {
    const back = decodeMessage(encodeMessage({ ...diskOpen, ddb })) as DiskOpenMessage
    return JSON.stringify(back.ddb) === JSON.stringify(ddb)
  } catch {
    return false
  }
}

// one definition: what ddbProblem (a restore from the archive) accepts is exactly what the receiver was sent
const cases: [string, Record<string, string>][] = [
  ['empty', {}],
  ['VMware keys', { 'ddb.adapterType': 'lsilogic', 'ddb.uuid': '60 00 C2 9a 2b 3c', 'ddb.toolsInstallType': '4' }],
  ['a key of 128 characters', { ['k'.repeat(128)]: 'v' }],
  ['a key of 129 characters', { ['k'.repeat(129)]: 'v' }],
  ['a key with a space', { 'ddb.a b': 'v' }],
  ['a key with a quote', { 'ddb."': 'v' }],
  ['an empty key', { '': 'v' }],
  ['a value at the bound', { 'ddb.x': 'é'.repeat(MAX_DDB_VALUE_BYTES / 2) }],
  ['a value a byte over (UTF-8)', { 'ddb.x': `${'é'.repeat(MAX_DDB_VALUE_BYTES / 2 - 1)}ab` }],
  ['a newline', { 'ddb.x': 'a\nextent RW 1 FLAT "other-flat.vmdk" 0' }],
  ['a quote', { 'ddb.x': 'a" b' }],
  ['a DEL', { 'ddb.x': 'a\u007f' }],
  ['a tab', { 'ddb.x': 'a\tb' }],
  ['non-ASCII text', { 'ddb.longContentID': '日本 é' }],
  ['the most entries', Object.fromEntries(Array.from({ length: MAX_DDB_ENTRIES }, (_, i) => [`ddb.k${i}`, 'v']))],
  ['one entry more', Object.fromEntries(Array.from({ length: MAX_DDB_ENTRIES + 1 }, (_, i) => [`ddb.k${i}`, 'v']))],
]

t.test('ddbProblem accepts exactly what the wire takes', async (t) => {
  t.ok(diskOpen, 'a DiskOpen sample')
  for (const [name, ddb] of cases) t.equal(ddbProblem(ddb) === undefined, wireTakes(ddb), name)
})

t.test("ddbProblem's words name what is wrong", async (t) => {
  t.match(ddbProblem({ 'ddb.x': 'a\nb' }), /the value of ddb\.x/)
  t.match(ddbProblem({ 'bad key': 'v' }), /the key "bad key"/)
  t.match(ddbProblem({ ['k'.repeat(300)]: 'v' }), new RegExp(`the key "${'k'.repeat(80)}"$`), 'a long key shown cut to 80 characters')
  t.match(ddbProblem(JSON.parse('{"__proto__": "x"}') as Record<string, string>), /the key "__proto__"/, '__proto__ is no key')
  t.match(ddbProblem({ 'ddb.x': 5 as unknown as string }), /the value of ddb\.x/, 'a value that is no string')
  t.match(ddbProblem(Object.fromEntries(Array.from({ length: MAX_DDB_ENTRIES + 1 }, (_, i) => [`k${i}`, 'v']))), /257 entries, over 256/)
})
