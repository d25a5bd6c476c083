/**
 * Operator actions on restore points (`grainline points`, `points prune`,
 * `restore`): list them, prune them by a policy, restore one to a standalone
 * VM folder verified against the checks recorded at its cycle.
 */
import { open, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { createDigest, initDigests, type DigestAlgorithm } from '@grainline/protocol'
import { openChain } from '@grainline/vmdk'
import { ReceiverError } from './errors.ts'
import { inflightRefusal } from './operator-command.ts'
import { digestFile } from './digest-file.ts'
import { mkdirDurable, writeFileAtomic, writeFully } from './fs-util.ts'
import { CONFIG_FILE_MAX_BYTES, readStoreFile } from './store-fs.ts'
import { mirrorDescriptor, newCid } from './mirror-descriptor.ts'
import { checkedPointChain, disksAt, divergedResyncUnder, pointsOf, pointSource, withDivergedResync, type DivergedResync, type PointDisk } from './points.ts'
import { pointConfigText } from './point-config.ts'
import { markVmx } from './mirror-vmx.ts'
import { isAllZero } from '@grainline/vmdk'
import type { RetentionPolicy } from './retention.ts'
import { readVmState, type DiskRecord, type VerifyRecord, type VmStateFile } from './state-file.ts'
import { VmMirror } from './vm-mirror.ts'
import type { WorkProgress } from './work-progress.ts'

/** An operator action waits this long for the lock of a session that is closing (then E_BUSY). */
export const ADMIN_LOCK_WAIT_MS = 5000
import { VmPaths } from './vm-paths.ts'

/** One disk of a listed point. */
export interface PointDiskInfo {
  readonly name: string
  /** where it is read from: a point descriptor or the mirror's */
  readonly source: string
  /** bytes its own increment takes (0: unchanged since, read from a newer point or the mirror) */
  readonly bytes: number
  readonly trivial: VerifyRecord | null
  readonly certify: VerifyRecord | null
  /** a base point: the disk's old mirror kept whole (a re-seed or a capacity change), so `bytes` is a whole disk's (the folder store; absent otherwise) */
  readonly base?: true
  /**
   * the point was taken before a resync repaired the disk's mirror, marked
   * diverged, and reads the blocks that resync rewrote as the damaged mirror
   * held them (points.ts divergedResyncUnder): only a certify digest recorded
   * at its cycle proves it (the folder store; absent otherwise)
   */
  readonly divergedResync?: DivergedResync
}

/** A restore point as `grainline points` shows it; the mirror is the newest (`current`). */
export interface PointInfo {
  readonly cycle: number
  readonly committedAt: string
  readonly generation: string
  /** the mirror itself (always kept) */
  readonly current: boolean
  readonly bytes: number
  readonly held: boolean
  readonly disks: readonly PointDiskInfo[]
}

async function loadState(storeDir: string, vm: string): Promise<{ paths: VmPaths; state: VmStateFile }> {
  const paths = new VmPaths(storeDir, vm)
  const state = await readVmState(paths).catch((err: unknown) => {
    if ((err as { code?: unknown }).code === 'ENOENT') return undefined
    throw err
  })
  if (state === undefined || state.committedCycle === 0) throw new ReceiverError('E_NOT_FOUND', `no committed mirror of VM ${vm} in ${storeDir}`)
  return { paths, state }
}

/** The checks that describe disk `name` at point `cycle`: those recorded with the point that holds it, or the mirror's. */
export function checksAt(state: VmStateFile, name: string, cycle: number): { trivial: VerifyRecord | null; certify: VerifyRecord | null; own: PointDisk | undefined } {
  for (const p of pointsOf(state)) {
    if (p.cycle < cycle) continue
    const d = p.disks[name]
    if (d !== undefined) return { trivial: d.trivial ?? null, certify: d.certify ?? null, own: p.cycle === cycle ? d : undefined }
  }
  const rec = state.disks[name]
  return { trivial: rec?.trivial ?? null, certify: rec?.certify ?? null, own: undefined }
}

/**
 * The VM's points, oldest first, then the mirror (`current: true`). Read
 * only, no lock: while a cycle is in flight the listed points are what the
 * next commit or rollback will leave.
 * @throws ReceiverError E_NOT_FOUND
 */
export async function listPoints(storeDir: string, vm: string): Promise<{ vm: string; committedCycle: number; inflightCycle: number; points: PointInfo[] }> {
  const { paths, state } = await loadState(storeDir, vm)
  const cycles = [...pointsOf(state).map((p) => ({ cycle: p.cycle, committedAt: p.committedAt, generation: p.generation, current: false }))]
  cycles.push({ cycle: state.committedCycle, committedAt: state.committedAt ?? '', generation: state.generation ?? '', current: true })
  const points = cycles.map((c) => {
    const disks = disksAt(state, c.cycle)
      .map((r) => r.name)
      .map((name) => {
        const ch = checksAt(state, name, c.cycle)
        return {
          name,
          source: pointSource(paths, state, name, c.cycle),
          bytes: ch.own?.bytes ?? 0,
          trivial: ch.trivial,
          certify: ch.certify,
          ...(ch.own?.base === true ? { base: true as const } : {}),
          ...withDivergedResync(state, name, c.cycle),
        }
      })
    return { ...c, bytes: disks.reduce((n, d) => n + d.bytes, 0), held: (state.holds ?? []).some((h) => h.cycle === c.cycle), disks }
  })
  return { vm, committedCycle: state.committedCycle, inflightCycle: state.inflight?.cycle ?? 0, points }
}

/**
 * Prune a VM's points by `retention` at `now` (a fake clock in tests), or
 * drop the listed `cycles` (middle points are merged into their neighbour;
 * `onProgress` hears of the merges: bytes done of the total, as a commit's
 * CommitProgress). Takes the VM's lock (`E_BUSY` while a session writes it).
 */
export async function prunePoints(
  storeDir: string,
  vm: string,
  retention: RetentionPolicy | { readonly cycles: readonly number[] },
  opts: { logger: Logger; now?: () => number; onProgress?: WorkProgress },
): Promise<{ vm: string; dropped: number[]; kept: number[] }> {
  await loadState(storeDir, vm)
  const m = await VmMirror.acquireWait(storeDir, vm, opts.logger, ADMIN_LOCK_WAIT_MS, undefined, { create: false })
  try {
    const what = 'cycles' in retention ? { cycles: retention.cycles } : { retention }
    const dropped = await m.prunePoints({ ...what, ...(opts.now === undefined ? {} : { now: opts.now }), ...(opts.onProgress === undefined ? {} : { onProgress: opts.onProgress }) })
    return { vm, dropped, kept: pointsOf(m.state).map((p) => p.cycle) }
  } finally {
    m.release()
  }
}

/** Progress of a restore: bytes written of the total, with an estimate of the time left. */
export interface RestoreProgress {
  readonly disk: string
  readonly bytes: number
  readonly total: number
  readonly elapsedMs: number
  /** estimated ms left (undefined until something was copied) */
  readonly etaMs: number | undefined
}

/** How one restored disk was verified. */
export interface RestoredDisk {
  readonly name: string
  readonly descriptor: string
  readonly flat: string
  readonly capacity: number
  /** `certify`: whole disk against the certify digest recorded at that cycle; `trivial`: its prefix; `none`: nothing was recorded */
  readonly verified: 'certify' | 'trivial' | 'none'
  /** whether the recorded check of that cycle had passed against the source */
  readonly sourceChecked: boolean
  /** the point predates a resync of the disk's mirror marked diverged ({@link PointDiskInfo.divergedResync}) */
  readonly divergedResync?: DivergedResync
}

const COPY = 8 * 1024 * 1024

/**
 * Restore point `cycle` (or the mirror, `cycle` = the committed one) of a VM
 * into `toDir` (created; must be empty): per disk a `createType="vmfs"`
 * descriptor and a flat, plus the mirror's `.vmx` (display name marked with
 * the point) and `.nvram`. Every byte written is digested and compared with
 * the certify (whole disk) or trivial (prefix) digest recorded for the disk
 * at that cycle. Holds the VM's lock meanwhile (`E_BUSY` while a session
 * writes it; a cycle in flight also refuses with `E_BUSY`).
 * @throws ReceiverError E_NOT_FOUND, E_BUSY, E_VERIFY (a digest differs: the folder is left for inspection)
 */
export async function restorePoint(
  storeDir: string,
  vm: string,
  cycle: number,
  toDir: string,
  opts: { logger: Logger; onProgress?: (p: RestoreProgress) => void; signal?: AbortSignal },
): Promise<{ vm: string; cycle: number; to: string; disks: RestoredDisk[] }> {
  await loadState(storeDir, vm)
  const m = await VmMirror.acquireWait(storeDir, vm, opts.logger, ADMIN_LOCK_WAIT_MS, undefined, { create: false })
  try {
    const state = m.state
    if (state.inflight !== null) throw inflightRefusal(storeDir, vm, state.inflight.cycle, 'restoring')
    if (cycle !== state.committedCycle && !pointsOf(state).some((p) => p.cycle === cycle)) {
      const have = [...pointsOf(state).map((p) => p.cycle), state.committedCycle].join(', ')
      throw new ReceiverError('E_NOT_FOUND', `VM ${vm} has no point ${cycle} (points: ${have})`)
    }
    // durable: the folder (its parents fsynced), every file (fsynced, then the folder): a crash after the restore
    // returned never leaves a missing or empty descriptor, .vmx or .nvram (the flats are datasynced as they are written)
    await mkdirDurable(toDir, 'destination')
    if ((await readdir(toDir)).length > 0) throw new ReceiverError('E_CONFIG', `${toDir} is not empty: restore into a new folder`)
    await initDigests()
    const recs = disksAt(state, cycle)
    const total = recs.reduce((n, r) => n + r.capacity, 0)
    const t0 = performance.now()
    let done = 0
    const disks: RestoredDisk[] = []
    for (const rec of recs) {
      const ch = checksAt(state, rec.name, cycle)
      const r = await restoreDisk(m, rec, cycle, toDir, ch, opts.signal, (n) => {
        done += n
        const elapsedMs = performance.now() - t0
        opts.onProgress?.({ disk: rec.name, bytes: done, total, elapsedMs, etaMs: done === 0 ? undefined : (elapsedMs * (total - done)) / done })
      })
      disks.push(r)
    }
    await copyConfig(m.paths, state, cycle, toDir, opts.logger)
    return { vm, cycle, to: toDir, disks }
  } finally {
    m.release()
  }
}

async function restoreDisk(
  m: VmMirror,
  rec: DiskRecord,
  cycle: number,
  toDir: string,
  ch: { trivial: VerifyRecord | null; certify: VerifyRecord | null; own: PointDisk | undefined },
  signal: AbortSignal | undefined,
  progress: (n: number) => void,
): Promise<RestoredDisk> {
  const { paths, state } = m
  const flatName = `${rec.stem}-flat.vmdk`
  const flat = join(toDir, flatName)
  const descriptor = join(toDir, `${rec.stem}.vmdk`)
  const read = await checkedPointChain(paths, state, rec.name, cycle)
  const chain = await openChain(read.source)
  const check = ch.certify ?? ch.trivial
  const hash = check === null ? undefined : createDigest(check.algorithm as DigestAlgorithm)
  const hashBytes = check === null ? 0 : check === ch.certify ? chain.capacity : check.bytes
  const fh = await open(flat, 'wx')
  try {
    await fh.truncate(chain.capacity)
    const buf = Buffer.alloc(COPY)
    for (let off = 0; off < chain.capacity; off += COPY) {
      signal?.throwIfAborted()
      const n = Math.min(COPY, chain.capacity - off)
      const b = buf.subarray(0, n)
      await chain.readInto(b, 0, off, n)
      if (hash !== undefined && off < hashBytes) hash.update(b.subarray(0, Math.min(n, hashBytes - off)))
      // zeros stay a hole: the flat is thin, like the mirror
      if (!isAllZero(b)) await writeFully(fh, b, off)
      progress(n)
    }
    await fh.datasync()
  } finally {
    await fh.close()
    await chain.close()
  }
  // the capacity the disk had at the point (a disk re-seeded at another size keeps its older points)
  // atomic and durable (fs-util.ts writeFileAtomic): its folder's fsync makes the flat's name durable too
  await writeFileAtomic(descriptor, mirrorDescriptor({ cid: newCid(), capacity: chain.capacity, flatFile: flatName, ddb: ch.own?.ddb ?? rec.ddb }), 'destination')
  let verified: RestoredDisk['verified'] = 'none'
  if (hash !== undefined && check !== null) {
    const got = Buffer.from(hash.digest()).toString('hex')
    if (got !== check.digest) {
      const what = `restored disk ${rec.name} of point ${cycle} of VM ${state.vm} does not match the ${check === ch.certify ? 'certify' : 'trivial-check'} digest recorded at that cycle (${check.algorithm} ${check.digest}, got ${got})`
      throw await blameMismatch(m, rec.name, cycle, read, what, toDir, signal)
    }
    verified = check === ch.certify ? 'certify' : 'trivial'
  }
  return {
    name: rec.name,
    descriptor,
    flat,
    capacity: chain.capacity,
    verified,
    sourceChecked: check?.ok === true,
    ...withDivergedResync(m.state, rec.name, cycle),
  }
}

/**
 * Why a restored disk did not match its point's recorded digest, and whose
 * fault it is. A point is read through the reverse increments newer than it
 * (its own grains) and then the mirror's flat, so a wrong byte is either in
 * an increment or in the mirror. The mirror has its own record: the certify
 * digest (whole disk) or trivial-check digest (prefix) taken when its last
 * cycle committed. The mirror's flat is digested again against that record:
 * - it differs (or the point IS the mirror): the MIRROR is damaged. The disk
 *   is marked diverged in the VM's state, the mark a failed check leaves
 *   (VmMirror.markDiverged): status reports it, the next cycle's DiskOpen of
 *   an incremental is refused `E_DIVERGED` and the agent resyncs the disk.
 * - it matches the whole-disk certify digest: the mirror is sound, so the
 *   point's increments are damaged.
 * - it matches only a prefix, or nothing was recorded: either may be wrong;
 *   the error says so and nothing is marked.
 * A chain that ends at a base point (no mirror read) is the point's alone.
 */
async function blameMismatch(
  m: VmMirror,
  name: string,
  cycle: number,
  read: { readonly throughMirror: boolean; readonly increments: boolean },
  what: string,
  toDir: string,
  signal: AbortSignal | undefined,
): Promise<ReceiverError> {
  const vm = m.state.vm
  const left = `${toDir} is left for inspection`
  const rec = m.state.disks[name]
  if (!read.throughMirror || rec === undefined)
    return new ReceiverError('E_VERIFY', `${what}: the point is damaged (its chain ends at a base point: the mirror is not read); ${left}. Restore another point`)
  const mirrorFlat = m.paths.flat(rec.stem)
  let mirrorBad: string | undefined
  let sound = false
  const own = rec.certify?.ok === true ? rec.certify : rec.trivial?.ok === true ? rec.trivial : undefined
  if (!read.increments) {
    mirrorBad = `the point is the mirror itself (no increment read), and its flat ${mirrorFlat} no longer holds what cycle ${rec.cycle} committed`
  } else if (own !== undefined) {
    const h = createDigest(own.algorithm as DigestAlgorithm)
    await digestFile(mirrorFlat, own.bytes, (b) => h.update(b), signal === undefined ? {} : { signal })
    const mine = Buffer.from(h.digest()).toString('hex')
    const whole = own.bytes >= rec.capacity
    if (mine !== own.digest)
      mirrorBad = `its flat ${mirrorFlat} no longer matches the ${own === rec.certify ? 'certify' : 'trivial-check'} digest recorded when cycle ${rec.cycle} committed (${own.algorithm} ${own.digest} over ${whole ? 'the whole disk' : `the first ${own.bytes} bytes`}, now ${mine})`
    else sound = whole
  }
  if (mirrorBad !== undefined) {
    await m.markDiverged(name, `restore of point ${cycle} found the mirror damaged: ${mirrorBad}`)
    return new ReceiverError(
      'E_VERIFY',
      `${what}: the MIRROR of disk ${name} of VM ${vm} is damaged, not the point's own data: ${mirrorBad}; every point of the disk reads through it. The disk is marked diverged (grainline status reports it): the next cycle of the VM resyncs it from the source; run it, then restore again (points older than the resync still read the damaged bytes through its increment: restore a point taken after it). ${left}`,
    )
  }
  // the point reads through a resync that repaired the mirror: the damage it repaired is in that resync's increment
  const resync = divergedResyncUnder(m.state, name, cycle)
  if (resync !== undefined)
    return new ReceiverError(
      'E_VERIFY',
      `${what}: point ${cycle} was taken before the resync at cycle ${resync.cycle} repaired the mirror of disk ${name} (marked diverged: ${resync.reason}), and reads the blocks that resync rewrote as the damaged mirror held them; ${sound ? 'the mirror itself is sound (it matches the whole-disk digest of its cycle)' : "the mirror's own record cannot prove it sound, and the point's increments may be damaged too"}. ${left}. Restore a point taken at or after cycle ${resync.cycle}`,
    )
  if (sound)
    return new ReceiverError(
      'E_VERIFY',
      `${what}: the point's own data is damaged (its increments in .grainline/points, or a newer point's it reads through); the mirror's flat still matches the whole-disk digest of cycle ${rec.cycle}, so the mirror is sound. ${left}. Restore another point`,
    )
  const unproven =
    own === undefined ? `no check of the mirror's cycle ${rec.cycle} was recorded` : `only the first ${own.bytes} bytes of the mirror were recorded at cycle ${rec.cycle}, and they match`
  return new ReceiverError(
    'E_VERIFY',
    `${what}: either the point's increments or the mirror of disk ${name} it reads through are damaged (${unproven}, so the mirror cannot be told sound); ${left}. Run a cycle with --certify to check the mirror against its source (a mismatch resyncs the disk), then restore again`,
  )
}

/** The mirror's .vmx (display name marked with the point) and .nvram, if present, each written durably (fs-util.ts writeFileAtomic). */
async function copyConfig(paths: VmPaths, state: VmStateFile, cycle: number, toDir: string, log: Logger): Promise<void> {
  // store files: a FIFO or a link there is a typed E_STORE_FILE, never a hang with the VM locked (store-fs.ts)
  const vmx = await pointConfigText(paths, state, cycle, log)
  if (vmx !== undefined) {
    // the mirror's name and the point's mark, in place of the mark the mirror's .vmx records (as points open marks it)
    await writeFileAtomic(join(toDir, `${state.vm}.vmx`), markVmx(vmx, `${state.displaySuffix} (point ${cycle})`, state.displaySuffix), 'destination')
  }
  try {
    await writeFileAtomic(join(toDir, `${state.vm}.nvram`), await readStoreFile(join(paths.dir, `${state.vm}.nvram`), CONFIG_FILE_MAX_BYTES), 'destination')
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'ENOENT') throw err
  }
}
