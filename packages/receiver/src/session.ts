import { rollbackWroteNothing } from './rollback.ts'
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import type { WebSocket } from 'ws'
import {
  COMMIT_PROGRESS_VERSION,
  ConversationState,
  COMMITTED_CYCLE_ID_VERSION,
  REFUSAL_DETAIL_VERSION,
  DISK_PROGRESS_VERSION,
  VM_PROGRESS_VERSION,
  POINTS_DROPPED_AT_OPEN_VERSION,
  POINTS_DROPPED_VERSION,
  MessageKind,
  ProtocolErrorCodes,
  decodeMessage,
  encodeMessage,
  negotiate,
  toErrorMessage,
  type BlockCheckMessage,
  type BlockMapRequestMessage,
  type CertifyMessage,
  type CommitMessage,
  type CompatRecord,
  type DiskEndMessage,
  type DiskOpenMessage,
  type ErrorMessage,
  type ExtentMessage,
  type HelloMessage,
  type Message,
  type Negotiated,
  type ProtocolErrorCode,
  type TrivialCheckMessage,
  type VmOpenMessage,
} from '@grainline/protocol'
import { ReceiverError, errorCode, ioError } from './errors.ts'
import { peerErrorMessage, peerRefusalDetail } from './refusal-detail.ts'
import { mayAccess, type TokenEntry } from './auth.ts'
import { ApplyPipeline, type PipelineDisk } from './apply-pipeline.ts'
import { Inbox } from './inbox.ts'
import { PayloadPool, type PayloadBorrower } from './payload-pool.ts'
import { FramePool, consumeIntoPool, joinFragments, type FrameBorrower } from './frame-pool.ts'
import type { SessionSettings } from './session-settings.ts'
import { effectiveRetention, specFromPolicy, type RetentionPolicy } from './retention.ts'
import { SessionDeadlines } from './session-deadlines.ts'
import { extentPayload } from './extent-payload.ts'
import { pointsDroppedNotice } from './points-dropped.ts'
import { checkCapacity, checkCycleIdentity, checkDiskName, checkFileNames, checkTrivialPrefix, checkVmName, checkVmNameFits } from './receiver-rules.ts'
import { verifyDisk } from './verification.ts'
import { VmMirror } from './vm-mirror.ts'
import { workProgressLog, type WorkProgress } from './work-progress.ts'
import type { DiskApply } from './disk-apply.ts'
import { CephVmMirror } from './store/ceph/ceph-mirror.ts'
import type { CephDiskApply } from './store/ceph/ceph-apply.ts'
import { ResyncMap } from './resync-map.ts'
import type { CephBlockMap } from './store/ceph/ceph-blocks.ts'
import { askHolesEarly, type CheckHoleWindows, checkBlocks } from './block-check.ts'
import { blockRun } from './proof.ts'
import { keptSeekHelper } from '@grainline/vmdk'
import { checkVmCount } from './vm-count.ts'
import { checkCephVmCount } from './store/ceph/ceph-vm-count.ts'
import { checkMapRequest } from './receiver-rules.ts'
import { appendCycleHistory } from './cycle-history.ts'
import { outboundLimit, waitForOutboundRoom } from './outbound-room.ts'
import { reportedCommittedCycleId } from './committed-identity.ts'

/** A dry inbox re-checks this often while batches become durable (a frame or the last durable batch wakes it at once), ms. */
const DRY_WAIT_MS = 1000

/**
 * (Over 400 lines: one small handler per message kind of SPEC §8.3; the work
 * of each lives in its own module — vm-mirror, disk-apply, verification,
 * resync-map, block-check.)
 *
 * One agent connection (one VM cycle, SPEC §4–§5): the socket glue. Frames
 * are decoded with the negotiated limits, fed to the protocol's
 * `ConversationState` (SPEC §8: order and legality) and dispatched; extents
 * go through the disk's `DiskApply` into the `ApplyPipeline`; everything
 * the store does is `VmMirror`'s. Inbound frames queue in an inbox whose
 * size pauses the socket (backpressure).
 */
export class Session {
  readonly id: string
  private readonly ws: WebSocket
  private readonly token: TokenEntry
  private readonly settings: SessionSettings
  private readonly log: Logger
  private readonly conv = new ConversationState()
  private readonly inbox: Inbox
  private running = false
  private dead = false
  private negotiated: Negotiated | undefined
  private vm: VmMirror | CephVmMirror | undefined
  private vmName = ''
  private cycle = 0
  /** when VmOpen arrived (performance.now()), for the cycle's duration */
  private openedAt = 0
  /** the VmOpen's compat record: compared at each DiskOpen, recorded at commit */
  private compat: CompatRecord | undefined
  /** accepted disks by handle (refused handles are spent, SPEC §8.2, and not kept here) */
  private readonly disks = new Map<number, PipelineDisk>()
  /** the mirror block maps of accepted resync disks, by handle (SPEC §5.9) */
  private readonly maps = new Map<number, ResyncMap | CephBlockMap>()
  /** the flat's data ranges asked for by the BlockChecks of this session (after its commit: nothing writes the mirror) */
  private readonly checkWindows: CheckHoleWindows = new Map()
  /** the kind of the message being handled (decoded, not yet done), for a BlockCheck arriving behind it */
  private handling: number | undefined
  /** disk handles whose first run of blocks (a scrub slice's first part) was noticed as it arrived: one hole question each */
  private readonly noticed = new Set<number>()
  /** times this session waited for the agent to read its answers (outbound-room.ts) */
  private outboundWaits = 0
  private readonly pipeline: ApplyPipeline
  /**
   * reused memory for inbound frames and payloads: this session's share of the receiver's pools (kept between
   * sessions), else of its own (the inbox's bound plus two batches in flight); released at cleanup
   */
  private readonly frames: FrameBorrower
  private readonly payloads: PayloadBorrower
  private readonly abortCtl = new AbortController()
  private readonly deadlines: SessionDeadlines
  /** resolves when the session has released every resource */
  readonly done: Promise<void>
  private resolveDone!: () => void

  constructor(ws: WebSocket, token: TokenEntry, settings: SessionSettings, logger: Logger) {
    this.id = randomBytes(6).toString('hex')
    this.ws = ws
    this.token = token
    this.settings = settings
    this.frames = (settings.buffers?.frames ?? new FramePool(() => this.settings.highWaterBytes + 2 * this.batchTarget())).borrower()
    this.payloads = (settings.buffers?.payloads ?? new PayloadPool(() => settings.highWaterBytes)).borrower()
    this.log = logger.child({ session: this.id, peer: token.name })
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve
    })
    let pauses = 0
    // backpressure is routine for a fast agent: the first pause of a session at info, the others at debug
    this.inbox = new Inbox(ws, settings.highWaterBytes, (st) => {
      this.log[pauses++ === 0 ? 'info' : 'debug'](st, 'inbox full: socket paused')
    })
    this.pipeline = new ApplyPipeline(
      () => this.batchTarget(),
      (d, seq) => {
        this.send({ kind: MessageKind.ExtentAck, disk: d.handle, seq })
        const c = d.apply.counts
        this.settings.observer?.diskProgress?.(this.vmName, d.name, c.dataBytes + c.zeroBytes)
      },
      this.abortCtl.signal,
      {
        // debug: a timeline of batches (flushed, written, durable), pino's time on each line
        trace: (step, b) => this.log.debug(b, `batch ${step}`),
        // at most the inbox's bound of reused payload buffers (two batches in flight): for payloads
        // not in a pooled frame (the frame pool at its bound, decompressed payloads)
        pool: this.payloads,
        frames: this.frames,
      },
    )
    this.deadlines = new SessionDeadlines({
      helloMs: settings.helloTimeoutMs,
      idleMs: settings.idleTimeoutMs,
      busy: () => this.running,
      onTimeout: (reason, ms) => {
        settings.refusals.refused(reason, { session: this.id, peer: token.name, vm: this.vmName === '' ? undefined : this.vmName, ms })
        void this.abortWith(new ReceiverError('E_TIMEOUT', reason === 'hello-timeout' ? `no Hello within ${ms} ms` : `nothing received for ${ms} ms`))
      },
    })
    // large payloads are read from the TLS chunks into pooled frames, and messages come as their
    // fragments, joined here without copying the payload again (frame-pool.ts)
    ws.binaryType = 'fragments'
    const pooled = consumeIntoPool((ws as unknown as { _receiver?: unknown })._receiver, this.frames)
    ws.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => this.onMessage(data, isBinary))
    ws.on('ping', () => this.deadlines.activity())
    ws.on('close', (code: number) => {
      this.log.info({ code }, 'connection closed')
      this.stop()
    })
    ws.on('error', (err: Error) => {
      this.log.warn({ err: { message: err.message, code: (err as { code?: unknown }).code } }, 'socket error')
    })
    this.log.info({ protocol: ws.protocol, pooledFrames: pooled }, 'connection opened')
  }

  private onMessage(data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void {
    if (this.dead) return
    this.deadlines.activity()
    if (!isBinary) {
      void this.abortWith(new ReceiverError('E_MALFORMED', 'text frames are not part of the protocol'))
      return
    }
    const frame = Buffer.isBuffer(data) ? data : Array.isArray(data) ? joinFragments(data, this.frames) : Buffer.from(data)
    this.inbox.push(frame)
    if (frame[0] === MessageKind.BlockCheck) this.noticeBlockCheck(frame)
    if (!this.running) void this.run()
  }

  /**
   * A BlockCheck arrived behind a message still being handled or queued (a
   * scrub slice right behind its trivial check): ask the holes of its slice
   * now (block-check.ts `askHolesEarly`), so that the `SEEK_DATA` helper runs
   * meanwhile, not when the BlockCheck's turn comes. Only after the commit, on
   * a folder store; the frame is decoded here for its blocks only (it is
   * checked and observed by the conversation in its turn: a malformed one is
   * refused then). Bounded: the first run of each disk only, so a peer
   * queueing many BlockChecks starts at most one helper per disk here.
   */
  private noticeBlockCheck(frame: Buffer): void {
    const vm = this.vm
    const neg = this.negotiated
    if (!(vm instanceof VmMirror) || neg === undefined || this.conv.phase !== 'committed' || this.noticed.size >= this.disks.size) return
    if (this.handling === undefined && this.inbox.length <= 1) return
    let msg: Message
    try {
      msg = decodeMessage(frame, { maxMessageBytes: neg.limits.maxMessageBytes, maxExtentBytes: neg.limits.maxExtentBytes, digest: neg.digest, compression: neg.compression })
    } catch {
      return
    }
    if (msg.kind !== MessageKind.BlockCheck) return
    const d = this.disks.get(msg.disk)
    if (d === undefined || this.noticed.has(msg.disk) || blockRun(msg.blocks) === undefined) return
    this.noticed.add(msg.disk)
    const asked = askHolesEarly(vm, d.name, msg, this.checkWindows)
    if (asked !== undefined) this.log.debug({ disk: d.name, ...asked }, 'block check: holes of its slice asked as it arrived')
  }

  /** Send a message after checking it against the conversation (a refusal there is our bug). */
  private send(msg: Message): void {
    try {
      this.conv.observe(msg, 'receiver')
    } catch (err) {
      throw new ReceiverError('E_INTERNAL', `receiver would send an illegal message: ${(err as Error).message}`)
    }
    if (this.ws.readyState === this.ws.OPEN) this.ws.send(encodeMessage(msg))
  }

  /** Send an Error: legal in any phase; after a fatal Error of the agent, the conversation has ended and it is sent as a courtesy. */
  private sendError(msg: ErrorMessage): void {
    try {
      this.conv.observe(msg, 'receiver')
    } catch {
      // the conversation already ended
    }
    if (this.ws.readyState === this.ws.OPEN) this.ws.send(encodeMessage(msg))
  }

  private decode(frame: Buffer): Message {
    const neg = this.negotiated
    const limits =
      neg === undefined
        ? { maxMessageBytes: this.settings.local.limits.maxMessageBytes, maxExtentBytes: this.settings.local.limits.maxExtentBytes }
        : { maxMessageBytes: neg.limits.maxMessageBytes, maxExtentBytes: neg.limits.maxExtentBytes, digest: neg.digest, compression: neg.compression }
    const msg = decodeMessage(frame, limits)
    this.conv.observe(msg, 'agent')
    return msg
  }

  private async run(): Promise<void> {
    this.running = true
    try {
      while (!this.dead) {
        let frame = this.inbox.shift()
        if (frame === undefined && this.pipeline.partial) {
          // the inbox ran dry mid-batch: wait briefly for more so that one
          // fsync covers more bytes (the agent still has window left)
          await this.inbox.wait(this.settings.batchIdleMs)
          frame = this.inbox.shift()
        }
        if (frame === undefined) {
          // the inbox ran dry: the gathering batch goes on its way at once
          // (journaled, its writes started), and the next frame is taken as
          // soon as it comes — the batches in flight become durable and are
          // acked meanwhile, so the agent's window keeps the pipe full while
          // the disk syncs (an ack still follows its batch's fdatasync)
          await this.pipeline.flush()
          this.log.debug('inbox dry: waiting for a frame or for every batch to be durable')
          if (await this.frameBeforeDurable()) continue
          // nothing more to do until the agent sends again: every batch
          // durable, and the resume point of the last one written out
          await this.pipeline.idle()
          this.log.debug('pipeline idle')
          break
        }
        // a peer that asks without reading: no next answer until the last ones left (outbound-room.ts)
        if (this.ws.bufferedAmount > outboundLimit(this.negotiated?.limits.maxMessageBytes)) {
          await this.outboundRoom()
          // stopped while waiting (the peer closed, a shutdown): the held frame is not handled
          if (this.dead) break
        }
        const msg = this.decode(frame)
        this.handling = msg.kind
        if (msg.kind === MessageKind.Extent) {
          await this.onExtent(msg, frame)
        } else {
          // the message's fields may point into the frame: never reused
          this.frames.forget(frame)
          await this.pipeline.flush()
          await this.pipeline.drain()
          await this.handle(msg)
        }
        this.handling = undefined
      }
    } catch (err) {
      await this.abortWith(err)
    } finally {
      this.running = false
      // the idle time counts from the end of the last step
      this.deadlines.activity()
    }
    if (this.dead) await this.cleanup()
    else if (this.inbox.length > 0) void this.run()
  }

  /** Wait (not reading frames) until our messages waiting in the socket are below the limit; E_TIMEOUT when the peer reads nothing. */
  private async outboundRoom(): Promise<void> {
    const limit = outboundLimit(this.negotiated?.limits.maxMessageBytes)
    const buffered = this.ws.bufferedAmount
    // a reading agent waits here only when its link is slower than the mirror reads: the first wait at info, others at debug
    this.log[this.outboundWaits++ === 0 ? 'info' : 'debug']({ vm: this.vmName || undefined, buffered, limit }, 'the agent is not reading our answers: the next request waits')
    let ms: number
    try {
      ms = await waitForOutboundRoom(this.ws, { limit, stallMs: this.settings.idleTimeoutMs, stopped: () => this.dead })
    } catch (err) {
      this.settings.refusals.refused('unread-answers', { session: this.id, peer: this.token.name, vm: this.vmName === '' ? undefined : this.vmName, ms: this.settings.idleTimeoutMs })
      this.log.warn({ vm: this.vmName || undefined, buffered: this.ws.bufferedAmount, err }, 'the agent read none of our answers: session ended')
      // a close frame would wait behind the unread bytes for ws's 30 s close timer: end the socket now
      this.ws.terminate()
      throw err
    }
    this.log.debug({ ms: Math.round(ms), buffered: this.ws.bufferedAmount }, 'answers left: reading requests again')
  }

  /**
   * Wait until a frame arrives (true) or every flushed batch is durable
   * (false). A batch that failed gives false: the caller's
   * {@link ApplyPipeline.idle} then rethrows its error before anything else.
   */
  private async frameBeforeDurable(): Promise<boolean> {
    let settled = false
    let failed = false
    this.pipeline.settled().then(
      () => {
        settled = true
        this.inbox.interrupt()
      },
      () => {
        settled = failed = true
        this.inbox.interrupt()
      },
    )
    while (!settled && !this.dead && this.inbox.length === 0) await this.inbox.wait(DRY_WAIT_MS)
    return !failed && !this.dead && this.inbox.length > 0
  }

  /** bytes per durable batch: the setting, at most half the negotiated window */
  private batchTarget(): number {
    const w = this.negotiated?.limits.windowBytes ?? this.settings.batchBytes
    return Math.max(1, Math.min(this.settings.batchBytes, Math.floor(w / 2)))
  }

  /** Dispatch a message the conversation state has accepted from the agent. */
  private async handle(msg: Message): Promise<void> {
    switch (msg.kind) {
      case MessageKind.Hello:
        return this.onHello(msg)
      case MessageKind.VmOpen:
        return this.onVmOpen(msg)
      case MessageKind.Rollback:
        return this.onRollback()
      case MessageKind.DiskOpen:
        return this.onDiskOpen(msg)
      case MessageKind.DiskEnd:
        return this.onDiskEnd(msg)
      case MessageKind.BlockMapRequest:
        return this.onBlockMapRequest(msg)
      case MessageKind.Commit:
        return this.onCommit(msg)
      case MessageKind.TrivialCheck:
        return this.onTrivial(msg)
      case MessageKind.Certify:
        return this.onCertify(msg)
      case MessageKind.BlockCheck:
        return this.onBlockCheck(msg)
      case MessageKind.Error:
        this.log.warn({ peerError: { code: msg.code, message: msg.message.slice(0, 512) } }, 'agent reported an error')
        if (msg.fatal) this.stop()
        return
      default:
        // ConversationState refuses every kind an agent does not send
        throw new ReceiverError('E_INTERNAL', `no handler for message kind 0x${msg.kind.toString(16)}`)
    }
  }

  private onHello(msg: HelloMessage): void {
    this.negotiated = negotiate(msg, this.settings.local)
    this.deadlines.hello()
    this.log.info({ negotiated: this.negotiated, peerSoftware: msg.software.slice(0, 128) }, 'negotiated')
    this.send({ kind: MessageKind.Welcome, ...this.negotiated, software: this.settings.software, session: this.id })
  }

  private async onVmOpen(msg: VmOpenMessage): Promise<void> {
    checkVmName(msg.vm)
    checkVmNameFits(msg.vm)
    // SPEC: an agent may not learn of mirrors its token does not cover — same answer whether or not it exists
    if (!mayAccess(this.token, msg.vm)) throw new ReceiverError('E_FORBIDDEN', 'this token may not replicate that VM')
    checkFileNames(
      msg.files.map((f) => f.name),
      msg.vm,
    )
    const ceph = this.settings.ceph
    // a new VM's folder (its lock object and state object on Ceph) and staged files come before any quota check: the
    // token's VM count is bounded (vm-count.ts, ceph-vm-count.ts)
    if (ceph === undefined) await checkVmCount(this.settings.storeDir, this.token, msg.vm)
    else await checkCephVmCount(ceph.target, this.token, msg.vm)
    this.vm =
      ceph === undefined
        ? await VmMirror.acquireWait(this.settings.storeDir, msg.vm, this.log.child({ vm: msg.vm }), this.settings.lockWaitMs, this.abortCtl.signal, {
            onProgress: this.vmProgressOf(msg.vm, 'merge-points'),
          })
        : await CephVmMirror.acquireWait(
            ceph.target,
            msg.vm,
            this.log.child({ vm: msg.vm }),
            { description: ceph.holder, ...(ceph.leaseSeconds === undefined ? {} : { leaseSeconds: ceph.leaseSeconds }) },
            this.settings.lockWaitMs,
            this.abortCtl.signal,
            { record: true },
          )
    this.vmName = msg.vm
    this.cycle = msg.cycle
    // a VM in a scrub rotation: its BlockChecks will ask the flat's holes after the commit; the kept SEEK_DATA helper
    // starts now, while the cycle ships, not on the scrub's path
    const vm = this.vm
    if (vm instanceof VmMirror && Object.values(vm.state.disks).some((d) => d.scrubRun !== undefined || d.proven?.kind === 'scrub')) keptSeekHelper.warm()
    this.openedAt = performance.now()
    this.compat = msg.compat
    this.settings.observer?.cycleOpened?.(msg.vm, msg.cycle, this.token.name)
    const s = this.vm.state
    this.log.info({ vm: msg.vm, cycle: msg.cycle, committedCycle: s.committedCycle, inflightCycle: s.inflight?.cycle ?? 0 }, 'vm opened')
    await this.vm.stageFiles(msg.files, msg.disks)
    // SPEC §4.2 (v7): the VmOpen of the cycle committed last is an agent whose Committed was lost with its connection:
    // the drop that commit made is told again (the agent reports one cycle's notice once)
    if (msg.cycle > 0 && s.committedCycle === msg.cycle) this.tellPointsDropped(msg.cycle, POINTS_DROPPED_AT_OPEN_VERSION)
    this.send({
      kind: MessageKind.VmState,
      vm: msg.vm,
      exists: s.committedCycle > 0,
      committedCycle: s.committedCycle,
      inflightCycle: s.inflight?.cycle ?? 0,
      compatible: this.vm.compatible(msg.compat),
      generation: s.committedCycle > 0 ? (s.generation ?? '') : '',
      // SPEC §4.2, §5.10 (v8): whose cycle is committed — an agent whose Committed was lost takes it for its own only by it
      ...((this.negotiated?.version ?? 0) >= COMMITTED_CYCLE_ID_VERSION ? { committedCycleId: reportedCommittedCycleId(s) } : {}),
    })
  }

  /** The locked VM (ConversationState has checked that VmOpen came first). */
  private get mirror(): VmMirror | CephVmMirror {
    if (this.vm === undefined) throw new ReceiverError('E_INTERNAL', 'no VM opened')
    return this.vm
  }

  private async onRollback(): Promise<void> {
    const vm = this.mirror
    const committedCycle = await vm.rollback(this.vmProgressOf(this.vmName, 'undo'))
    this.send({ kind: MessageKind.RolledBack, vm: this.vmName, committedCycle })
  }

  /** The VM's restore-point retention, as an options fragment. */
  private retention(): { retention?: RetentionPolicy } {
    const r = this.settings.retentionFor?.(this.vmName)
    return r === undefined ? {} : { retention: r }
  }

  /**
   * A DiskOpen's long work (a capacity change's base copy): logged with its
   * ETA — when it starts, when it ends and every 30 s between — and, on a
   * version 3 connection, told to the agent as DiskProgress (SPEC §5.1), so
   * that its bounded wait for the DiskState restarts instead of running out.
   */
  private progressOf(msg: DiskOpenMessage): WorkProgress {
    const logged = workProgressLog(this.log, { disk: msg.name }, 'copying the mirror into a base point before the disk changes capacity', 'base copy of the mirror done')
    return this.progressTo(DISK_PROGRESS_VERSION, (doneBytes, totalBytes) => ({ kind: MessageKind.DiskProgress, disk: msg.disk, step: 'base-copy', doneBytes, totalBytes }), logged)
  }

  /**
   * A Commit's long work (the merges of the restore points its retention
   * drops): logged likewise and, on a version 4 connection, told to the
   * agent as CommitProgress (SPEC §5.5), so that its wait for the Committed
   * restarts instead of running out.
   */
  private commitProgressOf(msg: CommitMessage): WorkProgress {
    const logged = workProgressLog(this.log, { vm: this.vmName, cycle: msg.cycle }, 'merging the restore points the retention drops', 'restore points merged')
    return this.progressTo(
      COMMIT_PROGRESS_VERSION,
      (doneBytes, totalBytes) => ({ kind: MessageKind.CommitProgress, vm: msg.vm, cycle: msg.cycle, step: 'merge-points', doneBytes, totalBytes }),
      logged,
    )
  }

  /**
   * A VmOpen's or a Rollback's long work (an interrupted commit finished,
   * an undo), which the mirror logs itself: on a version 5 connection told
   * to the agent as VmProgress (SPEC §4.2, §4.3), so that its wait for the
   * VmState or RolledBack restarts instead of running out.
   */
  private vmProgressOf(vm: string, step: 'merge-points' | 'undo'): WorkProgress {
    return this.progressTo(
      VM_PROGRESS_VERSION,
      (doneBytes, totalBytes) => ({ kind: MessageKind.VmProgress, vm, step, doneBytes, totalBytes }),
      () => {},
    )
  }

  /** A WorkProgress that sends `frame` when the connection speaks `version` or later, and logs with `logged`. */
  private progressTo(version: number, frame: (doneBytes: number, totalBytes: number) => Message, logged: WorkProgress): WorkProgress {
    return (doneBytes, totalBytes) => {
      if (this.dead) return
      if ((this.negotiated?.version ?? 0) >= version) {
        try {
          this.send(frame(doneBytes, totalBytes))
        } catch (err) {
          // called from the work's timer or callback: a send the conversation refuses is logged, never thrown there
          this.log.error({ err, kind: frame(0, 0).kind }, 'progress not sent')
        }
      }
      logged(doneBytes, totalBytes)
    }
  }

  private async onDiskOpen(msg: DiskOpenMessage): Promise<void> {
    const vm = this.mirror
    checkDiskName(msg.name, this.vmName)
    checkCapacity(msg.capacity)
    checkCycleIdentity(this.vmName, msg)
    const neg = this.negotiated as Negotiated
    const open = [...this.disks.values()].map((d) => d.name)
    const req = {
      name: msg.name,
      capacity: msg.capacity,
      cycle: msg.cycle,
      mode: msg.mode,
      baseCycle: msg.baseCycle,
      baseGeneration: msg.baseGeneration,
      source: msg.source,
      cycleId: msg.cycleId,
      ddb: msg.ddb,
      algorithm: neg.digest,
      blockSize: msg.blockSize,
      totalBytes: msg.totalBytes,
      totalExtents: msg.totalExtents,
    }
    // the token's quota counts the mirrors of every VM it may replicate (both stores)
    const pending = this.settings.pendingOpens === undefined ? {} : { pending: this.settings.pendingOpens }
    const quota = this.token.quota === undefined ? {} : { quota: { bytes: this.token.quota, covers: (vm: string) => mayAccess(this.token, vm), ...pending } }
    const r =
      vm instanceof CephVmMirror
        ? await vm.openDisk(req, { compat: this.compat as CompatRecord, ...quota })
        : await vm.openDisk(req, { compat: this.compat as CompatRecord, open, ...this.retention(), ...quota, onProgress: this.progressOf(msg) })
    if (r.apply === undefined) {
      this.log.info({ disk: msg.name, reason: r.reason, why: r.message }, 'disk open refused')
    } else {
      // a folder store has copied a payload into the page cache once its batch's writes resolved
      this.disks.set(msg.disk, { handle: msg.disk, name: msg.name, apply: r.apply, reusePayload: !(vm instanceof CephVmMirror) })
      if (msg.mode === 'resync' && vm instanceof CephVmMirror) {
        const map = await vm.openBlockMap(msg.name, msg.blockSize ?? 0).catch((err: unknown) => {
          throw ioError(err, `opening the block map of ${msg.name}`)
        })
        this.maps.set(msg.disk, map)
      } else if (msg.mode === 'resync' && !(vm instanceof CephVmMirror)) {
        const applied = r.apply.counts.extents > 0
        const map = await ResyncMap.open(vm.paths, (r.apply as DiskApply).info, applied, vm.state.disks[msg.name], (why) =>
          this.log.info({ disk: msg.name, why }, 'no kept block map: the resync reads the whole mirror'),
        ).catch((err: unknown) => {
          throw ioError(err, `opening the block map of ${msg.name}`)
        })
        map.onUnknownHoles = () =>
          this.log.info({ disk: msg.name }, 'the holes of the mirror cannot be found here (no SEEK_DATA: python3 missing or a file system that refuses): the resync reads every block')
        this.maps.set(msg.disk, map)
      }
      this.log.info({ disk: msg.name, mode: msg.mode, cycle: this.cycle, resumeSeq: r.apply.nextSeq }, 'disk opened')
    }
    const counts = r.apply?.counts
    if (counts !== undefined) this.settings.observer?.diskOpened?.(this.vmName, msg.name, msg.mode, msg.totalBytes, counts.dataBytes + counts.zeroBytes)
    this.send({
      kind: MessageKind.DiskState,
      disk: msg.disk,
      accepted: r.accepted,
      reason: r.reason,
      committedCycle: r.committedCycle,
      committedSource: r.committedSource,
      mirrorCid: r.mirrorCid,
      modified: r.modified,
      resumeSeq: r.apply?.nextSeq ?? 0,
      resumeBytes: counts === undefined ? 0 : counts.dataBytes + counts.zeroBytes,
      // SPEC §5.1 (version 9): the refusal's own words, as logged above, without the store's folder
      ...(r.apply === undefined && (this.negotiated?.version ?? 0) >= REFUSAL_DETAIL_VERSION
        ? { detail: peerRefusalDetail(('peerMessage' in r ? r.peerMessage : undefined) ?? r.message, vm instanceof CephVmMirror ? undefined : this.settings.storeDir) }
        : {}),
    })
  }

  /** The accepted disk of a handle (ConversationState has checked that it is accepted). */
  private disk(handle: number): PipelineDisk {
    const d = this.disks.get(handle)
    if (d === undefined) throw new ReceiverError('E_INTERNAL', `disk handle ${handle} is not open`)
    return d
  }

  private async onExtent(msg: ExtentMessage, frame: Buffer): Promise<void> {
    const d = this.disk(msg.disk)
    const data = extentPayload(msg, (this.negotiated as Negotiated).digest)
    // a pooled frame holding the payload travels with it until its batch is written (the pipeline forgets any other)
    const lease = data !== undefined && data.buffer === frame.buffer && this.frames.owns(frame) ? frame : undefined
    // a decompressed payload lies in memory of its own: with the digest copied out, nothing points into
    // the frame any more, and it goes back to the pool at once instead of being dropped
    const done = lease === undefined && data !== undefined && this.frames.owns(frame)
    // a copy (Uint8Array's slice: Buffer's would be a view into the frame): the journal reads the digest only
    // when the batch is journaled, by then the frame holds another extent (a resume would replay a wrong digest)
    const e = d.apply.accept({ seq: msg.seq, offset: msg.offset, length: msg.length, zero: msg.zero, data, digest: done ? Uint8Array.prototype.slice.call(msg.digest) : msg.digest })
    if (done) this.frames.give(frame)
    else if (lease === undefined) this.frames.forget(frame)
    await this.pipeline.add(d, e, lease)
  }

  /** SPEC §5.9: the mirror's digests of the requested blocks, durable before they are sent. */
  private async onBlockMapRequest(msg: BlockMapRequestMessage): Promise<void> {
    const map = this.maps.get(msg.disk)
    if (map === undefined) throw new ReceiverError('E_INTERNAL', `disk handle ${msg.disk} has no block map`)
    const neg = this.negotiated as Negotiated
    checkMapRequest(msg.count, neg)
    const digests = await map.digests(msg.first, msg.count, this.abortCtl.signal).catch((err: unknown) => {
      throw ioError(err, `digesting the mirror of ${this.disk(msg.disk).name}`)
    })
    this.send({ kind: MessageKind.BlockMap, disk: msg.disk, first: msg.first, digests })
  }

  private async onDiskEnd(msg: DiskEndMessage): Promise<void> {
    const d = this.disk(msg.disk)
    const a = d.apply
    await a.end(msg).catch((err: unknown) => {
      throw ioError(err, `sealing ${d.name}`)
    })
    const c = a.counts
    const map = this.maps.get(msg.disk)
    // a resync's map: mirror bytes read for it in this connection, digests taken from the kept map
    const mapStats = map === undefined ? {} : { mapMirrorBytes: map.bytesRead, mapHoleBytes: map.holeBytes, mapKeptBlocks: map.keptBlocks }
    this.log.info({ disk: d.name, ...c, ...mapStats, batches: a.batches, ...folderApplyStats(a), journalMs: Math.round(a.journalMs), writeMs: Math.round(a.writeMs) }, 'disk sealed')
    this.settings.observer?.diskSealed(this.vmName, d.name, c)
    this.send({ kind: MessageKind.DiskEnded, disk: d.handle })
  }

  private async onCommit(msg: CommitMessage): Promise<void> {
    const disks = [...this.disks.values()]
    const own = this.settings.retentionFor?.(this.vmName)
    const applied = effectiveRetention(own, msg.retention, this.settings.retentionLimits)
    if (msg.retention !== null) {
      const why =
        this.settings.retentionLimits === undefined
          ? 'this receiver allows no per-job retention (retentionLimits)'
          : applied === own
            ? 'this receiver keeps no restore points of this VM'
            : 'clamped to retentionLimits'
      this.log.info({ vm: this.vmName, requested: msg.retention, applied: specFromPolicy(applied), why }, 'retention requested by the job')
    }
    const m = this.mirror
    const opts = { ...(applied === undefined ? {} : { retention: applied }), onProgress: this.commitProgressOf(msg) }
    const recs =
      m instanceof CephVmMirror
        ? await m.commit(
            msg.cycle,
            disks.map((d) => d.apply as CephDiskApply),
            this.settings.displaySuffix,
            this.compat as CompatRecord,
            opts,
          )
        : await m.commit(
            msg.cycle,
            disks.map((d) => d.apply as DiskApply),
            this.settings.displaySuffix,
            this.compat as CompatRecord,
            opts,
          )
    this.log.info({ vm: this.vmName, cycle: msg.cycle, disks: recs.map((r) => ({ name: r.name, cid: r.mirrorCid, size: r.size })) }, 'cycle committed')
    const seconds = (performance.now() - this.openedAt) / 1000
    this.settings.observer?.cycleCommitted(this.vmName, seconds)
    // before the answer: once an agent holds Committed, the cycle is in the history (one small atomic write)
    await this.recordHistory(msg.cycle, seconds, disks)
    // SPEC §5.5 (v6): a commit that dropped every restore point of the VM tells the agent, whose operator reads its report
    this.tellPointsDropped(msg.cycle, POINTS_DROPPED_VERSION)
    this.send({
      kind: MessageKind.Committed,
      vm: this.vmName,
      cycle: msg.cycle,
      generation: this.mirror.state.generation as string,
      disks: recs.map((r, i) => ({ disk: (disks[i] as PipelineDisk).handle, mirrorCid: r.mirrorCid, size: r.size })),
      retention: specFromPolicy(applied),
    })
  }

  /**
   * Send the PointsDropped of the commit of `cycle`, when that commit dropped every restore point of the VM and the
   * connection speaks `version` or later. The commit is durable: a notice the conversation or the encoder refused is
   * logged, never in the way of the answer that follows.
   */
  private tellPointsDropped(cycle: number, version: number): void {
    if ((this.negotiated?.version ?? 0) < version) return
    try {
      const dropped = pointsDroppedNotice(this.vmName, cycle, this.mirror.state)
      if (dropped !== undefined) this.send(dropped)
    } catch (err) {
      this.log.error({ err, vm: this.vmName, cycle }, 'PointsDropped not sent (the commit stands; status and /metrics say the drop)')
    }
  }

  /** Append the committed cycle to the VM's bounded history (dashboard charts); a failure is logged, the commit stands. */
  private async recordHistory(cycle: number, seconds: number, disks: readonly PipelineDisk[]): Promise<void> {
    const sum = (k: 'dataBytes' | 'zeroBytes' | 'extents'): number => disks.reduce((n, d) => n + d.apply.counts[k], 0)
    const entry = {
      cycle,
      committedAt: this.mirror.state.committedAt ?? new Date().toISOString(),
      seconds: Math.round(seconds * 1000) / 1000,
      dataBytes: sum('dataBytes'),
      zeroBytes: sum('zeroBytes'),
      extents: sum('extents'),
      modes: [...new Set(disks.map((d) => d.apply.info.mode))].sort(),
    }
    const m = this.mirror
    await (m instanceof CephVmMirror ? m.recordHistory(entry) : appendCycleHistory(m.paths, entry)).catch((err: unknown) => {
      this.log.warn({ vm: this.vmName, cycle, err: { message: (err as Error).message } }, 'cycle history not written (the commit stands; the dashboard misses this cycle)')
    })
  }

  /** The flat file of a disk committed in this session (ConversationState has checked the handle). */
  private async onTrivial(msg: TrivialCheckMessage): Promise<void> {
    const name = this.disk(msg.disk).name
    const m = this.mirror
    if (m instanceof CephVmMirror) checkTrivialPrefix(msg.prefixBytes, this.settings.trivialMaxBytes)
    const t0 = performance.now()
    // a clean verdict with a BlockCheck queued behind it (a scrub slice, `--verify changed`) is written with theirs,
    // after their answers (one fsynced write for all: onBlockCheck); a failed one is written before the answer
    const r =
      m instanceof CephVmMirror
        ? { ...(await m.verify(name, { ...msg, kind: 'trivial' }, this.abortCtl.signal)), deferred: false }
        : await verifyDisk(
            m,
            name,
            { ...msg, kind: 'trivial' },
            {
              trivialMaxBytes: this.settings.trivialMaxBytes,
              signal: this.abortCtl.signal,
              defer: () => this.inbox.peekKind() === MessageKind.BlockCheck,
            },
          )
    this.log.info({ disk: name, ok: r.ok, size: r.size, prefixBytes: msg.prefixBytes, ms: Math.round(performance.now() - t0), deferred: r.deferred }, 'trivial check')
    this.settings.observer?.checked(this.vmName, name, 'trivial', r.ok)
    this.send({ kind: MessageKind.TrivialResult, disk: msg.disk, ok: r.ok, size: r.size, digest: r.digest })
  }

  private async onCertify(msg: CertifyMessage): Promise<void> {
    const name = this.disk(msg.disk).name
    const m = this.mirror
    const t0 = performance.now()
    const r =
      m instanceof CephVmMirror
        ? await m.verify(name, { ...msg, kind: 'certify' }, this.abortCtl.signal)
        : await verifyDisk(m, name, { ...msg, kind: 'certify' }, { trivialMaxBytes: this.settings.trivialMaxBytes, signal: this.abortCtl.signal })
    this.log.info({ disk: name, ok: r.ok, bytes: r.bytes, algorithm: msg.algorithm, readMs: Math.round(performance.now() - t0) }, 'certify')
    this.settings.observer?.checked(this.vmName, name, 'certify', r.ok)
    this.send({ kind: MessageKind.CertifyResult, disk: msg.disk, ok: r.ok, algorithm: msg.algorithm, digest: r.digest, bytes: r.bytes })
  }

  /** SPEC §5.6: read back the listed blocks of the mirror and compare (a mismatch marks the disk diverged). */
  private async onBlockCheck(msg: BlockCheckMessage): Promise<void> {
    const name = this.disk(msg.disk).name
    const m = this.mirror
    const req = { ...msg, algorithm: (this.negotiated as Negotiated).digest }
    if (m instanceof CephVmMirror) {
      const r = await m.checkBlocks(name, req, this.abortCtl.signal)
      this.log.info({ disk: name, ok: r.ok, blocks: msg.blocks.length / 8, mismatched: r.mismatched.length / 8, bytes: r.bytes }, 'block check')
      this.send({ kind: MessageKind.BlockCheckResult, disk: msg.disk, ok: r.ok, mismatched: r.mismatched })
      return
    }
    // a clean verdict is written after the answer, once no further BlockCheck is queued (a slice sent in parts: one
    // write for all of them); a mismatch is written before its answer (checkBlocks)
    const r = await checkBlocks(m, name, req, { signal: this.abortCtl.signal, defer: true, windows: this.checkWindows })
    this.send({ kind: MessageKind.BlockCheckResult, disk: msg.disk, ok: r.ok, mismatched: r.mismatched })
    const t0 = performance.now()
    const queued = this.inbox.peekKind() === MessageKind.BlockCheck
    if (!queued) await m.saveUnsaved()
    const recordMs = Math.round(r.recordMs + performance.now() - t0)
    this.log.info(
      { disk: name, ok: r.ok, blocks: msg.blocks.length / 8, mismatched: r.mismatched.length / 8, bytes: r.bytes, holeBytes: r.holeBytes, readMs: Math.round(r.readMs), recordMs, deferred: queued },
      'block check',
    )
  }

  /** Send a typed Error, close with its code, release everything. */
  private async abortWith(error: unknown): Promise<void> {
    if (this.dead) return
    this.dead = true
    this.inbox.clear()
    // a store that cannot be read (or holds a link or FIFO) is an I/O failure for the agent
    const local = errorCode(error)
    // (a peerMessage kept: it says what the agent may hear of a text that names the DR site beyond the store)
    const peerMessage = (error as { peerMessage?: unknown }).peerMessage
    const err = local === 'E_STATE' || local === 'E_STORE_FILE' ? new ReceiverError('E_IO', (error as Error).message, typeof peerMessage === 'string' ? { peerMessage } : undefined) : error
    const msg = toErrorMessage(err)
    if (msg.code === 'E_INTERNAL') this.log.error({ err: error }, 'session aborted')
    // timeouts are logged by the refusal log (rate-limited: a flood of silent sessions must not flood the log)
    else if (msg.code === 'E_TIMEOUT') this.log.debug({ code: msg.code, why: msg.message }, 'session aborted')
    else this.log.warn({ code: msg.code, why: msg.message }, 'session aborted')
    if (this.vmName !== '') this.settings.observer?.sessionFailed?.(this.vmName, this.cycle, msg.code, msg.message)
    try {
      await this.pipeline.discard()
      // an I/O failure during an apply: put the mirror back at its committed
      // point before the agent hears of the failure
      // (not on Ceph for a full pool: the committed snapshot is intact whatever the head holds, a rollback would
      // write into the full pool, and the cycle resumes from its extent log once there is room; docs/CEPH.md)
      const keep = msg.code === 'E_NO_SPACE' && this.vm instanceof CephVmMirror
      if ((msg.code === 'E_IO' || msg.code === 'E_NO_SPACE') && !keep && this.vm !== undefined && this.vm.state.inflight !== null) {
        for (const d of this.disks.values()) await d.apply.close().catch(() => {})
        try {
          await this.vm.rollback()
        } catch (e) {
          // refused before it wrote anything (its journal refused or unusable, rollback.ts): the mirror is as the failed
          // apply left it, the cycle still in flight, and the refusal's text says what to do
          if (rollbackWroteNothing(e))
            this.log.warn(
              { code: errorCode(e), why: (e as Error).message, cycle: this.vm.state.inflight?.cycle },
              'rollback after the failed apply refused, nothing written: the cycle stays in flight',
            )
          else this.log.error({ err: e, code: errorCode(e) }, 'rollback after I/O failure failed: mirror needs recovery')
        }
      }
      // SPEC §7: the agent hears the text without the store's folder; the log above keeps the full path
      this.sendError(peerErrorMessage(err, this.settings.ceph === undefined ? this.settings.storeDir : undefined))
      this.ws.close(ProtocolErrorCodes[msg.code as ProtocolErrorCode].closeCode, msg.code)
    } catch (e) {
      this.log.error({ err: e }, 'error while aborting a session')
      this.ws.terminate()
    }
    this.stop()
  }

  /** Stop processing (socket closed, shutdown). Resources are released once the current step ends. */
  stop(): void {
    this.dead = true
    this.deadlines.stop()
    this.inbox.clear()
    this.abortCtl.abort()
    this.inbox.interrupt()
    if (!this.running) void this.cleanup()
  }

  /** Graceful shutdown: finish the current step, tell the agent, close 1001. */
  shutdown(): void {
    if (this.dead) return
    try {
      this.sendError({ kind: MessageKind.Error, code: 'E_SHUTDOWN', message: 'receiver shutting down', fatal: true })
      this.ws.close(1001, 'E_SHUTDOWN')
    } catch {
      this.ws.terminate()
    }
    this.stop()
  }

  private cleaned = false
  private async cleanup(): Promise<void> {
    if (this.cleaned) return
    this.cleaned = true
    await this.pipeline.discard()
    // nothing of this session's is written any more: what it still holds of the pools is forgotten, never lent again
    this.frames.release()
    this.payloads.release()
    this.log.debug({ frames: this.frames.counts, payloads: this.payloads.counts }, 'session buffers')
    for (const d of this.disks.values()) await d.apply.close().catch(() => {})
    for (const m of this.maps.values()) await m.close()
    // clean block-check verdicts not written yet (the session ended with BlockChecks queued): a late proof, not an error
    if (this.vm instanceof VmMirror && this.vm.hasUnsaved) {
      await this.vm.saveUnsaved().catch((err: unknown) => {
        this.log.warn({ vm: this.vmName, err: { message: (err as Error).message } }, 'block check verdicts not recorded (the mirror is unchanged; its next check records them)')
      })
    }
    // before the lock is released: the next session of the VM reports its own cycle only after it holds the lock
    if (this.vmName !== '') this.settings.observer?.sessionEnded?.(this.vmName)
    this.vm?.release()
    this.resolveDone()
  }
}

/** A folder store's group-commit counts (fdatasyncs run, batches an earlier one covered) and old zeros journaled by length, for the 'disk sealed' log. */
function folderApplyStats(a: object): { syncs?: number; coveredBatches?: number; journalZeroBytes?: number } {
  const g = a as { syncs?: unknown; coveredBatches?: unknown; journalZeroBytes?: unknown }
  return {
    ...(typeof g.syncs === 'number' && typeof g.coveredBatches === 'number' ? { syncs: g.syncs, coveredBatches: g.coveredBatches } : {}),
    ...(typeof g.journalZeroBytes === 'number' ? { journalZeroBytes: g.journalZeroBytes } : {}),
  }
}
