import t from 'tap'
import { resolve } from 'node:path'
import { repoRoot, runNode } from '@grainline/test-utils'

t.test('docs/CLI.md is what the yargs definitions generate', async (t) => {
  const r = await runNode(resolve(repoRoot, 'scripts/gen-cli-reference.mjs'), ['--check'])
  if (r.code !== 0) t.comment(r.stderr)
  t.equal(r.code, 0, 'run node scripts/gen-cli-reference.mjs and commit docs/CLI.md')
})
