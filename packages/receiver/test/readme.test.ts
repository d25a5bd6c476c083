import t from 'tap'
import { execFileSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'

// STYLE §20: the README's Usage example runs as written, as its own process.
t.test('README Usage example', async (t) => {
  const readme = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '../../README.md'), 'utf8')
  const m = /## Usage\n\n```js\n([\s\S]*?)```/.exec(readme)
  t.ok(m, 'Usage block found')
  for (const h of ['## Install', '## API', '## Errors', '## License']) t.ok(readme.includes(h), h)
  const file = join(t.testdir(), 'usage.mjs')
  writeFileSync(file, m?.[1] ?? '')
  const out = execFileSync(process.execPath, [file], { encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0', NO_COLOR: '1' } })
    .trim()
    .split('\n')
  const ev = JSON.parse(out[0] ?? '{}') as { event: string; port: number }
  t.equal(ev.event, 'listening')
  t.ok(ev.port > 0)
  t.same(JSON.parse(out[1] ?? '{}').vms, [])
})
