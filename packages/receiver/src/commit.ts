/**
 * Committing a VM cycle: the new state (one atomic state.json replace is the
 * commit point) and the roll-forward work after it, redone at start-up when
 * interrupted: re-seeded mirrors kept as base points, seed renames, descriptors with the new CID, the installed
 * configuration files, retired journals.
 */
import { randomBytes } from 'node:crypto'
import { lstat, rename } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import type { Logger } from 'pino'
import { fsyncDir, isTempName, unlinkIfExists, writeFileAtomicIfChanged } from './fs-util.ts'
import { CONFIG_FILE_MAX_BYTES, entryExists, readStoreDir, readStoreFile } from './store-fs.ts'
import { retireJournal } from './journal.ts'
import { mirrorDescriptor, newCid } from './mirror-descriptor.ts'
import { attachedDisks, mirrorVmx, type DroppedReference } from './mirror-vmx.ts'
import { removeUnusedConfigs } from './point-config.ts'
import { faultPoint } from './fault.ts'
import { rollForwardPoints } from './points.ts'
import type { WorkProgress } from './work-progress.ts'
import { pointFlatName, pointPath } from './increment.ts'
import type { DiskRecord, InflightDisk, PendingCommit, VmStateFile } from './state-file.ts'
import type { VmPaths } from './vm-paths.ts'
import { receiverOwnedName } from './receiver-rules.ts'
import { committedIdentityRecord } from './committed-identity.ts'

/** One sealed disk of the cycle being committed. */
export interface SealedDisk {
  readonly info: InflightDisk
  /** size of its target file (flat or seed) */
  readonly size: number
  /** hex of its cycle digest */
  readonly digest: string
}

function committedRecord(d: SealedDisk, cycle: number, now: string, generation: string, prev: DiskRecord | undefined): DiskRecord {
  return {
    name: d.info.name,
    stem: d.info.stem,
    capacity: d.info.capacity,
    size: d.size,
    cycle,
    // a disk new to the mirror is held from this cycle on; a known one keeps its start, and the gaps it was out of the VM
    ...(prev === undefined ? { since: cycle } : prev.since === undefined ? {} : { since: prev.since }),
    ...(prev === undefined ? {} : absentOf(backInVm(prev, cycle))),
    committedAt: now,
    source: d.info.source,
    cycleId: d.info.cycleId,
    generation,
    mirrorCid: newCid(prev?.mirrorCid),
    ddb: d.info.ddb,
    cycleDigest: { algorithm: d.info.algorithm, digest: d.digest },
    // an incremental carries the divergence mark on (it is refused anyway); a seed starts clean
    ...(d.info.mode === 'incremental' && prev?.diverged !== undefined ? { diverged: prev.diverged } : {}),
    // when the disk was last proven whole stays known; a scrub rotation continues over incrementals only
    ...(prev?.proven === undefined ? {} : { proven: prev.proven }),
    ...(d.info.mode === 'incremental' && prev?.scrubRun !== undefined ? { scrubRun: prev.scrubRun } : {}),
  }
}

function absentOf(r: RemovalMarks): { absent?: RemovalMarks['absent'] } {
  return r.absent === undefined ? {} : { absent: r.absent }
}

/** A new generation (SPEC §5.8): 128 bits from a secure random source, 32 lowercase hex digits. */
export function newGeneration(): string {
  return randomBytes(16).toString('hex')
}

/**
 * A disk the cycle did not carry, after the commit of `cycle` whose .vmx
 * attaches `attached` (undefined: no .vmx staged, nothing known): named by
 * the .vmx, it is not removed (an independent disk); not named, it was
 * removed from the VM at this cycle, or earlier if already recorded (pure;
 * the Ceph store's records too).
 */
export function uncarriedRecord<R extends RemovalMarks & { readonly name: string }>(rec: R, cycle: number, attached: ReadonlySet<string> | undefined): R {
  if (attached === undefined) return rec
  if (attached.has(rec.name)) return backInVm(rec, cycle)
  return rec.removed === undefined ? { ...rec, removed: cycle } : rec
}

/** The marks of a disk's removals from the VM (state-file.ts DiskRecord). */
export interface RemovalMarks {
  readonly removed?: number
  readonly absent?: ReadonlyArray<{ readonly from: number; readonly to: number }>
}

/**
 * A disk named or carried again at `cycle` after its removal: the mark
 * becomes a closed gap [removed, cycle) in `absent`, so that the points
 * taken while it was out of the VM still leave it out (points.ts disksAt).
 */
export function backInVm<R extends RemovalMarks>(rec: R, cycle: number): R {
  if (rec.removed === undefined) return rec
  const { removed, ...kept } = rec
  return { ...kept, absent: [...(rec.absent ?? []), { from: removed, to: cycle }] } as unknown as R
}

/**
 * The state that commits `cycle` with `sealed` disks (every in-flight disk of
 * the cycle) under `generation`, and the roll-forward work it records; a
 * disk the cycle did not carry is marked removed when the cycle's .vmx does
 * not name it (`attached`: {@link uncarriedRecord}). Pure apart from the
 * random CIDs. Returns the new records in the order of `sealed`.
 */
export function commitState(
  state: VmStateFile,
  cycle: number,
  sealed: readonly SealedDisk[],
  suffix: string,
  now: string,
  generation: string,
  attached?: ReadonlySet<string>,
): { next: VmStateFile; records: DiskRecord[] } {
  const disks: Record<string, DiskRecord> = {}
  for (const [name, rec] of Object.entries(state.disks)) disks[name] = uncarriedRecord(rec, cycle, attached)
  const renames: Array<{ from: string; to: string }> = []
  const records: DiskRecord[] = []
  for (const d of sealed) {
    const rec = committedRecord(d, cycle, now, generation, disks[d.info.name])
    disks[d.info.name] = rec
    records.push(rec)
    if (d.info.target === 'seed') renames.push({ from: `${d.info.stem}-flat.vmdk.seed`, to: `${d.info.stem}-flat.vmdk` })
  }
  const next: VmStateFile = {
    ...state,
    committedCycle: cycle,
    committedAt: now,
    generation,
    // SPEC §5.10: the cycle's disks as their DiskOpens named them, reported in VmState (v8)
    committedIdentity: committedIdentityRecord(
      cycle,
      generation,
      sealed.map((d) => d.info),
    ),
    displaySuffix: suffix,
    disks,
    inflight: null,
    pending: {
      cycle,
      renames,
      descriptors: sealed.map((d) => d.info.name),
      journals: Object.values(state.inflight?.disks ?? {}).map((d) => `${d.stem}.journal`),
      files: true,
    },
  }
  return { next, records }
}

/**
 * The disks (of `names`) the cycle's staged .vmx attaches (mirror-vmx.ts
 * attachedDisks); undefined when no .vmx is staged or it cannot be read as a
 * regular file — then no disk is taken for removed.
 */
export async function stagedAttached(paths: VmPaths, names: Iterable<string>, carried: ReadonlySet<string>): Promise<Set<string> | undefined> {
  for (const name of await readStoreDir(paths.incoming)) {
    if (isTempName(name) || !/\.vmx$/i.test(name)) continue
    try {
      return attachedDisks((await readStoreFile(join(paths.incoming, name), CONFIG_FILE_MAX_BYTES)).toString('utf8'), names, carried)
    } catch (err) {
      if ((err as { code?: unknown }).code !== 'E_STORE_FILE') throw err
      return undefined
    }
  }
  return undefined
}

/**
 * The name in the VM's mirror folder that staged configuration file `name`
 * is installed under (the .vmx as the mirror's `<vm>.vmx`, the others as
 * they are), or undefined when it is not installed: a temporary name, the
 * source's snapshot list, disks, locks and logs, and a name the receiver
 * itself uses in the mirror folder (receiver-rules.ts receiverOwnedName:
 * refused at VmOpen, skipped here should an older receiver have staged one).
 */
export function installedName(name: string, vm: string): string | undefined {
  if (isTempName(name) || receiverOwnedName(name) !== undefined) return undefined
  if (/\.vmx$/i.test(name)) return `${vm}.vmx`
  return /\.(vmsd|vmdk|lck|log)$/i.test(name) ? undefined : name
}

/**
 * The names the staged configuration files will be installed under in the
 * VM's mirror folder ({@link installedName}; regular files only, as
 * {@link installFiles} installs), sorted: recorded in the state at the
 * commit point (VmStateFile `configFiles`), so that the next commit removes
 * those its cycle no longer carries.
 */
export async function stagedConfigNames(paths: VmPaths, vm: string): Promise<string[]> {
  const out = new Set<string>()
  for (const name of await readStoreDir(paths.incoming)) {
    const to = installedName(name, vm)
    if (to === undefined) continue
    const st = await lstat(join(paths.incoming, name)).catch(() => undefined)
    if (st?.isFile() === true) out.add(to)
  }
  return [...out].sort()
}

/**
 * What a commit records as installed and removes (pure): `staged`, the
 * configuration files it installs, replace the set an earlier commit
 * installed (`installed`: its VmStateFile `configFiles`; undefined in a state
 * file older than the record, then nothing is removed), and the names of that
 * set it does not carry are removed from the mirror folder at its
 * roll-forward. A commit that carries no `<vm>.vmx` (an agent that sent no
 * configuration this cycle, a .vmx over the size limit or not a regular file
 * when staged) replaces nothing: the mirror keeps the .vmx it boots from and
 * the files beside it, and what it staged is added to the set.
 */
export function configChange(installed: readonly string[] | undefined, staged: readonly string[], vm: string): { configFiles: string[]; removeFiles: string[] } {
  if (!staged.includes(`${vm}.vmx`)) return { configFiles: [...new Set([...(installed ?? []), ...staged])].sort(), removeFiles: [] }
  const keep = new Set(staged)
  return { configFiles: [...staged], removeFiles: (installed ?? []).filter((n) => !keep.has(n)) }
}

/**
 * Remove the configuration files an earlier commit installed that this one
 * does not carry (pending `removeFiles`), before the new ones are installed
 * (so that a name differing only in case, one file on a case-insensitive
 * file system, is installed again after its removal, crash or not); never a
 * name of the receiver's own, nor anything but a file or link (a folder
 * there is the operator's: logged and kept). Idempotent.
 */
async function removeConfigFiles(paths: VmPaths, state: VmStateFile, names: readonly string[], log: Logger): Promise<void> {
  if (names.length === 0) return
  for (const name of names) {
    if (receiverOwnedName(name) !== undefined) continue
    const path = join(paths.dir, name)
    const st = await lstat(path).catch((err: unknown) => {
      if ((err as { code?: unknown }).code === 'ENOENT') return undefined
      throw err
    })
    if (st === undefined) continue
    if (!st.isFile() && !st.isSymbolicLink()) {
      log.warn({ vm: state.vm, file: name }, 'configuration file the VM no longer has not removed: it is not a file in the mirror folder any more')
      continue
    }
    await unlinkIfExists(path)
    log.info({ vm: state.vm, file: name, cycle: state.pending?.cycle }, 'configuration file the VM no longer has removed from the mirror folder')
    faultPoint('commit-config-removed')
  }
  await fsyncDir(paths.dir)
}

/**
 * Install the staged configuration files: the .vmx rewritten for the mirror,
 * the others as they are ({@link installedName}). A staged entry that is not
 * a regular file (a link or FIFO planted in `incoming`) is skipped and
 * logged, so that the roll-forward can never be stuck on it.
 */
async function installFiles(paths: VmPaths, state: VmStateFile, log: Logger): Promise<DroppedReference[] | undefined> {
  const names = await readStoreDir(paths.incoming)
  let dropped: DroppedReference[] | undefined
  const diskMap = new Map<string, string>()
  for (const rec of Object.values(state.disks)) diskMap.set(rec.name, `${rec.stem}.vmdk`)
  // the disks the commit being rolled forward wrote (mirror-vmx.ts: they win a shifted name)
  const carried = new Set(
    Object.values(state.disks)
      .filter((r) => r.cycle === state.pending?.cycle)
      .map((r) => r.name),
  )
  for (const name of names) {
    const to = installedName(name, state.vm)
    if (to === undefined) {
      const owned = receiverOwnedName(name)
      if (owned !== undefined && !isTempName(name)) log.warn({ vm: state.vm, file: name, why: owned }, 'staged file not installed')
      continue
    }
    let data: Buffer
    try {
      data = await readStoreFile(join(paths.incoming, name), CONFIG_FILE_MAX_BYTES)
    } catch (err) {
      if ((err as { code?: unknown }).code !== 'E_STORE_FILE') throw err
      log.warn({ vm: state.vm, file: name, why: (err as Error).message }, 'staged file not installed')
      continue
    }
    if (/\.vmx$/i.test(name)) {
      const r = mirrorVmx(data.toString('utf8'), { suffix: state.displaySuffix, diskMap, carried })
      for (const d of r.dropped) log.warn({ vm: state.vm, file: name, reference: d }, '.vmx reference out of the mirror dropped')
      await writeFileAtomicIfChanged(join(paths.dir, to), r.text)
      dropped = r.dropped
    } else {
      await writeFileAtomicIfChanged(join(paths.dir, to), data)
    }
  }
  return dropped
}

/**
 * Delete every file of a disk the state no longer names (a removed disk no
 * point needs: pending `removeDisks`): its descriptor and flat, and its
 * journal, spare, block maps in `.grainline` (idempotent).
 */
async function removeDiskFiles(paths: VmPaths, stem: string): Promise<void> {
  for (const f of [paths.descriptor(stem), paths.flat(stem), paths.seed(stem)]) await unlinkIfExists(f)
  for (const f of [paths.journal(stem), paths.spare(stem), paths.undoing(stem), paths.blockMap(stem), paths.keptMap(stem)]) await unlinkIfExists(f)
  faultPoint('commit-disk-removed')
  await fsyncDir(paths.dir)
}

/**
 * Move each re-seeded disk's old mirror flat into `.grainline/points` as the
 * extent of its base point (over whatever has that name), before the seed is
 * renamed over it. Idempotent: only while both the seed file and the flat
 * are there — once moved, the flat is gone; once the seed is renamed, the
 * flat is the new mirror and must stay.
 */
async function retireMirrors(paths: VmPaths, retire: NonNullable<PendingCommit['retire']>): Promise<void> {
  if (retire.length === 0) return
  for (const r of retire) {
    const to = pointPath(paths, pointFlatName(r.file))
    if (!(await entryExists(paths.seed(r.stem))) || !(await entryExists(paths.flat(r.stem)))) continue
    await rename(paths.flat(r.stem), to)
    faultPoint('commit-retired')
  }
  await fsyncDir(dirname(pointPath(paths, retire[0]?.file as string)))
  await fsyncDir(paths.dir)
}

/**
 * Do the roll-forward work `state.pending` records (idempotent: every step
 * can be repeated after a crash). The caller then clears `pending` and
 * records the .vmx references dropped (undefined: no .vmx installed).
 * `onProgress` hears of the merges of dropped points (rollForwardPoints).
 */
export async function rollForwardFiles(paths: VmPaths, state: VmStateFile, log: Logger, onProgress?: WorkProgress): Promise<{ vmxDropped: DroppedReference[] | undefined }> {
  const p = state.pending
  if (p === null) return { vmxDropped: undefined }
  await retireMirrors(paths, p.retire ?? [])
  for (const r of p.renames) {
    if (await entryExists(join(paths.dir, r.from))) {
      await rename(join(paths.dir, r.from), join(paths.dir, r.to))
      faultPoint('commit-renamed')
    }
  }
  if (p.renames.length > 0) await fsyncDir(paths.dir)
  for (const name of p.descriptors) {
    const rec = state.disks[name]
    if (rec === undefined) continue
    await writeFileAtomicIfChanged(paths.descriptor(rec.stem), mirrorDescriptor({ cid: rec.mirrorCid, capacity: rec.capacity, flatFile: `${rec.stem}-flat.vmdk`, ddb: rec.ddb }))
  }
  faultPoint('commit-descriptors')
  await rollForwardPoints(paths, state, onProgress)
  await removeUnusedConfigs(paths, state)
  faultPoint('commit-points')
  for (const stem of p.removeDisks ?? []) await removeDiskFiles(paths, stem)
  await removeConfigFiles(paths, state, p.removeFiles ?? [], log)
  const vmxDropped = p.files ? await installFiles(paths, state, log) : undefined
  for (const j of p.journals) await retireJournal(join(paths.gdir, j))
  await fsyncDir(paths.gdir)
  return { vmxDropped }
}
