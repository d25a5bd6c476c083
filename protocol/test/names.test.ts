import t from 'tap'
import { isWellFormed, validateName } from '../src/names.ts'

t.test('valid names', async (t) => {
  for (const n of ['web01', 'web01.vmx', 'a', '...', '.hidden', 'x'.repeat(255), 'é'.repeat(127), 'disk 1 (copy).vmdk', '日本']) {
    t.doesNotThrow(() => validateName(n), n)
  }
})

t.test('invalid names', async (t) => {
  const bad: unknown[] = ['', '.', '..', 'a/b', '/', 'a\\b', 'a\u0000b', 'a\nb', 'a\u007fb', 'x'.repeat(256), 'é'.repeat(128), '\ud800', 'a\udc00b', 5, null, undefined]
  for (const n of bad) {
    t.throws(() => validateName(n, 'vm'), { name: 'ProtocolError', code: 'E_BAD_NAME', closeCode: 4400 }, JSON.stringify(n))
  }
  t.ok(isWellFormed('😀'))
  t.notOk(isWellFormed('\ud83d'))
})
