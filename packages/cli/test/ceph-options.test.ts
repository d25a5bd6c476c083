// `--store ceph:POOL` options of status/points/mirror, the Ceph status table, and usage errors of the Ceph actions (docs/CEPH.md).
import t from 'tap'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { runNode } from '@grainline/test-utils'
import { cephTargetFrom } from '../src/commands/ceph-options.ts'
import { renderCephStatus } from '../src/commands/status.ts'

t.test('the Ceph target of --store ceph:POOL and the client options', async (t) => {
  t.same(cephTargetFrom('ceph:rbd', { 'ceph-conf': '/etc/c.conf', 'ceph-id': 'gl', keyring: '/k' }), { pool: 'rbd', conf: '/etc/c.conf', id: 'gl', keyring: '/k' })
  t.same(cephTargetFrom('ceph:rbd', {}), { pool: 'rbd' })
  t.throws(() => cephTargetFrom('ceph:a/b', {}), { code: 'E_CONFIG' })
})

t.test("the Ceph status table: one row per disk, in flight, diverged and held shown, used bytes and the points' bytes", async (t) => {
  const text = renderCephStatus({
    store: 'ceph:rbd',
    vms: [
      {
        vm: 'web',
        committedCycle: 3,
        committedAt: '2026-11-30T12:00:00.000Z',
        points: 2,
        pointBytes: 3 * 1024 * 1024,
        bytes: 5 * 1024 * 1024,
        disks: [
          {
            name: 'web.vmdk',
            committedCycle: 3,
            capacity: 1024 * 1024,
            snapshot: 'rbd/gl.a.b.c@c3-x',
            bytes: 4 * 1024 * 1024,
            diverged: null,
            inflight: { cycle: 4, mode: 'incremental', resumeSeq: 7 },
          },
          { name: 'web_1.vmdk', committedCycle: 3, capacity: 2048, snapshot: 'rbd/gl.a.d.e@c3-x', bytes: 1024 * 1024, diverged: { reason: 'trivial', at: 'x' }, inflight: null },
        ],
        holds: [],
      },
      {
        vm: 'db',
        committedCycle: 5,
        committedAt: '2026-11-30T12:00:00.000Z',
        points: 1,
        pointBytes: 0,
        bytes: 4096,
        disks: [{ name: 'db.vmdk', committedCycle: 5, capacity: 4096, snapshot: 'rbd/gl.f.g.h@c5-x', bytes: 4096, diverged: null, inflight: null }],
        holds: [{ id: 'h', cycle: 5, dir: '/dr/db', kind: 'failover', createdAt: 'x' }],
      },
    ],
  })
  t.match(text, /ceph:rbd: 2 VM\(s\)/)
  t.match(text, /db\.vmdk .*HELD \(failover point 5\)/, 'a failed-over VM is shown held')
  t.match(text, /cycle 4 \(incremental, seq 7\)/)
  t.match(text, /DIVERGED/)
  t.match(text, /rbd\/gl\.a\.b\.c@c3-x/)
  t.match(text, /\bused\b/, 'a used column')
  t.match(text, /web\.vmdk .*4\.00 MiB .*2 \(3\.00 MiB\)/, "a disk's used bytes, the VM's points and their bytes")
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
