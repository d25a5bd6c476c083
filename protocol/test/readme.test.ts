import { execFileSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import t from 'tap'

t.test('the README Usage example runs and prints what its comments say', async (t) => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8')
  const usage = readme.slice(readme.indexOf('## Usage'))
  const m = /```js\n([\s\S]*?)```/.exec(usage)
  t.ok(m, 'Usage has a js block')
  const code = m![1]!
  const expected = code
    .split('\n')
    .filter((l) => l.includes('console.log('))
    .map((l) => l.split('// ')[1]?.trim())
  // written next to the compiled tests so that '@grainline/protocol' resolves to this package
  const file = new URL('./readme-example.mjs', import.meta.url)
  writeFileSync(file, code)
  const out = execFileSync(process.execPath, [file.pathname], { encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0', NO_COLOR: '1' } })
    .trim()
    .split('\n')
  t.same(out, expected)
})
