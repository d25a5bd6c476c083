import t from 'tap'
import { execFileSync } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { runNode } from '@grainline/test-utils'
import { storeHealth } from '@grainline/receiver'
import { renderStatus } from '../src/commands/status-run.ts'
import { statusCommand } from '../src/commands/status.ts'
import type { CliContext } from '../src/command.ts'

const bin = resolve(dirname(fileURLToPath(import.meta.url)), '../src/bin.js')
const runProcess = (args: readonly string[]) => runNode(bin, [...args])

/* `grainline status` shows a diverged disk and the .vmx references the receiver dropped, in both outputs. */

/** Write `<store>/<vm>/.grainline/state.json`: committed at cycle 7 (2026-01-03 00:00) with `disks`. */
function writeState(store: string, vm: string, disks: Record<string, object>): void {
  const g = join(store, vm, '.grainline')
  mkdirSync(g, { recursive: true })
  writeFileSync(
    join(g, 'state.json'),
    JSON.stringify({
      format: 1,
      vm,
      compat: null,
      committedCycle: 7,
      committedAt: '2026-01-03T00:00:00.000Z',
      generation: 'ab'.repeat(16),
      displaySuffix: '',
      inflight: null,
      pending: null,
      disks,
    }),
  )
}

/** A committed disk record of a hand-written state.json (committed 2026-01-03 00:00). */
function diskRecord(name: string, stem: string, cycle: number, extra: object): object {
  return {
    name,
    stem,
    capacity: 1024,
    size: 1024,
    cycle,
    committedAt: '2026-01-03T00:00:00.000Z',
    source: { layers: [{ file: `${stem}.vmdk`, cid: '00000001', parentCid: 'ffffffff' }], successor: `${stem}-000001.vmdk` },
    cycleId: 'cd'.repeat(32),
    generation: 'ab'.repeat(16),
    mirrorCid: '0000cafe',
    ddb: {},
    cycleDigest: { algorithm: 'sha256', digest: '' },
    ...extra,
  }
}

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
  const disk = (name: string, stem: string, extra: object): object => diskRecord(name, stem, 7, extra)
  writeState(store, 'db-01', {
    'db-01.vmdk': disk('db-01.vmdk', 'db-01', { proven: { kind: 'scrub', at: '2026-01-02T22:00:00.000Z', cycle: 6 } }),
    'db-01_1.vmdk': disk('db-01_1.vmdk', 'db-01_1', {}),
  })
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

t.test('status tells a disk removed from the VM (its cycle) from one the cycles skip but the .vmx still names', async (t) => {
  const store = join(t.testdir(), 'store')
  const disk = (name: string, cycle: number, extra: object): object => diskRecord(name, name.replace(/\.vmdk$/, ''), cycle, extra)
  writeState(store, 'app-01', {
    'app-01.vmdk': disk('app-01.vmdk', 7, {}),
    'app-01_1.vmdk': disk('app-01_1.vmdk', 4, { removed: 5 }),
    'app-01_2.vmdk': disk('app-01_2.vmdk', 3, {}),
  })
  const h = await storeHealth(store, { now: Date.parse('2026-01-03T00:30:00.000Z') })
  // (no mirror files here: health is the conformance case's, on a real mirror)
  const human = renderStatus(h)
  t.match(human, /app-01: app-01_1\.vmdk removed from the VM in cycle 5 \(its \.vmx no longer names it; the VM is at cycle 7\): its mirror stays as of cycle 4 for the restore points before cycle 5/)
  t.match(human, /app-01: app-01_2\.vmdk last replicated in cycle 3 \(the VM is at cycle 7\): no longer replicated though the VM's \.vmx still names it/)
  t.notMatch(human, /app-01: app-01\.vmdk (removed|last replicated)/, 'not the disk the cycles carry')
  const st = JSON.parse(JSON.stringify(h)) as { vms: Array<{ disks: Array<{ name: string; removed?: number }> }> }
  t.same(
    st.vms[0]?.disks.map((d) => [d.name, d.removed ?? null]),
    [
      ['app-01.vmdk', null],
      ['app-01_1.vmdk', 5],
      ['app-01_2.vmdk', null],
    ],
    'JSON: removed on the removed disk only',
  )
})

t.test("status says when a cycle in flight has no journal a resume can read: the disk's problem, CRITICAL or WARNING as the receiver can get past it (human and JSON)", async (t) => {
  const store = join(t.testdir(), 'store')
  const source = { layers: [{ file: 'db-01-000001.vmdk', cid: '00000002', parentCid: '00000001' }], successor: 'db-01-000002.vmdk' }
  const inflight = (name: string, stem: string, mode: string, baseSize: number): object => ({
    name,
    stem,
    cycleId: 'ef'.repeat(32),
    mode,
    capacity: 1024,
    baseSize,
    target: mode === 'seed' ? 'seed' : 'flat',
    source,
    ddb: {},
    algorithm: 'sha256',
  })
  // db-01: an incremental in flight whose journal is gone; web-02: a seed of a new disk in flight whose journal is gone
  // (no mirror files here: db-01's committed disk reads as modified, CRITICAL anyway; web-02's is a new disk)
  // web-03: a seed whose journal is a FIFO (never opened): its rollback sets it aside, the receiver gets past it too
  for (const [vm, mode] of [
    ['db-01', 'incremental'],
    ['web-02', 'seed'],
    ['web-03', 'seed'],
  ] as const) {
    writeState(store, vm, mode === 'seed' ? {} : { [`${vm}.vmdk`]: diskRecord(`${vm}.vmdk`, vm, 7, {}) })
    const file = join(store, vm, '.grainline', 'state.json')
    const s = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>
    s['inflight'] = { cycle: 8, startedAt: '2026-01-03T00:10:00.000Z', disks: { [`${vm}.vmdk`]: inflight(`${vm}.vmdk`, vm, mode, mode === 'seed' ? 0 : 1024) } }
    writeFileSync(file, JSON.stringify(s))
  }
  execFileSync('mkfifo', [join(store, 'web-03', '.grainline', 'web-03.journal')])
  let out = ''
  const ctx = { write: (s: string) => (out += s), error: () => {}, stderr: process.stderr } as unknown as CliContext
  t.equal(await statusCommand.run({ store }, ctx), 2, 'grainline status exits 2 (CRITICAL)')
  t.match(out, /^GRAINLINE CRITICAL - 3 of 3 mirrors not OK: db-01 CRITICAL \(/, 'the summary')
  t.match(out, /db-01 +db-01\.vmdk +7 .*cycle 8 \(incremental, seq 0\)/, 'the table: the cycle in flight, no resume point')
  t.match(
    out,
    `\ndb-01: journal db-01/.grainline/db-01.journal of disk db-01.vmdk of VM db-01 is missing: cycle 8 can neither resume nor roll back: a resume needs the journal's resume point and a rollback its undo data`,
    'the in-place disk: what failed, what it means …',
  )
  t.match(out, `Put the journal back (restore the VM's folder whole from one backup), or remove the mirror (grainline mirror remove --store ${store} --vm db-01 --yes)`, '… and what to do')
  t.match(out, /\ndb-01: cycle 8 in flight/, 'the rest of the status there')
  t.match(
    out,
    `\nweb-02: journal web-02/.grainline/web-02.journal of disk web-02.vmdk of VM web-02 is missing: a resume of cycle 8, a seed, fails on it; the receiver then rolls the cycle back on its own`,
    'the seed: the receiver gets past it',
  )
  t.match(out, /web-02 WARNING/, 'WARNING')
  t.match(
    out,
    `\nweb-03: journal web-03/.grainline/web-03.journal of disk web-03.vmdk of VM web-03 is a FIFO, not the journal file (the receiver never opens it): a resume of cycle 8, a seed, fails on it; the receiver then rolls the cycle back on its own, which discards the seed file, sets the journal aside unopened as web-03/web-03.journal.set-aside-cycle-8`,
    'the seed whose journal is a FIFO: set aside by the rollback, the receiver gets past it',
  )
  t.notMatch(out, 'Move it out of .grainline', '… nothing for the operator to move')
  t.match(out, /web-03 WARNING/, 'WARNING')

  out = ''
  t.equal(await statusCommand.run({ store, output: 'json' }, ctx), 2, '--output json exits 2 too')
  const doc = JSON.parse(out) as { vms: Array<{ vm: string; health: { state: string }; disks: Array<{ inflight: { problem?: string; refused?: boolean; resumeSeq: number } | null }> }> }
  const db = doc.vms.find((v) => v.vm === 'db-01')
  const web = doc.vms.find((v) => v.vm === 'web-02')
  t.match(
    db,
    {
      health: { state: 'CRITICAL' },
      disks: [{ inflight: { cycle: 8, mode: 'incremental', resumeSeq: 0, refused: true, problem: /^journal db-01\/\.grainline\/db-01\.journal of disk db-01\.vmdk of VM db-01 is missing: / } }],
    },
    'JSON: refused, the problem',
  )
  t.match(
    web,
    {
      health: { state: 'WARNING' },
      disks: [{ inflight: { cycle: 8, mode: 'seed', resumeSeq: 0, problem: /^journal web-02\/\.grainline\/web-02\.journal of disk web-02\.vmdk of VM web-02 is missing: / } }],
    },
    'JSON: the seed, its problem',
  )
  t.equal(web?.disks[0]?.inflight?.refused, undefined, 'JSON: the seed not refused')
  const fifo = doc.vms.find((v) => v.vm === 'web-03')
  t.match(
    fifo,
    { health: { state: 'WARNING' }, disks: [{ inflight: { resumeSeq: 0, problem: /^journal web-03\/\.grainline\/web-03\.journal of disk web-03\.vmdk of VM web-03 is a FIFO/ } }] },
    'JSON: the FIFO seed, its problem',
  )
  t.equal(fifo?.disks[0]?.inflight?.refused, undefined, 'JSON: the FIFO seed not refused')
})

t.test("status's own usage and config errors are UNKNOWN (stdout, exit 3), never CRITICAL; other commands keep exit 2", async (t) => {
  const dir = t.testdir({ 'bad-rpo.json': JSON.stringify({ rpo: { target: 'soon' } }), 'ok.json': JSON.stringify({ rpo: { target: '1h' } }) })
  const store = join(dir, 'store')
  mkdirSync(store)
  const cases: Array<[string, string[], RegExp]> = [
    ['a bad --max-age', ['--store', store, '--max-age', '30x'], /^GRAINLINE UNKNOWN - --max-age: "30x" is not a duration \(e\.g\. 30s, 15m, 2h, 7d\)\n$/],
    ['a missing --config', ['--store', store, '--config', join(dir, 'nonexist.json')], /^GRAINLINE UNKNOWN - cannot read config .*nonexist\.json: ENOENT[^\n]*\n$/],
    ['a bad rpo.target', ['--store', store, '--config', join(dir, 'bad-rpo.json')], /^GRAINLINE UNKNOWN - [^\n]*rpo\.target: "soon" is not a duration[^\n]*\n$/],
    ['no --store', [], /^GRAINLINE UNKNOWN - Missing required argument: store\n$/],
    ['an unknown option', ['--store', store, '--max-aeg', '1h'], /^GRAINLINE UNKNOWN - --max-aeg: unknown option — did you mean --max-age\?\n$/],
    ['a bad --output', ['--store', store, '--output', 'xml'], /^GRAINLINE UNKNOWN - Invalid values:[^\n]*xml[^\n]*\n$/],
  ]
  for (const [what, args, out] of cases) {
    const r = await runProcess(['status', ...args])
    t.equal(r.code, 3, `${what}: UNKNOWN (${r.stdout}${r.stderr})`)
    t.match(r.stdout, out, what)
    t.equal(r.stderr, '', `${what}: said on stdout, where the monitoring system reads it`)
  }
  // the same check given good values judges the store (a mirror committed long ago: CRITICAL with --max-age)
  writeState(store, 'vm1', { 'scsi0:0': diskRecord('vm1.vmdk', 'vm1', 7, {}) })
  const ok = await runProcess(['status', '--store', store, '--config', join(dir, 'ok.json'), '--max-age', '1h'])
  t.equal(ok.code, 2, ok.stdout + ok.stderr)
  t.match(ok.stdout, /^GRAINLINE CRITICAL - /)
  // another command's usage error is still exit 2 on stderr
  const other = await runProcess(['points', '--store', store, '--bogus'])
  t.equal(other.code, 2, other.stderr)
  t.equal(other.stdout, '')
  t.match(other.stderr, /^grainline: Unknown argument: bogus/)
})
