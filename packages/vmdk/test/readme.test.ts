import t from 'tap'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import * as vmdk from '../src/index.ts'

// STYLE §20: the README's Usage example runs as written.
t.test('README Usage example', async (t) => {
  const readme = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '../../README.md'), 'utf8')
  const m = /## Usage\n\n```js\n([\s\S]*?)```/.exec(readme)
  t.ok(m, 'Usage block found')
  const body = (m?.[1] ?? '').replace(/^import .*$/m, '')
  const dir = t.testdir()
  // eslint-disable-next-line @typescript-eslint/no-implied-eval
  const run = new Function('vmdk', 'dir', `return (async () => { const { ${Object.keys(vmdk).join(', ')} } = vmdk; ${body}; return { changed, bytes, map, info } })()`) as (
    v: typeof vmdk,
    d: string,
  ) => Promise<{ changed: vmdk.Range[]; bytes: Buffer; map: vmdk.MapEntry[]; info: vmdk.ChainInfo }>
  const res = await run(vmdk, dir)
  t.same(res.changed, [
    { offset: 999424, length: 12288, zero: false },
    { offset: 8388608, length: 65536, zero: true },
  ])
  t.same([...res.bytes], new Array(16).fill(0xab))
  t.equal(res.info.layers.length, 2)
  t.equal(res.info.layers[0]?.createType, 'seSparse')
  t.equal(
    res.map.reduce((s, e) => s + e.length, 0),
    64 * 1024 * 1024,
  )
  const after = await vmdk.describeChain(join(dir, 'vm.vmdk'))
  t.equal(after.layers.length, 1, 'consolidated')
})

t.test('README Errors table lists every code', async (t) => {
  const readme = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '../../README.md'), 'utf8')
  const section = readme.slice(readme.indexOf('## Errors'), readme.indexOf('\n## ', readme.indexOf('## Errors') + 1))
  const listed = [...section.matchAll(/^\| `(E_[A-Z_]+)` \|/gm)].map((m) => m[1])
  t.same([...listed].sort(), [...vmdk.VmdkErrorCodes].sort(), 'one row per code, no stale rows')
})
