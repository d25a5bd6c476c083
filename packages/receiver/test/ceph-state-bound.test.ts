/**
 * A Ceph state object is read within its bound against a real cluster
 * (one monitor, one memstore OSD): `rados get` of an object above 16 MiB is
 * killed once its output passes the bound, and the state refused (E_STATE);
 * one at the bound is read. rbd-cli.test checks the same with a fake
 * `rados` that never ends.
 */
import t from 'tap'
import { haveCeph, startCephCluster } from '@grainline/test-utils'
import { CEPH_STATE_FORMAT, MAX_STATE_BYTES, readCephState } from '../src/store/ceph/ceph-state.ts'

const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-common)'
const POOL = 'glbound'

t.test('a state object above 16 MiB is refused while read (E_STATE); one at the bound is read', { skip }, async (t) => {
  const ceph = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const target = { pool: POOL, conf: ceph.conf }
  await ceph.run('rados', ['-p', POOL, 'put', 'big', '-'], Buffer.alloc(MAX_STATE_BYTES + 1024 * 1024, 0x20))
  await t.rejects(readCephState(target, 'big'), { code: 'E_STATE', message: `state object big in pool ${POOL} is above ${MAX_STATE_BYTES} bytes (not read further): not a state the receiver writes` })
  const json = JSON.stringify({ format: CEPH_STATE_FORMAT, vm: 'vm1', committedCycle: 0, disks: {}, points: [] })
  await ceph.run('rados', ['-p', POOL, 'put', 'fits', '-'], Buffer.from(json + ' '.repeat(MAX_STATE_BYTES - Buffer.byteLength(json))))
  t.match(await readCephState(target, 'fits', 'vm1'), { vm: 'vm1', committedCycle: 0 }, 'a state of exactly the bound is read')
  t.equal(await readCephState(target, 'none'), undefined, 'a missing object: no state')
})
