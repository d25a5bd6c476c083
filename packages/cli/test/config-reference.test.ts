import t from 'tap'
import { resolve } from 'node:path'
import { z } from 'zod'
import { repoRoot, runNode } from '@grainline/test-utils'
import { CONFIG_FORMATS, renderConfigReference } from '../src/index.ts'

t.test('docs/config/*.md are what the settings schemas generate', async (t) => {
  const r = await runNode(resolve(repoRoot, 'scripts/gen-config-reference.mjs'), ['--check'])
  if (r.code !== 0) t.comment(r.stderr)
  t.equal(r.code, 0, 'run node scripts/gen-config-reference.mjs and commit docs/config/')
})

t.test('the reference names every key a job file accepts, with its type and whether it is required', async (t) => {
  const job = renderConfigReference(CONFIG_FORMATS[0] as (typeof CONFIG_FORMATS)[number])
  for (const key of ['to', 'tokenFile', 'parallel', 'bwlimit', 'vms', 'certify', 'trivialMiB', 'email.smtp.host', 'webhooks[].url', 'vms[].vm']) {
    t.match(job, new RegExp(`\\| \`${key.replace(/[[\]]/g, '\\$&')}\` \\|`), key)
  }
  t.match(job, /\| `vms` \| .* \| \*\*required\*\* \|/, 'vms is required')
  t.match(job, /\| `parallel` \| .* \| default 2 \|/)
  const esxi = renderConfigReference(CONFIG_FORMATS[1] as (typeof CONFIG_FORMATS)[number])
  t.match(esxi, /\| `ssh\.host` \|/)
  // a schema that is not an object is a programming error, named
  t.throws(() => renderConfigReference({ file: 'x.md', title: 'x', intro: '', sections: [{ title: 's', schema: z.string() }] }), /not an object schema: string/)
})
