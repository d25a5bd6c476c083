import t from 'tap'
import { formatBytes, formatDuration, parseByteSize, parseDuration, parseRate } from '../src/units.ts'
import { maxMessageBytesFor, windowCost, ZERO_EXTENT_WINDOW_COST } from '../src/limits.ts'
import { DEFAULT_LIMITS } from '../src/codec.ts'

t.test('parseByteSize: binary units, case-insensitive, whole bytes', async (t) => {
  t.equal(parseByteSize('0'), 0)
  t.equal(parseByteSize(0), 0)
  t.equal(parseByteSize('100000'), 100000)
  t.equal(parseByteSize('512k'), 512 * 1024)
  t.equal(parseByteSize('512KiB'), 512 * 1024)
  t.equal(parseByteSize('16M'), 16 * 1024 ** 2)
  t.equal(parseByteSize('12MB'), 12 * 1024 ** 2)
  t.equal(parseByteSize('1.5G'), 1.5 * 1024 ** 3)
  t.equal(parseByteSize(' 2 t '), 2 * 1024 ** 4)
  t.equal(parseByteSize('0.5k'), 512)
  for (const bad of ['', 'fast', '-1', '10 Q', '1e9', '1.2.3M', '10M/s', '99999999999T']) {
    t.throws(() => parseByteSize(bad, 'quota'), { name: 'UnitError', code: 'E_CONFIG', message: /^quota: / }, JSON.stringify(bad))
  }
  t.throws(() => parseByteSize(-1), { code: 'E_CONFIG' })
  t.throws(() => parseByteSize(1.5), { code: 'E_CONFIG' })
})

t.test('parseRate: 0 is unlimited, /s is allowed', async (t) => {
  t.equal(parseRate('0'), Infinity)
  t.equal(parseRate(0), Infinity)
  t.equal(parseRate('10M'), 10 * 1024 ** 2)
  t.equal(parseRate('12MB/s'), 12 * 1024 ** 2)
  t.equal(parseRate(100000), 100000)
  t.throws(() => parseRate('fast', 'bwlimit'), { code: 'E_CONFIG', message: /^bwlimit: / })
})

t.test('parseDuration', async (t) => {
  t.equal(parseDuration('250ms'), 250)
  t.equal(parseDuration('30s'), 30_000)
  t.equal(parseDuration('15m'), 900_000)
  t.equal(parseDuration('1h30m'), 5_400_000)
  t.equal(parseDuration('7d'), 7 * 86_400_000)
  t.equal(parseDuration('2w'), 14 * 86_400_000)
  t.equal(parseDuration('10'), 10_000)
  t.equal(parseDuration(1.5), 1500)
  for (const bad of ['', 'soon', '10x', '1h 30m', '-5s', 'm']) t.throws(() => parseDuration(bad, 'maxAge'), { code: 'E_CONFIG', message: /^maxAge: / }, JSON.stringify(bad))
})

t.test('formatBytes and formatDuration', async (t) => {
  t.equal(formatBytes(512), '512 B')
  t.equal(formatBytes(45.3 * 1024 ** 2), '45.3 MiB')
  t.equal(formatBytes(1.5 * 1024 ** 3), '1.50 GiB')
  t.equal(formatBytes(200 * 1024 ** 4), '200 TiB')
  t.equal(formatDuration(850), '850 ms')
  t.equal(formatDuration(12_400), '12.4 s')
  t.equal(formatDuration(185_000), '3 min 05 s')
  t.equal(formatDuration(7_620_000), '2 h 07 min')
  t.equal(formatDuration(3 * 86_400_000 + 4 * 3_600_000), '3 d 04 h')
})

t.test('one definition of the frame overhead and the zero-extent window cost', async (t) => {
  t.equal(maxMessageBytesFor(16 * 1024 * 1024), DEFAULT_LIMITS.maxMessageBytes)
  t.equal(windowCost({ zero: true, length: 1 << 30 }), ZERO_EXTENT_WINDOW_COST)
  t.equal(windowCost({ zero: false, length: 4096 }), 4096)
})
