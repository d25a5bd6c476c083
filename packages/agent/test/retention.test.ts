import t from 'tap'
import { retentionDifferences } from '../src/retention.ts'

t.test('retentionDifferences names each rule the receiver applied differently', async (t) => {
  const asked = { keep: 1, maxAgeSeconds: 60, maxBytes: 0, hourly: 0, daily: 40, weekly: 0, monthly: 0 }
  t.same(retentionDifferences(asked, asked), [])
  t.same(retentionDifferences(asked, { ...asked, keep: 3, daily: 10 }), ['keep 1 → 3', 'daily 40 → 10'])
})
