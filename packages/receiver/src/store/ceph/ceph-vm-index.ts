/**
 * Which VMs a Ceph pool holds, without listing the pool: one RADOS object,
 * `grainline.vms`, whose omap keys are the names of the VMs' state objects
 * (a VM's first write sets the value to its name, for an operator's `rados
 * listomapvals`; a build's keys are empty).
 * `rados ls` walks every object of the pool — every 4 MiB piece of every
 * image, millions on a production pool — and ran on every `status`, every
 * metrics scrape and every VmOpen of a VM new to the pool (the VM count);
 * reading the index is one omap read, O(VMs).
 *
 * Invariant: the index holds the name of every state object (a superset).
 * A VM's first state write adds its key before the object exists
 * (ceph-mirror.ts, through the session client: fenced, and a full pool is
 * E_NO_SPACE as for the state itself); a removal deletes the key after the
 * state object (ceph-remove.ts). A key whose state object does not exist —
 * a first write that failed or was killed, a removal killed between its two
 * steps, a state object deleted by hand, a removal that ran while a build
 * was writing the listing it made before — is read as no VM by every reader
 * (they read each state object anyway); a reader never deletes a key, since
 * a session may be between its two steps. Running the removal again deletes
 * such a key.
 *
 * Pools written before the index: a reader that finds no `complete` key
 * lists the pool once (`rados ls`) and writes every state object it found
 * and `complete` in one RADOS write (INDEX_BUILD_HELPER); a VM created
 * meanwhile adds its own key, so the order does not matter. The write is
 * best-effort: a reader that may not write (a read-only Ceph client) or a
 * full pool (not tried) gets the listing it made, and the next reader tries
 * again. Every receiver writing to a pool must know
 * the index once one has built it: a receiver older than it would create
 * VMs the index does not list (docs/CEPH.md "The pool's VM index (and upgrading)").
 */
import { spawn } from 'node:child_process'
import { cephPython } from './rbd-image.ts'
import { cephPoolFull } from './ceph-space.ts'
import { type CephVmState, listPool, readCephState, STATE_PREFIX } from './ceph-state.ts'
import { CephCommandError, runCeph, type CephTarget } from './rbd-cli.ts'

/** The index object. */
export const VM_INDEX = 'grainline.vms'

/** The key saying the index holds every state object of the pool (written after a build). */
export const INDEX_COMPLETE = 'complete'

/** The state objects the index of pool `t` names (`rados listomapkeys`), or undefined when it is not complete. @throws CephCommandError but for a missing index */
async function readIndex(t: CephTarget): Promise<string[] | undefined> {
  let out: Buffer
  try {
    out = await runCeph(t, 'rados', ['-p', t.pool, 'listomapkeys', VM_INDEX])
  } catch (err) {
    if (err instanceof CephCommandError && err.notFound) return undefined
    throw err
  }
  const keys = out.toString('utf8').split('\n')
  if (!keys.includes(INDEX_COMPLETE)) return undefined
  return keys.filter((k) => k.startsWith(STATE_PREFIX))
}

/**
 * The Python of an index build (python3-rados, like the session client):
 * every key read from stdin (one per line) and `complete` set in one RADOS
 * write operation — atomic: the index is complete with all of them or
 * unchanged. `rados_osd_op_timeout` bounds a write the cluster pauses.
 * Arguments: conf, client id, keyring, pool, index object, complete key,
 * its value, timeout seconds.
 */
export const INDEX_BUILD_HELPER = `
import sys, rados
conf, cid, keyring, pool, obj, complete, stamp, timeout = sys.argv[1:9]
kw = {'conf': {'keyring': keyring}} if keyring else {}
c = rados.Rados(conffile=conf or '', rados_id=(cid or None), **kw)
c.conf_set('rados_osd_op_timeout', timeout)
c.connect(timeout=int(timeout))
io = c.open_ioctx(pool)
keys = [k for k in sys.stdin.read().split('\\n') if k]
with rados.WriteOpCtx() as op:
    io.set_omap(op, tuple(keys + [complete]), tuple([b''] * len(keys) + [stamp.encode()]))
    io.operate_write_op(op, obj)
io.close()
c.shutdown()
`

/** How long an index build may write (the helper's op timeout; the process is killed a little later). */
export const INDEX_BUILD_SECONDS = 15

/** Builds in flight, by cluster and pool: readers of one pool share one. */
const building = new Map<string, Promise<string[]>>()

/**
 * Index the pool's state objects from one `rados ls` (a pool written before
 * the index): all of them and `complete` in one write (INDEX_BUILD_HELPER),
 * skipped when the pool is full. The listing is returned whether or not the
 * write succeeded (see the file comment); concurrent readers of a pool share
 * one build.
 * @throws CephCommandError (the listing failed: a missing pool is `notFound`)
 */
async function buildIndex(t: CephTarget): Promise<string[]> {
  const id = `${t.conf ?? ''}\u0000${t.id ?? ''}\u0000${t.pool}`
  const running = building.get(id)
  if (running !== undefined) return await running
  const build = (async () => {
    const listed = (await listPool(t, 'objects')).filter((o) => o.startsWith(STATE_PREFIX))
    // a full pool pauses writes: no build then (a read-only client's write fails at once)
    if (!(await cephPoolFull(t).catch(() => true))) await writeIndex(t, listed).catch(() => {})
    return listed
  })()
  building.set(id, build)
  try {
    return await build
  } finally {
    building.delete(id)
  }
}

/** Run INDEX_BUILD_HELPER for `keys`; killed after INDEX_BUILD_SECONDS + 5 s. @throws Error when it fails */
async function writeIndex(t: CephTarget, keys: readonly string[]): Promise<void> {
  const python = cephPython()
  const args = ['-c', INDEX_BUILD_HELPER, t.conf ?? '', t.id ?? '', t.keyring ?? '', t.pool, VM_INDEX, INDEX_COMPLETE, new Date().toISOString(), String(INDEX_BUILD_SECONDS)]
  await new Promise<void>((resolve, reject) => {
    const p = spawn(python, args, { stdio: ['pipe', 'ignore', 'pipe'] })
    const err: Buffer[] = []
    p.stderr.on('data', (b: Buffer) => {
      if (err.length < 16) err.push(b)
    })
    const timer = setTimeout(() => p.kill('SIGKILL'), (INDEX_BUILD_SECONDS + 5) * 1000)
    p.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    p.on('close', (code) => {
      clearTimeout(timer)
      if (code === 0) resolve()
      else reject(new Error(`index build exited ${code ?? 'on a signal'}: ${Buffer.concat(err).toString('utf8').slice(-500)}`))
    })
    p.stdin.on('error', () => {})
    p.stdin.end(keys.join('\n'))
  })
}

/** The names of the pool's state objects (`grainline.vm.*`), sorted: from the index, built first when incomplete. @throws CephCommandError */
export async function listStateObjects(t: CephTarget): Promise<string[]> {
  const keys = (await readIndex(t)) ?? (await buildIndex(t))
  return [...new Set(keys)].sort()
}

/** The states of every VM in the pool (a key whose state object is gone is no VM). */
export async function listCephStates(t: CephTarget): Promise<CephVmState[]> {
  const states: CephVmState[] = []
  for (const o of await listStateObjects(t)) {
    const s = await readCephState(t, o)
    if (s !== undefined) states.push(s)
  }
  return states.sort((a, b) => a.vm.localeCompare(b.vm))
}
