// What an agent hears of a Ceph store's failures (SPEC §7, refusal-detail.ts
// peerErrorMessage): never the DR site's Ceph client setup nor its holders.
// A lock or helper failure quotes Ceph's own words in the log (they name the
// client's keyring and ceph.conf, the cluster's addresses); a VM whose lease
// another receiver holds names that holder's host and pid in the log and the
// operator's commands. The agent's Error frame says what failed and that the
// receiver's log has the rest. Real Python helpers, real librados, real
// `rados` commands: a client set up for a monitor that does not answer (its
// keyring missing) fails for real; the busy lease is taken on a real cluster.
import t, { type Test } from 'tap'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { failIfLingering, haveCeph, scratchDir, startCephCluster } from '@grainline/test-utils'
import { CephLock } from '../src/store/ceph/ceph-lock.ts'
import { RbdImage } from '../src/store/ceph/rbd-image.ts'
import { runCeph, type CephTarget } from '../src/store/ceph/rbd-cli.ts'
import { peerErrorMessage } from '../src/refusal-detail.ts'

failIfLingering(t)
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-common)'

/** A client set up for a monitor nobody answers on, its keyring missing: librados says so on stderr, naming the keyring. */
function unreachableTarget(t: Test): { target: CephTarget; secret: string } {
  const dir = join(scratchDir(t, 'grainline-ceph-peer-'), 'dr-site-secret')
  mkdirSync(dir)
  const keyring = join(dir, 'client.keyring')
  const conf = join(dir, 'ceph.conf')
  writeFileSync(conf, `[global]\nmon host = 127.0.0.1:1\nclient mount timeout = 3\nrados mon op timeout = 3\nkeyring = ${keyring}\nerr to stderr = true\n`)
  return { target: { pool: 'glpeer', conf }, secret: 'dr-site-secret' }
}

/** Run `op`, which must throw; its error. */
async function failure(op: () => Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await op()
  } catch (err) {
    return err as Error & { code?: string }
  }
  throw new Error('did not fail')
}

t.test('a Ceph lock the session helper cannot take: the log quotes Ceph (the keyring), the agent hears what failed and where to look', { skip }, async (t) => {
  const { target, secret } = unreachableTarget(t)
  const err = await failure(() => CephLock.take(target, 'grainline.lock.vm1', 'receiver drhost pid 4242 (VM vm1)', 'c0ffee', 30, 'vm1'))
  t.equal(err.code, 'E_IO')
  t.match(err.message, secret, `the log keeps Ceph's words: ${err.message.slice(0, 300)}`)
  const peer = peerErrorMessage(err, undefined)
  t.equal(peer.code, 'E_IO')
  t.notMatch(peer.message, secret, `the agent does not hear the keyring's path: ${peer.message}`)
  t.notMatch(peer.message, /keyring|errno|RADOS|127\.0\.0\.1/)
  t.match(peer.message, /cannot take the Ceph lock of VM vm1 in pool glpeer.*receiver's log/)
})

t.test("a failed rados command: the log quotes its stderr, the agent hears the command and that the receiver's log has the rest", { skip }, async (t) => {
  const { target, secret } = unreachableTarget(t)
  const err = await failure(() => runCeph(target, 'rados', ['-p', target.pool, 'stat', 'grainline.vm.vm1']))
  t.equal(err.code, 'E_IO')
  t.match(err.message, secret, `the log keeps the stderr: ${err.message.slice(0, 300)}`)
  const peer = peerErrorMessage(err, undefined)
  t.notMatch(peer.message, secret, `the agent does not hear the keyring's path: ${peer.message}`)
  t.match(peer.message, /Ceph command `rados -p glpeer stat grainline\.vm\.vm1` failed on the receiver .*receiver's log/)
})

t.test("an image the librbd helper cannot open: the log quotes the helper's error, the agent hears which image", { skip }, async (t) => {
  const { target } = unreachableTarget(t)
  const err = await failure(() => RbdImage.open(target, 'vm1.disk0', 'c1'))
  t.equal(err.code, 'E_IO')
  t.match(err.message, /RADOS timed out/, `the log keeps the helper's error: ${err.message.slice(0, 300)}`)
  const peer = peerErrorMessage(err, undefined)
  t.notMatch(peer.message, /RADOS|errno|keyring|dr-site-secret/, `the agent does not hear librados's words: ${peer.message}`)
  t.match(peer.message, /cannot open glpeer\/vm1\.disk0@c1 on the receiver/)
})

t.test("a VM whose lease another receiver holds: the log names the holder's host and pid, the agent hears E_BUSY for the VM without them", { skip }, async (t) => {
  const ceph = await startCephCluster({ pools: ['glpeer'] })
  t.teardown(() => ceph.stop())
  const target = { pool: 'glpeer', conf: ceph.conf }
  const first = await CephLock.take(target, 'grainline.lock.vm1', 'receiver drhost-a pid 4242 (VM vm1)', 'aaaa', 30, 'vm1')
  t.teardown(() => first.release())
  const err = await failure(() => CephLock.take(target, 'grainline.lock.vm1', 'receiver drhost-b pid 5353 (VM vm1)', 'bbbb', 30, 'vm1'))
  t.equal(err.code, 'E_BUSY')
  t.match(err.message, /held by receiver drhost-a pid 4242/, `the log and the operator name the holder: ${err.message}`)
  const peer = peerErrorMessage(err, undefined)
  t.equal(peer.code, 'E_BUSY')
  t.notMatch(peer.message, /drhost|4242|pid/, `the agent hears neither host nor pid: ${peer.message}`)
  t.match(peer.message, /another receiver session holds the Ceph lease of VM vm1 \(pool glpeer\).*retry/)
  first.release()
  await first.whenExited()
})
