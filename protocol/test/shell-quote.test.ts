import t from 'tap'
import { execFileSync } from 'node:child_process'
import { shJoin, shQuote } from '../src/index.ts'

t.test('plain words stay as they are; anything else is single-quoted', async (t) => {
  t.equal(shQuote('db01'), 'db01')
  t.equal(shQuote('/srv/store/web-01/.open/x_y@z%1+2=3:4,5.vmdk'), '/srv/store/web-01/.open/x_y@z%1+2=3:4,5.vmdk')
  t.equal(shQuote(''), "''", 'the empty argument is kept as one')
  t.equal(shQuote('Demo VM'), "'Demo VM'")
  t.equal(shQuote("it's"), `'it'\\''s'`, 'a single quote closes, is escaped, reopens')
  t.equal(shQuote('$(reboot)'), "'$(reboot)'", 'no expansion')
  t.equal(shQuote('a\nb'), "'a\nb'")
  t.throws(() => shQuote('a\0b'), TypeError, 'NUL cannot be passed through a shell')
  t.equal(shJoin(['grainline', 'points', 'close', '--vm', 'web 01']), "grainline points close --vm 'web 01'")
})

t.test('a real sh receives every argument byte for byte (the oracle: /bin/sh itself)', async (t) => {
  const tricky = ['', ' ', 'Demo VM', "it's", "''", '"', '\\', '$HOME', '`id`', '$(id)', '*', '?', '~', '#x', 'a;b', 'a|b', 'a&b', '<>', 'new\nline', 'tab\there', 'ünïcödé 日本', '-n', '--', '!x']
  const out = execFileSync('/bin/sh', ['-c', shJoin(['printf', '[%s]\\n', ...tricky])], { encoding: 'utf8', env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: '/nonexistent' } })
  t.equal(out, tricky.map((a) => `[${a}]\n`).join(''), 'every argument arrived unchanged')
})
