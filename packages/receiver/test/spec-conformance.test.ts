import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Agent, MiB, TOKEN, makeEnv, pattern, runCycle, seedPlan, startReceiver } from './helpers.ts'

/*
 * The receiver relies on the decoder's validation instead of its own copies
 * of it; the copies had drifted from SPEC §6. A DDB key may hold ':' and '-'
 * (`/^[A-Za-z0-9._:-]{1,128}$/`): the receiver used to refuse them (E_SCHEMA).
 */

t.test('DDB keys with ":" and "-" (SPEC §6) are accepted and kept in the mirror descriptor', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const img = pattern(MiB, 4)
  const plan = { ...seedPlan(0, 'vm-d.vmdk', img, '01'.repeat(8)), ddb: { 'ddb.adapterType': 'lsilogic', 'ddb.deletable-x': 'true', 'ddb.uuid:alt': '60 00 C2 9a' } }
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(a, 'vm-d', 1, [plan])
  a.close()
  t.equal(r.committed?.cycle, 1)
  const desc = readFileSync(join(env.store, 'vm-d', 'vm-d.vmdk'), 'latin1')
  t.match(desc, /ddb.deletable-x = "true"/)
  t.match(desc, /ddb.uuid:alt = "60 00 C2 9a"/)
})
