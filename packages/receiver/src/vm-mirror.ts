import { lstat } from 'node:fs/promises'
import { join, relative } from 'node:path'
import type { Logger } from 'pino'
import type { CompatRecord, SourceIdentity } from '@grainline/protocol'
import { ReceiverError, ioError } from './errors.ts'
import { unlinkIfExists, writeFileAtomic, writeFileAtomicIfChanged, fsyncDir } from './fs-util.ts'
import { baseDescriptor, completeBaseCopy, copyBasePoint, removeBasePoint, type CopyProgress } from './base-point.ts'
import { ensureStoreDir, readStoreDir, regularFileSize } from './store-fs.ts'
import { Journal, retireJournal, type JournalHead } from './journal.ts'
import { checkJournalHead, readResumeJournal } from './journal-head.ts'
import { DiskApply } from './disk-apply.ts'
import { commitState, configChange, newGeneration, rollForwardFiles, stagedAttached, stagedConfigNames } from './commit.ts'
import { namedDisks, withNamed } from './mirror-vmx.ts'
import { decideOpen, mayAdd, mirrorModified, type DiskOpenRequest, type MirrorFacts, type SpaceFacts } from './open-decision.ts'
import { inspectMirror } from './mirror-inspection.ts'
import { freeBytes } from './store-usage.ts'
import { diskKey, tokenRoom, type PendingOpens } from './quota-room.ts'
import { undoInflight } from './rollback.ts'
import { emptyState, readVmState, writeVmState, type DiskRecord, type InflightDisk, type PointsDroppedRecord, type UndoMark, type VerifyRecord, type VmStateFile } from './state-file.ts'
import { VmLock } from './vm-lock.ts'
import { VmPaths, diskStem, generatedNames } from './vm-paths.ts'
import { faultPoint } from './fault.ts'
import { removeResyncMaps } from './resync-map.ts'
import { scrubStep } from './proof.ts'
import { dropKeptMaps, trackerFor, updateKeptMaps } from './kept-map-update.ts'

/** The stems of the resync disks among `disks` (their block maps go at commit and rollback). */
const resyncStems = (disks: Iterable<{ readonly mode: string; readonly stem: string }>): string[] => [...disks].filter((d) => d.mode === 'resync').map((d) => d.stem)
import { POINTS_DIR, pointFileName, pointPath } from './increment.ts'
import { checkPointMerge } from './point-chain.ts'
import {
  DIVERGED_REASON_MAX,
  dropPoints,
  planCommitPoints,
  pointBytes,
  pointsOf,
  pointFiles,
  reclaimableDisks,
  type CommittedIncrement,
  type PointMerge,
  type PointPlan,
  type PointRecord,
} from './points.ts'
import { alsoTo, workProgressLog, type WorkProgress } from './work-progress.ts'
import { savePointConfig } from './point-config.ts'
import { heldMessage, heldPeerMessage, holdsOf, type HoldRecord } from './hold-record.ts'
import { keepsPoints, pointsToDrop, type RetentionPolicy } from './retention.ts'

/** Outcome of a DiskOpen against the store (the fields of DiskState, and the apply when accepted). */
export interface OpenDiskResult {
  readonly accepted: boolean
  /** refusal code, "" when accepted */
  readonly reason: string
  /** why it was refused (logged) */
  readonly message: string
  /** why, as the agent is told it when it differs from `message` (an E_HELD refusal names no store folder) */
  readonly peerMessage?: string
  readonly committedCycle: number
  readonly committedSource: SourceIdentity | null
  readonly mirrorCid: string
  readonly modified: boolean
  readonly apply?: DiskApply
}

/** What a DiskOpen is judged against besides the store: the session's VmOpen and token. */
export interface OpenContext {
  /** the VmOpen's compatibility record */
  readonly compat: CompatRecord
  /** disks open under accepted handles in this session */
  readonly open?: Iterable<string>
  /**
   * the token's store quota, bytes, and which VMs' mirrors count towards it;
   * `pending`: the receiver's DiskOpens being decided (quota-room.ts)
   */
  readonly quota?: { readonly bytes: number; readonly covers: (vm: string) => boolean; readonly pending?: PendingOpens }
  /** the VM's retention policy: an in-place apply keeps a reverse increment when it keeps points */
  readonly retention?: RetentionPolicy
  /** hears of long work before the answer: the base copy of a disk that changes capacity (SPEC §5.1 DiskProgress) */
  readonly onProgress?: CopyProgress
}

/** How a commit treats restore points. */
/** A re-seeded disk's old mirror kept as its file of the commit's new point (VmMirror basePoint). */
interface BasePoint extends CommittedIncrement {
  readonly stem: string
  readonly file: string
  readonly base: true
  /** a seed's base point: its descriptor (the old mirror's, naming the flat moved beside it), written at commit; undefined: copied before the apply (InflightDisk.baseCopy) */
  readonly descriptor?: string
}

export interface CommitOptions {
  /** the VM's retention policy (none: points off, existing ones dropped) */
  readonly retention?: RetentionPolicy
  /** clock for retention, ms since the epoch @default Date.now */
  readonly now?: () => number
  /** hears of the merges of the points the retention drops, before the commit returns (SPEC §5.5 CommitProgress) */
  readonly onProgress?: WorkProgress
}

/** Why a VM whose lock file was a copy is marked diverged (vm-lock.ts lockIsCopy). */
const COPIED_LOCK =
  'its store was copied while a receiver or grainline command was writing this VM (its lock file is a copy): the mirror may mix two moments; the next cycle resyncs it (copy a store only while its receiver is stopped)'

/** Why every VM of a store whose receiver marker was a copy is marked diverged (store-marker.ts). */
export const COPIED_STORE =
  'its store was copied while a receiver was running on it (the store marker .grainline-receiver is a copy): the mirror may mix two moments; the next cycle resyncs it (copy a store only while its receiver is stopped)'

/**
 * A locked VM mirror: every mutation of one VM goes through here, one writer
 * per VM (in this process and, by the lock file, across processes).
 */
export class VmMirror {
  readonly paths: VmPaths
  readonly vm: string
  private current: VmStateFile
  /** clean verdicts recorded in `current` and not yet written (see {@link recordVerify} `defer`) */
  private unsaved = false
  private readonly log: Logger
  private readonly lock: VmLock

  private constructor(paths: VmPaths, vm: string, state: VmStateFile, log: Logger, lock: VmLock) {
    this.paths = paths
    this.vm = vm
    this.current = state
    this.log = log
    this.lock = lock
  }

  /** The VM's state as last written (with the deferred clean verdicts, see {@link recordVerify}). */
  get state(): VmStateFile {
    return this.current
  }

  /** Whether clean verdicts recorded with `defer` are not written yet. */
  get hasUnsaved(): boolean {
    return this.unsaved
  }

  /** Write the deferred clean verdicts (state.json, fsynced); nothing when there are none. */
  async saveUnsaved(): Promise<void> {
    if (this.unsaved) await this.save(this.current)
  }

  /**
   * Lock and load a VM mirror, finishing first a commit or prune a crash
   * interrupted after its commit point — logged, and heard by
   * `opts.onProgress` (a VmOpen's VmProgress, SPEC §4.2). With `create:
   * false` (rollback, recovery) the VM folder must exist already.
   * @throws ReceiverError E_BUSY when another writer holds it, E_STORE_FILE, E_NOT_FOUND
   */
  static async acquire(storeDir: string, vm: string, log: Logger, opts: { create?: boolean; onProgress?: WorkProgress } = {}): Promise<VmMirror> {
    const paths = new VmPaths(storeDir, vm)
    const lock = await VmLock.take(paths, vm, log, { create: opts.create !== false })
    try {
      const state = (await readVmState(paths)) ?? emptyState(vm)
      const m = new VmMirror(paths, vm, state, log, lock)
      // a commit or prune interrupted by a crash: its merges can take minutes, and whoever waits on this lock is told why in the log
      if (state.pending !== null)
        await m.rollForward(
          alsoTo(
            workProgressLog(
              log,
              { vm, cycle: state.pending.cycle, step: 'merge-points' },
              'finishing an interrupted commit or prune: merging the restore points it drops',
              'interrupted commit or prune: restore points merged',
            ),
            opts.onProgress,
          ),
        )
      if (lock.copied) {
        faultPoint('copied-lock-taken')
        await m.distrustCopy(COPIED_LOCK, opts.onProgress)
        await lock.clearCopied()
      }
      return m
    } catch (err) {
      lock.release()
      throw err
    }
  }

  /**
   * The VM's lock was a copy (vm-lock.ts lockIsCopy): its store was copied
   * (cp, rsync, tar) while a receiver or a grainline command wrote it, so the
   * files of the mirror may each be of another moment — a flat copied before
   * extents its journal or state record as applied. Nothing of it is trusted
   * for an incremental: the cycle in flight is rolled back and every disk is
   * marked diverged, so the next cycle resyncs it by block digests (only the
   * blocks that differ travel) and `grainline status` says CRITICAL until then.
   * Also for a store whose receiver marker is a copy (store-marker.ts), `reason` saying which.
   */
  async distrustCopy(reason: string, onProgress?: WorkProgress): Promise<void> {
    for (const name of Object.keys(this.current.disks)) await this.markDiverged(name, reason)
    if (this.current.inflight !== null) await this.rollback(onProgress)
  }

  /** Like `acquire`, but waits up to `waitMs` for a lock held by a closing session. */
  static async acquireWait(storeDir: string, vm: string, log: Logger, waitMs: number, signal?: AbortSignal, opts: { create?: boolean; onProgress?: WorkProgress } = {}): Promise<VmMirror> {
    const deadline = Date.now() + waitMs
    for (;;) {
      try {
        return await VmMirror.acquire(storeDir, vm, log, opts)
      } catch (err) {
        if ((err as { code?: unknown }).code !== 'E_BUSY' || Date.now() >= deadline) throw err
      }
      signal?.throwIfAborted()
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
  }

  /** Whether the lock taken over was a copy (and {@link distrustCopy} ran at acquire). */
  get copiedLock(): boolean {
    return this.lock.copied
  }

  /** Release the VM's lock (idempotent); `moved`: its folder was renamed away, lock file and all (mirror-remove.ts). */
  release(opts: { moved?: boolean } = {}): void {
    this.lock.release(opts)
  }

  /** the disks the cycle's VmOpen names (stageFiles) */
  private named: ReadonlySet<string> = new Set()
  /** bytes of the configuration files the cycle's VmOpen staged, which its commit installs (stageFiles) */
  private stagedBytes = 0

  private async save(next: VmStateFile): Promise<void> {
    await writeVmState(this.paths, next)
    this.current = next
    this.unsaved = false
  }

  /**
   * Create the folders and stage the VM's config files for the next commit;
   * `disks` (VmOpen.disks) are the disks the agent says the .vmx attaches:
   * none of them is taken for removed at the commit (mirror-vmx.ts namedDisks).
   */
  async stageFiles(files: ReadonlyArray<{ name: string; data: Uint8Array }>, disks: readonly string[] = []): Promise<void> {
    this.named = namedDisks(disks)
    this.stagedBytes = files.reduce((n, f) => n + f.data.byteLength, 0)
    try {
      await ensureStoreDir(this.paths.gdir)
      await ensureStoreDir(this.paths.incoming)
      for (const old of await readStoreDir(this.paths.incoming)) {
        if (!files.some((f) => f.name === old)) await unlinkIfExists(join(this.paths.incoming, old))
      }
      // the same files come again every cycle (the nvram, a .vmx whose disks did not change): rewritten only when changed
      for (const f of files) await writeFileAtomicIfChanged(join(this.paths.incoming, f.name), f.data)
    } catch (err) {
      throw ioError(err, 'staging the VM configuration files')
    }
  }

  /** Whether a mirror's compat record matches (true when there is none yet). */
  compatible(compat: CompatRecord): boolean {
    const c = this.current.compat
    if (c === null) return true
    return c.hwVersion === compat.hwVersion && c.datastoreType === compat.datastoreType
  }

  /**
   * Throw E_BAD_NAME when a file the store generates for disk `name` (see
   * `generatedNames`) is, ignoring case, also one of another disk of this VM
   * (committed, in flight, or in `open`): `a.vmdk`, `a.VMDK` and `a` would
   * share every file, `a-flat`'s descriptor would be `a.vmdk`'s flat (and
   * names differing in case clash on case-insensitive file systems).
   */
  checkNames(name: string, open: Iterable<string> = []): void {
    const mine = generatedNames(diskStem(name))
    const key = (list: readonly string[]): Set<string> => new Set(list.map((n) => n.toLowerCase()))
    const [mirror, state] = [key(mine.mirror), key(mine.state)]
    const others = new Set([...Object.keys(this.current.disks), ...Object.keys(this.current.inflight?.disks ?? {}), ...open])
    for (const other of others) {
      if (other === name) continue
      const theirs = generatedNames(diskStem(other))
      const clash = theirs.mirror.find((n) => mirror.has(n.toLowerCase())) ?? theirs.state.find((n) => state.has(n.toLowerCase()))
      if (clash !== undefined) {
        throw new ReceiverError('E_BAD_NAME', `disk name ${JSON.stringify(name)} collides with disk ${JSON.stringify(other)} of VM ${this.vm}: both would use the file ${clash}`)
      }
    }
  }

  /**
   * Inspect a disk and, if `decideOpen` accepts, open it for the cycle: a
   * fresh apply (journal head durable → state lists the disk → target
   * touched) or the resume of the interrupted one.
   */
  async openDisk(req: DiskOpenRequest, ctx: OpenContext): Promise<OpenDiskResult> {
    this.checkNames(req.name, ctx.open)
    const s = this.current
    const rec = s.disks[req.name]
    const inf = s.inflight?.disks[req.name]
    const facts = await inspectMirror(this.paths, rec, inf)
    const base = {
      committedCycle: rec?.cycle ?? 0,
      committedSource: rec?.source ?? null,
      mirrorCid: rec === undefined ? '' : facts.cid,
      modified: mirrorModified(rec, inf, facts),
    }
    // SPEC §5.1 rule 2: an opened point or a failover reads through the mirror
    if (holdsOf(s).length > 0)
      return { ...base, accepted: false, reason: 'E_HELD', message: heldMessage(this.vm, holdsOf(s), this.paths.store), peerMessage: heldPeerMessage(this.vm, holdsOf(s), this.paths.store) }
    // a fresh apply holds what it may add from before the token's room is measured until its in-flight record
    // is written: a DiskOpen of the token decided meanwhile in another session counts it (quota-room.ts)
    const letGo = inf === undefined ? ctx.quota?.pending?.hold(this.vm, req.name, mayAdd(req, facts)) : undefined
    try {
      return await this.openInspected(req, ctx, rec, inf, facts, base)
    } finally {
      letGo?.()
    }
  }

  /** The token's room: free space, its quota, what its mirrors take and what its other open applies may still add. */
  private async spaceFor(name: string, quota: OpenContext['quota']): Promise<SpaceFacts> {
    const free = await freeBytes(this.paths.dir)
    const configBytes = this.stagedBytes
    if (quota === undefined) return { freeBytes: free, quotaBytes: undefined, usedBytes: 0, reservedBytes: 0, configBytes }
    const room = await tokenRoom(this.paths.store, quota.covers)
    const self = diskKey(this.vm, name)
    let reservedBytes = 0
    for (const [key, bytes] of room.inflight) if (key !== self) reservedBytes += bytes
    reservedBytes += quota.pending?.bytes(quota.covers, (key) => key === self || room.inflight.has(key)) ?? 0
    return { freeBytes: free, quotaBytes: quota.bytes, usedBytes: room.usedBytes, reservedBytes, configBytes }
  }

  /** {@link openDisk} once the disk is inspected and not held. */
  private async openInspected(
    req: DiskOpenRequest,
    ctx: OpenContext,
    rec: DiskRecord | undefined,
    inf: InflightDisk | undefined,
    facts: MirrorFacts,
    base: Omit<OpenDiskResult, 'accepted' | 'reason' | 'message' | 'apply'>,
  ): Promise<OpenDiskResult> {
    const s = this.current
    const space = await this.spaceFor(req.name, ctx.quota)
    const d = decideOpen({
      vm: this.vm,
      committedCycle: s.committedCycle,
      inflightCycle: s.inflight?.cycle ?? 0,
      record: rec,
      inflight: inf,
      facts,
      request: req,
      compatible: this.compatible(ctx.compat),
      space,
    })
    if (d.kind === 'refuse') return { ...base, accepted: false, reason: d.code, message: d.message }
    if (d.kind === 'fail') throw new ReceiverError(d.code, d.message)
    if (d.kind === 'resume') {
      const jpath = this.paths.journal(d.info.stem)
      // its head must be the in-flight record's (capacity, base size, cycle identity…): before anything is reopened or
      // cut, and before its records are held to it
      const checkHead = (h: JournalHead): void => checkJournalHead(this.paths, jpath, h, s.inflight?.cycle ?? req.cycle, d.info)
      // a journal missing, without a valid head or unreadable: no resume point, said as `grainline status` says it
      const cycle = s.inflight?.cycle ?? req.cycle
      const contents = await readResumeJournal(this.paths, jpath, cycle, d.info, checkHead)
      const touched = await trackerFor(this.paths, d.info, rec)
      const apply = await DiskApply.resume(this.paths, d.info, contents, touched).catch((err: unknown) => {
        throw ioError(err, 'reopening the in-flight apply')
      })
      this.log.info({ vm: this.vm, disk: req.name, cycle: req.cycle, resumeSeq: apply.nextSeq }, 'resuming in-flight apply')
      return { ...base, accepted: true, reason: '', message: '', apply }
    }
    const info = await this.withBaseCopy(this.withIncrement(d.info, rec, ctx.retention), rec, ctx.retention, base.modified, space, ctx.onProgress)
    try {
      await ensureStoreDir(this.paths.gdir)
      // order: journal head durable → state lists the disk → target touched
      const journal = await Journal.create(
        this.paths.journal(info.stem),
        {
          cycleId: info.cycleId,
          cycle: req.cycle,
          name: info.name,
          mode: info.mode,
          capacity: info.capacity,
          baseSize: info.baseSize,
          ...(info.increment === undefined ? {} : { increment: info.increment }),
        },
        this.paths.spare(info.stem),
      )
      try {
        const prev = s.inflight
        await this.save({
          ...s,
          inflight: { cycle: req.cycle, startedAt: prev?.startedAt ?? new Date().toISOString(), disks: { ...(prev?.disks ?? {}), [req.name]: info } },
        })
        const apply = await DiskApply.start(this.paths, info, journal, await trackerFor(this.paths, info, rec))
        return { ...base, accepted: true, reason: '', message: '', apply }
      } catch (err) {
        await journal.close().catch(() => {})
        throw err
      }
    } catch (err) {
      throw ioError(err, `opening disk ${req.name}`)
    }
  }

  /**
   * An in-place apply of a VM that keeps points saves its old grains in a
   * reverse increment, which becomes point `committedCycle` (a capacity
   * change breaks the chain: no increment, points dropped at commit).
   */
  private withIncrement(info: InflightDisk, rec: { readonly capacity: number; readonly mirrorCid: string; readonly size: number } | undefined, retention: RetentionPolicy | undefined): InflightDisk {
    if (info.target !== 'flat' || !keepsPoints(retention) || rec?.capacity !== info.capacity || info.baseSize !== info.capacity) return info
    // a resync of a mirror changed behind the receiver's back (booted, edited): what it overwrites is not
    // the committed point's data, so it cannot become that point, and older points no longer read through
    // the mirror — no increment, and the commit drops the VM's points with the reason logged
    const from = info.resyncFrom
    if (from !== undefined && (from.cid !== rec.mirrorCid || from.flatSize !== rec.size)) {
      this.log.warn(
        { vm: this.vm, disk: info.name, committedCid: rec.mirrorCid, cid: from.cid },
        'mirror modified since its last commit: its restore points no longer hold and are dropped at this commit',
      )
      return info
    }
    return { ...info, increment: pointFileName(info.stem, this.current.committedCycle) }
  }

  /**
   * An in-place apply that changes the capacity of a committed mirror of a VM
   * that keeps points: no reverse increment can sit on the new capacity, so
   * the committed mirror is copied whole into a base point first
   * (base-point.ts), which becomes point `committedCycle` at commit, and the
   * older points keep reading through it. When the copy fails (no space),
   * the apply goes on without it and the commit drops the points, as before,
   * logged: the cycle's data does not wait for the archive.
   */
  private async withBaseCopy(
    info: InflightDisk,
    rec: DiskRecord | undefined,
    retention: RetentionPolicy | undefined,
    modified: boolean,
    space: SpaceFacts,
    onProgress: CopyProgress | undefined,
  ): Promise<InflightDisk> {
    if (info.target !== 'flat' || info.increment !== undefined || rec === undefined || rec.capacity === info.capacity || !keepsPoints(retention)) return info
    // the open's own look at the mirror (openDisk): not the committed point, nothing to keep
    if (modified) return info
    const from = info.resyncFrom
    if (from !== undefined && (from.cid !== rec.mirrorCid || from.flatSize !== rec.size)) return info
    const file = pointFileName(rec.stem, this.current.committedCycle)
    // the copy must not take the room the apply was admitted with: a copy that leaves no room for the
    // growth would fail the apply, whose rollback deletes the copy, and every retry would copy again
    const allocated = (await lstat(this.paths.flat(rec.stem))).blocks * 512
    const growth = Math.max(0, info.capacity - rec.capacity)
    const free = await freeBytes(this.paths.dir)
    if (free < allocated + growth) {
      this.log.warn(
        { vm: this.vm, disk: info.name, capacity: rec.capacity, newCapacity: info.capacity, copyBytes: allocated, freeBytes: free },
        'the disk changes capacity and the store has no room to copy its mirror into a restore point: the restore points are dropped at this commit; free space in the store to keep them next time',
      )
      return info
    }
    // the copy counts in the token's quota: a peer that grows a disk every cycle must not keep one whole
    // disk per retained point beyond it, and must not be able to make the receiver drop the VM's points either
    // (with what the token's other open applies may still add: quota-room.ts)
    const counted = space.usedBytes + space.reservedBytes
    if (space.quotaBytes !== undefined && counted + growth + allocated > space.quotaBytes) {
      throw new ReceiverError(
        'E_QUOTA',
        `disk ${info.name} of VM ${this.vm} changes capacity from ${rec.capacity} to ${info.capacity} bytes: keeping its restore points copies its mirror (${allocated} bytes allocated) into a base point, which with the growth brings this token's mirrors from ${counted} to ${counted + growth + allocated} bytes, above its quota of ${space.quotaBytes}: raise the quota in the tokens file, or drop the VM's older points (grainline points prune), then retry; nothing was written`,
      )
    }
    try {
      await copyBasePoint(this.paths, rec, file, onProgress)
    } catch (err) {
      await removeBasePoint(this.paths, file).catch(() => {})
      this.log.warn(
        { vm: this.vm, disk: info.name, capacity: rec.capacity, newCapacity: info.capacity, err: (err as Error).message },
        'the disk changes capacity and its mirror could not be copied into a restore point: the restore points are dropped at this commit; free space in the store to keep them next time',
      )
      return info
    }
    this.log.info(
      { vm: this.vm, disk: info.name, capacity: rec.capacity, newCapacity: info.capacity, point: this.current.committedCycle },
      'the disk changes capacity: its mirror is copied whole into the restore point of the previous cycle, so that the older points still read through it',
    )
    return { ...info, baseCopy: file }
  }

  /**
   * Commit sealed applies atomically: one state.json replace records every
   * disk's new cycle, CID and size and the VmOpen's compat record (the commit
   * point), then roll forward: seed renames, descriptors, .vmx and config
   * files, journal removal.
   */
  async commit(cycle: number, applies: readonly DiskApply[], suffix: string, compat: CompatRecord, opts: CommitOptions = {}): Promise<DiskRecord[]> {
    const infl = this.current.inflight
    if (infl === null || infl.cycle !== cycle) throw new ReceiverError('E_UNEXPECTED', `no in-flight cycle ${cycle} to commit`)
    const names = new Set(applies.map((a) => a.info.name))
    for (const n of Object.keys(infl.disks)) {
      if (!names.has(n)) throw new ReceiverError('E_UNEXPECTED', `disk ${n} of cycle ${cycle} was not sealed in this session; roll back first`)
    }
    let records: DiskRecord[]
    try {
      const sealed = []
      for (const a of applies) {
        if (!a.sealed) throw new ReceiverError('E_UNEXPECTED', `disk ${a.info.name} is not sealed`)
        sealed.push({ info: a.info, size: (await regularFileSize(a.targetPath)) ?? 0, digest: Buffer.from(a.sealedDigest ?? new Uint8Array(0)).toString('hex') })
      }
      // the increments become point `committedCycle`: complete and durable before the commit point
      const incs: CommittedIncrement[] = []
      const bases: BasePoint[] = []
      // base copies that are not whole (basePoint): what is left of them goes at the roll-forward
      const brokenCopies: string[] = []
      for (const a of applies) {
        await a.closeIncrement()
        const file = a.info.increment
        const base = file === undefined ? await this.basePoint(a.info, opts) : undefined
        if (base !== undefined) bases.push(base)
        else if (file === undefined && a.info.baseCopy !== undefined) brokenCopies.push(a.info.baseCopy)
        // a resync of a mirror marked diverged: its increment holds what the damaged mirror held (points.ts divergedResyncUnder)
        const diverged = a.info.mode === 'resync' && file !== undefined ? this.current.disks[a.info.name]?.diverged : undefined
        incs.push(
          base ?? {
            disk: a.info.name,
            file,
            bytes: file === undefined ? 0 : await pointBytes(this.paths, file),
            ...(diverged === undefined ? {} : { divergedResync: { cycle, reason: diverged.reason.slice(0, DIVERGED_REASON_MAX) } }),
          },
        )
      }
      const planned = planCommitPoints(this.current, incs)
      const plan = await this.withPointConfig(planned)
      // SPEC §5.8: a new random generation for every commit, durable with it
      const now = new Date().toISOString()
      const attached = withNamed(await stagedAttached(this.paths, [...Object.keys(this.current.disks), ...names], names), this.named)
      const c = commitState(this.current, cycle, sealed, suffix, now, newGeneration(), attached)
      for (const r of Object.values(c.next.disks)) {
        if (r.removed === cycle)
          this.log.info(
            { vm: this.vm, disk: r.name, cycle, lastCycle: r.cycle },
            "disk removed from the VM: the cycle's .vmx no longer names it; its mirror stays as of its last cycle for the older restore points",
          )
      }
      // the kept block maps name the generation about to be committed (kept-map-update.ts)
      const proven = await updateKeptMaps(
        this.paths,
        applies.map((a, i) => ({ info: a.info, touched: a.touched, prev: this.current.disks[a.info.name], next: c.records[i] as DiskRecord })),
        this.log,
        this.vm,
      )
      records = c.records.map((r) => (proven.has(r.name) ? { ...r, proven: { kind: 'resync' as const, at: now, cycle } } : r))
      if (proven.size > 0) c.next = { ...c.next, disks: { ...c.next.disks, ...Object.fromEntries(records.filter((r) => proven.has(r.name)).map((r) => [r.name, r])) } }
      const kept = await this.retainChecked(plan.points, opts)
      // kept in the state, so that status, the dashboard, /metrics and the agent (PointsDropped) say so after the log has rotated
      const dropped = pointsOf(this.current).map((p) => p.cycle)
      // points turned off (whether the cycle kept increments, which the retention step then drops, or not): not broken, chosen
      const off = !keepsPoints(opts.retention) && dropped.length > 0 && kept.points.length === 0 ? 'the VM keeps no restore points any more (retention off)' : undefined
      const why = off ?? plan.droppedAll
      if (why !== undefined && dropped.length > 0) this.log.warn({ vm: this.vm, cycle, points: dropped, why }, 'restore points dropped')
      const pointsDropped: PointsDroppedRecord | undefined = why !== undefined && dropped.length > 0 ? { cycle, at: now, cycles: dropped, why, broken: keepsPoints(opts.retention) } : undefined
      const pending = c.next.pending as NonNullable<VmStateFile['pending']>
      const reclaim = this.reclaim(c.next, kept.points)
      const retire = await this.writeBaseDescriptors(bases, kept.points, cycle)
      // the configuration files this commit installs: those an earlier commit installed and it does not carry are removed
      const { configFiles, removeFiles } = configChange(this.current.configFiles, await stagedConfigNames(this.paths, this.vm), this.vm)
      faultPoint('commit-before-state')
      await this.save({
        ...reclaim.state,
        configFiles,
        compat,
        points: kept.points,
        ...(pointsDropped === undefined ? {} : { pointsDropped }),
        pending: {
          ...pending,
          ...(retire.length > 0 ? { retire } : {}),
          links: plan.links,
          merges: kept.merges,
          removePoints: [...plan.removePoints, ...kept.removePoints, ...brokenCopies],
          ...(removeFiles.length > 0 ? { removeFiles } : {}),
          ...reclaim.pending,
        },
      })
    } catch (err) {
      throw ioError(err, 'committing')
    }
    faultPoint('commit-after-state')
    await Promise.allSettled(applies.map((a) => a.close()))
    await this.rollForward(opts.onProgress)
    await removeResyncMaps(this.paths, resyncStems(applies.map((a) => a.info))).catch(() => {})
    return records
  }

  /**
   * A seed replacing a committed mirror of a VM that keeps points: the old
   * mirror, as committed, becomes the disk's file of point `committedCycle`
   * (a base point), so that the older points keep reading through it instead
   * of being dropped (docs/POINTS.md "Re-seeds keep the points"). Undefined
   * when it cannot: not a seed, points off, another stem, or a mirror
   * changed since its commit (booted, edited, missing: then the commit drops
   * the points, as before, with the reason logged).
   */
  private async basePoint(info: InflightDisk, opts: CommitOptions): Promise<BasePoint | undefined> {
    const rec = this.current.disks[info.name]
    // an in-place apply across a capacity change made its base point before its first write
    if (info.baseCopy !== undefined && rec !== undefined) {
      // a point without its files would break the roll-forward (its older point is linked onto it) and every
      // later open: a copy gone or not whole (deleted by hand, or by the rollback of an older receiver before a
      // resume) is no point, and the commit drops the points instead
      if (!(await completeBaseCopy(this.paths, rec, info.baseCopy))) {
        this.log.warn(
          { vm: this.vm, disk: info.name, cycle: this.current.inflight?.cycle, file: info.baseCopy },
          `the base copy ${info.baseCopy} of disk ${info.name} of VM ${this.vm} (its committed mirror, copied for the capacity change to be restore point ${this.current.committedCycle}) is missing or not as grainline wrote it: the VM's restore points are dropped at this commit, and the next cycles keep new ones`,
        )
        return undefined
      }
      return { disk: info.name, stem: rec.stem, file: info.baseCopy, bytes: await pointBytes(this.paths, info.baseCopy), base: true }
    }
    if (info.target !== 'seed' || rec === undefined || rec.stem !== info.stem || !keepsPoints(opts.retention)) return undefined
    if (mirrorModified(rec, undefined, await inspectMirror(this.paths, rec, undefined))) {
      this.log.warn(
        { vm: this.vm, disk: info.name, cycle: rec.cycle },
        'mirror changed since its last commit: it cannot be kept as a restore point for the re-seed, so the restore points are dropped at this commit',
      )
      return undefined
    }
    const file = pointFileName(rec.stem, this.current.committedCycle)
    const blocks = (await lstat(this.paths.flat(rec.stem))).blocks * 512
    const descriptor = baseDescriptor(rec, file)
    return { disk: info.name, stem: rec.stem, file, bytes: blocks + Buffer.byteLength(descriptor), base: true, descriptor }
  }

  /**
   * The descriptors of the base points a commit keeps, written (durable)
   * before the commit point; their flats move at the roll-forward
   * (commit.ts retireMirrors). Returns the pending `retire` work.
   */
  private async writeBaseDescriptors(bases: readonly BasePoint[], kept: readonly PointRecord[], cycle: number): Promise<Array<{ stem: string; file: string }>> {
    const keptBases = bases.filter((b) => b.descriptor !== undefined && kept.some((p) => p.disks[b.disk]?.file === b.file))
    if (keptBases.length === 0) return []
    await ensureStoreDir(join(this.paths.gdir, POINTS_DIR))
    for (const b of keptBases) {
      await writeFileAtomic(pointPath(this.paths, b.file), b.descriptor as string)
      this.log.info(
        { vm: this.vm, disk: b.disk, cycle, point: this.current.committedCycle, bytes: b.bytes },
        'disk re-seeded: its old mirror is kept whole as restore point of the previous cycle, so the older restore points still read through it',
      )
    }
    await fsyncDir(join(this.paths.gdir, POINTS_DIR))
    return keptBases.map((b) => ({ stem: b.stem, file: b.file }))
  }

  /**
   * The new point of a commit's plan with its configuration: the mirror's
   * .vmx, saved before the cycle's roll-forward installs the new one
   * (point-config.ts).
   */
  private async withPointConfig(plan: PointPlan): Promise<PointPlan> {
    const last = plan.points[plan.points.length - 1]
    if (last === undefined || last.cycle !== this.current.committedCycle || pointsOf(this.current).some((p) => p.cycle === last.cycle)) return plan
    const config = await savePointConfig(this.paths, this.vm, this.log)
    if (config === undefined) return plan
    return { ...plan, points: [...plan.points.slice(0, -1), { ...last, config }] }
  }

  /**
   * {@link retain} at a commit, its merges checked first (point-chain.ts):
   * when a point's files are not as the receiver wrote them, the commit
   * goes on and this time no point is dropped (logged as an error naming
   * the point and what to do) — a merge would write through them, and the
   * cycle's data must not wait for the operator.
   */
  private async retainChecked(points: readonly PointRecord[], opts: CommitOptions): Promise<{ points: PointRecord[]; removePoints: string[]; merges: PointMerge[] }> {
    const r = this.retain(points, opts)
    try {
      for (const m of r.merges) await checkPointMerge(this.paths, m)
      return r
    } catch (err) {
      this.log.error({ vm: this.vm, err: (err as Error).message, code: (err as { code?: unknown }).code }, 'restore points not pruned at this commit: a point to merge is not as grainline wrote it')
      return { points: [...points], removePoints: [], merges: [] }
    }
  }

  /** Apply a retention policy to a list of points: the oldest dropped ones are removed, middle ones merged. */
  private retain(points: readonly PointRecord[], opts: CommitOptions): { points: PointRecord[]; removePoints: string[]; merges: PointMerge[] } {
    if (points.length === 0) return { points: [], removePoints: [], merges: [] }
    if (!keepsPoints(opts.retention)) return { points: [], removePoints: pointFiles(points), merges: [] }
    const now = (opts.now ?? Date.now)()
    const bytes = (p: PointRecord): number => Object.values(p.disks).reduce((n, d) => n + d.bytes, 0)
    const drop = pointsToDrop(
      points.map((p) => ({ cycle: p.cycle, committedAt: p.committedAt, bytes: bytes(p) })),
      opts.retention ?? {},
      now,
    )
    const r = dropPoints(points, drop)
    if (drop.length > 0) this.log.info({ vm: this.vm, cycles: drop, merges: r.merges.length }, 'restore points pruned')
    const maxBytes = opts.retention?.maxBytes
    const kept = points.filter((p) => !drop.includes(p.cycle))
    const keptBytes = kept.reduce((n, p) => n + bytes(p), 0)
    if (maxBytes !== undefined && keptBytes > maxBytes)
      // the newest point alone is larger than the cap (retention.ts pointsToDrop): kept, as the last restore point
      this.log.warn(
        { vm: this.vm, cycle: kept[kept.length - 1]?.cycle, bytes: keptBytes, maxBytes },
        'restore points take more than maxBytes: the newest point alone exceeds it and is kept (the last restore point before the mirror); raise maxBytes or free space',
      )
    return r
  }

  /**
   * The disks removed from the VM that the points kept by a commit or prune
   * no longer need (points.ts reclaimableDisks): `state` without their
   * records, and the roll-forward that deletes their files.
   */
  private reclaim(state: VmStateFile, points: readonly PointRecord[]): { state: VmStateFile; pending: { removeDisks?: string[] } } {
    const gone = reclaimableDisks(state, points)
    if (gone.length === 0) return { state, pending: {} }
    for (const r of gone) {
      this.log.info({ vm: this.vm, disk: r.name, removedAt: r.removed, lastCycle: r.cycle }, 'disk removed from the VM reclaimed: no restore point holds it any more; its mirror files are deleted')
    }
    const names = new Set(gone.map((r) => r.name))
    const disks = Object.fromEntries(Object.entries(state.disks).filter(([n]) => !names.has(n)))
    return { state: { ...state, disks }, pending: { removeDisks: gone.map((r) => r.stem) } }
  }

  /**
   * Prune the VM's points by `retention` now (`grainline points prune`), or
   * drop the points `cycles` (`grainline points drop`): the state is written
   * first (the commit point of the prune), then the merges run and the files
   * go; recovery finishes an interrupted prune. Returns the cycles dropped.
   * @throws ReceiverError E_BUSY (a cycle in flight), E_NOT_FOUND (no such point)
   */
  async prunePoints(opts: CommitOptions & { cycles?: readonly number[] }): Promise<number[]> {
    if (this.current.inflight !== null)
      throw new ReceiverError('E_BUSY', `VM ${this.vm} has cycle ${this.current.inflight.cycle} in flight: its points cannot change until it is committed or rolled back`)
    if (holdsOf(this.current).length > 0)
      throw new ReceiverError('E_HELD', heldMessage(this.vm, holdsOf(this.current), this.paths.store), { peerMessage: heldPeerMessage(this.vm, holdsOf(this.current), this.paths.store) })
    const before = pointsOf(this.current)
    let kept: { points: PointRecord[]; removePoints: string[]; merges: PointMerge[] }
    if (opts.cycles !== undefined) {
      const missing = opts.cycles.filter((c) => !before.some((p) => p.cycle === c))
      if (missing.length > 0) throw new ReceiverError('E_NOT_FOUND', `VM ${this.vm} has no point ${missing.join(', ')} (points: ${before.map((p) => p.cycle).join(', ') || 'none'})`)
      kept = dropPoints(before, opts.cycles)
    } else {
      kept = this.retain(before, opts)
    }
    if (kept.points.length === before.length) return []
    // before the state names them: a merge writes into the dropped point and deletes the older one's files
    for (const m of kept.merges) await checkPointMerge(this.paths, m)
    const reclaim = this.reclaim(this.current, kept.points)
    await this.save({
      ...reclaim.state,
      points: kept.points,
      pending: { cycle: this.current.committedCycle, renames: [], descriptors: [], journals: [], files: false, merges: kept.merges, removePoints: kept.removePoints, ...reclaim.pending },
    })
    faultPoint('prune-after-state')
    await this.rollForward(opts.onProgress)
    const left = new Set(kept.points.map((p) => p.cycle))
    return before.filter((p) => !left.has(p.cycle)).map((p) => p.cycle)
  }

  /** Record the VM's holds (opened points, failovers). */
  async setHolds(holds: readonly HoldRecord[]): Promise<void> {
    // a new hold may write the mirror (a failover boots it): its kept block maps no longer hold
    if (holds.length > holdsOf(this.current).length)
      await dropKeptMaps(
        this.paths,
        Object.values(this.current.disks).map((d) => d.stem),
      )
    await this.save({ ...this.current, holds })
  }

  /** Finish a commit whose state.json is already written (idempotent); `onProgress` hears of its merges of dropped points. */
  async rollForward(onProgress?: WorkProgress): Promise<void> {
    const p = this.current.pending
    if (p === null) return
    try {
      const { vmxDropped } = await rollForwardFiles(this.paths, this.current, this.log, onProgress)
      await this.save({ ...this.current, pending: null, ...(vmxDropped === undefined ? {} : { vmxDropped }) })
    } catch (err) {
      throw ioError(err, 'finishing a commit')
    }
    this.log.info({ vm: this.vm, cycle: p.cycle }, 'commit rolled forward')
  }

  /**
   * Roll the VM back to its last committed point (undo every in-flight disk),
   * its progress logged (O(what the cycle wrote)) and heard by `onProgress`
   * (a Rollback's VmProgress, SPEC §4.3).
   */
  async rollback(onProgress?: WorkProgress): Promise<number> {
    const infl = this.current.inflight
    if (infl === null) return this.current.committedCycle
    const logged = workProgressLog(this.log, { vm: this.vm, cycle: infl.cycle, step: 'undo' }, 'rolling back the in-flight cycle: writing back what it overwrote', 'in-flight cycle undone')
    try {
      // a seed's journal records refused: its rollback needs the head alone (rollback.ts seedJournal), said in the log
      const ignored = (disk: string, why: string): void =>
        this.log.warn(
          { vm: this.vm, disk, cycle: infl.cycle, journal: relative(this.paths.store, this.paths.journal(infl.disks[disk]?.stem ?? '')), why },
          `the journal of seed disk ${disk} of VM ${this.vm} (cycle ${infl.cycle}) holds records the receiver never writes: ignored, the rollback discards the seed file whole and needs only the journal's head, which is the state's record of the disk`,
        )
      // a seed's journal it cannot open or read: set aside unopened (rollback.ts seedJournal), said where
      const setAside = (disk: string, journal: string, to: string, why: string): void =>
        this.log.warn(
          { vm: this.vm, disk, cycle: infl.cycle, journal, setAside: to, why },
          `journal ${journal} of seed disk ${disk} of VM ${this.vm} (cycle ${infl.cycle}) ${why}: set aside unopened as ${to}; the rollback discards the seed file, which needs none of the journal (the committed mirror stays as it is), and the next run seeds disk ${disk} anew. Look at ${to}, then delete it`,
        )
      // the journals as the rollback read them, in the state before anything is written back (rollback.ts undoInflight)
      const begin = async (marks: ReadonlyMap<string, UndoMark>): Promise<void> => {
        const cur = this.current.inflight
        if (cur === null) return
        const disks = { ...cur.disks }
        for (const [name, undoFrom] of marks) {
          const d = disks[name]
          if (d !== undefined) disks[name] = { ...d, undoFrom }
        }
        await this.save({ ...this.current, inflight: { ...cur, disks } }).catch((err: unknown) => {
          // a full store: the rollback needs no space (renames, writes over allocated blocks, truncation) and goes on
          // unrecorded, as a rollback of an older receiver — unless a record of an earlier one would be taken for it
          const code = (err as { code?: unknown } | null)?.code
          if (code !== 'ENOSPC' && code !== 'EDQUOT' && code !== 'E_NO_SPACE') throw err
          const stale = [...marks.keys()].filter((name) => cur.disks[name]?.undoFrom !== undefined)
          if (stale.length > 0) throw err
          this.log.warn(
            { vm: this.vm, cycle: cur.cycle, err },
            'no space to record the journals the rollback begins with: it goes on unrecorded (a journal changed while it undoes cannot be told from the one it began with after an interruption)',
          )
        })
      }
      await undoInflight(this.paths, infl, alsoTo(logged, onProgress), undefined, ignored, setAside, begin)
      await this.save({ ...this.current, inflight: null })
      // the base copies only now that no state names them: until then the cycle may still be resumed and committed
      // (a crash right after the save leaves them to the start-up sweep, point-sweep.ts)
      for (const d of Object.values(infl.disks)) if (d.baseCopy !== undefined) await removeBasePoint(this.paths, d.baseCopy)
      await removeResyncMaps(this.paths, resyncStems(Object.values(infl.disks)))
      for (const d of Object.values(infl.disks)) await retireJournal(this.paths.journal(d.stem))
      await fsyncDir(this.paths.gdir)
    } catch (err) {
      throw ioError(err, `rolling back VM ${this.vm}`)
    }
    this.log.info({ vm: this.vm, cycle: infl.cycle, disks: Object.keys(infl.disks) }, 'in-flight cycle rolled back')
    return this.current.committedCycle
  }

  /**
   * Mark disk `name` diverged from its source (the mark a failed check
   * leaves, {@link recordVerify}): the next DiskOpen of an incremental on it
   * is refused with `E_DIVERGED` and the agent resyncs the disk; status
   * reports it CRITICAL until a seed or resync commits. For what found the
   * mirror wrong outside a session: a restore whose read of the mirror did
   * not match the mirror's own recorded digest (points-admin.ts). Its kept
   * block map goes (it describes what the mirror should hold). Written at once.
   */
  async markDiverged(name: string, reason: string): Promise<void> {
    const rec = this.current.disks[name]
    if (rec === undefined) return
    this.log.warn({ vm: this.vm, disk: name, cycle: rec.cycle, reason }, 'mirror differs from what its last commit recorded: marked diverged, the next cycle must resync it')
    await dropKeptMaps(this.paths, [rec.stem])
    await this.save({ ...this.current, disks: { ...this.current.disks, [name]: { ...rec, diverged: { reason, at: new Date().toISOString() } } } })
  }

  /**
   * Record a trivial-check, certify or block-check result; a failed one marks
   * the disk diverged (no incremental on it until a seed is committed) and is
   * written at once. With `defer`, a clean one is only recorded in memory and
   * written by the next save ({@link saveUnsaved}, or any later write of the
   * state): a clean verdict lost in a crash costs nothing but a late proof
   * (proof.ts), so a run of BlockChecks costs one fsynced write, not one each.
   */
  async recordVerify(
    name: string,
    kind: 'trivial' | 'certify' | 'blocks',
    r: VerifyRecord,
    blocks?: { readonly run: { from: number; to: number } | undefined; readonly blockSize: number },
    opts: { readonly defer?: boolean } = {},
  ): Promise<void> {
    const rec = this.current.disks[name]
    if (rec === undefined) return
    const what = { trivial: 'trivial check', certify: 'certify', blocks: 'block check' }[kind]
    const diverged = r.ok ? rec.diverged : { reason: `${what} (${r.algorithm}) of cycle ${rec.cycle} failed`, at: r.at }
    if (!r.ok) {
      this.log.warn({ vm: this.vm, disk: name, cycle: rec.cycle, check: kind }, 'mirror differs from its source: marked diverged, the next cycle must seed it')
      // its kept block map describes what the mirror should hold, not what it holds
      await dropKeptMaps(this.paths, [rec.stem])
    }
    // when the whole mirror was last proven (proof.ts): a clean certify, a completed scrub rotation
    let proof: Pick<DiskRecord, 'proven' | 'scrubRun'> = { ...(rec.proven === undefined ? {} : { proven: rec.proven }), ...(r.ok && rec.scrubRun !== undefined ? { scrubRun: rec.scrubRun } : {}) }
    if (kind === 'certify' && r.ok) proof = { ...proof, proven: { kind: 'certify', at: r.at, cycle: rec.cycle } }
    if (blocks !== undefined) {
      const p = scrubStep(rec, { ...blocks, ok: r.ok, at: r.at }, rec.capacity, rec.cycle)
      proof = { ...(p.proven === undefined ? {} : { proven: p.proven }), ...(p.scrubRun === undefined ? {} : { scrubRun: p.scrubRun }) }
    }
    const { proven: _p, scrubRun: _s, ...base } = rec
    const next = { ...this.current, disks: { ...this.current.disks, [name]: { ...base, ...proof, [kind]: r, ...(diverged === undefined ? {} : { diverged }) } } }
    if (r.ok && opts.defer === true) {
      this.current = next
      this.unsaved = true
      return
    }
    await this.save(next)
  }
}
