import { createHash, randomBytes } from 'node:crypto'
import t from 'tap'
import xxhash from 'xxhash-wasm'
import { blockDigest, createDigest, digestOf, DigestLengths, initDigests, isDigestAlgorithm, isZeroBytes, XXH64_PIECE_BYTES, xxh64Stats, zeroDigest } from '../src/digest.ts'
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

t.test('xxh64 is fed to the wasm module in pieces: its memory does not grow to the largest update (issue #17)', async (t) => {
  await initDigests()
  // 4 MiB and an odd tail in one update, as the trivial check's prefix steps are
  const data = randomBytes(4 * 1024 * 1024 + 12_345)
  const d = createDigest('xxh64').update(data).digest()
  t.ok(xxh64Stats.largestPiece <= XXH64_PIECE_BYTES, `largest piece fed ${xxh64Stats.largestPiece} bytes`)
  // the same digest as xxhash-wasm's own one-shot hash of the whole input (its own module instance)
  const x = await xxhash()
  const oneShot = Buffer.alloc(8)
  oneShot.writeBigUInt64BE(x.h64Raw(data))
  t.equal(hex(d), hex(oneShot))
  // and as any split across pieces
  const s = createDigest('xxh64')
  s.update(data.subarray(0, XXH64_PIECE_BYTES - 1))
  s.update(data.subarray(XXH64_PIECE_BYTES - 1, 3 * XXH64_PIECE_BYTES + 5))
  s.update(data.subarray(3 * XXH64_PIECE_BYTES + 5))
  t.equal(hex(s.digest()), hex(oneShot))
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

t.test('blockDigest: zero blocks answered from the cached zero digest, equal to hashing them', async (t) => {
  await initDigests()
  for (const alg of DigestAlgorithms) {
    for (const len of [0, 1, 4096, 1024 * 1024, 3 * 1024 * 1024 + 17]) {
      const zeros = new Uint8Array(len)
      t.equal(hex(blockDigest(alg, zeros)), hex(digestOf(alg, zeros)), `${alg} ${len} zero bytes`)
      t.equal(hex(zeroDigest(alg, len)), hex(digestOf(alg, zeros)), `${alg} zeroDigest ${len}`)
      if (len === 0) continue
      // one non-zero byte anywhere (also past the first MiB) is hashed, not taken for zeros
      for (const at of [0, len - 1, Math.floor(len / 2)]) {
        const data = new Uint8Array(len)
        data[at] = 1
        t.notOk(isZeroBytes(data), `${alg} ${len} byte ${at} set`)
        t.equal(hex(blockDigest(alg, data)), hex(digestOf(alg, data)), `${alg} ${len} byte ${at} set: hashed`)
      }
    }
  }
  // more lengths than the cache keeps: still right after it is emptied
  for (let len = 1; len <= 40; len++) t.equal(hex(zeroDigest('md5', len)), hex(digestOf('md5', new Uint8Array(len))), `md5 ${len} zeros`)
  // the result is a copy: changing it does not change the next answer
  // (every algorithm: Node's hashes give Buffers, whose slice() is a view, not a copy)
  for (const alg of DigestAlgorithms) {
    const d = blockDigest(alg, new Uint8Array(4096))
    d.fill(0xff)
    t.equal(hex(blockDigest(alg, new Uint8Array(4096))), hex(digestOf(alg, new Uint8Array(4096))), `${alg}: the cached zero digest unchanged`)
  }
  // a view into a larger buffer (offset, not a Buffer) is compared over its own bytes only
  const big = new Uint8Array(8192)
  big[0] = 9
  t.ok(isZeroBytes(big.subarray(1)))
  t.notOk(isZeroBytes(big.subarray(0, 2)))
})
