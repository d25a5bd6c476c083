/**
 * `grainline mirror failover` and `grainline points close` on the Ceph
 * store (`points open`, whose clones `points close` also removes, is
 * ceph-open.ts). A failover writes the mirror (or a point) as a standalone VM folder
 * (ceph-restore.ts: a vmfs descriptor and a thin flat per disk, each compared
 * with its snapshot read again) whose .vmx is prepared to run at the DR site
 * (holds.ts `prepareVmx`: a new uuid.bios, NICs not connected at power-on
 * unless asked, networks mapped), and marks the VM failed over in its state
 * object: a hold, as on the folder store. While held, every DiskOpen is
 * refused `E_HELD` (the agent's next cycle ships nothing: the DR copy is the
 * VM now) and `points drop/prune` are refused `E_HELD`. `points close`
 * releases the hold (the failback/undo path of the folder store): the
 * record first, then the folder.
 *
 * Unlike the folder store's failover (writable children over the mirror's
 * own files), the folder reads nothing of the pool once written: the hold
 * keeps replication from overwriting a VM that now runs at the DR site,
 * not the folder's data.
 *
 * Crash safety: the hold is recorded (one atomic state write, under the
 * VM's lease: `E_BUSY` while a receiver's session holds it; a cycle in
 * flight refuses `E_BUSY`) before the folder is written, so a folder never
 * exists without its hold; a crash or failure while writing leaves the hold
 * and a partial folder, which `points close --to DIR` removes. The lease is
 * released before the copy: the hold alone keeps the snapshots read from
 * being dropped or written.
 */
import { randomUUID } from 'node:crypto'
import { readdir, rm } from 'node:fs/promises'
import { mkdirDurable, removeOpened } from '../../fs-util.ts'
import { isAbsolute, resolve } from 'node:path'
import type { Logger } from 'pino'
import { ReceiverError, type ReceiverErrorCode } from '../../errors.ts'
import { inflightRefusal } from '../../operator-command.ts'
import { checkClosable, closeCommand, type HoldRecord } from '../../hold-record.ts'
import type { VmxPrepare } from '../../holds.ts'
import { removeClones } from './ceph-open.ts'
import { acquireCommitted } from './ceph-points.ts'
import type { CephHoldRecord } from './ceph-state.ts'
import { cephRestoreVm, type CephRestoredDisk, type CephRestoreProgress } from './ceph-restore.ts'
import type { CephTarget } from './rbd-cli.ts'

/** Display-name suffix of a failed-over VM (as the folder store's failover). */
export const FAILOVER_SUFFIX = ' (grainline failover)'

/**
 * Fail VM `vm` over to `dir` (created; must be empty): point `cycle`, or the
 * committed cycle (the mirror) when undefined, restored as a runnable VM
 * folder; the VM is held until {@link cephClosePoint}.
 * @throws ReceiverError E_NOT_FOUND (no mirror, no such point), E_BUSY (a session holds the VM, a cycle in flight), E_CONFIG (`dir` not empty or held already), E_STATE, E_VERIFY, E_IO
 */
export async function cephFailover(
  t: CephTarget,
  vm: string,
  cycle: number | undefined,
  dir: string,
  opts: { logger: Logger; vmx?: Omit<VmxPrepare, 'suffix'> & { suffix?: string }; onProgress?: (p: CephRestoreProgress) => void },
): Promise<{ vm: string; cycle: number; hold: HoldRecord; vmx: string; disks: CephRestoredDisk[]; made: string | undefined }> {
  const abs = resolve(dir)
  const m = await acquireCommitted(t, vm, opts.logger, 'mirror failover')
  let hold: HoldRecord
  let made: string | undefined
  try {
    const s = m.state
    if (s.inflight !== null) throw inflightRefusal(`ceph:${t.pool}`, vm, s.inflight.cycle, 'a failover')
    const k = cycle ?? s.committedCycle
    if (k !== s.committedCycle && !s.points.some((p) => p.cycle === k)) {
      throw new ReceiverError('E_NOT_FOUND', `VM ${vm} has no point ${k} in Ceph pool ${t.pool} (points: ${[...s.points.map((p) => p.cycle), s.committedCycle].join(', ')})`)
    }
    const holds = s.holds ?? []
    if (holds.some((h) => h.dir === abs)) throw new ReceiverError('E_CONFIG', `${abs} holds VM ${vm} already: "${closeCommand(`ceph:${t.pool}`, vm, abs, true)}" releases it`)
    // its parents fsynced: the failover folder does not vanish in a crash after the failover returned (ceph-restore.ts writes its files durably)
    made = await mkdirDurable(abs, 'destination')
    if ((await readdir(abs)).length > 0) throw new ReceiverError('E_CONFIG', `${abs} is not empty: fail over into a new folder`)
    hold = { id: randomUUID(), cycle: k, dir: abs, kind: 'failover', createdAt: new Date().toISOString() }
    await m.write({ ...s, holds: [...holds, hold] })
  } finally {
    m.release()
  }
  opts.logger.info({ vm, cycle: hold.cycle, dir: abs }, 'failover: the mirror is held, restoring the point as a VM folder')
  const r = await cephRestoreVm(t, vm, hold.cycle, abs, {
    ...(opts.onProgress === undefined ? {} : { onProgress: opts.onProgress }),
    run: { ...opts.vmx, suffix: opts.vmx?.suffix ?? FAILOVER_SUFFIX },
  }).catch((err: unknown) => {
    const code = (err as { code?: unknown }).code
    throw new ReceiverError(
      typeof code === 'string' && code.startsWith('E_') ? (code as ReceiverErrorCode) : 'E_IO',
      `failover of VM ${vm} to ${abs}: ${(err as Error).message}; the VM stays held: "${closeCommand(`ceph:${t.pool}`, vm, abs, true)}" releases it and removes the folder`,
      { cause: err },
    )
  })
  return { vm, cycle: hold.cycle, hold, vmx: resolve(abs, `${vm}.vmx`), disks: r.disks, made }
}

/**
 * Undo {@link cephFailover} for a caller that failed after it returned (a
 * registration on the DR host that failed), as the folder store's undoOpen:
 * the hold's record dropped under the lease (refused as {@link cephClosePoint}
 * refuses: the hold then stays), then what the failover wrote removed — its
 * folder with the parents it made (`made`, from cephFailover; each parent only
 * while empty), or, when the folder was there before (empty), only the files
 * in it: the operator's folder (a datastore's mount point, a folder made for
 * the failover) stays. Nothing is removed from a folder that is not a
 * failover folder of files only (logged).
 * @throws ReceiverError E_NOT_FOUND (no mirror), E_BUSY, E_STATE, E_IO
 */
export async function cephUndoFailover(t: CephTarget, vm: string, hold: HoldRecord, opts: { logger: Logger; made: string | undefined }): Promise<void> {
  const m = await acquireCommitted(t, vm, opts.logger, 'mirror failover')
  try {
    const holds = m.state.holds ?? []
    const own = holds.find((h) => h.id === hold.id)
    if (own === undefined) return
    await checkClosable(vm, [own], true)
    await m.write({ ...m.state, holds: holds.filter((h) => h !== own) })
  } finally {
    m.release()
  }
  if (await isFailoverFolder(hold.dir)) await removeOpened(hold.dir, opts.made)
  else opts.logger.warn({ vm, dir: hold.dir }, 'failover undone: hold released; its folder was left: it is not a failover folder of files only (remove it yourself)')
  opts.logger.info({ vm, dir: hold.dir }, 'failover undone: hold released, what it wrote removed (Ceph store)')
}

/**
 * Whether `dir` looks like a failover folder: absolute, not the root, and
 * regular files only (what cephFailover writes). The path comes from the
 * state object, which the pool's other clients can write: a hold naming
 * `/home` must not make `points close --all` remove it.
 */
async function isFailoverFolder(dir: string): Promise<boolean> {
  if (typeof dir !== 'string' || !isAbsolute(dir) || resolve(dir) === resolve('/')) return false
  try {
    return (await readdir(dir, { withFileTypes: true })).every((e) => e.isFile())
  } catch {
    return false
  }
}

/**
 * Release the hold(s) of a VM on `dir` (or every hold with `all`). `dir` is
 * a failover's folder or an opened point's name (`open-…`, ceph-open.ts).
 * An opened point's clones are removed first, under the lease (a clone in
 * use refuses `E_BUSY` and the hold stays), then the record; a failover's
 * folder after the record (on this host; a folder that is not a failover's,
 * see isFailoverFolder, is left and logged). Returns the holds released.
 * @throws ReceiverError E_NOT_FOUND (no mirror, no such hold), E_BUSY, E_STATE, E_IO
 */
export async function cephClosePoint(t: CephTarget, vm: string, opts: { logger: Logger; dir?: string; all?: boolean; failover?: boolean }): Promise<CephHoldRecord[]> {
  const m = await acquireCommitted(t, vm, opts.logger, 'points close')
  let drop: CephHoldRecord[]
  try {
    const holds = m.state.holds ?? []
    const abs = opts.dir === undefined ? undefined : resolve(opts.dir)
    drop = holds.filter((h) => opts.all === true || h.dir === abs || h.dir === opts.dir)
    if (drop.length === 0) throw new ReceiverError('E_NOT_FOUND', `VM ${vm} has no hold${opts.dir === undefined ? '' : ` on ${opts.dir}`} (holds: ${holds.map((h) => h.dir).join(', ') || 'none'})`)
    await checkClosable(vm, drop, opts.failover === true)
    const staying = holds.filter((h) => !drop.includes(h))
    // an opened point's clones go before its record: a clone never exists without its hold
    await removeClones(t, vm, drop, staying, opts.logger)
    await m.write({ ...m.state, holds: staying })
  } finally {
    m.release()
  }
  for (const h of drop) {
    if (h.kind === 'open' && h.clones !== undefined) continue
    if (await isFailoverFolder(h.dir)) await rm(h.dir, { recursive: true, force: true })
    else opts.logger.warn({ vm, dir: h.dir }, 'hold released; its folder was left: it is not a failover folder of files only (remove it yourself)')
  }
  opts.logger.info({ vm, dirs: drop.map((h) => h.dir) }, 'hold released (Ceph store)')
  return drop
}
