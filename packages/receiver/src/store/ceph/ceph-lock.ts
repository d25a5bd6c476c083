/**
 * A VM's lock on the Ceph store: an exclusive RADOS (cls_lock) lease on the
 * VM's lock object, taken and renewed by one small long-lived helper process
 * (Python's `rados` module from Ceph's own packages: a cls_lock lock belongs
 * to the client instance that took it, so the one-shot `rados lock get`
 * command cannot renew a lease — each run is another client). The lease
 * lasts `leaseSeconds`, is renewed every third of it with "must renew" (a
 * lease that expired and was taken by another receiver is never silently
 * retaken), and the helper releases it when its stdin closes — so a receiver
 * killed with -9 frees its VMs at once (the helper sees EOF), and one whose
 * host died frees them when the lease runs out.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { ReceiverError } from '../../errors.ts'
import { runCeph, type CephTarget } from './rbd-cli.ts'
import { unlessPoolFull } from './ceph-space.ts'

/** The lock name on every lock object. */
export const LOCK_NAME = 'grainline'

/** Default lease, seconds. */
export const DEFAULT_LEASE_SECONDS = 30

const HELPER = `
import sys, threading, rados
conf, cid, keyring, pool, obj, name, cookie, desc, dur = sys.argv[1:10]
dur = int(dur)
kw = {}
if keyring: kw['conf'] = {'keyring': keyring}
c = rados.Rados(conffile=conf or '', rados_id=(cid or None), **kw)
c.connect(timeout=20)
io = c.open_ioctx(pool)
try:
    io.lock_exclusive(obj, name, cookie, desc=desc, duration=dur)
except rados.ObjectBusy:
    print('busy', flush=True); sys.exit(16)
except rados.ObjectExists:
    print('busy', flush=True); sys.exit(16)
print('locked', flush=True)
stop = threading.Event()
def watch_stdin():
    sys.stdin.read()
    stop.set()
threading.Thread(target=watch_stdin, daemon=True).start()
while not stop.wait(max(1, dur // 3)):
    try:
        io.lock_exclusive(obj, name, cookie, desc=desc, duration=dur, flags=2)
    except Exception as e:
        print('lost ' + str(e), flush=True); sys.exit(3)
try:
    io.unlock(obj, name, cookie)
except Exception:
    pass
io.close(); c.shutdown()
`

/** Who holds a lock (from `rados lock info`): the holder's description names its receiver. */
export async function lockHolder(t: CephTarget, object: string): Promise<string> {
  try {
    const out = await runCeph(t, 'rados', ['-p', t.pool, 'lock', 'info', object, LOCK_NAME, '--format', 'json'])
    const info = JSON.parse(out.toString('utf8')) as { lockers?: Array<{ name?: string; cookie?: string; description?: string; expiration?: string }> }
    const l = info.lockers?.[0]
    if (l === undefined) return 'nobody (released just now)'
    return `${l.description || l.name || 'an unknown client'} (${l.name ?? '?'}, lease until ${l.expiration ?? '?'})`
  } catch {
    return 'another client (its lock could not be read)'
  }
}

/** A held lease; `lost` turns true when renewing it failed (writes must stop). */
export class CephLock {
  private readonly proc: ChildProcess
  private released = false
  /** set when the helper could not renew the lease: this receiver no longer owns the VM */
  lost: string | undefined = undefined

  private constructor(proc: ChildProcess) {
    this.proc = proc
  }

  /**
   * Take the lease on `object`. `holder` describes this receiver (shown to
   * whoever finds the VM locked).
   * @throws ReceiverError E_BUSY naming the holder; E_IO when the helper cannot run or connect
   */
  static async take(t: CephTarget, object: string, holder: string, cookie: string, leaseSeconds = DEFAULT_LEASE_SECONDS): Promise<CephLock> {
    const [conf, id, keyring] = [t.conf ?? '', t.id ?? '', t.keyring ?? '']
    const python = process.env['GRAINLINE_PYTHON'] ?? '/usr/bin/python3'
    const proc = spawn(python, ['-c', HELPER, conf, id, keyring, t.pool, object, LOCK_NAME, cookie, holder, String(leaseSeconds)], { stdio: ['pipe', 'pipe', 'pipe'] })
    proc.stdin?.on('error', () => {})
    const err: Buffer[] = []
    proc.stderr?.on('data', (b: Buffer) => {
      if (err.length < 32) err.push(b)
    })
    // taking a lease is a write: a full pool pauses it (E_NO_SPACE once the pool's flags say so)
    const first = await unlessPoolFull(
      t,
      new Promise<string>((resolve) => {
        let buf = ''
        const onData = (b: Buffer): void => {
          buf += b.toString('utf8')
          const nl = buf.indexOf('\n')
          if (nl >= 0) {
            proc.stdout?.off('data', onData)
            resolve(buf.slice(0, nl))
          }
        }
        proc.stdout?.on('data', onData)
        proc.on('error', (e) => resolve(`error ${e.message}`))
        proc.on('close', (code) => resolve(`exit ${code}`))
      }),
      `taking the lock ${object}`,
      () => proc.kill('SIGKILL'),
    )
    if (first === 'locked') {
      const lock = new CephLock(proc)
      let rest = ''
      proc.stdout?.on('data', (b: Buffer) => {
        rest += b.toString('utf8')
        if (rest.startsWith('lost')) lock.lost = rest.trim()
      })
      proc.on('close', () => {
        if (!lock.released && lock.lost === undefined) lock.lost = 'the lock helper exited'
      })
      return lock
    }
    proc.kill('SIGKILL')
    if (first === 'busy') throw new ReceiverError('E_BUSY', `VM lock ${object} in pool ${t.pool} is held by ${await lockHolder(t, object)}; another receiver replicates this VM`)
    throw new ReceiverError('E_IO', `cannot take the Ceph lock ${object} in pool ${t.pool} (${first}): ${Buffer.concat(err).toString('utf8').trim().slice(-1024)}`)
  }

  /** Release the lease (idempotent): the helper unlocks and exits on EOF. */
  release(): void {
    if (this.released) return
    this.released = true
    this.proc.stdin?.end()
  }

  /** @throws ReceiverError E_BUSY when the lease was lost (another receiver may own the VM now) */
  check(vm: string): void {
    if (this.lost !== undefined) throw new ReceiverError('E_BUSY', `lost the Ceph lock of VM ${vm} (${this.lost}): another receiver may hold it now; nothing more is written`)
  }
}
