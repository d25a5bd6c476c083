/**
 * The cycle engine (ARCHITECTURE §1 and §3): brings one VM's mirror forward
 * to a new point in time. `VmCycle.run` reads as the data flow:
 *
 *   open the VM and the agent's record, beside it connect and Hello →
 *   VmOpen (the mirror's state) → snapshot → plan every disk (lineage: incremental or
 *   resync) → ship (window, resume) → DiskEnd → Commit (record the
 *   generation) → trivial check / certify → remove the other grainline
 *   snapshot(s).
 *
 * Connection loss anywhere before Committed reconnects with backoff
 * (`reconnect.ts`) and resumes from the receiver's durable point with the
 * same cycle identity. A refused disk is re-planned (`cycle-plan.ts`) and
 * opened again; nothing here uses an exception for control flow.
 *
 * What an interrupted run leaves: on the VM, the snapshot of the last
 * committed cycle (the mirror's base) and the snapshot of the interrupted
 * cycle, recorded as in flight in the agent's state so the next run reuses
 * it and resumes where the receiver stopped. A run that ends after sending
 * its Commit and before recording Committed leaves that Commit recorded as
 * pending: the next run adopts the commit as its own when the receiver names
 * its committed cycle identity (SPEC §5.10), instead of resyncing.
 */
import { commitProgress, diskOpenProgress, vmProgress } from './receiver-progress.ts'
import { resolve } from 'node:path'
import type { Logger } from 'pino'
import {
  committedCycleIdentity,
  initDigests,
  MIN_BLOCK_SIZE,
  type DigestAlgorithm,
  type PointsDroppedMessage,
  type RetentionSpec,
  type VmFile,
  type VmStateMessage,
  type WelcomeMessage,
} from '@grainline/protocol'
import { openChain } from '@grainline/vmdk'
import type { VmRunLock } from './vm-run-lock.ts'
import {
  AgentStateStore,
  clearPendingCommit,
  markCommitted,
  markDiverged,
  markInflight,
  markInflightResync,
  markPendingCommit,
  pendingCommitMatch,
  stateKey,
  type AgentVmState,
  type ScrubRecord,
} from './agent-state.ts'
import type { CycleOptions } from './cycle-options.ts'
import { decideLineage, decideSnapshot, needsRollback, planAfterRefusal, planDisk, type Lineage } from './cycle-plan.ts'
import { applyDiskPlan, baseLayer, emptyPlan, type DiskWork } from './disk-work.ts'
import { sendDisk } from './disk-sender.ts'
import { sendResync } from './resync-sender.ts'
import type { SnapshotRef, VmHandle } from './driver.ts'
import { grainlineSnapshotName, MAX_GRAINLINE_CYCLE } from './driver.ts'
import { AgentError, abortReason, checkAborted } from './errors.ts'
import { DiskProgress } from './progress.ts'
import { refusalError, type ReceiverClient } from './receiver-client.ts'
import { canonicalReceiverUrl } from './receiver-url.ts'
import { Reconnector } from './reconnect.ts'
import { emptyDiskReport, emptyVmReport, errorInfo, oneLine, pointsDroppedWarning, type VmReport } from './report.ts'
import { greet, openVmOn, type Greeting, type Session } from './session.ts'
import { verifyDisks } from './verification.ts'
import { chainOptions, mirrorDiskNames, vmFiles } from './vm-files.ts'
import { removeOtherSnapshots, settleForeignSnapshots } from './vm-snapshots.ts'
import { retentionDifferences } from './retention.ts'
import { SendWindow } from './window.ts'

export type { DiskReport, VmReport } from './report.ts'
export type { CycleOptions } from './cycle-options.ts'

/** A refused disk is re-planned at most this many times per disk (plus two) before the cycle gives up. */
const REPLANS_PER_DISK = 2

/** Disk handles are 0…255 per connection (SPEC §6 DiskOpen). */
const MAX_HANDLE = 255

/** What one shipping attempt ended with (a lost connection throws and is retried). */
type AttemptOutcome =
  /** committed (and checked, unless the commit was learned on a reconnect) */
  | { readonly kind: 'committed' }
  /** another cycle is in flight on the receiver: a new connection must roll it back first */
  | { readonly kind: 'rollback' }

/** Run one cycle of one VM. Never throws: the report carries the error. */
export async function runVmCycle(components: { logger: Logger }, opts: CycleOptions): Promise<VmReport> {
  const started = performance.now()
  const report = emptyVmReport(opts.ref)
  const cycle = new VmCycle(components.logger, opts, report)
  try {
    await initDigests()
    await cycle.run()
    report.ok = report.disks.length > 0 && report.disks.every((d) => d.ok)
  } catch (err) {
    const stopped = opts.signal?.aborted === true
    // an error that came with the stop but is not the stop itself (a refused commit, a record not saved) is kept
    const other = stopped && (err as { code?: unknown }).code !== 'E_ABORTED' ? errorInfo(err) : undefined
    const info = stopped ? interruptedInfo(opts.signal as AbortSignal, report, cycle.committed, other) : errorInfo(err)
    report.error = info
    // an operator's stop is not a failure: what was kept, at warn and without a stack (unless another error came with it)
    if (stopped && other === undefined) cycle.log.warn({ code: info.code, kept: info.message }, 'cycle stopped')
    else cycle.log.error({ err, code: info.code, remoteCode: info.remoteCode }, stopped ? 'cycle stopped with an error' : 'cycle failed')
    for (const d of report.disks) if (d.error === undefined && !d.ok) d.error = { code: info.code, message: info.message }
  } finally {
    await cycle.dispose()
    report.durationMs = Math.round(performance.now() - started)
  }
  return report
}

/** The report's error of a cycle stopped through its signal: what was kept for the next run. */
function interruptedInfo(signal: AbortSignal, report: VmReport, committed: boolean, other?: { code: string; message: string }): { code: string; message: string; remoteCode?: string } {
  const checks = report.timings['check'] === undefined ? ', its checks were not run' : ''
  const kept = committed
    ? `cycle ${report.cycle} was committed${checks}; the older snapshot is removed by the next run`
    : report.snapshot !== undefined
      ? `snapshot ${report.snapshot} is kept and the next run resumes from it`
      : 'nothing was changed on the VM'
  return { code: 'E_ABORTED', message: `${abortReason(signal)}: ${kept}${other === undefined ? '' : ` (and ${other.code}: ${other.message})`}` }
}

/**
 * Until the returned function is called, a stop ends `client`'s connection at once (close 1001): the
 * waits of a send (the window, the socket's drain) know only the connection. Not for a durable step.
 */
function closeOnStop(client: ReceiverClient, signal: AbortSignal | undefined): () => void {
  if (signal === undefined) return () => {}
  const stop = (): void => {
    client.abort(new AgentError('E_ABORTED', abortReason(signal)), 1001)
  }
  if (signal.aborted) stop()
  else signal.addEventListener('abort', stop, { once: true })
  return () => {
    signal.removeEventListener('abort', stop)
  }
}

/** The state of one VM cycle; `run()` is the cycle, top to bottom. */
class VmCycle {
  readonly #opts: CycleOptions
  readonly #report: VmReport
  readonly #root: Logger
  log: Logger
  readonly #reconnect: Reconnector
  /** the furthest work the receiver confirmed of each disk (and mode) over every attempt of the cycle (acks, block maps, the disk's end): the reconnect rule's progress */
  readonly #furthest = new Map<string, number>()
  readonly #store: AgentStateStore
  /** held from before the record is loaded until {@link dispose} */
  #runLock: VmRunLock | undefined
  /** every client opened, closed at the end whatever happens (the receiver's VM lock is freed) */
  readonly #clients = new Set<ReceiverClient>()
  readonly #works: DiskWork[] = []
  #vm!: VmHandle
  #record!: AgentVmState
  #recordProblem: string | undefined
  #snapshots: SnapshotRef[] = []
  #files: VmFile[] = []
  #diskNames: string[] = []
  /** the connection from `connect()`, used by the first shipping attempt */
  #fresh: Session | undefined
  #welcome!: WelcomeMessage
  #mirror!: VmStateMessage
  #cycleNo = 0
  #shipped!: SnapshotRef
  #lineage!: Lineage
  #chunkBytes = 0
  #committed = false
  /** the receiver committed this cycle */
  get committed(): boolean {
    return this.#committed
  }
  #rolledBack = false
  /** the record's save after clean checks (the scrub rotation moved on), awaited at the end of the run */
  #rotationSave: Promise<void> | undefined
  #replans = 0
  #mark = performance.now()
  /**
   * Connect and Hello, started beside `#openVm` (they need nothing of the VM): the
   * TLS handshake's and Hello's round trips overlap the reading of the VM's files.
   * Taken by the first connect attempt; dropped (aborted, its client closed) by `dispose`.
   */
  #early: Promise<Greeting> | undefined
  readonly #earlyAbort = new AbortController()

  constructor(root: Logger, opts: CycleOptions, report: VmReport) {
    this.#opts = opts
    this.#report = report
    this.#root = root
    this.log = root.child({ vmRef: opts.ref })
    this.#store = new AgentStateStore(opts.stateDir)
    this.#reconnect = new Reconnector({
      giveUpMs: opts.giveUpMs,
      maxBackoffMs: opts.maxBackoffMs,
      log: () => this.log,
      onRetry: () => {
        this.#report.reconnects++
      },
      ...(opts.signal === undefined ? {} : { signal: opts.signal }),
    })
  }

  async run(): Promise<void> {
    this.#early = this.#greet(true)
    // handled here, taken (and its failure thrown) by the first connect attempt
    this.#early.catch(() => {})
    await this.#openVm()
    await this.#connect()
    await this.#takeSnapshot()
    await this.#planDisks()
    await this.#shipCommitVerify()
    try {
      await this.#removeOtherSnapshots()
    } catch (err) {
      await this.#rotationSave?.catch(() => {})
      throw err
    }
    // the scrub rotation's save, overlapped with the removal: its failure fails the run as before (E_STATE)
    await this.#rotationSave
  }

  /** Close every connection (a failed cycle must not leave the receiver's VM lock behind) and every chain. */
  async dispose(): Promise<void> {
    if (this.#early !== undefined) {
      // never taken (the VM could not be opened): its connection must not outlive the cycle
      this.#earlyAbort.abort()
      await this.#early.catch(() => {})
      this.#early = undefined
    }
    for (const c of this.#clients) c.terminate()
    // digests still taken in the background (a cycle that failed before its checks) settle before their chain closes
    for (const w of this.#works) await Promise.all([w.writtenTask, w.scrubTask])
    for (const w of this.#works) await w.chain.close().catch(() => {})
    await this.#runLock?.release()
  }

  get #sig(): { signal?: AbortSignal } {
    return this.#opts.signal === undefined ? {} : { signal: this.#opts.signal }
  }

  /** Account the time since the last lap to `phase`. */
  #lap(phase: string): void {
    const t = performance.now()
    this.#report.timings[phase] = Math.round((this.#report.timings[phase] ?? 0) + t - this.#mark)
    this.#mark = t
  }

  /** 1. The VM, its disks and the mirror's names for them, the agent's record; foreign snapshots refused or consolidated. */
  async #openVm(): Promise<void> {
    const { driver } = this.#opts
    const vm = await driver.openVm(this.#opts.ref, this.#sig)
    this.#report.vm = vm.name
    this.log = this.#root.child({ vm: vm.name })
    if (vm.disks.length === 0) throw new AgentError('E_VMX', `${vm.vmxPath}: no hard disk`)
    const key = stateKey({ driver: driver.name, host: driver.host, id: vm.id })
    // one run of a VM at a time: its record and snapshots are this run's until it is disposed
    this.#runLock = await this.#store.lock(vm.name, key)
    const loaded = await this.#store.load(vm.name, key)
    this.#record = loaded.state
    this.#recordProblem = loaded.problem
    if (loaded.problem !== undefined) this.log.warn({ problem: loaded.problem }, 'agent state unusable; the mirror will be resynced')
    const settled = await settleForeignSnapshots(driver, vm, { consolidate: this.#opts.consolidateExisting, log: this.log, ...this.#sig })
    this.#vm = settled.vm
    if (settled.vm.skippedDisks !== undefined && settled.vm.skippedDisks.length > 0) {
      this.#report.skippedDisks = settled.vm.skippedDisks.map((s) => ({ node: s.node, fileName: s.fileName, kind: s.kind, reason: s.reason }))
      for (const s of settled.vm.skippedDisks) this.log.warn({ node: s.node, fileName: s.fileName, kind: s.kind, reason: s.reason }, 'disk not replicated')
    }
    this.#snapshots = settled.snapshots.filter((s) => s.grainline)
    this.#files = await vmFiles(this.#vm, driver)
    this.#diskNames = await mirrorDiskNames(this.#vm, driver)
  }

  /** Connect and Hello (`early`: also ended by `dispose` when never taken). */
  #greet(early = false): Promise<Greeting> {
    const o = this.#opts
    const signal = early ? (o.signal === undefined ? this.#earlyAbort.signal : AbortSignal.any([o.signal, this.#earlyAbort.signal])) : o.signal
    return greet({
      connect: { ...o.connect, ...(signal === undefined ? {} : { signal }) },
      digests: o.digests,
      compressions: o.compressions,
      maxExtentBytes: o.maxExtentBytes,
      windowBytes: o.windowBytes,
      onClient: (c) => {
        this.#clients.add(c)
      },
    })
  }

  /** Hello + VmOpen for `cycleNo`: the first attempt on the connection started beside `#openVm`, any other on a new one. */
  async #session(cycleNo: number): Promise<Session> {
    const early = this.#early
    this.#early = undefined
    return await openVmOn(await (early ?? this.#greet()), { vm: this.#vm, files: this.#files, disks: this.#diskNames }, cycleNo, vmProgress(this.log))
  }

  /** 2. Hello + VmOpen: the mirror's committed cycle decides this cycle's number; its generation, the lineage. */
  async #connect(): Promise<void> {
    const rec = this.#record
    // the cycle names the snapshot: one past the names grainline parses as its own would be foreign to every later run
    const checkRoom = (committed: number): void => {
      if (committed < MAX_GRAINLINE_CYCLE) return
      throw new AgentError(
        'E_PROTOCOL',
        `the receiver reports committed cycle ${committed} for ${this.#vm.name}: the next cycle would exceed ${MAX_GRAINLINE_CYCLE}, the largest a grainline snapshot name holds; no snapshot was taken — check the receiver (a hostile or corrupt store), or move the mirror of ${this.#vm.name} away to seed a new one`,
      )
    }
    const proposal = rec.inflight?.cycle ?? (rec.committed?.cycle ?? 0) + 1
    let s = await this.#reconnect.run('connect', () => this.#session(proposal))
    checkRoom(s.state.committedCycle)
    // the cycle a former run sent the Commit of went through, and that commit dropped every restore point (v7)
    if (s.pointsDropped !== undefined) this.#notePointsDropped(s.pointsDropped)
    // the Commit a former run sent and did not see answered: recorded as ours only when the receiver names its identity
    await this.#settlePendingCommit(s.state)
    if (s.state.committedCycle + 1 !== proposal) {
      this.log.info({ proposal, committed: s.state.committedCycle }, 'mirror is at another cycle than the agent recorded; reopening')
      await s.client.close()
      const next = s.state.committedCycle + 1
      s = await this.#reconnect.run('connect', () => this.#session(next))
      checkRoom(s.state.committedCycle)
      if (s.state.committedCycle + 1 !== next) throw new AgentError('E_PROTOCOL', `receiver committed cycle moved during connect (${s.state.committedCycle})`)
    }
    this.#fresh = s
    this.#welcome = s.welcome
    this.#mirror = s.state
    this.#cycleNo = s.state.committedCycle + 1
    this.#report.cycle = this.#cycleNo
    this.#lap('connect')
    const state = s.state
    if (state.exists && !state.compatible) {
      // SPEC §4.2: no incremental on an incompatible mirror; a new seed needs the operator
      throw new AgentError('E_REFUSED', `the mirror of ${this.#vm.name} was made from another virtual hardware version or datastore type; move it away to seed a new one`, {
        remoteCode: 'E_INCOMPATIBLE',
      })
    }
    const w = s.welcome
    this.log.info(
      {
        cycle: this.#cycleNo,
        committed: state.committedCycle,
        inflight: state.inflightCycle,
        generation: state.generation,
        exists: state.exists,
        digest: w.digest,
        compression: w.compression,
        limits: w.limits,
      },
      'mirror state',
    )
    this.#lineage = decideLineage({ mirror: state, record: rec.committed, snapshots: this.#snapshots, ...(this.#recordProblem === undefined ? {} : { recordProblem: this.#recordProblem }) })
    if (this.#lineage.kind === 'resync') this.log.warn({ reason: this.#lineage.reason }, 'lineage not proven: full resync of every disk')
    else if (this.#lineage.kind === 'first-seed' && this.#lineage.reason !== undefined) this.log.warn({ reason: this.#lineage.reason }, 'the mirror is gone: a seed of every disk')
  }

  /**
   * A former run sent the Commit of the cycle the record names as pending and ended before it recorded Committed.
   * When the receiver's committed cycle is that cycle under the committed cycle identity that run computed (a
   * version 8 VmState, SPEC §5.10), the commit is this agent's: recorded as Committed would have — its snapshot is the
   * committed one (the next incremental's base), the older one goes once the next cycle commits, as after any run
   * that ended between its commit and the removal of the older snapshot. Another identity of that cycle is another
   * writer's commit: E_OTHER_WRITER, as in {@link #checkOwnCommit} (when the Commit went to this receiver URL).
   * Anything else proves nothing and the record is dropped (the lineage decides, as without it: a resync when the
   * mirror is past the recorded commit).
   * @throws AgentError E_OTHER_WRITER, E_STATE (the adopted commit not saved)
   */
  async #settlePendingCommit(state: VmStateMessage): Promise<void> {
    const pending = this.#record.pendingCommit
    if (pending === undefined) return
    const match = pendingCommitMatch(pending, state)
    if (match === 'own') {
      await this.#store.save(markCommitted(this.#record, pending.cycle, state.generation, pending.snapshot, this.#opts.connect.url))
      this.log.warn(
        { cycle: pending.cycle, snapshot: pending.snapshot.name, id: pending.snapshot.id, generation: state.generation, committedCycleId: pending.committedCycleId },
        "the Commit a former run sent went through (the receiver names that run's committed cycle identity): recorded as this agent's commit",
      )
      return
    }
    clearPendingCommit(this.#record)
    // another identity on another receiver URL than the Commit went to proves no second writer (a job that moved, a
    // VM replicated to two receivers): dropped, as without an identity
    if (match === 'unknown' || canonicalReceiverUrl(pending.receiver) !== canonicalReceiverUrl(this.#opts.connect.url)) {
      this.log.info({ pending: pending.cycle, committed: state.committedCycle }, 'the receiver does not name the Commit a former run sent as its commit; the pending record is dropped')
      return
    }
    const vm = this.#vm.name
    const url = this.#opts.connect.url
    const theirs = state.committedCycleId ?? ''
    await this.#store.save(this.#record).catch((err: unknown) => this.log.warn({ err }, 'the pending Commit could not be dropped from the agent state'))
    this.log.error({ vm, cycle: pending.cycle, receiver: url, committedCycleId: theirs, ours: pending.committedCycleId }, 'another writer committed this cycle to the mirror')
    throw new AgentError(
      'E_OTHER_WRITER',
      `another writer committed cycle ${pending.cycle} of ${vm} to the receiver ${url} after a former run sent the Commit of that cycle and ended unanswered: the mirror holds that writer's cycle (committed cycle identity ${theirs}), not this agent's (${pending.committedCycleId}). No commit was recorded, no snapshot taken or removed. Check that one job, on one proxy, protects this VM under the name ${vm} with this token (another VM of the same name, a job configured twice); the next run resyncs the mirror from this VM`,
    )
  }

  /** 3. The snapshot: our recorded in-flight one of this cycle is reused (the cycle resumes), else a new one. */
  async #takeSnapshot(): Promise<void> {
    const { driver } = this.#opts
    const decision = decideSnapshot({ cycleNo: this.#cycleNo, inflight: this.#record.inflight, committed: this.#record.committed, snapshots: this.#snapshots })
    if (needsRollback(this.#mirror, this.#cycleNo, decision)) {
      await this.#rollback((this.#fresh as Session).client)
      this.log.warn({ inflight: this.#mirror.inflightCycle }, 'rolled back an abandoned in-flight cycle')
    }
    if (decision.kind === 'reuse') {
      this.#shipped = decision.snapshot
      this.#report.reusedSnapshot = true
      this.log.info({ snapshot: decision.snapshot.name, id: decision.snapshot.id }, 'resuming with the recorded in-flight snapshot of an earlier run')
    } else {
      if (decision.keep !== undefined)
        this.log.warn(
          { snapshot: decision.keep.name, id: decision.keep.id, committed: this.#mirror.committedCycle },
          'the snapshot of the commit the agent recorded has the name of this cycle (the receiver is at an older committed cycle: a store restored from a backup?); kept until this cycle commits',
        )
      for (const s of decision.remove) {
        // never two snapshots of one name: this one is not ours to resume (another target's, or a lost record)
        this.log.warn({ snapshot: s.name, id: s.id }, 'removing a grainline snapshot of the same name that is not the recorded in-flight one')
        checkAborted(this.#opts.signal)
        await driver.removeSnapshot(this.#vm, s)
        this.#report.removedSnapshots.push(s.name)
        this.#vm = await driver.openVm(this.#opts.ref, this.#sig)
      }
      checkAborted(this.#opts.signal)
      // not cut short by a stop: the snapshot is recorded below, and the next run resumes from it
      this.#shipped = await driver.createSnapshot(this.#vm, grainlineSnapshotName(this.#cycleNo))
      this.log.info({ snapshot: this.#shipped.name, id: this.#shipped.id }, 'snapshot taken')
    }
    this.#chunkBytes = this.#extentChunk(decision.kind === 'reuse' ? this.#record.inflight?.chunkBytes : undefined)
    // a resumed cycle keeps the disks it resyncs (planning reads them)
    const resyncs = decision.kind === 'reuse' ? this.#record.inflight?.resync : undefined
    markInflight(this.#record, this.#cycleNo, this.#shipped, this.#opts.connect.url, this.#chunkBytes)
    await this.#store.save(resyncs === undefined ? this.#record : markInflightResync(this.#record, resyncs))
    this.#report.snapshot = this.#shipped.name
    this.#lap('snapshot')
    this.#vm = await driver.openVm(this.#opts.ref)
    if (this.#opts.afterSnapshot !== undefined) await this.#opts.afterSnapshot(this.#vm)
  }

  /** Save which disks this in-flight cycle resyncs, when that changed (before any of them is opened). */
  async #recordResyncs(): Promise<void> {
    const names = this.#works.filter((w) => w.mode === 'resync').map((w) => w.name)
    const had = this.#record.inflight?.resync ?? []
    if (this.#record.inflight === null || (names.length === had.length && names.every((n, i) => had[i] === n))) return
    await this.#store.save(markInflightResync(this.#record, names))
  }

  async #rollback(client: ReceiverClient): Promise<void> {
    const r = await client.rollback(this.#vm.name, vmProgress(this.log))
    if (!r.ok) throw refusalError(`Rollback of ${this.#vm.name}`, r.refusal)
    this.#rolledBack = true
    // a Commit recorded as pending is of no cycle the receiver holds any more
    if (this.#record.pendingCommit !== undefined) await this.#store.save(clearPendingCommit(this.#record))
  }

  /**
   * The extent size of this cycle: the one recorded when the resumed cycle was
   * planned (the receiver resumes at an extent number, so the same extents
   * must be cut again), as long as the receiver still accepts it; else the
   * largest the receiver and the options allow, smaller under a rate limit
   * (about 8 extents per second of budget, so pacing stays smooth).
   */
  #extentChunk(recorded: number | undefined): number {
    const opts = this.#opts
    const maxExtent = Math.max(512, Math.floor(Math.min(this.#welcome.limits.maxExtentBytes, opts.maxExtentBytes) / 512) * 512)
    if (recorded !== undefined && Number.isSafeInteger(recorded) && recorded >= 512 && recorded % 512 === 0 && recorded <= this.#welcome.limits.maxExtentBytes) return recorded
    const rateChunk = opts.rateLimiter.rate === Infinity ? maxExtent : Math.max(64 * 1024, Math.floor(opts.rateLimiter.rate / 8 / 512) * 512)
    return Math.min(maxExtent, rateChunk)
  }

  /** 4. Every disk planned before the first extent (exact totals for progress). */
  async #planDisks(): Promise<void> {
    const opts = this.#opts
    const lineage = this.#lineage
    for (const [i, disk] of this.#vm.disks.entries()) {
      checkAborted(opts.signal)
      const chain = await openChain(disk.path, chainOptions(opts.driver, this.#vm))
      const L = chain.layers.length
      if (L < 2) {
        await chain.close()
        throw new AgentError('E_SNAPSHOT', `${disk.fileName}: no frozen layer below the running disk after the snapshot`)
      }
      const base = baseLayer(chain).file
      const name = this.#diskNames[i] ?? base
      if (!name.endsWith(base)) {
        await chain.close()
        throw new AgentError('E_SNAPSHOT', `${disk.node}: the base disk changed during the cycle (${base}, expected ${name})`)
      }
      const report = emptyDiskReport(name, disk.node, chain.capacity)
      if (!chain.cidVerified) {
        report.cidVerified = false
        this.log.warn(
          { disk: name, node: disk.node, layers: chain.layers.filter((l) => !l.cidVerified).map((l) => l.path) },
          'chain check UNVERIFIED: a parentCID is fffffffe (ESXi wrote no CID to check, e.g. after a Storage vMotion); the parent cannot be proven to be the one the child was made from',
        )
      }
      this.#report.disks.push(report)
      const w: DiskWork = {
        index: i,
        handle: i,
        disk,
        name,
        chain,
        report,
        depth: 1,
        progress: new DiskProgress(this.#vm.name, name, opts.progress),
        mode: 'seed',
        blockSize: 0,
        fromDepth: L - 1,
        baseCycle: 0,
        baseGeneration: '',
        cycleNo: this.#cycleNo,
        source: { layers: [], successor: '' },
        plan: await emptyPlan(this.#chunkBytes),
        cycleId: '',
        records: undefined,
        view: undefined,
        viewTask: undefined,
        touched: undefined,
        written: undefined,
        writtenTask: undefined,
        scrubSlice: undefined,
        scrubTask: undefined,
      }
      this.#works.push(w)
      const snapDisk = lineage.kind === 'incremental' ? lineage.base.disks.find((d) => d.node.toLowerCase() === disk.node.toLowerCase()) : undefined
      const decision = planDisk(
        lineage,
        {
          name,
          node: disk.node,
          layerPaths: chain.layers.map((l) => resolve(l.path)),
          baseSnapshotLayer: snapDisk === undefined ? undefined : resolve(opts.driver.resolvePath(this.#vm, snapDisk.fileName)),
        },
        this.#record.diverged,
        opts.resync,
      )
      // a rerun with the snapshot of an interrupted resync resyncs the disk again (same cycle identity: the receiver resumes it)
      const resumed = this.#report.reusedSnapshot === true && decision.kind === 'incremental' && (this.#record.inflight?.resync ?? []).includes(name)
      const plan: typeof decision = resumed ? { kind: 'resync', reason: 'resuming the interrupted resync of this cycle' } : decision
      if (plan.kind === 'resync') this.log.warn({ disk: name, reason: plan.reason }, 'incremental not safe: resync of the disk by block digests')
      await applyDiskPlan(w, plan, this.#planContext())
    }
    await this.#recordResyncs()
    this.#lap('plan')
  }

  #planContext(): { vm: string; cycleNo: number; chunkBytes: number; blockSize: number; signal?: AbortSignal } {
    // SPEC §5.9: a power of two that fits in one extent
    const maxExtent = Math.min(this.#welcome.limits.maxExtentBytes, this.#opts.maxExtentBytes)
    let blockSize = this.#opts.blockSize
    while (blockSize > maxExtent && blockSize > MIN_BLOCK_SIZE) blockSize /= 2
    // a stop ends a plan's walk of the grain tables (minutes for large deltas read over SFTP)
    return { vm: this.#vm.name, cycleNo: this.#cycleNo, chunkBytes: this.#chunkBytes, blockSize, ...this.#sig }
  }

  /** 5–6. Ship every disk, commit, check; reconnect and resume on connection loss. */
  async #shipCommitVerify(): Promise<void> {
    let rollback = false
    for (;;) {
      const outcome = await this.#reconnect.run('cycle', () => this.#attempt(rollback))
      if (outcome.kind === 'committed') break
      rollback = true
    }
    const trivialRan = this.#opts.trivialMiB > 0
    for (const w of this.#works) {
      if (w.report.trivial === undefined && trivialRan && w.report.error === undefined) {
        w.report.error = { code: 'E_CHECK', message: 'commit confirmed after a reconnect; trivial check not run' }
      }
      w.report.ok = w.report.error === undefined && (w.report.trivial?.ok ?? true) && (w.report.certify?.ok ?? true) && (w.report.blockCheck?.ok ?? true) && (w.report.scrub?.ok ?? true)
      w.progress.update('done', true)
    }
    await this.#recordChecks()
    // the agent record's save after the checks (the scrub rotation, a divergence), apart from the checks themselves
    this.#lap('record')
  }

  /** One connection's worth of the cycle: (rollback,) open and ship each disk, commit, check. */
  async #attempt(rollback: boolean): Promise<AttemptOutcome> {
    let session = this.#fresh
    this.#fresh = undefined
    try {
      if (session === undefined) {
        session = await this.#session(this.#cycleNo)
        if (session.state.committedCycle === this.#cycleNo) {
          // a commit of this cycle went through before the connection dropped: this run's only if a version 8 receiver
          // names this run's cycle (SPEC §5.10) — another writer of the mirror may have rolled ours back and committed its own
          await this.#checkOwnCommit(session.state)
          // ours: VmState carries its generation, and a version 7 receiver tells again the drop of every restore point
          // that commit made (reported once)
          if (session.pointsDropped !== undefined) this.#notePointsDropped(session.pointsDropped)
          await this.#recordCommit(session.state.generation)
          await session.client.close().catch(() => {})
          return { kind: 'committed' }
        }
        if (session.state.committedCycle + 1 !== this.#cycleNo) throw new AgentError('E_PROTOCOL', `receiver moved to committed cycle ${session.state.committedCycle} during the cycle`)
        this.#welcome = session.welcome
        if (rollback) {
          await this.#rollback(session.client)
          for (const w of this.#works) w.records?.clear()
          // the receiver's in-flight cycle is gone: what it confirmed before is sent (and confirmed) again
          this.#furthest.clear()
          this.log.warn("rolled back the receiver's in-flight cycle of another identity")
        }
      }
      const { client, welcome } = session
      // progress is work the receiver confirmed beyond the furthest of this disk (and mode) in any attempt: an
      // ack, a resync's block map, the disk's end. A receiver that accepts every connection and then drops it,
      // or confirms the same work again, is an outage; each measure is bounded by the disk, so no receiver can
      // hold the cycle forever however slowly it answers
      let current = ''
      const advance = (what: string, position: number): void => {
        const key = `${current}\0${what}`
        if (position <= (this.#furthest.get(key) ?? -1)) return
        this.#furthest.set(key, position)
        this.#reconnect.progressed()
      }
      const window = new SendWindow(Math.min(welcome.limits.windowBytes, this.#opts.windowBytes), undefined, (seq) => advance('ack', seq))
      let nextHandle = 0
      // a stop ends the shipping at once, even while the window or the socket waits on a receiver that
      // acknowledges or reads nothing (those waits know only the connection): the connection is ended with it
      checkAborted(this.#opts.signal)
      let forgetStop = closeOnStop(client, this.#opts.signal)
      try {
        for (const w of this.#works) {
          for (;;) {
            if (nextHandle > MAX_HANDLE) throw new AgentError('E_PROTOCOL', `more than ${MAX_HANDLE + 1} disk opens in one connection`)
            w.handle = nextHandle++
            const opened = await client.openDisk(
              {
                disk: w.handle,
                name: w.name,
                capacity: w.chain.capacity,
                cycle: w.cycleNo,
                mode: w.mode,
                baseCycle: w.baseCycle,
                baseGeneration: w.baseGeneration,
                source: w.source,
                cycleId: w.cycleId,
                ddb: Object.fromEntries(baseLayer(w.chain).descriptor.ddb),
                totalBytes: w.mode === 'resync' ? w.chain.capacity : w.plan.totalBytes,
                totalExtents: w.plan.totalExtents,
                blockSize: w.blockSize,
              },
              diskOpenProgress(this.log, w.name),
            )
            if (opened.ok) {
              current = `${w.name}\0${w.mode}`
              await (w.mode === 'resync' ? sendResync : sendDisk)({
                maxMessageBytes: welcome.limits.maxMessageBytes,
                client,
                work: w,
                accepted: opened.value,
                window,
                digest: welcome.digest,
                compression: welcome.compression,
                trivialBytes: this.#trivialBytes,
                certify: this.#certify,
                rateLimiter: this.#opts.rateLimiter,
                log: this.log,
                ...this.#sig,
                ...(this.#opts.onExtentSent === undefined ? {} : { onExtentSent: this.#opts.onExtentSent }),
                onMapped: (blocks: number) => advance('map', blocks),
                ...(this.#opts.verify === 'changed' ? { verifyBlockSize: this.#planContext().blockSize } : {}),
                ...(this.#opts.scrub > 0 ? { scrubPlan: { scrub: this.#opts.scrub, blockSize: this.#planContext().blockSize, prev: this.#record.scrub?.[w.name] } } : {}),
              })
              advance('end', 0)
              break
            }
            const ds = opened.state
            if (ds === undefined) throw refusalError(`DiskOpen of ${w.name}`, opened.refusal)
            if (++this.#replans > REPLANS_PER_DISK * this.#works.length + 2) {
              const says = opened.refusal.detail === undefined ? '' : `: receiver says: ${opened.refusal.detail}`
              throw new AgentError('E_REFUSED', `receiver keeps refusing disk ${w.name}: ${ds.reason}${says}`, { remoteCode: ds.reason })
            }
            const decision = planAfterRefusal(w.mode, { code: ds.reason, modified: ds.modified }, this.#rolledBack)
            if (decision.kind === 'fail') throw refusalError(w.name, opened.refusal, { disk: true })
            if (decision.kind === 'rollback') {
              await client.close().catch(() => {})
              return { kind: 'rollback' }
            }
            this.log.warn(
              { disk: w.name, reason: decision.reason, mode: decision.kind, ...(opened.refusal.detail === undefined ? {} : { receiverSays: opened.refusal.detail }) },
              decision.kind === 'resync' ? 'incremental refused; resync of the disk by block digests' : 'resync refused; seed of the disk',
            )
            // the report says why, as the receiver put it (which check found the mirror diverged, and when), not the code alone
            const why = opened.refusal.detail === undefined ? decision.reason : `${decision.reason}: ${opened.refusal.detail}`
            await applyDiskPlan(w, { kind: decision.kind, reason: why }, this.#planContext())
            await this.#recordResyncs()
          }
        }
      } finally {
        forgetStop()
      }
      this.#lap('ship')
      // durably before the Commit goes out: a run that ends before it records Committed leaves the next run what it
      // needs to adopt the commit (the identity the receiver reports, the snapshot that becomes the base)
      await this.#store.save(markPendingCommit(this.#record, this.#cycleNo, this.#committedCycleId(), this.#shipped, this.#opts.connect.url))
      // the commit is the durable step: once asked, its answer is awaited even through a stop
      const committed = await client.commit(this.#vm.name, this.#cycleNo, {
        abortable: false,
        retention: this.#opts.retention,
        capacity: this.#works.reduce((n, w) => n + w.chain.capacity, 0),
        onProgress: commitProgress(this.log),
        onPointsDropped: (p) => this.#notePointsDropped(p),
        // a stop still waits for the answer, but no longer than without progress
        ...(this.#opts.signal === undefined ? {} : { stop: this.#opts.signal }),
      })
      if (!committed.ok) throw refusalError(`Commit of cycle ${this.#cycleNo}`, committed.refusal)
      this.#noteRetention(committed.value.retention)
      await this.#recordCommit(committed.value.generation)
      for (const w of this.#works) w.progress.update('commit', true)
      this.#lap('commit')
      this.log.info({ cycle: this.#cycleNo, generation: committed.value.generation }, 'committed')
      // `--verify changed`: the written blocks' digests, taken while the extents shipped and the receiver committed (never rejects)
      const tasks = this.#works.flatMap((w) => (w.writtenTask === undefined ? [] : [w.writtenTask]))
      if (tasks.length > 0) {
        const tw = performance.now()
        await Promise.all(tasks)
        this.log.info({ disks: tasks.length, waitMs: Math.round(performance.now() - tw) }, 'digests of the written blocks taken while shipping')
      }
      // `--scrub N`: the slices' digests, likewise (never rejects)
      const slices = this.#works.flatMap((w) => (w.scrubTask === undefined ? [] : [w.scrubTask]))
      if (slices.length > 0) {
        const tw = performance.now()
        await Promise.all(slices)
        this.log.info({ disks: slices.length, waitMs: Math.round(performance.now() - tw) }, 'digests of the scrub slices taken while shipping')
      }
      if (this.#opts.afterCommit !== undefined) await this.#opts.afterCommit(this.#vm)
      // the checks likewise (a BlockCheck of several MiB waits on the socket): the cycle is committed, they are not run
      forgetStop = closeOnStop(client, this.#opts.signal)
      try {
        await verifyDisks(this.#works, {
          client,
          digest: welcome.digest,
          trivialBytes: this.#trivialBytes,
          certify: this.#certify,
          verifyChanged: this.#opts.verify === 'changed',
          blockSize: this.#planContext().blockSize,
          maxMessageBytes: welcome.limits.maxMessageBytes,
          scrub: this.#opts.scrub,
          scrubState: this.#scrubState(),
          log: this.log,
          ...this.#sig,
        })
      } finally {
        forgetStop()
      }
      this.#lap('check')
      await client.close().catch(() => {})
      return { kind: 'committed' }
    } catch (err) {
      session?.client.terminate()
      throw err
    }
  }

  /**
   * The VmState of a reconnect says this run's cycle is committed, but its Committed was lost with the connection:
   * the commit is this run's own when the receiver (version 8) names the identity of the cycle this run sent (SPEC
   * §5.10). Another identity is another writer's commit of this cycle number: nothing is recorded and no snapshot
   * removed (the next run resyncs, as for a mirror committed behind its back). "" or an older version: nothing to
   * compare, taken for this run's own as before. The pending Commit is dropped from the record before the error (the
   * next run resyncs rather than failing again).
   * @throws AgentError E_OTHER_WRITER
   */
  async #checkOwnCommit(state: VmStateMessage): Promise<void> {
    const theirs = state.committedCycleId ?? ''
    if (theirs === '') return
    const ours = this.#committedCycleId()
    if (theirs === ours) return
    await this.#store.save(clearPendingCommit(this.#record)).catch((err: unknown) => this.log.warn({ err }, 'the pending Commit could not be dropped from the agent state'))
    const vm = this.#vm.name
    const url = this.#opts.connect.url
    this.log.error({ vm, cycle: this.#cycleNo, receiver: url, committedCycleId: theirs, ours }, 'another writer committed this cycle to the mirror')
    throw new AgentError(
      'E_OTHER_WRITER',
      `another writer committed cycle ${this.#cycleNo} of ${vm} to the receiver ${url} while this run's Commit of that cycle went unanswered (its connection was lost): the mirror holds that writer's cycle (committed cycle identity ${theirs}), not this run's (${ours}). No commit was recorded and no snapshot removed. Check that one job, on one proxy, protects this VM under the name ${vm} with this token (another VM of the same name, a job configured twice); the next run resyncs the mirror from this VM`,
    )
  }

  /** The committed cycle identity of this run's cycle (SPEC §5.10): its disks' names and cycle identities. */
  #committedCycleId(): string {
    return committedCycleIdentity(this.#works.map((w) => ({ name: w.name, cycleId: w.cycleId })))
  }

  /** The receiver dropped every restore point of the VM at this commit (SPEC §5.5, v6; §4.2, v7): a warning of the run. */
  #notePointsDropped(p: PointsDroppedMessage): void {
    const dropped = { count: p.count, oldest: p.oldest, newest: p.newest, broken: p.broken, reason: oneLine(p.reason) }
    const w = pointsDroppedWarning(p.cycle, dropped)
    // heard after the Commit and again before the VmState of a reconnect (v7): one warning, one log line
    if (this.#report.warnings?.some((x) => x.code === w.code && x.message === w.message) === true) return
    this.#report.pointsDropped = dropped
    this.#report.warnings = [...(this.#report.warnings ?? []).filter((x) => x.code !== w.code), w]
    this.log.warn({ vm: this.#vm.name, cycle: p.cycle, ...dropped }, w.message)
  }

  /** Report the retention the receiver applied; warn when it is not what the job asked. */
  #noteRetention(applied: RetentionSpec | null): void {
    const requested = this.#opts.retention
    this.#report.retention = { requested, applied }
    if (requested === null) return
    const differs = applied === null ? ['all: the receiver keeps no restore points of this VM'] : retentionDifferences(requested, applied)
    if (differs.length > 0) this.log.warn({ vm: this.#vm.name, requested, applied, differs }, 'the receiver applied another retention than the job asks (its retentionLimits); see the report')
  }

  /** The record's scrub rotations (created when `--scrub` is on; saved with the checks). */
  #scrubState(): Record<string, ScrubRecord> | undefined {
    if (this.#opts.scrub <= 0) return undefined
    this.#record.scrub ??= {}
    return this.#record.scrub
  }

  get #trivialBytes(): number {
    return this.#opts.trivialMiB * 1024 * 1024
  }
  get #certify(): DigestAlgorithm | undefined {
    return this.#opts.certify === 'none' ? undefined : this.#opts.certify
  }

  /** The commit is durable on the receiver: record its generation beside the shipped snapshot (SPEC §5.8). */
  async #recordCommit(generation: string): Promise<void> {
    this.#committed = true
    await this.#store.save(markCommitted(this.#record, this.#cycleNo, generation, this.#shipped, this.#opts.connect.url))
  }

  /** A failed trivial check or certify marks those disks diverged: the next cycle resyncs them. */
  async #recordChecks(): Promise<void> {
    const failed = this.#works.filter((w) => w.report.trivial?.ok === false || w.report.certify?.ok === false || w.report.blockCheck?.ok === false || w.report.scrub?.ok === false)
    if (failed.length === 0) {
      // the scrub rotation moved on: saved while the older snapshots are removed (nothing there reads the record;
      // a run that ends before the save completes scrubs the same slice again next time)
      if (this.#record.scrub !== undefined && this.#opts.scrub > 0) {
        this.#rotationSave = this.#store.save(this.#record)
        // awaited at the end of the run; not an unhandled rejection meanwhile
        this.#rotationSave.catch(() => {})
      }
      return
    }
    const reason = failed.map((w) => `${w.name}: ${w.report.error?.message ?? 'check failed'}`).join('; ')
    await this.#store.save(
      markDiverged(
        this.#record,
        this.#cycleNo,
        failed.map((w) => w.name),
        reason,
      ),
    )
    this.log.error({ disks: failed.map((w) => w.name) }, 'mirror diverged from the source; the next cycle resyncs these disks')
  }

  /** 7. The other grainline snapshots go: their deltas consolidate into the base; the VM runs on the one just shipped. */
  async #removeOtherSnapshots(): Promise<void> {
    if (!this.#committed) throw new AgentError('E_PROTOCOL', 'cycle ended without commit')
    if (this.#opts.beforeRemove !== undefined) await this.#opts.beforeRemove(this.#vm)
    await removeOtherSnapshots(this.#opts.driver, this.#vm, this.#shipped, {
      log: this.log,
      onRemoved: (name) => {
        this.#report.removedSnapshots.push(name)
      },
      ...this.#sig,
    })
    this.#lap('remove')
  }
}
