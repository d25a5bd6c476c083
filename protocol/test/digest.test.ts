import { createHash, randomBytes } from 'node:crypto'
import t from 'tap'
import { createDigest, digestOf, DigestLengths, initDigests, isDigestAlgorithm } from '../src/digest.ts'
import { DigestAlgorithms } from '../src/messages.ts'

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')

t.test('xxh64 before initDigests is a typed error', async (t) => {
  // this file's first test: nothing has loaded xxhash-wasm yet
  t.throws(() => createDigest('xxh64'), { name: 'ProtocolError', code: 'E_INTERNAL' })
})

t.test('known answers', async (t) => {
  await initDigests()
  await initDigests() // idempotent
  const abc = Buffer.from('abc')
  // xxHash reference values (xxhsum -H1), seed 0, printed big-endian
  t.equal(hex(digestOf('xxh64', new Uint8Array(0))), 'ef46db3751d8e999')
  t.equal(hex(digestOf('xxh64', abc)), '44bc2cf5ad770999')
  t.equal(hex(digestOf('sha256', abc)), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')
  t.equal(hex(digestOf('sha1', abc)), 'a9993e364706816aba3e25717850c26c9cd0d89d')
  t.equal(hex(digestOf('md5', abc)), '900150983cd24fb0d6963f7d28e17f72')
})

t.test('streaming equals one-shot for every algorithm, any split', async (t) => {
  await initDigests()
  const data = randomBytes(300_001)
  for (const alg of DigestAlgorithms) {
    const whole = digestOf(alg, data)
    t.equal(whole.length, DigestLengths[alg], `${alg} length`)
    for (const cuts of [[0], [1, 2, 3], [4096, 65536, 65537], [299_999, 300_000]]) {
      const d = createDigest(alg)
      let prev = 0
      for (const c of [...cuts, data.length]) {
        d.update(data.subarray(prev, c))
        prev = c
      }
      t.equal(hex(d.digest()), hex(whole), `${alg} split at ${cuts.join(',')}`)
    }
    if (alg !== 'xxh64') t.equal(hex(whole), createHash(alg).update(data).digest('hex'), `${alg} matches node:crypto`)
  }
})

t.test('update returns this and unknown algorithms are refused', async (t) => {
  await initDigests()
  const d = createDigest('sha1')
  t.equal(d.update(new Uint8Array(1)), d)
  t.equal(d.algorithm, 'sha1')
  t.throws(() => createDigest('blake3' as never), { code: 'E_NO_COMMON_DIGEST' })
  t.ok(isDigestAlgorithm('md5'))
  t.notOk(isDigestAlgorithm('MD5'))
  t.notOk(isDigestAlgorithm(5))
})
