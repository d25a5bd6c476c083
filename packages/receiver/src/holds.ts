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
 *
 * A close removes a folder whole, and the folder comes from `state.json`:
 * only one that carries the marker its open wrote first ({@link HOLD_MARKER},
 * naming the hold) is removed, never one inside a VM folder of the store.
 */
import { randomBytes, randomUUID } from 'node:crypto'
import { lstat, readdir, realpath, rm } from 'node:fs/promises'
import { isAbsolute, join, relative, resolve, sep } from 'node:path'
import type { Logger } from 'pino'
import { createDelta } from '@grainline/vmdk'
import { ReceiverError } from './errors.ts'
import { inflightRefusal } from './operator-command.ts'
import { isTempName, mkdirDurable, removeOpened, writeFileAtomic } from './fs-util.ts'
import { CONFIG_FILE_MAX_BYTES, readStoreFile } from './store-fs.ts'
import { checkedPointSource, disksAt, pointsOf } from './points.ts'
import { pointConfigText } from './point-config.ts'
import { readVmState } from './state-file.ts'
import { checkClosable, holdsOf, type HoldRecord } from './hold-record.ts'
import { isVmName } from './receiver-rules.ts'
import { markVmx } from './mirror-vmx.ts'

export { closeCommand, holdsOf, heldMessage, heldPeerMessage, type HoldRecord } from './hold-record.ts'
import { VmMirror } from './vm-mirror.ts'

/** An operator action waits this long for the lock of a session that is closing (then E_BUSY). */
const ADMIN_LOCK_WAIT_MS = 5000

/**
 * The file `points open` writes first into the folder it opens a point in
 * (JSON: the hold's id, the VM, the cycle); `points close` removes only a
 * folder whose marker names the hold it drops.
 */
export const HOLD_MARKER = '.grainline-hold'
/** A marker is one short JSON line; a larger file is not one `points open` wrote. */
const HOLD_MARKER_MAX_BYTES = 4096

/** Whether a file name is a temporary file of the marker's atomic write (`.grainline-hold.tmp-<pid>-<8 hex>`, fs-util.ts writeFileAtomic). */
const isMarkerTemp = (name: string): boolean => name.startsWith(`${HOLD_MARKER}.tmp-`) && isTempName(name)

/** How a .vmx is prepared to run beside the mirror. */
export interface VmxPrepare {
  /** the display name's mark, in place of the one grainline recorded in the .vmx (mirror-vmx.ts markVmx) */
  readonly suffix: string
  /**
   * the mark a .vmx written before marks were recorded is known to carry (the mirror's suffix), lost before `suffix`
   * is added; a name's other endings are the VM's own (`Build (opened)`) and stay
   */
  readonly replaces?: string
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
    // the display name is marked below (markVmx)
    if (key === 'uuid.bios' || key === 'uuid.location') continue
    else if (nic !== null && key.endsWith('.startconnected')) continue
    else if (nic !== null && key.endsWith('.networkname') && opts.networks?.[value] !== undefined) out.push(`${m[1] as string} = "${opts.networks[value] as string}"`)
    else out.push(line)
  }
  while (out.length > 0 && out.at(-1) === '') out.pop()
  out.push(`uuid.bios = "${bios}"`)
  for (const n of [...nics].sort()) out.push(`${n}.startConnected = "${opts.connectNics === true ? 'TRUE' : 'FALSE'}"`)
  return markVmx(out.join('\n') + '\n', opts.suffix, opts.replaces)
}

/**
 * Open point `cycle` (or the mirror) of a VM as a runnable folder `dir`: per
 * disk a writable SEsparse child over the point's chain, the prepared .vmx,
 * the .nvram. Records the hold first. Returns the hold, the .vmx path, and
 * the outermost folder it created for `dir` (undefined: `dir` was there, empty),
 * which {@link undoOpen} removes.
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
    /**
     * format of the writable children: `sesparse` (ESXi's own; QEMU reads but cannot write it) or `vmfssparse` (≤ 2 TiB;
     * its grain tables laid out up front, so QEMU writes it too, slowly: one synchronous table update per 512-byte
     * sector first written) @default 'sesparse'
     */
    format?: 'sesparse' | 'vmfssparse'
    /**
     * `cycle` was read as the mirror's committed cycle before the lock (the operator asked for the latest): a
     * cycle committed since is refused (E_BUSY, run again) rather than the older one opened as if it were the latest
     */
    latest?: boolean
  },
): Promise<{ hold: HoldRecord; vmx: string; disks: string[]; made: string | undefined }> {
  const m = await VmMirror.acquireWait(storeDir, vm, opts.logger, ADMIN_LOCK_WAIT_MS, undefined, { create: false })
  try {
    const state = m.state
    if (state.committedCycle === 0) throw new ReceiverError('E_NOT_FOUND', `no committed mirror of VM ${vm} in ${storeDir}`)
    if (state.inflight !== null) throw inflightRefusal(storeDir, vm, state.inflight.cycle, 'opening a point')
    if (opts.latest === true && cycle !== state.committedCycle)
      throw new ReceiverError('E_BUSY', `VM ${vm}: cycle ${state.committedCycle} was committed after the latest (${cycle}) was read: is replication still running? Stop it, then run again`)
    if (cycle !== state.committedCycle && !pointsOf(state).some((p) => p.cycle === cycle)) {
      throw new ReceiverError('E_NOT_FOUND', `VM ${vm} has no point ${cycle} (points: ${[...pointsOf(state).map((p) => p.cycle), state.committedCycle].join(', ')})`)
    }
    const abs = resolve(dir)
    const inVm = await vmFolderHolding(storeDir, abs)
    if (inVm !== undefined)
      throw new ReceiverError(
        'E_CONFIG',
        `${abs} is inside ${inVm}, where the store keeps (or will keep) a VM's mirror: open the point outside the store, or under ${join(resolve(storeDir), '.open')} (the default)`,
      )
    // durable (its parent fsynced): a crash must not lose the folder while the hold stays recorded
    const made = await mkdirDurable(abs, 'destination')
    if ((await readdir(abs)).length > 0) throw new ReceiverError('E_CONFIG', `${abs} is not empty: open the point into a new folder`)
    const kind = opts.kind ?? 'open'
    // every chain checked (points and mirror, points.ts) before the hold is recorded: a refused open leaves no hold behind
    const sources: Array<{ stem: string; source: string }> = []
    for (const rec of disksAt(state, cycle)) sources.push({ stem: rec.stem, source: await checkedPointSource(m.paths, state, rec.name, cycle) })
    const hold: HoldRecord = { id: randomUUID(), cycle, dir: abs, kind, createdAt: new Date().toISOString() }
    await m.setHolds([...holdsOf(state), hold])
    // first into the folder: a close removes only a folder that names its hold (a crash before it leaves the folder empty);
    // durable (a temporary file fsync'ed, renamed, the folder fsync'ed): a crash never leaves an empty or partial marker,
    // which the close would refuse as not its own
    await writeFileAtomic(join(abs, HOLD_MARKER), `${JSON.stringify({ id: hold.id, vm, cycle })}\n`, 'destination')
    const disks: string[] = []
    for (const { stem, source } of sources) {
      const child = join(abs, `${stem}.vmdk`)
      // vmfsSparse for QEMU: its grain tables laid out up front, QEMU never allocates one (create.ts preallocateGrainTables)
      const format = opts.format ?? 'sesparse'
      await createDelta(source, child, format === 'vmfssparse' ? { format, preallocateGrainTables: true } : { format })
      disks.push(child)
    }
    const vmxPath = join(abs, `${vm}.vmx`)
    const mark = opts.vmx?.suffix ?? (cycle === state.committedCycle ? ` (${kind === 'failover' ? 'failover' : 'opened'})` : ` (point ${cycle})`)
    // an opened point: the VM's name, the mirror's suffix, the point's mark (`web (grainline mirror) (point 3)`); a
    // failover: the VM's name and its mark alone. The mark the mirror's .vmx records is replaced, not stacked on
    // (mirror-vmx.ts markVmx)
    const suffix = kind === 'failover' ? mark : `${state.displaySuffix}${mark}`
    // the point's own .vmx (point-config.ts), read as a store file: a FIFO or a link there is a typed E_STORE_FILE, never a hang with the VM locked (store-fs.ts)
    // durable as the marker (fsync'ed, renamed, the folder fsync'ed): a crash after the open returned never leaves the
    // opened VM without its .vmx or with an empty one (the operator would register or boot a folder that is not whole)
    const text = await pointConfigText(m.paths, state, cycle, opts.logger)
    if (text !== undefined) await writeFileAtomic(vmxPath, prepareVmx(text, { ...opts.vmx, suffix, replaces: state.displaySuffix }), 'destination')
    try {
      await writeFileAtomic(join(abs, `${vm}.nvram`), await readStoreFile(join(m.paths.dir, `${vm}.nvram`), CONFIG_FILE_MAX_BYTES), 'destination')
    } catch (err) {
      if ((err as { code?: unknown }).code !== 'ENOENT') throw err
    }
    opts.logger.info({ vm, cycle, dir: abs, kind }, 'point opened: the mirror is held')
    return { hold, vmx: vmxPath, disks, made }
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
    const abs = opts.dir === undefined ? undefined : holdDirNamed(vm, opts.dir, storeDir, holds)
    const drop = holds.filter((h) => opts.all === true || h.dir === abs)
    if (drop.length === 0) throw new ReceiverError('E_NOT_FOUND', `VM ${vm} has no hold${abs === undefined ? '' : ` on ${abs}`} (holds: ${holds.map((h) => h.dir).join(', ') || 'none'})`)
    await checkClosable(vm, drop, opts.failover === true)
    for (const h of drop) await checkRemovableDir(vm, h, storeDir)
    await m.setHolds(holds.filter((h) => !drop.includes(h)))
    for (const h of drop) await rm(h.dir, { recursive: true, force: true })
    opts.logger.info({ vm, dirs: drop.map((h) => h.dir) }, 'hold released')
    return drop
  } finally {
    m.release()
  }
}

/**
 * The hold folder `--to dir` names: an absolute path; a relative one as the
 * current folder resolves it, or else inside the store — the form the agent
 * is told (hold-record.ts heldPeerMessage: `--to .open/NAME`, the store's
 * folder never reaching a peer). Either form that names no hold: as resolved
 * here (the E_NOT_FOUND names it).
 * @throws ReceiverError E_CONFIG (the two forms name two different holds)
 */
function holdDirNamed(vm: string, dir: string, storeDir: string, holds: readonly HoldRecord[]): string {
  const here = resolve(dir)
  if (isAbsolute(dir)) return here
  const inStore = resolve(storeDir, dir)
  const held = (d: string): boolean => holds.some((h) => h.dir === d)
  if (held(here) && held(inStore) && here !== inStore)
    throw new ReceiverError('E_CONFIG', `VM ${vm}: --to ${dir} names two holds, ${here} (from this folder) and ${inStore} (inside the store): give the absolute folder`)
  return held(here) || !held(inStore) ? here : inStore
}

/**
 * Undo {@link openPoint} for a caller that failed after it returned (a
 * failover whose registration on the DR host failed): the hold's record
 * dropped, then what the open wrote removed — its folder with the parents
 * it made (`made`, from openPoint; each parent only while empty), or, when
 * the folder was there before (empty), only the files in it. Refused as
 * {@link closePoint} refuses (a powered-on VM's folder, a folder without
 * the hold's marker): the hold then stays.
 * @throws ReceiverError E_BUSY, E_STATE
 */
export async function undoOpen(storeDir: string, vm: string, hold: HoldRecord, opts: { logger: Logger; made: string | undefined }): Promise<void> {
  const m = await VmMirror.acquireWait(storeDir, vm, opts.logger, ADMIN_LOCK_WAIT_MS, undefined, { create: false })
  try {
    const holds = holdsOf(m.state)
    const own = holds.find((h) => h.id === hold.id)
    if (own === undefined) return
    await checkClosable(vm, [own], true)
    await checkRemovableDir(vm, own, storeDir)
    await m.setHolds(holds.filter((h) => h !== own))
    await removeOpened(own.dir, opts.made)
    opts.logger.info({ vm, dir: own.dir, kind: own.kind }, 'opening undone: hold released, what the open wrote removed')
  } finally {
    m.release()
  }
}

/**
 * A hold's folder is removed whole: it must be one openPoint could have made
 * (absolute, normalised), never `/`, the store or a folder holding the store,
 * nor a folder inside a VM folder of the store (a state.json edited by hand
 * or by an attacker names any folder: another VM's mirror, this VM's own);
 * and it must carry the marker naming this hold ({@link HOLD_MARKER}), or be
 * empty or hold only the marker's temporary file (a crash between the hold's
 * record and its marker's rename), or be gone.
 * @throws ReceiverError E_STATE
 */
async function checkRemovableDir(vm: string, hold: HoldRecord, storeDir: string): Promise<void> {
  const dir: unknown = hold.dir
  const refuse = (why: string, todo = 'state.json was changed by hand; nothing was removed'): ReceiverError =>
    new ReceiverError('E_STATE', `VM ${vm}: the hold's folder ${JSON.stringify(dir)} (point ${hold.cycle}) ${why}: ${todo}`)
  const ok = typeof dir === 'string' && isAbsolute(dir) && resolve(dir) === dir && dir !== resolve('/')
  const rel = ok ? relative(dir as string, resolve(storeDir)) : ''
  if (!ok || rel === '' || (!rel.startsWith('..') && !isAbsolute(rel))) throw refuse('is not one a point was opened into (it is not absolute, or it is the store or holds it)')
  const path = dir as string
  const st = await lstat(path).catch((err: unknown) => {
    if ((err as { code?: unknown }).code === 'ENOENT') return undefined
    throw err
  })
  // gone already (removed by hand, or a close that crashed after the record): only the record goes, nothing is removed
  if (st === undefined) return
  const inVm = await vmFolderHolding(storeDir, path, true)
  if (inVm !== undefined) throw refuse(`is inside ${inVm}, a VM folder of the store, where no point is ever opened`)
  if (!st.isDirectory()) throw refuse('is not a folder (a link, a file)')
  let marker: unknown
  try {
    marker = JSON.parse((await readStoreFile(join(path, HOLD_MARKER), HOLD_MARKER_MAX_BYTES)).toString('utf8'))
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'ENOENT') throw refuse(`has a ${HOLD_MARKER} that is not the one points open writes (${(err as Error).message})`)
    // empty, or holding only the marker's temporary file: a crash between the hold's record and the marker's rename
    // (openPoint writes nothing else before the marker is in place)
    if ((await readdir(path)).every(isMarkerTemp)) return
    throw refuse(
      `carries no ${HOLD_MARKER}: it was opened by an earlier grainline (which wrote no marker), or it is not a folder a point was opened into`,
      `nothing was removed. Check it holds nothing you need (and that no VM runs from it), remove the folder by hand, then run points close again`,
    )
  }
  if ((marker as { id?: unknown } | null)?.id !== hold.id)
    throw refuse(`carries a ${HOLD_MARKER} of another hold`, 'nothing was removed; close that hold, or remove the folder by hand and run points close again')
}

/**
 * The VM folder of the store (`<store>/<name>`, any name a VM may have: a
 * VmOpen makes it) that is or holds `dir`, or undefined — a folder outside
 * the store, or under a hidden folder of it (`.open`, `.failover`, where
 * points are opened by default). Compared both as written and with links
 * resolved. With `mirrorsOnly`, only a folder holding `.grainline` counts.
 */
async function vmFolderHolding(storeDir: string, dir: string, mirrorsOnly = false): Promise<string | undefined> {
  const real = async (p: string): Promise<string | undefined> => await realpath(p).catch(() => undefined)
  const pairs: Array<[string, string]> = [[resolve(storeDir), dir]]
  const [rs, rd] = await Promise.all([real(storeDir), real(dir)])
  if (rs !== undefined) pairs.push([rs, rd ?? dir])
  for (const [store, d] of pairs) {
    const rel = relative(store, d)
    if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) continue
    const top = rel.split(sep)[0] as string
    if (!isVmName(top)) continue
    // with `mirrorsOnly`, a VM folder is one holding `.grainline` (a VmOpen makes it first): a hold an older version
    // opened in another folder of the store can still be closed
    const mirror = await lstat(join(store, top, '.grainline')).then(
      () => true,
      () => false,
    )
    if (!mirrorsOnly || mirror) return join(store, top)
  }
  return undefined
}

/** The holds of a VM, read only. */
export async function listHolds(storeDir: string, vm: string): Promise<readonly HoldRecord[]> {
  const { VmPaths } = await import('./vm-paths.ts')
  const s = await readVmState(new VmPaths(storeDir, vm))
  return s === undefined ? [] : holdsOf(s)
}
