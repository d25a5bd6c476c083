import t from 'tap'
import { readFileSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { runNode } from '@grainline/test-utils'
import { VERSION } from '../src/index.ts'

const here = dirname(fileURLToPath(import.meta.url))
const pkg = JSON.parse(readFileSync(resolve(here, '../../package.json'), 'utf8')) as { version: string }

t.test('VERSION and `grainline --version` come from package.json', async (t) => {
  t.equal(VERSION, pkg.version)
  const r = await runNode(resolve(here, '../src/bin.js'), ['--version'])
  t.equal(r.code, 0)
  t.equal(r.stdout.trim(), pkg.version)
})
