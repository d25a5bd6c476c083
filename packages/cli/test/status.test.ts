import t from 'tap'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { storeHealth } from '@grainline/receiver'
import { renderStatus } from '../src/commands/status-run.ts'
import { statusCommand } from '../src/commands/status.ts'
import type { CliContext } from '../src/command.ts'

/* `grainline status` shows a diverged disk and the .vmx references the receiver dropped, in both outputs. */

t.test('status shows divergence and dropped .vmx references', async (t) => {
  const store = join(t.testdir(), 'store')
  const g = join(store, 'web-01', '.grainline')
  mkdirSync(g, { recursive: true })
  const source = { layers: [{ file: 'web-01.vmdk', cid: '00000001', parentCid: 'ffffffff' }], successor: 'web-01-000001.vmdk' }
  writeFileSync(
    join(g, 'state.json'),
    JSON.stringify({
      format: 1,
      vm: 'web-01',
      compat: null,
      committedCycle: 3,
      committedAt: '2026-01-03T00:00:00.000Z',
      generation: 'ab'.repeat(16),
      displaySuffix: '',
      inflight: null,
      pending: null,
      disks: {
        'web-01.vmdk': {
          name: 'web-01.vmdk',
          stem: 'web-01',
          capacity: 1024,
          size: 1024,
          cycle: 3,
          committedAt: '2026-01-03T00:00:00.000Z',
          source,
          cycleId: 'cd'.repeat(32),
          generation: 'ab'.repeat(16),
          mirrorCid: '0000cafe',
          ddb: {},
          cycleDigest: { algorithm: 'sha256', digest: '' },
          diverged: { reason: 'certify (sha256) of cycle 3 failed', at: '2026-01-03T00:01:00.000Z' },
        },
      },
      vmxDropped: [{ key: 'serial0.fileName', value: '/etc/shadow', action: 'device disabled' }],
    }),
  )
  const h = await storeHealth(store)
  t.equal(h.state, 'CRITICAL')
  t.equal(h.exitCode, 2)
  const human = renderStatus(h)
  t.match(human, /DIVERGED from its source: certify \(sha256\) of cycle 3 failed \(the next cycle resyncs it\)/)
  t.match(human, /\bDIVERGED\s*\n/)
  t.match(human, /web-01: 1 \.vmx reference\(s\) out of the mirror dropped or neutralised:\n {2}serial0\.fileName = "\/etc\/shadow" \(device disabled\)/)
  const json = JSON.stringify(h)
  const st = JSON.parse(json) as { vms: Array<{ generation: string; vmxDropped: unknown[]; disks: Array<{ diverged: unknown }> }> }
  t.equal(st.vms[0]?.generation, 'ab'.repeat(16))
  t.match(st.vms[0]?.disks[0]?.diverged, { reason: /certify/ })
  t.equal(st.vms[0]?.vmxDropped.length, 1)

  // --output json is the dashboard API's document (storeOverview): RPO against the receiver config's target
  const cfg = join(store, '..', 'receiver.json')
  writeFileSync(cfg, JSON.stringify({ store: 'store', rpo: { target: '2h', vms: { 'web-*': '30m' } } }))
  let out = ''
  const ctx = { write: (s: string) => (out += s), error: () => {}, stderr: process.stderr } as unknown as CliContext
  const code = await statusCommand.run({ store, config: cfg, output: 'json' }, ctx)
  t.equal(code, 2, 'CRITICAL')
  const doc = JSON.parse(out) as { vms: Array<{ rpo: { targetSeconds: number; state: string }; live: unknown; restorePoints: unknown[]; lastCycle: unknown; usedBytes: number }> }
  t.match(doc.vms[0], { rpo: { targetSeconds: 1800, state: 'critical' }, live: null, restorePoints: [], lastCycle: null }, 'the target of the first matching glob; a months-old commit is critical')
  out = ''
  writeFileSync(cfg, JSON.stringify({ store: 'store', rpo: { target: 'soon' } }))
  await t.rejects(statusCommand.run({ store, config: cfg, output: 'json' }, ctx), { code: 'E_CONFIG', message: /rpo\.target: "soon" is not a duration/ }, 'a bad config names its key')
})

t.test('status shows when each disk was last fully proven, and how (human and JSON)', async (t) => {
  const store = join(t.testdir(), 'store')
  const g = join(store, 'db-01', '.grainline')
  mkdirSync(g, { recursive: true })
  const source = { layers: [{ file: 'db-01.vmdk', cid: '00000001', parentCid: 'ffffffff' }], successor: 'db-01-000001.vmdk' }
  const disk = (name: string, stem: string, extra: object): object => ({
    name,
    stem,
    capacity: 1024,
    size: 1024,
    cycle: 7,
    committedAt: '2026-01-03T00:00:00.000Z',
    source,
    cycleId: 'cd'.repeat(32),
    generation: 'ab'.repeat(16),
    mirrorCid: '0000cafe',
    ddb: {},
    cycleDigest: { algorithm: 'sha256', digest: '' },
    ...extra,
  })
  writeFileSync(
    join(g, 'state.json'),
    JSON.stringify({
      format: 1,
      vm: 'db-01',
      compat: null,
      committedCycle: 7,
      committedAt: '2026-01-03T00:00:00.000Z',
      generation: 'ab'.repeat(16),
      displaySuffix: '',
      inflight: null,
      pending: null,
      disks: {
        'db-01.vmdk': disk('db-01.vmdk', 'db-01', { proven: { kind: 'scrub', at: '2026-01-02T22:00:00.000Z', cycle: 6 } }),
        'db-01_1.vmdk': disk('db-01_1.vmdk', 'db-01_1', {}),
      },
    }),
  )
  const h = await storeHealth(store, { now: Date.parse('2026-01-03T00:30:00.000Z') })
  const human = renderStatus(h)
  t.match(human, /last proven/, 'a column for it')
  t.match(human, /db-01\.vmdk .*scrub at cycle 6, 2 h 30 min ago/, 'kind, cycle and age of the proof')
  t.match(human, /db-01_1\.vmdk .*\bnever\b/, 'a disk never proven says so')
  const st = JSON.parse(JSON.stringify(h)) as { vms: Array<{ disks: Array<{ name: string; proven: unknown }> }> }
  t.same(
    st.vms[0]?.disks.map((d) => [d.name, d.proven]),
    [
      ['db-01.vmdk', { kind: 'scrub', at: '2026-01-02T22:00:00.000Z', cycle: 6 }],
      ['db-01_1.vmdk', null],
    ],
    'JSON: proven per disk, null when never',
  )
})
