// `--store ceph:POOL` options of status/points/mirror, the Ceph status text, and usage errors of the Ceph actions (docs/CEPH.md).
import t from 'tap'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { runNode } from '@grainline/test-utils'
import { cephTargetFrom } from '../src/commands/ceph-options.ts'
import { assessStore, type VmStatus } from '@grainline/receiver'
import { renderCephDetails, renderStatus } from '../src/commands/status-run.ts'

t.test('the Ceph target of --store ceph:POOL and the client options', async (t) => {
  t.same(cephTargetFrom('ceph:rbd', { 'ceph-conf': '/etc/c.conf', 'ceph-id': 'gl', keyring: '/k' }), { pool: 'rbd', conf: '/etc/c.conf', id: 'gl', keyring: '/k' })
  t.same(cephTargetFrom('ceph:rbd', {}), { pool: 'rbd' })
  t.throws(() => cephTargetFrom('ceph:a/b', {}), { code: 'E_CONFIG' })
})

t.test("a Ceph store's status: the health table (held shown), then each disk's snapshot, the VM's used bytes and its points' bytes", async (t) => {
  const disk = (name: string, cycle: number, snapshot: string, extra: object = {}) => ({
    name,
    committedCycle: cycle,
    committedAt: '2026-11-30T12:00:00.000Z',
    capacity: 1024 * 1024,
    size: 1024 * 1024,
    mirrorCid: 'abcd0123',
    modified: false,
    trivial: null,
    certify: null,
    diverged: null,
    proven: null,
    inflight: null,
    snapshot,
    ...extra,
  })
  const vm = (name: string, disks: object[], holds: object[] = []) => ({
    vm: name,
    committedCycle: 3,
    committedAt: '2026-11-30T12:00:00.000Z',
    generation: 'g',
    inflightCycle: 0,
    needsRecovery: false,
    disks,
    vmxDropped: [],
    holds,
    points: [1, 2],
  })
  const h = assessStore(
    {
      store: 'ceph:rbd',
      vms: [
        vm('web', [
          disk('web.vmdk', 3, 'rbd/gl.a.b.c@c3-x', { inflight: { cycle: 4, mode: 'incremental', resumeSeq: 7 } }),
          disk('web_1.vmdk', 3, 'rbd/gl.a.d.e@c3-x', { diverged: { reason: 'trivial', at: 'x' } }),
        ]),
        vm('db', [disk('db.vmdk', 3, 'rbd/gl.f.g.h@c3-x')], [{ id: 'h', cycle: 2, dir: '/dr/db', kind: 'failover', createdAt: 'x' }]),
      ] as unknown as VmStatus[],
    },
    { now: Date.parse('2026-11-30T12:10:00.000Z') },
  )
  const o = {
    ...h,
    vms: h.vms.map((v) => ({
      ...v,
      rpo: { targetSeconds: 86400, ageSeconds: 600, state: 'ok' as const },
      usedBytes: v.vm === 'web' ? 5 * 1024 * 1024 : 4096,
      restorePoints: [
        { cycle: 1, committedAt: 'x', bytes: 1024 * 1024, held: false },
        { cycle: 2, committedAt: 'x', bytes: 2 * 1024 * 1024, held: v.vm === 'db' },
      ],
      lastCycle: null,
      live: null,
    })),
  }
  const text = renderStatus(o) + renderCephDetails(o)
  t.match(text, /^GRAINLINE CRITICAL - /, 'the monitoring summary line, as for a folder store')
  t.match(text, /db\.vmdk .*HELD \(failover point 2\)/, 'a failed-over VM is shown held')
  t.match(text, /cycle 4 \(incremental, seq 7\)/)
  t.match(text, /DIVERGED/)
  t.match(text, /rbd\/gl\.a\.b\.c@c3-x/, "each disk's committed snapshot")
  t.match(text, /web\.vmdk .*5\.00 MiB .*2 \(3\.00 MiB\)/, "the VM's used bytes, its points and their bytes")
  t.equal(renderCephDetails({ ...o, vms: [] }), '', 'nothing to add without mirrors')
})

t.test('ceph:POOL actions: usage errors before the cluster is asked (exit 2, one message)', async (t) => {
  const bin = resolve(dirname(fileURLToPath(import.meta.url)), '../src/bin.js')
  // a pool no cluster answers for: every case must stop before a Ceph client runs
  const store = ['--store', 'ceph:nopool', '--ceph-conf', '/nonexistent/ceph.conf', '--vm', 'v']
  const cases: Array<[string[], RegExp]> = [
    [['mirror', 'failover', ...store], /failover from a ceph:POOL store needs --to DIR/],
    [['points', 'open', ...store, '--point', '1', '--to', '/tmp/x'], /points open on a Ceph store makes RBD clones, not a folder/],
    [['points', 'archive', ...store], /points archive needs --archive s3:\/\/BUCKET/],
    [['points', 'drop', ...store], /points drop needs --point K/],
    [['points', 'close', ...store], /points close needs --to DIR or --all/],
    [['points', 'prune', ...store], /points prune needs a policy/],
    [['mirror', 'import', ...store], /mirror import needs --from DIR/],
    [['mirror', 'import', '--store', '/tmp/folder-store', '--vm', 'v', '--from', '/tmp/x'], /mirror import writes into a Ceph store/],
  ]
  for (const [args, want] of cases) {
    const r = await runNode(bin, args)
    t.equal(r.code, 2, `${args.slice(0, 2).join(' ')}: exit 2 (${r.stderr.trim()})`)
    t.match(r.stderr, want)
  }
})
