import t from 'tap'
import { execFile } from 'node:child_process'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const exec = promisify(execFile)
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..')

t.test('docs/CLI.md is what the yargs definitions generate', async (t) => {
  const r = await exec(process.execPath, [resolve(root, 'scripts/gen-cli-reference.mjs'), '--check']).then(() => 0, (err: { code: number, stderr: string }) => { t.comment(err.stderr); return err.code })
  t.equal(r, 0, 'run node scripts/gen-cli-reference.mjs and commit docs/CLI.md')
})
