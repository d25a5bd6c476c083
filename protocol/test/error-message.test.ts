import t from 'tap'
import { decodeMessage, encodeMessage } from '../src/codec.ts'
import { toErrorMessage, truncateUtf8 } from '../src/error-message.ts'
import { ProtocolError } from '../src/errors.ts'

t.test('toErrorMessage always yields an encodable Error', async (t) => {
  const cases: Array<[unknown, string, boolean]> = [
    [new ProtocolError('E_CYCLE_MISMATCH', 'other cycle'), 'E_CYCLE_MISMATCH', false],
    [new ProtocolError('E_SCHEMA', 'x'.repeat(10000)), 'E_SCHEMA', true],
    [Object.assign(new Error('disk full'), { code: 'E_NO_SPACE' }), 'E_NO_SPACE', true],
    [Object.assign(new Error('secret path /etc/x'), { code: 'ENOENT' }), 'E_INTERNAL', true],
    [new TypeError('boom'), 'E_INTERNAL', true],
    ['a string', 'E_INTERNAL', true],
    [null, 'E_INTERNAL', true],
    [undefined, 'E_INTERNAL', true],
    [{ code: 'E_IO', message: 'é\ud800'.repeat(3000) }, 'E_IO', true],
    [{ code: '__proto__' }, 'E_INTERNAL', true],
  ]
  for (const [err, code, fatal] of cases) {
    const m = toErrorMessage(err)
    t.equal(m.code, code)
    t.equal(m.fatal, fatal)
    t.ok(Buffer.byteLength(m.message) <= 4096)
    t.same(decodeMessage(encodeMessage(m)), m, `${code} round-trips`)
  }
  t.equal(toErrorMessage(new TypeError('secret')).message, 'internal error')
})

t.test('truncateUtf8 cuts on character boundaries', async (t) => {
  t.equal(truncateUtf8('abc', 2), 'ab')
  t.equal(truncateUtf8('aé', 2), 'a')
  t.equal(truncateUtf8('😀😀', 7), '😀')
  t.equal(truncateUtf8('a\udc00b', 10), 'a\ufffdb')
  t.equal(truncateUtf8('', 0), '')
})
