// A released Ceph session client lets go of the process when the cluster no
// longer answers (ceph-lock.ts CephLock.release, cephTimeouts.releaseMs), on a
// real one-node cluster stopped under a held lease.
// The session helper answers a release by removing its registrations and
// unlocking: librados calls to the OSD, which wait forever (no op timeout) when
// the cluster is gone — a receiver closed after its cluster went away (or a
// test whose cluster is stopped right after its receiver closes, as
// ceph-damaged-resume.test's did 1 run in 2) kept the helper, its pipes and so
// the whole process alive until killed. Now a helper that has not exited
// `releaseMs` after its release is killed (the lease runs out by itself; the
// next holder fences what it left registered).
import t from 'tap'
import { failIfLingering, haveCeph, pollUntil, startCephCluster } from '@grainline/test-utils'
import { CephLock } from '../src/store/ceph/ceph-lock.ts'
import { cephTimeouts } from '../src/store/ceph/rbd-cli.ts'

const POOL = 'glrelease'
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-common)'
failIfLingering(t)

/** Whether process `pid` is gone (exited and reaped). */
const gone = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return false
  } catch {
    return true
  }
}

t.test('Ceph: a session client released while the cluster does not answer is killed after releaseMs: the process can exit', { skip }, async (t) => {
  const releaseMs = cephTimeouts.releaseMs
  t.teardown(() => {
    cephTimeouts.releaseMs = releaseMs
  })
  cephTimeouts.releaseMs = 2_000
  const ceph = await startCephCluster({ pools: [POOL] })
  t.teardown(() => ceph.stop())
  const target = { pool: POOL, conf: ceph.conf }

  // a clean release on a cluster that answers: the helper unlocks and exits by itself, at once
  const a = await CephLock.take(target, 'release-a', 'receiver A', 'cookie-ra', 10)
  const pa = a.helperPid as number
  const t0 = Date.now()
  a.release()
  await pollUntil(() => (gone(pa) ? true : undefined), { signal: AbortSignal.timeout(20_000) })
  t.ok(gone(pa), `a released helper exits by itself (${Date.now() - t0} ms)`)
  t.ok(Date.now() - t0 < 2_000, 'before releaseMs: it was not killed')
  const again = await CephLock.take(target, 'release-a', 'receiver B', 'cookie-rb', 10)
  t.same(again.fencedAddrs, [], 'it unlocked and removed its registrations (the next holder fences nobody)')

  // the cluster gone under a held lease (killed: the helper's librados calls wait for it forever), then the release
  await ceph.stop()
  const pb = again.helperPid as number
  const t1 = Date.now()
  again.release()
  const exited = await pollUntil(async () => (gone(pb) ? Date.now() - t1 : undefined), { intervalMs: 100, signal: AbortSignal.timeout(20_000) }).catch(() => undefined)
  t.ok(exited !== undefined, `the helper stuck in its release (no cluster to unlock on) is gone ${exited ?? 'never (20 s)'} ms after the release: killed at releaseMs`)
  t.ok(exited === undefined || exited >= 1_500, 'not before releaseMs: a release is given its time to unlock')
})
