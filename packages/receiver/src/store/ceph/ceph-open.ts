/**
 * `grainline points open --store ceph:POOL`: a point (or the mirror) opened
 * as a runnable disk set the Ceph way — an RBD clone of each disk's
 * snapshot (copy-on-write: the clone costs what is written to it, the
 * point's snapshot never changes). QEMU boots it as `rbd:POOL/CLONE`.
 *
 * As on the folder store, the open is a hold in the VM's state object
 * (`kind: "open"`, its name in `dir`, its clones in `clones`): while held,
 * every DiskOpen is refused `E_HELD` and `points drop/prune` are refused
 * `E_HELD`, until `points close --to NAME` (ceph-holds.ts) removes the
 * clones and the hold.
 *
 * Names: a clone is `glo.<vmkey>.<diskkey>.<open id>` (ceph-state.ts
 * CephNames.clone) — the `glo.` prefix is never a mirror image's (`gl.`),
 * the open id is 12 random hex digits, and `rbd clone` never replaces an
 * existing image (EEXIST): an open cannot take another's or a mirror's name.
 *
 * Crash safety: under the VM's lease (`E_BUSY` while a receiver's session
 * holds it; a cycle in flight refuses `E_BUSY`), the hold naming every
 * clone is written first (one atomic state write), then each snapshot is
 * protected and cloned. A crash or failure after the record leaves a hold
 * whose clones may be missing or partial; `points close` removes whatever
 * exists of them (a missing clone is fine), unprotects, then drops the
 * record. A clone therefore never exists without its hold.
 */
import { randomBytes, randomUUID } from 'node:crypto'
import type { Logger } from 'pino'
import { validateName } from '@grainline/protocol'
import { ReceiverError, type ReceiverErrorCode } from '../../errors.ts'
import { inflightRefusal } from '../../operator-command.ts'
import { closeCommand } from '../../hold-record.ts'
import { acquireCommitted } from './ceph-points.ts'
import { pointSnapshots, RBD_NAME } from './ceph-restore.ts'
import type { CephClone, CephHoldRecord } from './ceph-state.ts'
import { CephCommandError, runCeph, type CephTarget } from './rbd-cli.ts'

/** How QEMU names an image of the target: `rbd:POOL/IMAGE[:conf=…][:id=…][:keyring=…]` (pure). */
export function qemuRbdName(t: CephTarget, image: string): string {
  const esc = (v: string): string => v.replace(/[:\\]/g, (c) => `\\${c}`)
  return `rbd:${t.pool}/${image}${t.conf === undefined ? '' : `:conf=${esc(t.conf)}`}${t.id === undefined ? '' : `:id=${esc(t.id)}`}${t.keyring === undefined ? '' : `:keyring=${esc(t.keyring)}`}`
}

/** A QEMU command line that boots the clones (first disk first), NICs left out: the VM must not meet its source's network. */
export function qemuBootHint(t: CephTarget, clones: readonly CephClone[]): string {
  const drives = clones.map((c) => `-drive 'file=${qemuRbdName(t, c.image).replace(/,/g, ',,')},format=raw,if=virtio,cache=writeback'`)
  return `qemu-system-x86_64 -machine accel=kvm -m 4096 -nic none ${drives.join(' ')}`
}

/**
 * Open point `cycle` of `vm` (the committed cycle, the mirror, when
 * undefined) as RBD clones; the VM is held until `points close --to NAME`.
 * @throws ReceiverError E_BAD_NAME, E_NOT_FOUND (no mirror, no such point), E_BUSY (a session holds the VM, a cycle in flight), E_STATE (a hostile state object), E_IO (a Ceph command failed: the hold stays, `points close` releases it)
 */
export async function cephOpenPoint(
  t: CephTarget,
  vm: string,
  cycle: number | undefined,
  opts: { logger: Logger },
): Promise<{ vm: string; cycle: number; name: string; hold: CephHoldRecord; clones: Array<CephClone & { snapshot: string; qemu: string }>; boot: string }> {
  validateName(vm, 'VM name')
  const m = await acquireCommitted(t, vm, opts.logger, 'points open')
  try {
    const s = m.state
    if (s.inflight !== null) throw inflightRefusal(`ceph:${t.pool}`, vm, s.inflight.cycle, 'opening a point')
    const k = cycle ?? s.committedCycle
    const disks = pointSnapshots(t, s, k)
    const openId = randomBytes(6).toString('hex')
    const name = `open-${openId}`
    const clones: CephClone[] = disks.map(([disk, d]) => ({ disk, image: m.names.clone(disk, openId), parent: { image: d.image, snap: d.snap } }))
    const hold: CephHoldRecord = { id: randomUUID(), cycle: k, dir: name, kind: 'open', createdAt: new Date().toISOString(), clones }
    // the commit point of the open: a clone never exists without the hold naming it
    await m.write({ ...s, holds: [...(s.holds ?? []), hold] })
    try {
      for (const c of clones) {
        m.checkLease()
        const snapshot = `${t.pool}/${c.parent.image}@${c.parent.snap}`
        await runCeph(t, 'rbd', ['snap', 'protect', snapshot]).catch((err: unknown) => {
          if (!(err instanceof CephCommandError && /already protected/i.test(err.stderr))) throw err
        })
        await runCeph(t, 'rbd', ['clone', snapshot, `${t.pool}/${c.image}`])
      }
    } catch (err) {
      const code = (err as { code?: unknown }).code
      throw new ReceiverError(
        typeof code === 'string' && code.startsWith('E_') ? (code as ReceiverErrorCode) : 'E_IO',
        `opening point ${k} of VM ${vm} as RBD clones: ${(err as Error).message}; the VM stays held: "${closeCommand(`ceph:${t.pool}`, vm, name)}" removes what was cloned and releases it`,
        { cause: err },
      )
    }
    opts.logger.info({ vm, cycle: k, name, clones: clones.map((c) => c.image) }, 'point opened as RBD clones; the mirror is held')
    return {
      vm,
      cycle: k,
      name,
      hold,
      clones: clones.map((c) => ({ ...c, snapshot: `${t.pool}/${c.parent.image}@${c.parent.snap}`, qemu: qemuRbdName(t, c.image) })),
      boot: qemuBootHint(t, clones),
    }
  } finally {
    m.release()
  }
}

/**
 * Remove the clones of `closing` holds (a clone already gone is fine), then
 * unprotect each parent snapshot no clone of `staying` holds uses (a
 * snapshot that still has children someone else made stays protected,
 * logged). Called under the VM's lease before the holds are dropped from
 * the state object.
 * @throws ReceiverError E_BUSY (a clone is in use: QEMU still runs it), E_STATE (a clone name that is not the store's), E_IO
 */
export async function removeClones(t: CephTarget, vm: string, closing: readonly CephHoldRecord[], staying: readonly CephHoldRecord[], log: Logger): Promise<void> {
  const parents = new Map<string, { image: string; snap: string }>()
  for (const h of closing) {
    for (const c of h.clones ?? []) {
      if (typeof c?.image !== 'string' || !/^glo\.[0-9a-f]{24}\.[0-9a-f]{24}\.[0-9a-f]{12}$/.test(c.image)) {
        throw new ReceiverError('E_STATE', `the hold ${h.dir} of VM ${vm} in pool ${t.pool} names a clone ${String(JSON.stringify(c)).slice(0, 200)} that is not one points open makes; it is left`)
      }
      // a crash after the protect and before the clone leaves a protected parent and no clone: unprotected below all the same
      if (typeof c.parent?.image === 'string' && typeof c.parent.snap === 'string' && RBD_NAME.test(c.parent.image) && RBD_NAME.test(c.parent.snap)) {
        parents.set(`${c.parent.image}@${c.parent.snap}`, c.parent)
      }
      try {
        await runCeph(t, 'rbd', ['rm', '--no-progress', `${t.pool}/${c.image}`])
      } catch (err) {
        if (err instanceof CephCommandError && err.notFound) continue
        if (err instanceof CephCommandError && /watchers|busy|\(16\)/i.test(err.stderr)) {
          throw new ReceiverError('E_BUSY', `clone ${t.pool}/${c.image} of VM ${vm} is in use (stop the VM that runs it), then run points close again`, { cause: err })
        }
        throw err
      }
    }
  }
  const used = new Set(staying.flatMap((h) => (h.clones ?? []).map((c) => `${c.parent?.image}@${c.parent?.snap}`)))
  for (const [spec, p] of parents) {
    if (used.has(spec)) continue
    try {
      await runCeph(t, 'rbd', ['snap', 'unprotect', `${t.pool}/${p.image}@${p.snap}`])
    } catch (err) {
      // gone with its image, never protected (a crash before the protect), or children made by someone else
      if (err instanceof CephCommandError) log.warn({ vm, snapshot: `${t.pool}/${spec}`, err: err.message }, 'snapshot left as it is (not unprotected)')
      else throw err
    }
  }
}
