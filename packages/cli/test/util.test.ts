import t from 'tap'
import { parsePathMap, table } from '../src/util.ts'

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
