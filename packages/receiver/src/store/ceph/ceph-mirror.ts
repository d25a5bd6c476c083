/**
 * The Ceph twin of vm-mirror.ts: one locked VM and the rules of SPEC
 * §5.1/§5.2 for its disks (verification of committed snapshots:
 * ceph-checks.ts).
 *
 * A locked VM mirror on the Ceph store: its disks are RBD images, its
 * committed cycle the newest snapshot of each, its restore points older
 * snapshots, its record one state object (ceph-state.ts), its lock a RADOS
 * lease (ceph-lock.ts). The commit point is the state object's write: the
 * snapshots are created first (a crash between leaves a snapshot the state
 * does not name, removed by the next commit of that cycle), clean-up
 * (dropped points, replaced images, logs) after, recorded as `pending` so the
 * next holder finishes it.
 */
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import { validateName, type CompatRecord, type SourceIdentity } from '@grainline/protocol'
import { ReceiverError, peerText } from '../../errors.ts'
import { notNextCycle, type DiskOpenRequest } from '../../open-decision.ts'
import type { PointsDroppedRecord } from '../../state-file.ts'
import { newGeneration, uncarriedRecord } from '../../commit.ts'
import { committedIdentityRecord } from '../../committed-identity.ts'
import { attachedDisks, namedDisks, withNamed } from '../../mirror-vmx.ts'
import { keepsPoints, pointsToDrop, type RetentionPolicy } from '../../retention.ts'
import { checkDiskName, checkVmName } from '../../receiver-rules.ts'
import { heldMessage } from '../../hold-record.ts'
import { faultPoint } from '../../fault.ts'
import { CephLock } from './ceph-lock.ts'
import { CephDiskApply, ExtentLogTooLarge } from './ceph-apply.ts'
import { keptCephConfigs, withCephPointConfig } from './ceph-point-config.ts'
import {
  CephNames,
  headImages,
  heldDisks,
  reclaimableCephDisks,
  unreferencedImages,
  snapCid,
  emptyCephState,
  readCephState,
  writeCephState,
  type CephDiskRecord,
  type CephInflightDisk,
  type CephPending,
  type CephPoint,
  type CephVmState,
} from './ceph-state.ts'
import { CephCommandError, cephTimeouts, runCeph, type CephTarget } from './rbd-cli.ts'
import { alsoTo, workProgressLog, type WorkProgress } from '../../work-progress.ts'
import type { CephBlockMap, CephBlockCheck } from './ceph-blocks.ts'
import { checkCephBlocks, openCephBlockMap, verifyCephDisk, type CephVerifyRequest } from './ceph-checks.ts'
import { checkCephRoom, retainedPoints, type CephQuota } from './ceph-space.ts'
import { appendCephHistory } from './ceph-history.ts'
import { VM_INDEX } from './ceph-vm-index.ts'
import type { CycleHistoryEntry } from '../../cycle-history.ts'
import { keptMapAtCommit } from './ceph-kept-map.ts'
import { damagedBaseText, damagedSnapshotText, freshOpenRefusal, trackerFor } from './ceph-open-rules.ts'
import { snapshotProblem } from './ceph-snapshots.ts'

/** Outcome of a DiskOpen on the Ceph store (the fields of DiskState, and the apply when accepted). */
export interface CephOpenResult {
  readonly accepted: boolean
  readonly reason: string
  readonly message: string
  readonly committedCycle: number
  readonly committedSource: SourceIdentity | null
  readonly mirrorCid: string
  readonly modified: boolean
  readonly apply?: CephDiskApply
}

/** The disks (of `names`) the staged .vmx attaches (mirror-vmx.ts attachedDisks); undefined when none is staged. */
export function stagedCephAttached(staged: Readonly<Record<string, string>> | undefined, names: Iterable<string>, carried: ReadonlySet<string>): Set<string> | undefined {
  const vmx = Object.entries(staged ?? {}).find(([f]) => /\.vmx$/i.test(f))
  return vmx === undefined ? undefined : attachedDisks(Buffer.from(vmx[1], 'base64').toString('utf8'), names, carried)
}

/**
 * The disks of `s` removed from the VM that `points` no longer name
 * (ceph-state.ts reclaimableCephDisks), logged: their names, their images
 * and the RADOS objects (kept block maps) a pending clean-up removes.
 */
export function reclaimCephDisks(s: Pick<CephVmState, 'disks' | 'holds'>, points: readonly CephPoint[], names: CephNames, log: Logger): { names: string[]; images: string[]; objects: string[] } {
  const gone = reclaimableCephDisks(s, points)
  for (const d of gone)
    log.info({ disk: d.name, image: d.image, removedAt: d.removed, lastCycle: d.cycle }, 'disk removed from the VM reclaimed: no restore point holds it any more; its image is removed')
  return { names: gone.map((d) => d.name), images: gone.map((d) => d.image), objects: gone.flatMap((d) => (d.kept === undefined ? [] : [names.keptMap(d.name)])) }
}

/** The snapshot name of a commit. */
export function snapName(cycle: number, generation: string): string {
  return `c${cycle}-${generation.slice(0, 16)}`
}

/** The object size of the store's images (rbd's default, order 22): a rollback's work is counted in objects. */
export const RBD_OBJECT_BYTES = 4 * 2 ** 20

/** The 4 MiB objects of an image of `capacity` bytes. */
export function rbdObjects(capacity: number): number {
  return Math.ceil(capacity / RBD_OBJECT_BYTES)
}

/**
 * The pace of a Ceph rollback ({@link CephVmMirror.rollback}); tests
 * shorten the heartbeat.
 */
export const cephRollbackTimes = {
  /** how often a running image undo is reported (VmProgress, the log at most every 30 s), ms @default 10 s: well within the agent's idle timeout (120 s) */
  heartbeatMs: 10_000,
  /** the expected time of an undo per object, for its estimate and ETA: ~1.7 ms measured on a one-node cluster @default 2 ms */
  estimateMsPerObject: 2,
  /** the deadline of an undo per object, on top of `cephTimeouts.commandMs` @default 20 ms: 10× the expected pace */
  deadlineMsPerObject: 20,
}

/**
 * How long an image's undo in a rollback (`rbd snap rollback`, or a seeded
 * image's removal) may take before its session client is killed (and the
 * lease given up, the cycle left in flight): the command deadline
 * (`cephTimeouts.commandMs`, 10 min) plus 20 ms per 4 MiB object of
 * `capacity` — 10 min + 87 min for 1 TiB — where it used to be the command
 * deadline alone, which a rollback of an image past about 300 GiB outlasts.
 */
export function cephRollbackDeadlineMs(capacity: number): number {
  return cephTimeouts.commandMs + rbdObjects(capacity) * cephRollbackTimes.deadlineMsPerObject
}

/** How this receiver describes itself in a lock (seen by whoever finds a VM locked). */
export interface CephHolder {
  readonly description: string
  readonly leaseSeconds?: number
}

/** A locked VM on the Ceph store. */
export class CephVmMirror {
  readonly kind = 'ceph' as const
  readonly vm: string
  readonly names: CephNames
  /** the pool (for ceph-checks.ts) */
  readonly target: CephTarget
  /** the VM's lease and session client: every write of this mirror goes through it (fenced with the lease) */
  readonly lock: CephLock
  readonly log: Logger
  private current: CephVmState
  /** whether the pool holds this VM's state object (false: a VM new to the pool, until {@link record} or a save) */
  private stored: boolean
  private staged: Record<string, string> | undefined
  /** the disks the cycle's VmOpen names (stageFiles) */
  private named: ReadonlySet<string> = new Set()
  /** the block maps of this session's resync disks, by disk name (their digests become the next kept map at commit) */
  private readonly blockMaps = new Map<string, CephBlockMap>()

  private constructor(target: CephTarget, vm: string, state: CephVmState | undefined, lock: CephLock, log: Logger) {
    this.target = target
    this.vm = vm
    this.names = new CephNames(vm)
    this.current = state ?? emptyCephState(vm)
    this.stored = state !== undefined
    this.lock = lock
    this.log = log
  }

  get state(): CephVmState {
    return this.current
  }

  /**
   * Take the VM's lease and load its state (finishing a commit's clean-up).
   * @throws ReceiverError E_BAD_NAME, E_BUSY (another receiver holds it, named), E_STATE, E_IO
   */
  static async acquire(target: CephTarget, vm: string, log: Logger, holder: CephHolder): Promise<CephVmMirror> {
    // the store API checks names itself (not only the wire decoder): separators, NUL, control characters, length
    validateName(vm, 'VM name')
    checkVmName(vm)
    const names = new CephNames(vm)
    const lock = await CephLock.take(target, names.lock, `${holder.description} (VM ${vm})`, randomBytes(8).toString('hex'), holder.leaseSeconds, vm)
    lock.attach(vm, log)
    if (lock.fencedAddrs.length > 0) log.warn({ fenced: lock.fencedAddrs }, 'took the VM over from a holder whose lease ran out: its Ceph clients are blocklisted (fenced) before anything is written')
    try {
      const m = new CephVmMirror(target, vm, await readCephState(target, names.state, vm), lock, log)
      await m.finishPending()
      return m
    } catch (err) {
      lock.release()
      throw err
    }
  }

  /**
   * Like `acquire`, retrying a held lock for up to `waitMs` (a closing session
   * of this or another receiver). With `record` (a session's VmOpen), then
   * {@link record} the VM under the lease, released when that fails.
   */
  static async acquireWait(target: CephTarget, vm: string, log: Logger, holder: CephHolder, waitMs: number, signal?: AbortSignal, opts: { record?: boolean } = {}): Promise<CephVmMirror> {
    const deadline = Date.now() + waitMs
    let m: CephVmMirror
    for (;;) {
      try {
        m = await CephVmMirror.acquire(target, vm, log, holder)
        break
      } catch (err) {
        if ((err as { code?: unknown }).code !== 'E_BUSY' || Date.now() >= deadline) throw err
      }
      signal?.throwIfAborted()
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
    if (opts.record === true) {
      try {
        await m.record()
      } catch (err) {
        m.release()
        throw err
      }
    }
    return m
  }

  release(): void {
    this.lock.release()
  }

  /** Write the next state object through the session client (the lease checked first); `point` names a fault point (fault.ts) between the check and the write. */
  private async save(next: CephVmState, point?: string): Promise<void> {
    this.lock.check(this.vm)
    if (point !== undefined) faultPoint(point)
    // a VM new to the pool: its key in the pool's VM index before its state object exists (ceph-vm-index.ts)
    if (!this.stored) await this.lock.setKey(VM_INDEX, this.names.state, this.vm)
    await writeCephState(this.target, this.names.state, next, (o, d) => this.lock.put(o, d))
    this.current = next
    this.stored = true
  }

  /**
   * Write the state object of a VM new to the pool (nothing committed), under
   * the lease; nothing for a VM the pool holds. A session records its VM at
   * VmOpen (`acquireWait` with `record`), so that the VM counts against its
   * token's `maxVms` from then on (ceph-vm-count.ts): its lock object never
   * outlives it unnamed.
   */
  private async record(): Promise<void> {
    if (!this.stored) await this.save(this.current)
  }

  /** Throw E_BUSY unless the VM's lease is still held (an operator action between its Ceph commands). */
  checkLease(): void {
    this.lock.check(this.vm)
  }

  /** Write the next state object, the lease checked first (operator actions: ceph-points.ts, ceph-holds.ts). */
  async write(next: CephVmState): Promise<void> {
    await this.save(next)
  }

  /** Append a committed cycle to the VM's history object (ceph-history.ts), under the lease. */
  async recordHistory(entry: CycleHistoryEntry): Promise<void> {
    this.lock.check(this.vm)
    await appendCephHistory(this.target, this.vm, entry, (o, d) => this.lock.put(o, d))
  }

  /** Keep the VM's configuration files for the commit (they are written with its state), and the disks its VmOpen names (never taken for removed). */
  async stageFiles(files: ReadonlyArray<{ name: string; data: Uint8Array }>, disks: readonly string[] = []): Promise<void> {
    this.staged = Object.fromEntries(files.map((f) => [f.name, Buffer.from(f.data).toString('base64')]))
    this.named = namedDisks(disks)
  }

  compatible(compat: CompatRecord): boolean {
    const c = this.current.compat
    return c === null || (c.hwVersion === compat.hwVersion && c.datastoreType === compat.datastoreType)
  }

  /** Decide a DiskOpen (the rules of open-decision.ts that apply to images, room and quota by ceph-space.ts) and open the apply. */
  async openDisk(req: DiskOpenRequest, ctx: { compat: CompatRecord; quota?: CephQuota }): Promise<CephOpenResult> {
    validateName(req.name, 'disk name')
    checkDiskName(req.name, this.vm)
    const s = this.current
    const rec = s.disks[req.name]
    const inf = s.inflight?.disks[req.name]
    const base = { committedCycle: rec?.cycle ?? 0, committedSource: rec?.source ?? null, mirrorCid: rec === undefined ? '' : snapCid(rec.image, rec.snap), modified: false }
    const refuse = (reason: string, message: string): CephOpenResult => ({ ...base, accepted: false, reason, message })
    // SPEC §5.1 rule 2, as the folder store: a failover (ceph-holds.ts) holds the mirror; nothing may change it
    if ((s.holds ?? []).length > 0) return refuse('E_HELD', heldMessage(this.vm, s.holds ?? [], `ceph:${this.target.pool}`))
    if (s.inflight !== null && s.inflight.cycle !== req.cycle) return refuse('E_CYCLE_MISMATCH', `cycle ${s.inflight.cycle} of VM ${this.vm} is in flight; roll it back first`)
    const notNext = notNextCycle(this.vm, req.cycle, s.committedCycle)
    if (notNext !== undefined) return refuse('E_CYCLE_MISMATCH', notNext)
    if (inf !== undefined) {
      // first (whatever the cycle's identity: the resync the agent tries after this refusal meets it too): the base
      // snapshot the head is written from, as a fresh open checks it; removed or shrunk behind the store, the resume's
      // first batch would fail E_IO and its rollback too, at every run of the agent
      const damaged = await this.damagedBase(req.name, inf)
      if (damaged !== undefined) return { ...base, modified: true, accepted: false, reason: 'E_MIRROR_MODIFIED', message: damaged }
      if (inf.cycleId !== req.cycleId || inf.mode !== req.mode || inf.capacity !== req.capacity || inf.algorithm !== req.algorithm) {
        return refuse('E_CYCLE_MISMATCH', `disk ${req.name} has an interrupted apply of a different cycle identity; roll it back first`)
      }
      let apply: CephDiskApply
      try {
        apply = await CephDiskApply.resume(this.target, this.lock, this.vm, inf, trackerFor(req, rec))
      } catch (err) {
        // a log this store cannot have written: no resume from it; the agent rolls the cycle back on this refusal
        // (the rollback removes the log unread) and ships it again, where an error would fail every resume
        if (err instanceof ExtentLogTooLarge) return refuse('E_CYCLE_MISMATCH', err.message)
        throw err
      }
      this.log.info({ vm: this.vm, disk: req.name, cycle: req.cycle, resumeSeq: apply.nextSeq, image: inf.image }, 'resuming in-flight apply (Ceph)')
      return { ...base, accepted: true, reason: '', message: '', apply }
    }
    const refusal = freshOpenRefusal(this.vm, req, rec, this.compatible(ctx.compat))
    if (refusal !== undefined) return refuse(refusal.reason, refusal.message)
    // an incremental writes the head from the committed snapshot and a resync compares with it: its size read through
    // the session client (as status reads it, damagedMirror) refuses a snapshot removed or shrunk behind the store,
    // where the apply's helper would fail at the first batch (E_IO, the agent retrying without end)
    if (req.mode !== 'seed' && rec !== undefined) {
      const size = await this.lock.snapSize(rec.image, rec.snap)
      const sizes = size === undefined ? undefined : new Map(size < 0 ? [] : [[rec.snap, size]])
      const problem = snapshotProblem(this.target.pool, rec.image, rec.snap, rec.capacity, sizes)
      if (problem !== undefined)
        return { ...base, modified: true, accepted: false, reason: 'E_MIRROR_MODIFIED', message: damagedSnapshotText(this.vm, `ceph:${this.target.pool}`, req.name, rec, problem) }
    }
    await checkCephRoom(this.target, this.vm, req, rec?.capacity ?? 0, ctx.quota, this.log)
    const seed = req.mode === 'seed'
    const info: CephInflightDisk = {
      name: req.name,
      cycleId: req.cycleId,
      mode: req.mode,
      capacity: req.capacity,
      algorithm: req.algorithm,
      source: req.source,
      ddb: req.ddb,
      image: seed || rec === undefined ? this.names.image(req.name, randomBytes(4).toString('hex')) : rec.image,
      baseSnap: seed || rec === undefined ? null : rec.snap,
      log: this.names.log(req.name),
    }
    // order: the state names the image before it is created or written (a crash leaves nothing unnamed)
    const prev = s.inflight
    await this.save({ ...s, inflight: { cycle: req.cycle, startedAt: prev?.startedAt ?? new Date().toISOString(), disks: { ...(prev?.disks ?? {}), [req.name]: info } } })
    const apply = await CephDiskApply.start(this.target, this.lock, this.vm, info, trackerFor(req, rec))
    return { ...base, accepted: true, reason: '', message: '', apply }
  }

  /**
   * What is wrong with the base snapshot of disk `name` in flight (an
   * incremental's or a resync's: the committed snapshot its head is written
   * from), read through the session client as a fresh open reads it: the
   * refusal's text (ceph-open-rules.ts damagedBaseText), or undefined when it
   * is whole or the disk has no base (a seed).
   */
  private async damagedBase(name: string, d: CephInflightDisk): Promise<string | undefined> {
    if (d.baseSnap === null) return undefined
    const s = this.current
    const rec = s.disks[name]
    // the committed record's capacity when it names that snapshot (it does: the open took the base from it)
    const capacity = rec !== undefined && rec.image === d.image && rec.snap === d.baseSnap ? rec.capacity : 0
    const size = await this.lock.snapSize(d.image, d.baseSnap)
    const sizes = size === undefined ? undefined : new Map(size < 0 ? [] : [[d.baseSnap, size]])
    const problem = snapshotProblem(this.target.pool, d.image, d.baseSnap, capacity, sizes)
    if (problem === undefined) return undefined
    const store = `ceph:${this.target.pool}`
    return damagedBaseText(this.vm, store, name, { image: d.image, snap: d.baseSnap, committedCycle: rec?.cycle ?? s.committedCycle, inflightCycle: s.inflight?.cycle ?? 0 }, problem)
  }

  /**
   * Commit sealed applies: a snapshot of every written image, then the state
   * object (the commit point) naming them, then the clean-up.
   */
  async commit(
    cycle: number,
    applies: readonly CephDiskApply[],
    _suffix: string,
    compat: CompatRecord,
    opts: { retention?: RetentionPolicy; now?: () => number } = {},
  ): Promise<Array<{ name: string; mirrorCid: string; size: number }>> {
    const s = this.current
    const infl = s.inflight
    if (infl === null || infl.cycle !== cycle) throw new ReceiverError('E_UNEXPECTED', `no in-flight cycle ${cycle} to commit`)
    const names = new Set(applies.map((a) => a.info.name))
    for (const n of Object.keys(infl.disks)) if (!names.has(n)) throw new ReceiverError('E_UNEXPECTED', `disk ${n} of cycle ${cycle} was not sealed in this session; roll back first`)
    const generation = newGeneration()
    const snap = snapName(cycle, generation)
    const now = new Date().toISOString()
    // a disk the cycle did not carry and its .vmx no longer names was removed from the VM (as commit.ts uncarriedRecord)
    const attached = withNamed(stagedCephAttached(this.staged, [...Object.keys(s.disks), ...names], names), this.named)
    const disks: Record<string, CephDiskRecord> = {}
    for (const [name, d] of Object.entries(s.disks)) {
      const next = uncarriedRecord(d, cycle, attached)
      if (next.removed === cycle)
        this.log.info(
          { vm: this.vm, disk: name, cycle, lastCycle: d.cycle },
          "disk removed from the VM: the cycle's .vmx no longer names it; its image stays as of its last cycle for the older restore points",
        )
      disks[name] = next
    }
    for (const a of applies) {
      if (!a.sealed) throw new ReceiverError('E_UNEXPECTED', `disk ${a.info.name} is not sealed`)
      // a snapshot of this cycle the state does not name: left by a commit interrupted before its state write
      for (const old of await this.snapshots(a.info.image)) if (old.startsWith(`c${cycle}-`)) await this.lock.snap('rm', a.info.image, old)
      // through the session client: fenced with the lease, and watched for a full pool (E_NO_SPACE)
      await this.lock.snap('create', a.info.image, snap)
      const old = s.disks[a.info.name]
      if (old !== undefined && old.image !== a.info.image && keepsPoints(opts.retention) && s.committedCycle > 0)
        this.log.info(
          { vm: this.vm, disk: a.info.name, cycle, image: a.info.image, oldImage: old.image, point: s.committedCycle },
          'disk re-seeded into a new image: the old image stays while a kept restore point reads it (the point of the previous cycle and the older ones, as the retention keeps them)',
        )
      // before the commit point, naming the commit about to be written (ceph-kept-map.ts)
      const kept = await keptMapAtCommit(
        this.target,
        { object: this.names.keptMap(a.info.name), info: a.info, touched: a.touched, map: this.blockMaps.get(a.info.name) },
        old,
        snap,
        generation,
        this.log.child({ vm: this.vm }),
        this.lock,
      )
      disks[a.info.name] = {
        ...(kept === undefined ? {} : { kept }),
        name: a.info.name,
        image: a.info.image,
        cycle,
        snap,
        generation,
        capacity: a.info.capacity,
        source: a.info.source,
        ddb: a.info.ddb,
        digest: Buffer.from(a.sealedDigest ?? new Uint8Array(0)).toString('hex'),
        committedAt: now,
      }
    }
    // the cycle committed before becomes a point (when the VM keeps points); retention prunes them
    let points: CephPoint[] = [...s.points]
    let configs = s.configs
    if (s.committedCycle > 0 && keepsPoints(opts.retention)) {
      // with the .vmx of that cycle, before the staged files of this one replace it
      const c = withCephPointConfig(s, {
        cycle: s.committedCycle,
        committedAt: s.committedAt ?? now,
        generation: s.generation ?? '',
        disks: Object.fromEntries(heldDisks(s).map((d) => [d.name, { image: d.image, snap: d.snap, capacity: d.capacity }])),
      })
      points.push(c.point)
      configs = c.configs
    }
    // a seed writes a new image; the old one stays while a kept point reads it (unreferencedImages below), as the
    // folder store keeps a re-seeded disk's old mirror whole as a base point
    let pointsDropped: PointsDroppedRecord | undefined
    if (!keepsPoints(opts.retention)) {
      // the VM keeps no points any more: they go, recorded (not broken: the operator chose it)
      if (s.points.length > 0) {
        const why = 'the VM keeps no restore points any more (retention off)'
        this.log.warn({ vm: this.vm, cycle, points: s.points.map((p) => p.cycle), why }, 'restore points dropped')
        pointsDropped = { cycle, at: now, cycles: s.points.map((p) => p.cycle), why, broken: false }
      }
      points = []
    } else {
      // a point's bytes (rbd du of the snapshot after it, just created for the newest) only for a maxBytes rule
      const drop = new Set(pointsToDrop(await retainedPoints(this.target, points, opts.retention?.maxBytes !== undefined, headImages({ disks })), opts.retention ?? {}, (opts.now ?? Date.now)()))
      if (drop.size > 0) this.log.info({ vm: this.vm, cycles: [...drop] }, 'restore points pruned (Ceph snapshots)')
      points = points.filter((p) => !drop.has(p.cycle))
    }
    // a disk removed from the VM that no kept point names: its image (and kept map) go
    const reclaimed = reclaimCephDisks({ disks, holds: s.holds }, points, this.names, this.log.child({ vm: this.vm }))
    for (const name of reclaimed.names) delete disks[name]
    const pending: CephPending = {
      snaps: this.unusedSnaps(s, disks, points),
      images: [...new Set([...unreferencedImages(s, disks, points), ...reclaimed.images])],
      logs: [...Object.values(infl.disks).map((d) => d.log), ...reclaimed.objects],
    }
    await this.save(
      {
        ...s,
        committedCycle: cycle,
        committedAt: now,
        generation,
        // SPEC §5.10: the cycle's disks as their DiskOpens named them, reported in VmState (v8)
        committedIdentity: committedIdentityRecord(
          cycle,
          generation,
          applies.map((a) => a.info),
        ),
        compat,
        disks,
        inflight: null,
        points,
        files: this.staged ?? s.files,
        configs: keptCephConfigs(configs, points),
        pending,
        ...(pointsDropped === undefined ? {} : { pointsDropped }),
      },
      'ceph-commit-state',
    )
    this.blockMaps.clear()
    await this.finishPending()
    return applies.map((a) => {
      const r = disks[a.info.name] as CephDiskRecord
      return { name: r.name, mirrorCid: snapCid(r.image, r.snap), size: r.capacity }
    })
  }

  /** Snapshots of the old state no longer named by the new one (current disks or points). */
  private unusedSnaps(old: CephVmState, disks: Readonly<Record<string, CephDiskRecord>>, points: readonly CephPoint[]): Array<{ image: string; snap: string }> {
    const used = new Set<string>()
    for (const d of Object.values(disks)) used.add(`${d.image}@${d.snap}`)
    for (const p of points) for (const d of Object.values(p.disks)) used.add(`${d.image}@${d.snap}`)
    const all = new Map<string, { image: string; snap: string }>()
    for (const d of Object.values(old.disks)) all.set(`${d.image}@${d.snap}`, { image: d.image, snap: d.snap })
    for (const p of old.points) for (const d of Object.values(p.disks)) all.set(`${d.image}@${d.snap}`, { image: d.image, snap: d.snap })
    return [...all].filter(([k]) => !used.has(k)).map(([, v]) => v)
  }

  /** Finish the clean-up a commit or a prune recorded (idempotent: what is gone already is skipped). */
  async finishPending(): Promise<void> {
    const p = this.current.pending
    if (p === null) return
    for (const { image, snap } of p.snaps) {
      await this.lock.snap('rm', image, snap).catch((err: unknown) => {
        if (!(err instanceof CephCommandError && err.notFound)) throw err
      })
    }
    for (const image of p.images) await this.lock.removeImage(image)
    for (const log of p.logs) await this.lock.remove(log)
    await this.save({ ...this.current, pending: null })
  }

  /** The snapshot names of an image. */
  async snapshots(image: string): Promise<string[]> {
    const out = await runCeph(this.target, 'rbd', ['snap', 'ls', '--format', 'json', `${this.target.pool}/${image}`])
    return (JSON.parse(out.toString('utf8')) as Array<{ name: string }>).map((x) => x.name)
  }

  /**
   * Roll back the cycle in flight: per disk its extent log goes, then a
   * seed's new image goes, an incremental's head returns to its base
   * snapshot (`rbd snap rollback`); the state write last. The image's undo
   * rewrites every object of it (about 2 ms per 4 MiB object: minutes for a
   * TiB): it runs under its own deadline scaled to the disk's capacity
   * ({@link cephRollbackDeadlineMs}), not the session client's command
   * deadline, and is heard by `onProgress` (a Rollback's VmProgress, SPEC
   * §4.3) and logged — at the start, every 30 s with an ETA, at the end — in
   * bytes of the disks' capacities: a disk's bytes count when it is done,
   * and while its undo runs an estimate that moves forward at every
   * heartbeat ({@link cephRollbackTimes}), so that the agent's wait restarts.
   * @throws ReceiverError (the code of the failed step: E_IO, E_BUSY, E_NO_SPACE) naming the VM, the disk and the step; the cycle stays in flight
   */
  async rollback(onProgress?: WorkProgress): Promise<number> {
    const infl = this.current.inflight
    if (infl === null) return this.current.committedCycle
    const disks = Object.values(infl.disks)
    const totalBytes = disks.reduce((n, d) => n + d.capacity, 0)
    const logged = workProgressLog(
      this.log,
      { vm: this.vm, cycle: infl.cycle, step: 'undo', disks: disks.length },
      'rolling back the in-flight cycle: the images return to their base snapshots',
      'in-flight cycle undone',
    )
    const report = alsoTo(logged, onProgress)
    let reported = 0
    const tell = (doneBytes: number): void => {
      reported = doneBytes
      report(doneBytes, totalBytes)
    }
    const undo = async (d: CephInflightDisk, step: string, op: () => Promise<void>): Promise<void> => {
      await op().catch((err: unknown) => {
        const code = err instanceof ReceiverError ? err.code : 'E_IO'
        throw new ReceiverError(
          code,
          `rolling back cycle ${infl.cycle} of VM ${this.vm}: ${step} of disk ${d.name} failed (${(err as Error).message}); the cycle stays in flight: run grainline mirror rollback again (or let the agent resume the cycle)`,
          {
            cause: err,
            peerMessage: `rolling back cycle ${infl.cycle} of VM ${this.vm}: ${step} of disk ${d.name} failed (${peerText(err)}); the cycle stays in flight: run grainline mirror rollback again (or let the agent resume the cycle)`,
          },
        )
      })
    }
    /** The image's undo, with heartbeats: an estimate of its bytes done that moves forward, below the disk's end. */
    const heard = async (base: number, d: CephInflightDisk, op: () => Promise<void>): Promise<void> => {
      const t0 = performance.now()
      const expectedMs = Math.max(1, rbdObjects(d.capacity) * cephRollbackTimes.estimateMsPerObject)
      const timer = setInterval(() => {
        const estimate = base + Math.floor(d.capacity * Math.min(0.99, (performance.now() - t0) / expectedMs))
        const next = Math.min(base + d.capacity - 1, Math.max(reported + 1, estimate))
        if (next > reported) tell(next)
      }, cephRollbackTimes.heartbeatMs)
      timer.unref()
      try {
        await op()
      } finally {
        clearInterval(timer)
      }
    }
    // before anything is undone: a disk whose base snapshot is gone or shrunk cannot return to it (rbd snap rollback
    // fails E_IO, at every try); refused whole, named, with the remedy (the agent fails the VM with it)
    for (const d of disks) {
      const damaged = await this.damagedBase(d.name, d)
      if (damaged !== undefined) {
        this.log.error({ vm: this.vm, cycle: infl.cycle, disk: d.name, why: damaged }, 'rollback refused: the base snapshot is damaged')
        throw new ReceiverError('E_MIRROR_MODIFIED', `rolling back cycle ${infl.cycle} of VM ${this.vm}: ${damaged}`)
      }
    }
    tell(0)
    let done = 0
    for (const d of disks) {
      // the log first: it lists writes the head holds, which the undo takes away. A log that outlived them (a crash
      // during or after the undo, a failed removal) would resume the cycle after extents the image no longer holds,
      // and the commit would snapshot the image without them (the cycle digest is the agent's: it cannot tell).
      // Without the log a resume starts at seq 0 and writes every extent again, whatever part of the undo was done.
      await undo(d, `removing the extent log ${d.log}`, () => this.lock.remove(d.log))
      faultPoint('ceph-rollback-log')
      const base = d.baseSnap
      const deadlineMs = cephRollbackDeadlineMs(d.capacity)
      if (base === null) await undo(d, `removing the seeded image ${d.image}`, () => heard(done, d, () => this.lock.removeImage(d.image, deadlineMs)))
      else await undo(d, `rolling the image ${d.image} back to its snapshot ${base}`, () => heard(done, d, () => this.lock.snap('rollback', d.image, base, deadlineMs)))
      faultPoint('ceph-rollback-head')
      done += d.capacity
      tell(done)
    }
    await this.save({ ...this.current, inflight: null }, 'ceph-rollback-state')
    this.log.info({ vm: this.vm, cycle: infl.cycle, disks: Object.keys(infl.disks) }, 'in-flight cycle rolled back (Ceph)')
    return this.current.committedCycle
  }

  /**
   * The block map of a resync disk in flight (SPEC §5.9): digests of its
   * base snapshot (the committed cycle), which the cycle never writes.
   * @throws ReceiverError E_INTERNAL (not a resync in flight), E_IO
   */
  async openBlockMap(name: string, blockSize: number): Promise<CephBlockMap> {
    const map = await openCephBlockMap(this, name, blockSize)
    this.blockMaps.set(name, map)
    return map
  }

  /** SPEC §5.6 BlockCheck on the committed snapshot (ceph-checks.ts), the verdict recorded. */
  async checkBlocks(name: string, req: CephBlockCheck, signal?: AbortSignal): Promise<{ ok: boolean; mismatched: Uint8Array; bytes: number }> {
    return await checkCephBlocks(this, name, req, signal)
  }

  /** SPEC §5.6 trivial check or certify of the committed snapshot (ceph-checks.ts), the verdict recorded. */
  async verify(name: string, req: CephVerifyRequest, signal?: AbortSignal): Promise<{ ok: boolean; size: number; digest: Uint8Array; bytes: number }> {
    return await verifyCephDisk(this, name, req, signal)
  }
}
