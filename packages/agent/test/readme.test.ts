/** Runs the README's Usage example against a real receiver process (STYLE §20). */
import t from 'tap'
import { execFile } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { haveReceiver, startReceiver, TOKEN, scratch } from './helpers.ts'

const exec = promisify(execFile)
if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')

t.test('README Usage runs: seed then incremental', async (t) => {
  const readme = await readFile(fileURLToPath(new URL('../../README.md', import.meta.url)), 'utf8')
  const m = /## Usage\n\n```js\n([\s\S]*?)```/.exec(readme)
  t.ok(m, 'README has a js Usage block')
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  await writeFile(join(dir, 'token'), TOKEN + '\n')
  await writeFile(join(dir, 'ca.pem'), rx.ca)
  if (m === null) return
  const code = (m[1] as string)
    .replace("'@grainline/agent'", JSON.stringify(new URL('../src/index.js', import.meta.url).href))
    .replace("'pino'", JSON.stringify(import.meta.resolve('pino')))
    .replace("'/tmp/vms'", JSON.stringify(join(dir, 'vms')))
    .replace("'wss://dr.example:7443'", JSON.stringify(rx.url))
    .replace("'/etc/grainline/token'", JSON.stringify(join(dir, 'token')))
    .replace("'/etc/grainline/receiver.crt'", JSON.stringify(join(dir, 'ca.pem')))
    .replace("'/var/lib/grainline'", JSON.stringify(join(dir, 'agent-state')))
  const file = join(dir, 'usage.mjs')
  await writeFile(file, code)
  const { stdout } = await exec(process.execPath, [file], { timeout: 120_000, env: { ...process.env, FORCE_COLOR: '0', NO_COLOR: '1' } })
  t.match(stdout, /^OK +web 01 cycle 2/m)
  t.match(stdout, /incremental/)
})
