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
import { EsxiSsh, esxiSettingsSchema, loadSettingsFile, shJoin, toEsxiDriverInit } from '@grainline/agent'
import { DEFAULT_DISPLAY_SUFFIX, FAILOVER_SUFFIX, cephFailover, listPoints, openPoint, type CephTarget } from '@grainline/receiver'
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

/** Do the failover; returns what was prepared and registered. */
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
  const name = `${a.vm}${DEFAULT_DISPLAY_SUFFIX.replace(/\)$/, ' failover)')}`
  const vmx = { networks: a.networks, connectNics: a.connectNics, suffix: FAILOVER_SUFFIX }
  // a Ceph store: the point restored as a standalone folder (flats read from its snapshots), the VM held in its state object
  const o =
    a.ceph === undefined
      ? { ...(await openPoint(a.store, a.vm, k as number, dir, { logger: log, kind: 'failover', format: a.format, vmx, latest: a.point === undefined })), cycle: k as number }
      : await cephFailover(a.ceph, a.vm, k, dir, { logger: log, vmx })
  if (init === undefined || dsVmx === undefined) return { vm: a.vm, cycle: o.cycle, dir: o.hold.dir, vmx: o.vmx }
  const ssh = await EsxiSsh.connect(init.ssh, { logger: log })
  try {
    const r = await ssh.exec(shJoin([init.vimCmd ?? 'vim-cmd', 'solo/registervm', dsVmx, name]), { vm: a.vm })
    const vmid = r.stdout.trim()
    if (r.code !== 0 || !/^\d+$/.test(vmid)) throw Object.assign(new Error(`registering ${dsVmx} on ${init.ssh.host} failed: ${(r.stdout + r.stderr).trim()}`), { code: 'E_REGISTER' })
    return { vm: a.vm, cycle: o.cycle, dir: o.hold.dir, vmx: o.vmx, registered: { vmid, name, path: dsVmx } }
  } finally {
    await ssh.close()
  }
}
