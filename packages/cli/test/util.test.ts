import t from 'tap'
import { formatBytes, parsePathMap, table } from '../src/util.ts'

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
  t.equal(table(['a', 'bb'], [['1', '2'], ['333', '4']]), 'a    bb\n---  --\n1    2\n333  4')
})
