import t from 'tap'
import { negotiate, type LocalCapabilities } from '../src/negotiation.ts'
import type { HelloMessage } from '../src/messages.ts'

const MiB = 1 << 20
const receiver: LocalCapabilities = {
  versions: [1],
  digests: ['sha256', 'xxh64', 'md5'],
  compressions: ['deflate', 'none'],
  limits: { maxMessageBytes: 16 * MiB + 65536, maxExtentBytes: 16 * MiB, windowBytes: 64 * MiB },
}
const hello = (over: Partial<HelloMessage> = {}): HelloMessage => ({
  kind: 0x01,
  versions: [1],
  software: 'test',
  digests: ['xxh64', 'sha256'],
  compressions: ['lz4', 'deflate', 'none'],
  limits: { maxMessageBytes: 4 * MiB + 65536, maxExtentBytes: 4 * MiB, windowBytes: 128 * MiB },
  ...over,
})

t.test('agent preference wins among common algorithms; limits are the minimum', async (t) => {
  t.same(negotiate(hello(), receiver), {
    version: 1,
    digest: 'xxh64', // agent's first; receiver prefers sha256 but supports xxh64
    compression: 'deflate', // agent's first (lz4) unsupported, next common
    limits: { maxMessageBytes: 4 * MiB + 65536, maxExtentBytes: 4 * MiB, windowBytes: 64 * MiB },
  })
})

t.test('version: highest common, order-independent', async (t) => {
  const r = { ...receiver, versions: [1, 2, 3] }
  t.equal(negotiate(hello({ versions: [1, 2] }), r).version, 2)
  t.equal(negotiate(hello({ versions: [2, 1] }), r).version, 2)
  t.equal(negotiate(hello({ versions: [4, 3, 1] }), r).version, 3)
  t.equal(negotiate(hello({ versions: [1] }), r).version, 1)
  t.throws(() => negotiate(hello({ versions: [4, 5] }), r), { name: 'ProtocolError', code: 'E_VERSION', closeCode: 4001 })
  t.throws(() => negotiate(hello({ versions: [] }), r), { code: 'E_VERSION' })
  t.throws(() => negotiate(hello(), { ...receiver, versions: [] }), { code: 'E_VERSION' })
})

t.test('digest overlap cases', async (t) => {
  t.equal(negotiate(hello({ digests: ['md5', 'sha256'] }), receiver).digest, 'md5')
  t.equal(negotiate(hello({ digests: ['sha1', 'sha256'] }), receiver).digest, 'sha256', 'skips unsupported')
  t.equal(negotiate(hello({ digests: ['blake3' as never, 'md5'] }), receiver).digest, 'md5', 'skips names it does not know')
  t.throws(() => negotiate(hello({ digests: ['sha1'] }), receiver), { code: 'E_NO_COMMON_DIGEST', closeCode: 4002 })
  t.throws(() => negotiate(hello({ digests: [] }), receiver), { code: 'E_NO_COMMON_DIGEST' })
  t.throws(() => negotiate(hello(), { ...receiver, digests: [] }), { code: 'E_NO_COMMON_DIGEST' })
})

t.test('compression overlap cases', async (t) => {
  t.equal(negotiate(hello({ compressions: ['none', 'deflate'] }), receiver).compression, 'none')
  t.equal(negotiate(hello({ compressions: ['lz4', 'none'] }), receiver).compression, 'none')
  t.equal(negotiate(hello({ compressions: ['lz4'] }), { ...receiver, compressions: ['lz4'] }).compression, 'lz4')
  t.throws(() => negotiate(hello({ compressions: ['lz4'] }), receiver), { code: 'E_NO_COMMON_COMPRESSION', closeCode: 4003 })
  t.throws(() => negotiate(hello({ compressions: [] }), receiver), { code: 'E_NO_COMMON_COMPRESSION' })
})

t.test('errors are checked in order version, digest, compression', async (t) => {
  t.throws(() => negotiate(hello({ versions: [9], digests: [], compressions: [] }), receiver), { code: 'E_VERSION' })
  t.throws(() => negotiate(hello({ digests: [], compressions: [] }), receiver), { code: 'E_NO_COMMON_DIGEST' })
})

t.test('limits: each field independently the minimum', async (t) => {
  const l = negotiate(hello({ limits: { maxMessageBytes: 100 * MiB, maxExtentBytes: 512, windowBytes: 1 } }), receiver).limits
  t.same(l, { maxMessageBytes: 16 * MiB + 65536, maxExtentBytes: 512, windowBytes: 1 })
})
