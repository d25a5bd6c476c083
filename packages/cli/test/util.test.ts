import t from 'tap'
import { parseRate, formatBytes, parsePathMap, table } from '../src/util.ts'

t.test('parseRate', async (t) => {
  t.equal(parseRate('500k'), 500 * 1024)
  t.equal(parseRate('10M'), 10 * 1024 * 1024)
  t.equal(parseRate('1.5G'), 1.5 * 1024 ** 3)
  t.equal(parseRate('12MB/s'), 12 * 1024 * 1024)
  t.equal(parseRate('4096'), 4096)
  t.throws(() => parseRate('fast'), /invalid rate/)
  t.throws(() => parseRate('0'), /positive/)
})

t.test('formatBytes', async (t) => {
  t.equal(formatBytes(512), '512 B')
  t.equal(formatBytes(1536), '1.5 KiB')
  t.equal(formatBytes(3 * 1024 ** 3), '3.0 GiB')
})

t.test('parsePathMap', async (t) => {
  t.same(parsePathMap(['ds1=/mnt/ds1', 'uuid-1=/mnt/a=b']), { ds1: '/mnt/ds1', 'uuid-1': '/mnt/a=b' })
  t.throws(() => parsePathMap(['nope']), /DATASTORE=LOCALPATH/)
})

t.test('table', async (t) => {
  t.equal(
    table(
      ['a', 'bb'],
      [
        ['1', '2'],
        ['333', '4'],
      ],
    ),
    'a    bb\n---  --\n1    2\n333  4',
  )
})
