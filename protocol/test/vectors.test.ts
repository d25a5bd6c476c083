import { readdirSync, readFileSync } from 'node:fs'
import t from 'tap'
import { decodeMessage, encodeMessage } from '../src/codec.ts'
import type { Message } from '../src/messages.ts'
import { canonical, fromJson } from './json.ts'
import { decompress } from '../src/compression.ts'
import { CycleDigest } from '../src/cycle-digest.ts'
import { committedCycleIdentity, cycleIdentity, type CommittedDiskIdentity, type CycleIdentityFields } from '../src/cycle-identity.ts'
import { digestOf, initDigests } from '../src/digest.ts'
import type { CompressionAlgorithm, DigestAlgorithm } from '../src/messages.ts'
import { buildVectors, VECTOR_LIMITS, type InvalidVector, type ValidVector } from './vectors.ts'

const dir = new URL('../../vectors/', import.meta.url)
const committed = readdirSync(dir)
  .filter((f) => f.endsWith('.json'))
  .sort()

t.test('committed vectors equal a fresh build (run `npm run vectors` after a deliberate change)', async (t) => {
  const fresh = await buildVectors()
  t.same(committed, [...fresh.keys()].sort(), 'same files')
  for (const [name, text] of fresh) t.equal(readFileSync(new URL(name, dir), 'utf8'), text, name)
})

t.test('valid vectors: encode(message) = hex and decode(hex) = message', async (t) => {
  let n = 0
  for (const file of committed.filter((f) => f !== 'invalid.json' && f !== 'derived.json')) {
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
  t.ok(
    truncated.every((v) => v.error === 'E_MALFORMED'),
    'every truncated frame is E_MALFORMED',
  )
})

t.test('derived known answers: digests, cycle identity, cycle digest, decompression', async (t) => {
  await initDigests()
  const d = JSON.parse(readFileSync(new URL('derived.json', dir), 'utf8')) as {
    digests: Array<{ algorithm: DigestAlgorithm; input: string; digest: string }>
    cycleIdentity: Array<{ fields: CycleIdentityFields; cycleId: string }>
    committedCycleIdentity: Array<{ disks: CommittedDiskIdentity[]; committedCycleId: string }>
    cycleDigest: Array<{ algorithm: DigestAlgorithm; extents: Array<{ offset: number; length: number; zero: boolean; digest: string }>; cycleDigest: string }>
    decompression: Array<{ algorithm: CompressionAlgorithm; plain: string; compressed: string }>
  }
  const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')
  // independent anchors: published reference values
  t.equal(d.digests.find((x) => x.algorithm === 'xxh64' && x.input === '')?.digest, 'ef46db3751d8e999')
  t.equal(d.digests.find((x) => x.algorithm === 'sha256' && x.input === '616263')?.digest, 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')
  for (const x of d.digests) t.equal(hex(digestOf(x.algorithm, Buffer.from(x.input, 'hex'))), x.digest, `${x.algorithm}(${x.input})`)
  for (const x of d.cycleIdentity) t.equal(cycleIdentity(x.fields), x.cycleId)
  t.equal(d.committedCycleIdentity.length, 3)
  for (const x of d.committedCycleIdentity) t.equal(committedCycleIdentity(x.disks), x.committedCycleId)
  for (const x of d.cycleDigest) {
    const cd = new CycleDigest(x.algorithm)
    for (const e of x.extents) cd.add({ ...e, digest: Buffer.from(e.digest, 'hex') })
    t.equal(hex(cd.digest()), x.cycleDigest, x.algorithm)
  }
  for (const x of d.decompression) {
    const plain = Buffer.from(x.plain, 'hex')
    t.equal(hex(decompress(x.algorithm, Buffer.from(x.compressed, 'hex'), plain.length)), x.plain, x.algorithm)
  }
})
