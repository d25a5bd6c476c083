/**
 * `grainline mirror failover`: prepare the mirror (or a restore point) to
 * run at the DR site — a VM folder of writable children over it (the mirror
 * and its points stay intact and held), networks mapped, NICs not connected
 * at power-on unless asked — and optionally register it on the DR ESXi host
 * over SSH with the esxi driver settings (`vim-cmd solo/registervm`).
 * From a `ceph:POOL` store the folder holds standalone flats restored from
 * the point's snapshots (docs/CEPH.md "Failover"), the VM held alike.
 */
import { join, relative, resolve, sep } from 'node:path'
import type { Logger } from 'pino'
import { EsxiSsh, esxiSettingsSchema, loadSettingsFile, shJoin, toEsxiDriverInit, type EsxiSshConfig } from '@grainline/agent'
import { FAILOVER_SUFFIX, cephFailover, cephUndoFailover, closeCommand, listPoints, openPoint, undoOpen, type CephTarget } from '@grainline/receiver'
import { UsageError } from '../exit-codes.ts'

/** Parse `--network 'VM Network=DR Network'` items. */
export function parseNetworkMap(items: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (const it of items) {
    const i = it.indexOf('=')
    if (i <= 0 || i === it.length - 1) throw new UsageError(`--network ${JSON.stringify(it)}: want 'SOURCE NETWORK=DR NETWORK'`)
    out[it.slice(0, i)] = it.slice(i + 1)
  }
  return out
}

/** The datastore path (`[ds] rel/path`) of a local path under one of the settings' datastore mounts. */
export function datastorePathOf(local: string, datastores: Readonly<Record<string, string | { localPath: string } | { access: 'sftp' }>>): string | undefined {
  const abs = resolve(local)
  for (const [name, d] of Object.entries(datastores)) {
    // a datastore the agent reaches only over SFTP has no local folder to write the failover VM into
    if (typeof d !== 'string' && !('localPath' in d)) continue
    const root = resolve(typeof d === 'string' ? d : d.localPath)
    if (abs === root || abs.startsWith(root + sep)) return `[${name}] ${relative(root, abs).split(sep).join('/')}`
  }
  return undefined
}

export interface FailoverArgs {
  readonly store: string
  readonly vm: string
  readonly point?: number
  readonly to?: string
  readonly networks: Readonly<Record<string, string>>
  readonly connectNics: boolean
  readonly register?: string
  readonly format: 'sesparse' | 'vmfssparse'
  /** the store is `ceph:POOL`: its target (then `to` is required; `format` does not apply: the folder holds standalone flats) */
  readonly ceph?: CephTarget
}

/** An error of the failover: `code` kept from what failed (E_SSH_CONNECT, E_REGISTER, …), the words saying what is left and what to do. */
function failoverError(err: unknown, message: string): Error {
  const code = (err as { code?: unknown }).code
  return Object.assign(new Error(message, { cause: err }), { code: typeof code === 'string' ? code : 'E_REGISTER' })
}

/**
 * Do the failover; returns what was prepared and registered. With
 * `--register`, the DR host is reached over SSH first (its address, host key
 * and login checked before anything is opened: an unreachable host leaves
 * nothing behind); a registration that fails after the point was opened
 * undoes the opening (the hold released, the folder it made removed), or
 * says how to release the hold when that fails too.
 */
export async function failover(a: FailoverArgs, log: Logger): Promise<{ vm: string; cycle: number; dir: string; vmx: string; registered?: { vmid: string; name: string; path: string } }> {
  if (a.ceph !== undefined && a.to === undefined) throw new UsageError('mirror failover from a ceph:POOL store needs --to DIR (the new VM folder; on a datastore of --register)')
  const k = a.point ?? (a.ceph === undefined ? (await listPoints(a.store, a.vm)).committedCycle : undefined)
  const dir = a.to ?? join(a.store, '.failover', `${a.vm}-point-${k}`)
  // validate the registration settings before anything is written
  const settings = a.register === undefined ? undefined : await loadSettingsFile(a.register, esxiSettingsSchema)
  if (settings !== undefined && !settings.ok) throw new UsageError(`${a.register}: ${settings.problems.join('; ')}`)
  const init = settings?.ok === true ? toEsxiDriverInit(settings.value) : undefined
  const dsVmx = settings?.ok === true ? datastorePathOf(join(dir, `${a.vm}.vmx`), settings.value.datastores) : undefined
  if (init !== undefined && dsVmx === undefined) throw new UsageError(`${dir} is on none of the datastores of ${a.register}: give --to a folder on a datastore the DR host mounts`)
  // the registered name is the .vmx's displayName: the VM's name and the failover's suffix (not stacked on the mirror's)
  const name = `${a.vm}${FAILOVER_SUFFIX}`
  const vmx = { networks: a.networks, connectNics: a.connectNics, suffix: FAILOVER_SUFFIX }
  const connect = async (ssh: EsxiSshConfig, left: string): Promise<EsxiSsh> =>
    await EsxiSsh.connect(ssh, { logger: log }).catch((err: unknown) => {
      throw failoverError(
        err,
        `mirror failover of VM ${a.vm}: the DR host of ${a.register} cannot be reached over SSH (${(err as Error).message}); ${left}. Check its ssh settings (host, port, username, key, hostKeyFingerprint) and that the host is up, then run again`,
      )
    })
  // fail fast: the DR host reached (address, host key, login) before the point is opened and the mirror held
  if (init !== undefined) await (await connect(init.ssh, 'nothing was opened, the mirror is not held')).close()
  // a Ceph store: the point restored as a standalone folder (flats read from its snapshots), the VM held in its state object
  const o =
    a.ceph === undefined
      ? { ...(await openPoint(a.store, a.vm, k as number, dir, { logger: log, kind: 'failover', format: a.format, vmx, latest: a.point === undefined })), cycle: k as number }
      : await cephFailover(a.ceph, a.vm, k, dir, { logger: log, vmx })
  if (init === undefined || dsVmx === undefined) return { vm: a.vm, cycle: o.cycle, dir: o.hold.dir, vmx: o.vmx }
  // the host may have registered the VM though the answer is not its vmid (a lost connection, an unknown output)
  let maybeRegistered = false
  try {
    const ssh = await connect(init.ssh, 'the registration failed')
    try {
      maybeRegistered = true
      const r = await ssh.exec(shJoin([init.vimCmd ?? 'vim-cmd', 'solo/registervm', dsVmx, name]), { vm: a.vm })
      const vmid = r.stdout.trim()
      maybeRegistered = r.code === 0
      if (r.code !== 0 || !/^\d+$/.test(vmid))
        throw Object.assign(new Error(`registering ${dsVmx} as "${name}" on ${init.ssh.host} failed: ${(r.stdout + r.stderr).trim() || `vim-cmd exited ${r.code}`}`), { code: 'E_REGISTER' })
      return { vm: a.vm, cycle: o.cycle, dir: o.hold.dir, vmx: o.vmx, registered: { vmid, name, path: dsVmx } }
    } finally {
      await ssh.close()
    }
  } catch (err) {
    throw await undoFailover(a, o, err, maybeRegistered ? ` (if ${init.ssh.host} registered it anyway, unregister "${name}" there)` : '', log)
  }
}

/**
 * Undo the opening of a failover whose registration failed (`err`): the hold
 * released and what the opening wrote removed (holds.ts undoOpen; a Ceph
 * store's by ceph-holds.ts cephUndoFailover). Returns the error to throw: what failed,
 * what was undone, or, when undoing failed too, the command that releases it.
 */
async function undoFailover(a: FailoverArgs, o: { hold: { dir: string }; made: string | undefined }, err: unknown, registeredNote: string, log: Logger): Promise<Error> {
  const what = (err as Error).message
  const dir = o.hold.dir
  try {
    if (a.ceph === undefined) await undoOpen(a.store, a.vm, o.hold as Parameters<typeof undoOpen>[2], { logger: log, made: o.made })
    else await cephUndoFailover(a.ceph, a.vm, o.hold as Parameters<typeof cephUndoFailover>[2], { logger: log, made: o.made })
  } catch (undoErr) {
    return failoverError(
      err,
      `${what}; undoing the failover failed too (${(undoErr as Error).message}): VM ${a.vm} stays held by ${dir}${registeredNote}. Once nothing runs from it, release it with "${closeCommand(a.ceph === undefined ? a.store : `ceph:${a.ceph.pool}`, a.vm, dir, true)}"`,
    )
  }
  const removed = o.made === undefined ? `the files written into ${dir} removed` : `${dir} removed`
  return failoverError(err, `${what}; the failover was undone: VM ${a.vm} is no longer held, ${removed}${registeredNote}. Fix the cause, then run the failover again`)
}
