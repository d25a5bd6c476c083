/**
 * Holds: a restore point (or the mirror) opened as a runnable VM folder
 * (`grainline points open`, `grainline mirror failover`). The folder's disks
 * are new writable SEsparse children over the point's chain, so the point
 * itself never changes; while a hold exists the receiver refuses to change
 * the data it reads through (DiskOpen → `E_HELD`, no prune, no drop), until
 * `grainline points close` drops it.
 *
 * Crash safety: the hold is recorded in `state.json` before its folder is
 * written, so a folder never exists without its hold; a close removes the
 * record first, then the folder (a leftover folder reads nothing of the store
 * once the receiver goes on, and `points close` of the same folder cleans it).
 */
import { randomBytes, randomUUID } from 'node:crypto'
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { isAbsolute, join, relative, resolve } from 'node:path'
import type { Logger } from 'pino'
import { createDelta } from '@grainline/vmdk'
import { ReceiverError } from './errors.ts'
import { readStoreFile } from './store-fs.ts'
import { checkedPointSource, disksAt, pointsOf } from './points.ts'
import { pointConfigText } from './point-config.ts'
import { readVmState } from './state-file.ts'
import { checkClosable, holdsOf, type HoldRecord } from './hold-record.ts'

export { holdsOf, heldMessage, type HoldRecord } from './hold-record.ts'
import { VmMirror } from './vm-mirror.ts'

/** An operator action waits this long for the lock of a session that is closing (then E_BUSY). */
const ADMIN_LOCK_WAIT_MS = 5000

/** How a .vmx is prepared to run beside the mirror. */
export interface VmxPrepare {
  /** appended to the display name */
  readonly suffix: string
  /** network label mapping `from` → `to` (ethernetN.networkName) */
  readonly networks?: Readonly<Record<string, string>>
  /** leave NICs connected at power-on @default false */
  readonly connectNics?: boolean
}

/**
 * Rewrite a mirror's .vmx to run as another VM (pure): display name marked,
 * a new `uuid.bios` (and `uuid.location` dropped), every NIC set not to
 * connect at power-on unless asked, network labels mapped.
 */
export function prepareVmx(text: string, opts: VmxPrepare, uuid: Buffer = randomBytes(16)): string {
  const lines = text.split(/\r?\n/)
  const out: string[] = []
  const nics = new Set<string>()
  const hex = [...uuid].map((b) => b.toString(16).padStart(2, '0'))
  const bios = `${hex.slice(0, 8).join(' ')}-${hex.slice(8).join(' ')}`
  for (const line of lines) {
    const m = /^\s*([A-Za-z0-9_.:]+)\s*=\s*"(.*)"\s*$/.exec(line)
    if (m === null) {
      out.push(line)
      continue
    }
    const key = (m[1] as string).toLowerCase()
    const value = m[2] as string
    const nic = /^(ethernet\d+)\./.exec(key)
    if (nic !== null) nics.add(nic[1] as string)
    if (key === 'displayname') out.push(`displayName = "${value}${opts.suffix}"`)
    else if (key === 'uuid.bios' || key === 'uuid.location') continue
    else if (nic !== null && key.endsWith('.startconnected')) continue
    else if (nic !== null && key.endsWith('.networkname') && opts.networks?.[value] !== undefined) out.push(`${m[1] as string} = "${opts.networks[value] as string}"`)
    else out.push(line)
  }
  while (out.length > 0 && out.at(-1) === '') out.pop()
  out.push(`uuid.bios = "${bios}"`)
  for (const n of [...nics].sort()) out.push(`${n}.startConnected = "${opts.connectNics === true ? 'TRUE' : 'FALSE'}"`)
  return out.join('\n') + '\n'
}

/**
 * Open point `cycle` (or the mirror) of a VM as a runnable folder `dir`: per
 * disk a writable SEsparse child over the point's chain, the prepared .vmx,
 * the .nvram. Records the hold first. Returns the hold and the .vmx path.
 * @throws ReceiverError E_NOT_FOUND (no such point), E_BUSY (a cycle in flight or a session writing), E_CONFIG (dir not empty)
 */
export async function openPoint(
  storeDir: string,
  vm: string,
  cycle: number,
  dir: string,
  opts: {
    logger: Logger
    kind?: 'open' | 'failover'
    vmx?: Omit<VmxPrepare, 'suffix'> & { suffix?: string }
    /** format of the writable children: `sesparse` (ESXi's own; QEMU reads but cannot write it) or `vmfssparse` (≤ 2 TiB; QEMU writes it too) @default 'sesparse' */
    format?: 'sesparse' | 'vmfssparse'
    /**
     * `cycle` was read as the mirror's committed cycle before the lock (the operator asked for the latest): a
     * cycle committed since is refused (E_BUSY, run again) rather than the older one opened as if it were the latest
     */
    latest?: boolean
  },
): Promise<{ hold: HoldRecord; vmx: string; disks: string[] }> {
  const m = await VmMirror.acquireWait(storeDir, vm, opts.logger, ADMIN_LOCK_WAIT_MS, undefined, { create: false })
  try {
    const state = m.state
    if (state.committedCycle === 0) throw new ReceiverError('E_NOT_FOUND', `no committed mirror of VM ${vm} in ${storeDir}`)
    if (state.inflight !== null) throw new ReceiverError('E_BUSY', `VM ${vm} has cycle ${state.inflight.cycle} in flight: roll it back or let it commit first`)
    if (opts.latest === true && cycle !== state.committedCycle)
      throw new ReceiverError('E_BUSY', `VM ${vm}: cycle ${state.committedCycle} was committed after the latest (${cycle}) was read: is replication still running? Stop it, then run again`)
    if (cycle !== state.committedCycle && !pointsOf(state).some((p) => p.cycle === cycle)) {
      throw new ReceiverError('E_NOT_FOUND', `VM ${vm} has no point ${cycle} (points: ${[...pointsOf(state).map((p) => p.cycle), state.committedCycle].join(', ')})`)
    }
    const abs = resolve(dir)
    await mkdir(abs, { recursive: true })
    if ((await readdir(abs)).length > 0) throw new ReceiverError('E_CONFIG', `${abs} is not empty: open the point into a new folder`)
    const kind = opts.kind ?? 'open'
    // every chain checked (points and mirror, points.ts) before the hold is recorded: a refused open leaves no hold behind
    const sources: Array<{ stem: string; source: string }> = []
    for (const rec of disksAt(state, cycle)) sources.push({ stem: rec.stem, source: await checkedPointSource(m.paths, state, rec.name, cycle) })
    const hold: HoldRecord = { id: randomUUID(), cycle, dir: abs, kind, createdAt: new Date().toISOString() }
    await m.setHolds([...holdsOf(state), hold])
    const disks: string[] = []
    for (const { stem, source } of sources) {
      const child = join(abs, `${stem}.vmdk`)
      await createDelta(source, child, { format: opts.format ?? 'sesparse' })
      disks.push(child)
    }
    const vmxPath = join(abs, `${vm}.vmx`)
    const suffix = opts.vmx?.suffix ?? (cycle === state.committedCycle ? ` (${kind === 'failover' ? 'failover' : 'opened'})` : ` (point ${cycle})`)
    // the point's own .vmx (point-config.ts), read as a store file: a FIFO or a link there is a typed E_STORE_FILE, never a hang with the VM locked (store-fs.ts)
    const text = await pointConfigText(m.paths, state, cycle, opts.logger)
    if (text !== undefined) await writeFile(vmxPath, prepareVmx(text, { ...opts.vmx, suffix }))
    try {
      await writeFile(join(abs, `${vm}.nvram`), await readStoreFile(join(m.paths.dir, `${vm}.nvram`)))
    } catch (err) {
      if ((err as { code?: unknown }).code !== 'ENOENT') throw err
    }
    opts.logger.info({ vm, cycle, dir: abs, kind }, 'point opened: the mirror is held')
    return { hold, vmx: vmxPath, disks }
  } finally {
    m.release()
  }
}

/**
 * Drop the hold(s) of a VM matching `dir` (or every hold), removing their
 * folders' files. Returns the holds dropped.
 * @throws ReceiverError E_NOT_FOUND (no such hold)
 */
export async function closePoint(storeDir: string, vm: string, opts: { logger: Logger; dir?: string; all?: boolean; failover?: boolean }): Promise<HoldRecord[]> {
  const m = await VmMirror.acquireWait(storeDir, vm, opts.logger, ADMIN_LOCK_WAIT_MS, undefined, { create: false })
  try {
    const holds = holdsOf(m.state)
    const abs = opts.dir === undefined ? undefined : resolve(opts.dir)
    const drop = holds.filter((h) => opts.all === true || h.dir === abs)
    if (drop.length === 0) throw new ReceiverError('E_NOT_FOUND', `VM ${vm} has no hold${abs === undefined ? '' : ` on ${abs}`} (holds: ${holds.map((h) => h.dir).join(', ') || 'none'})`)
    await checkClosable(vm, drop, opts.failover === true)
    for (const h of drop) checkRemovableDir(vm, h.dir, storeDir)
    await m.setHolds(holds.filter((h) => !drop.includes(h)))
    for (const h of drop) await rm(h.dir, { recursive: true, force: true })
    opts.logger.info({ vm, dirs: drop.map((h) => h.dir) }, 'hold released')
    return drop
  } finally {
    m.release()
  }
}

/**
 * A hold's folder is removed whole: it must be one openPoint could have made
 * (absolute, normalised), never `/`, the store or a folder holding the store
 * (a state.json edited by hand or by an attacker names any folder).
 * @throws ReceiverError E_STATE
 */
function checkRemovableDir(vm: string, dir: unknown, storeDir: string): void {
  const ok = typeof dir === 'string' && isAbsolute(dir) && resolve(dir) === dir && dir !== resolve('/')
  const rel = ok ? relative(dir as string, resolve(storeDir)) : ''
  if (!ok || rel === '' || (!rel.startsWith('..') && !isAbsolute(rel)))
    throw new ReceiverError(
      'E_STATE',
      `VM ${vm}: the hold's folder ${JSON.stringify(dir)} is not one a point was opened into (it is not absolute, or it is the store or holds it): state.json was changed by hand; nothing was removed`,
    )
}

/** The holds of a VM, read only. */
export async function listHolds(storeDir: string, vm: string): Promise<readonly HoldRecord[]> {
  const { VmPaths } = await import('./vm-paths.ts')
  const s = await readVmState(new VmPaths(storeDir, vm))
  return s === undefined ? [] : holdsOf(s)
}
