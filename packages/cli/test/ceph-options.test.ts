// `--store ceph:POOL` options of status/points, and the Ceph status table (docs/CEPH.md).
import t from 'tap'
import { cephTargetFrom } from '../src/commands/ceph-options.ts'
import { renderCephStatus } from '../src/commands/status.ts'

t.test('the Ceph target of --store ceph:POOL and the client options', async (t) => {
  t.same(cephTargetFrom('ceph:rbd', { 'ceph-conf': '/etc/c.conf', 'ceph-id': 'gl', keyring: '/k' }), { pool: 'rbd', conf: '/etc/c.conf', id: 'gl', keyring: '/k' })
  t.same(cephTargetFrom('ceph:rbd', {}), { pool: 'rbd' })
  t.throws(() => cephTargetFrom('ceph:a/b', {}), { code: 'E_CONFIG' })
})

t.test('the Ceph status table: one row per disk, in flight, diverged and held shown', async (t) => {
  const text = renderCephStatus({
    store: 'ceph:rbd',
    vms: [
      {
        vm: 'web',
        committedCycle: 3,
        committedAt: '2026-11-30T12:00:00.000Z',
        points: 2,
        disks: [
          { name: 'web.vmdk', committedCycle: 3, capacity: 1024 * 1024, snapshot: 'rbd/gl.a.b.c@c3-x', diverged: null, inflight: { cycle: 4, mode: 'incremental', resumeSeq: 7 } },
          { name: 'web_1.vmdk', committedCycle: 3, capacity: 2048, snapshot: 'rbd/gl.a.d.e@c3-x', diverged: { reason: 'trivial', at: 'x' }, inflight: null },
        ],
        holds: [],
      },
      {
        vm: 'db',
        committedCycle: 5,
        committedAt: '2026-11-30T12:00:00.000Z',
        points: 1,
        disks: [{ name: 'db.vmdk', committedCycle: 5, capacity: 4096, snapshot: 'rbd/gl.f.g.h@c5-x', diverged: null, inflight: null }],
        holds: [{ id: 'h', cycle: 5, dir: '/dr/db', kind: 'failover', createdAt: 'x' }],
      },
    ],
  })
  t.match(text, /ceph:rbd: 2 VM\(s\)/)
  t.match(text, /db\.vmdk .*HELD \(failover point 5\)/, 'a failed-over VM is shown held')
  t.match(text, /cycle 4 \(incremental, seq 7\)/)
  t.match(text, /DIVERGED/)
  t.match(text, /rbd\/gl\.a\.b\.c@c3-x/)
})
