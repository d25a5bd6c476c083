import { randomBytes } from 'node:crypto'
import { deflateRawSync } from 'node:zlib'
import { compressSync } from 'lz4-napi'
import t from 'tap'
import { compress, decompress, isCompressionAlgorithm } from '../src/compression.ts'
import { CompressionAlgorithms } from '../src/messages.ts'

const samples: Array<[string, Uint8Array]> = [
  ['empty', new Uint8Array(0)],
  ['random 64 KiB', randomBytes(65536)],
  ['text 1 MiB', Buffer.from('grainline '.repeat(104858)).subarray(0, 1 << 20)],
  ['zeros 1 MiB', new Uint8Array(1 << 20)],
  ['one byte', Uint8Array.of(7)],
]

t.test('round trip for every algorithm', async (t) => {
  for (const alg of CompressionAlgorithms) {
    for (const [name, data] of samples) {
      const c = compress(alg, data)
      const back = decompress(alg, c, data.length)
      t.ok(Buffer.from(back).equals(Buffer.from(data)), `${alg} ${name}`)
      if (name === 'zeros 1 MiB' && alg !== 'none') t.ok(c.length < 8192, `${alg} shrinks zeros (${c.length})`)
    }
  }
  // a Uint8Array that is a view into a larger buffer
  const big = randomBytes(4096)
  const view = new Uint8Array(big.buffer, big.byteOffset + 100, 1000)
  for (const alg of CompressionAlgorithms) {
    t.same(Buffer.from(decompress(alg, compress(alg, view), 1000)), Buffer.from(view), `${alg} view`)
  }
})

t.test('none is the identity without a copy', async (t) => {
  const d = randomBytes(10)
  t.equal(compress('none', d), d)
  t.equal(decompress('none', d, 10), d)
  t.throws(() => decompress('none', d, 11), { code: 'E_DECOMPRESS' })
})

t.test('deflate bombs and mismatches are refused without inflating them', async (t) => {
  const bomb = deflateRawSync(new Uint8Array(64 << 20)) // 64 MiB of zeros in ~64 KiB
  t.ok(bomb.length < 100_000)
  const before = process.memoryUsage().arrayBuffers
  t.throws(() => decompress('deflate', bomb, 1 << 20), { code: 'E_DECOMPRESS', message: /beyond/ })
  t.ok(process.memoryUsage().arrayBuffers - before < 32 << 20, 'did not allocate the bomb')
  const exact = deflateRawSync(randomBytes(1000))
  t.throws(() => decompress('deflate', exact, 999), { code: 'E_DECOMPRESS' })
  t.throws(() => decompress('deflate', exact, 1001), { code: 'E_DECOMPRESS' })
  t.throws(() => decompress('deflate', randomBytes(100), 100), { code: 'E_DECOMPRESS' })
  t.throws(() => decompress('deflate', exact.subarray(0, 500), 1000), { code: 'E_DECOMPRESS' })
})

t.test('lz4 length prefix is checked before decoding', async (t) => {
  const data = randomBytes(5000)
  const c = Buffer.from(compressSync(data))
  t.equal(c.readUInt32LE(0), 5000, 'u32le uncompressed length prefix')
  t.throws(() => decompress('lz4', c, 4999), { code: 'E_DECOMPRESS', message: /claims/ })
  const lying = Buffer.from(c)
  lying.writeUInt32LE(0xfffffff0, 0)
  t.throws(() => decompress('lz4', lying, 5000), { code: 'E_DECOMPRESS' })
  const tooShort = Buffer.from(c)
  tooShort.writeUInt32LE(10, 0)
  t.throws(() => decompress('lz4', tooShort, 10), { code: 'E_DECOMPRESS' })
  t.throws(() => decompress('lz4', c.subarray(0, 3), 5000), { code: 'E_DECOMPRESS' })
  t.throws(() => decompress('lz4', c.subarray(0, c.length - 10), 5000), { code: 'E_DECOMPRESS' })
  // prefix says 5000 but the block holds less
  const small = Buffer.from(compressSync(randomBytes(100)))
  small.writeUInt32LE(5000, 0)
  t.throws(() => decompress('lz4', small, 5000), { code: 'E_DECOMPRESS' })
})

t.test('bad arguments', async (t) => {
  t.throws(() => decompress('none', new Uint8Array(0), -1), { code: 'E_DECOMPRESS' })
  t.throws(() => decompress('none', new Uint8Array(0), 1.5), { code: 'E_DECOMPRESS' })
  t.throws(() => decompress('zstd' as never, new Uint8Array(0), 0), { code: 'E_DECOMPRESS' })
  t.throws(() => compress('zstd' as never, new Uint8Array(0)), { code: 'E_NO_COMMON_COMPRESSION' })
  t.ok(isCompressionAlgorithm('lz4'))
  t.notOk(isCompressionAlgorithm('zstd'))
})
