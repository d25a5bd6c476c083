import { randomBytes, timingSafeEqual } from 'node:crypto'
import { stat } from 'node:fs/promises'
import type { Logger } from 'pino'
import type { WebSocket } from 'ws'
import {
  MessageKind, ProtocolErrorCodes, createDigest, cycleIdentity, decodeMessage, toErrorMessage, decompress, encodeMessage, isDigestAlgorithm, negotiate, validateName,
  type ChainLayer, type CompatRecord, type ProtocolErrorCode, type LocalCapabilities, type Message, type Negotiated, type SourceIdentity,
  type CertifyMessage, type CommitMessage, type DiskEndMessage, type DiskOpenMessage, type ExtentMessage, type HelloMessage,
  type RollbackMessage, type TrivialCheckMessage, type VmOpenMessage,
} from '@grainline/protocol'
import { ReceiverError, errorCode, ioError } from './errors.ts'
import { mayAccess, type TokenEntry } from './auth.ts'
import { checkDdb } from './mirror-descriptor.ts'
import { VmMirror, digestFile, type ApplyExtent, type DiskApply } from './mirror-store.ts'

/** Settings shared by all sessions of a receiver. */
export interface SessionSettings {
  readonly storeDir: string
  readonly software: string
  readonly local: LocalCapabilities
  readonly displaySuffix: string
  /** flush a batch (journal, write, fsync, ack) at this many payload bytes */
  readonly batchBytes: number
  /** when the inbox runs dry mid-batch, wait this long for more extents before flushing, ms */
  readonly batchIdleMs: number
  /** pause the socket when this many inbound bytes wait to be processed */
  readonly highWaterBytes: number
  /** how long a session waits for a VM lock held by another session, ms */
  readonly lockWaitMs: number
  /** largest prefix a trivial check may digest, bytes */
  readonly trivialMaxBytes: number
}

interface OpenDisk {
  readonly handle: number
  readonly name: string
  apply: DiskApply | undefined
}

const MAX_CAPACITY = 64 * 1024 ** 4 // 64 TiB, above VMDK's 62 TB cap

function fail (code: ConstructorParameters<typeof ReceiverError>[0], message: string): never {
  throw new ReceiverError(code, message)
}

function isUint (v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0
}

function checkUint (v: unknown, what: string): number {
  if (!isUint(v)) fail('E_SCHEMA', `${what} must be an unsigned integer`)
  return v
}

function isBytes (v: unknown): v is Uint8Array {
  return v instanceof Uint8Array
}

function checkSource (v: unknown): SourceIdentity {
  const s = v as { layers?: unknown, successor?: unknown } | null
  if (s === null || typeof s !== 'object' || !Array.isArray(s.layers) || typeof s.successor !== 'string' || s.layers.length > 256) {
    fail('E_SCHEMA', 'source must be {layers, successor}')
  }
  const layers: ChainLayer[] = s.layers.map((l: unknown) => {
    const o = l as Record<string, unknown> | null
    if (o === null || typeof o !== 'object' || typeof o['file'] !== 'string' || typeof o['cid'] !== 'string' || typeof o['parentCid'] !== 'string') {
      fail('E_SCHEMA', 'source layer must be {file, cid, parentCid}')
    }
    if (o['file'].length > 1024 || o['cid'].length > 64 || o['parentCid'].length > 64) fail('E_SCHEMA', 'source layer field too long')
    return { file: o['file'], cid: o['cid'], parentCid: o['parentCid'] }
  })
  if (s.successor.length > 1024) fail('E_SCHEMA', 'source successor too long')
  return { layers, successor: s.successor }
}

function sameBytes (a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b)
}

/** One agent connection: the protocol state machine of INTERNALS "A VM cycle on the wire". */
export class Session {
  readonly id: string
  private readonly ws: WebSocket
  private readonly token: TokenEntry
  private readonly settings: SessionSettings
  private readonly log: Logger
  private readonly inbox: Buffer[] = []
  private inboxBytes = 0
  private paused = false
  private running = false
  private dead = false
  private negotiated: Negotiated | undefined
  private vm: VmMirror | undefined
  private vmName = ''
  private cycle = 0
  private committed = false
  private readonly disks = new Map<number, OpenDisk>()
  private batch: ApplyExtent[] = []
  private batchDisk: OpenDisk | undefined
  private batchBytes = 0
  private readonly abortCtl = new AbortController()
  /** resolves when the session has released every resource */
  readonly done: Promise<void>
  private resolveDone!: () => void

  constructor (ws: WebSocket, token: TokenEntry, settings: SessionSettings, logger: Logger) {
    this.id = randomBytes(6).toString('hex')
    this.ws = ws
    this.token = token
    this.settings = settings
    this.log = logger.child({ session: this.id, peer: token.name })
    this.done = new Promise((resolve) => { this.resolveDone = resolve })
    ws.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => this.onMessage(data, isBinary))
    ws.on('close', (code: number) => {
      this.log.info({ code }, 'connection closed')
      this.stop()
    })
    ws.on('error', (err: Error) => {
      this.log.warn({ err: { message: err.message, code: (err as { code?: unknown }).code } }, 'socket error')
    })
    this.log.info({ protocol: ws.protocol }, 'connection opened')
  }

  private onMessage (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void {
    if (this.dead) return
    if (!isBinary) {
      void this.abortWith(new ReceiverError('E_MALFORMED', 'text frames are not part of the protocol'))
      return
    }
    const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data)
    this.inbox.push(buf)
    this.inboxBytes += buf.length
    if (!this.paused && this.inboxBytes > this.settings.highWaterBytes) {
      this.paused = true
      this.ws.pause()
    }
    if (this.wake !== undefined) this.wake()
    else if (!this.running) void this.run()
  }

  private send (msg: Message): void {
    if (this.ws.readyState === this.ws.OPEN) this.ws.send(encodeMessage(msg))
  }

  private async run (): Promise<void> {
    this.running = true
    try {
      while (!this.dead) {
        let frame = this.inbox.shift()
        if (frame === undefined && this.batch.length > 0 && this.batchBytes < this.batchTarget()) {
          // the inbox ran dry mid-batch: wait briefly for more so that one
          // fsync covers more bytes (the agent still has window left)
          await this.waitForFrame(this.settings.batchIdleMs)
          frame = this.inbox.shift()
        }
        if (frame === undefined) {
          await this.flush()
          await this.drainWrites()
          break
        }
        this.inboxBytes -= frame.length
        if (this.paused && this.inboxBytes <= this.settings.highWaterBytes / 2) {
          this.paused = false
          this.ws.resume()
        }
        const neg = this.negotiated
        const msg = decodeMessage(frame, neg === undefined
          ? { maxMessageBytes: this.settings.local.limits.maxMessageBytes, maxExtentBytes: this.settings.local.limits.maxExtentBytes }
          : { maxMessageBytes: neg.limits.maxMessageBytes, maxExtentBytes: neg.limits.maxExtentBytes, digest: neg.digest, compression: neg.compression })
        if (msg.kind === MessageKind.Extent) {
          // a batch holds one disk's extents
          if (this.batchDisk !== undefined && this.batchDisk.handle !== msg.disk) await this.flush()
          this.acceptExtent(msg)
          if (this.batchBytes >= this.batchTarget()) await this.flush()
        } else {
          await this.flush()
          await this.drainWrites()
          await this.handle(msg)
        }
      }
    } catch (err) {
      await this.abortWith(err)
    } finally {
      this.running = false
    }
    if (this.dead) await this.cleanup()
    else if (this.inbox.length > 0) void this.run()
  }

  /** bytes per durable batch: the setting, at most half the negotiated window */
  private batchTarget (): number {
    const w = this.negotiated?.limits.windowBytes ?? this.settings.batchBytes
    return Math.max(1, Math.min(this.settings.batchBytes, Math.floor(w / 2)))
  }

  private wake: (() => void) | undefined
  private waitForFrame (ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => { this.wake = undefined; resolve() }, ms)
      this.wake = () => { clearTimeout(timer); this.wake = undefined; resolve() }
    })
  }

  private async handle (msg: Message): Promise<void> {
    if (this.negotiated === undefined && msg.kind !== MessageKind.Hello) fail('E_UNEXPECTED', 'the first message must be Hello')
    switch (msg.kind) {
      case MessageKind.Hello: return this.onHello(msg)
      case MessageKind.VmOpen: return this.onVmOpen(msg)
      case MessageKind.Rollback: return this.onRollback(msg)
      case MessageKind.DiskOpen: return this.onDiskOpen(msg)
      case MessageKind.DiskEnd: return this.onDiskEnd(msg)
      case MessageKind.Commit: return this.onCommit(msg)
      case MessageKind.TrivialCheck: return this.onTrivial(msg)
      case MessageKind.Certify: return this.onCertify(msg)
      case MessageKind.Error:
        this.log.warn({ peerError: { code: String(msg.code).slice(0, 64), message: String(msg.message).slice(0, 512) } }, 'agent reported an error')
        if (msg.fatal === true) this.stop()
        return
      case MessageKind.Extent:
      case MessageKind.Welcome:
      case MessageKind.VmState:
      case MessageKind.DiskState:
      case MessageKind.ExtentAck:
      case MessageKind.DiskEnded:
      case MessageKind.Committed:
      case MessageKind.TrivialResult:
      case MessageKind.CertifyResult:
      case MessageKind.RolledBack:
        fail('E_UNEXPECTED', `message kind 0x${(msg.kind as number).toString(16)} is not sent by an agent`)
        break
      default:
        fail('E_UNKNOWN_KIND', 'unknown message kind')
    }
  }

  private onHello (msg: HelloMessage): void {
    if (this.negotiated !== undefined) fail('E_UNEXPECTED', 'Hello sent twice')
    if (!Array.isArray(msg.versions) || !Array.isArray(msg.digests) || !Array.isArray(msg.compressions) || typeof msg.limits !== 'object' || msg.limits === null) {
      fail('E_SCHEMA', 'Hello needs versions, digests, compressions and limits')
    }
    for (const k of ['maxMessageBytes', 'maxExtentBytes', 'windowBytes'] as const) checkUint(msg.limits[k], `limits.${k}`)
    this.negotiated = negotiate(msg, this.settings.local)
    this.log.info({ negotiated: this.negotiated, peerSoftware: String(msg.software).slice(0, 128) }, 'negotiated')
    this.send({ kind: MessageKind.Welcome, ...this.negotiated, software: this.settings.software, session: this.id })
  }

  private async onVmOpen (msg: VmOpenMessage): Promise<void> {
    if (this.vm !== undefined) fail('E_UNEXPECTED', 'one VmOpen per connection')
    validateName(msg.vm, 'vm')
    if (msg.vm.startsWith('.')) fail('E_BAD_NAME', 'a VM name may not start with "."')
    // SPEC: an agent may not learn of mirrors its token does not cover — same answer whether or not it exists
    if (!mayAccess(this.token, msg.vm)) fail('E_FORBIDDEN', 'this token may not replicate that VM')
    const cycle = checkUint(msg.cycle, 'cycle')
    if (cycle < 1) fail('E_SCHEMA', 'cycle must be ≥ 1')
    const c = msg.compat as CompatRecord | null
    if (c === null || typeof c !== 'object' || !isUint(c.hwVersion) || typeof c.datastoreType !== 'string' || typeof c.guestOS !== 'string') {
      fail('E_SCHEMA', 'compat must be {hwVersion, datastoreType, guestOS}')
    }
    if (!Array.isArray(msg.files) || msg.files.length > 64) fail('E_SCHEMA', 'files must be a list of at most 64 entries')
    const seen = new Set<string>()
    for (const f of msg.files) {
      if (f === null || typeof f !== 'object' || !isBytes(f.data)) fail('E_SCHEMA', 'file must be {name, data}')
      validateName(f.name, 'file name')
      if (f.name.startsWith('.') || /\.vmdk$/i.test(f.name)) fail('E_BAD_NAME', `file name ${JSON.stringify(f.name)} is not allowed`)
      if (seen.has(f.name)) fail('E_SCHEMA', `file ${f.name} sent twice`)
      seen.add(f.name)
    }
    if (!Array.isArray(msg.disks) || !msg.disks.every((d) => typeof d === 'string' && d.length <= 4096) || msg.disks.length > 256) fail('E_SCHEMA', 'disks must be a list of names')
    this.vm = await VmMirror.acquireWait(this.settings.storeDir, msg.vm, this.log.child({ vm: msg.vm }), this.settings.lockWaitMs, this.abortCtl.signal)
    this.vmName = msg.vm
    this.cycle = cycle
    const s = this.vm.state
    this.log.info({ vm: msg.vm, cycle, committedCycle: s.committedCycle, inflightCycle: s.inflight?.cycle ?? 0 }, 'vm opened')
    await this.vm.stageFiles(msg.files, { hwVersion: c.hwVersion, datastoreType: c.datastoreType, guestOS: c.guestOS })
    this.send({
      kind: MessageKind.VmState,
      vm: msg.vm,
      exists: s.committedCycle > 0,
      committedCycle: s.committedCycle,
      inflightCycle: s.inflight?.cycle ?? 0,
      compatible: this.vm.compatible(c),
      generation: s.committedCycle > 0 ? s.generation ?? '' : '',
    })
  }

  private requireVm (vm?: unknown): VmMirror {
    if (this.vm === undefined) fail('E_UNEXPECTED', 'VmOpen must come first')
    if (vm !== undefined && vm !== this.vmName) fail('E_UNEXPECTED', 'message names another VM than VmOpen')
    return this.vm
  }

  private async onRollback (msg: RollbackMessage): Promise<void> {
    const vm = this.requireVm(msg.vm)
    if (this.disks.size > 0) fail('E_UNEXPECTED', 'Rollback must come before any DiskOpen')
    const committedCycle = await vm.rollback()
    this.send({ kind: MessageKind.RolledBack, vm: this.vmName, committedCycle })
  }

  private async onDiskOpen (msg: DiskOpenMessage): Promise<void> {
    const vm = this.requireVm()
    if (this.committed) fail('E_UNEXPECTED', 'DiskOpen after Commit')
    const handle = checkUint(msg.disk, 'disk')
    if (handle > 255) fail('E_SCHEMA', 'disk handle must be 0…255')
    if (this.disks.has(handle)) fail('E_UNEXPECTED', `disk handle ${handle} already used`)
    validateName(msg.name, 'disk name')
    if (msg.name.startsWith('.') || /-flat\.vmdk$/i.test(msg.name) || /\.(vmx|nvram|vmsd|vmxf|journal|seed)$/i.test(msg.name)) {
      fail('E_BAD_NAME', `disk name ${JSON.stringify(msg.name)} is not allowed`)
    }
    for (const d of this.disks.values()) if (d.name === msg.name) fail('E_UNEXPECTED', `disk ${msg.name} opened twice`)
    const capacity = checkUint(msg.capacity, 'capacity')
    if (capacity === 0 || capacity % 512 !== 0 || capacity > MAX_CAPACITY) fail('E_RANGE', 'capacity must be a positive multiple of 512 up to 64 TiB')
    if (checkUint(msg.cycle, 'cycle') !== this.cycle) fail('E_UNEXPECTED', `DiskOpen for cycle ${msg.cycle} in a session for cycle ${this.cycle}`)
    if (msg.mode !== 'seed' && msg.mode !== 'incremental') fail('E_SCHEMA', 'mode must be seed or incremental')
    const baseCycle = checkUint(msg.baseCycle, 'baseCycle')
    const source = checkSource(msg.source)
    if (typeof msg.cycleId !== 'string' || !/^[0-9a-f]{8,128}$/.test(msg.cycleId)) fail('E_SCHEMA', 'cycleId must be lowercase hex')
    // recomputed, not trusted: a resume must never mix two frozen sources (SPEC §5.2)
    if (msg.cycleId !== cycleIdentity({ vm: this.vmName, name: msg.name, cycle: this.cycle, mode: msg.mode, baseCycle, baseGeneration: msg.baseGeneration, source })) {
      fail('E_SCHEMA', 'cycleId is not the cycle identity of the DiskOpen fields (SPEC §5.2)')
    }
    const ddb = checkDdb(msg.ddb)
    checkUint(msg.totalBytes, 'totalBytes')
    checkUint(msg.totalExtents, 'totalExtents')
    const neg = this.negotiated as Negotiated
    const r = await vm.openDisk({ name: msg.name, capacity, cycle: this.cycle, mode: msg.mode, baseCycle, baseGeneration: msg.baseGeneration, source, cycleId: msg.cycleId, ddb, algorithm: neg.digest }, [...this.disks.values()].map((d) => d.name))
    // a refused open leaves handle and name free: the agent may open the disk again (e.g. as a seed)
    if (r.apply !== undefined) this.disks.set(handle, { handle, name: msg.name, apply: r.apply })
    if (r.apply === undefined) this.log.info({ disk: msg.name, reason: r.reason, why: r.message }, 'disk open refused')
    else this.log.info({ disk: msg.name, mode: msg.mode, cycle: this.cycle, resumeSeq: r.apply.nextSeq }, 'disk opened')
    this.send({
      kind: MessageKind.DiskState,
      disk: handle,
      accepted: r.accepted,
      reason: r.reason,
      committedCycle: r.committedCycle,
      committedSource: r.committedSource,
      mirrorCid: r.mirrorCid,
      modified: r.modified,
      resumeSeq: r.apply?.nextSeq ?? 0,
      resumeBytes: r.apply === undefined ? 0 : r.apply.dataBytes + r.apply.zeroBytes,
    })
  }

  private acceptExtent (msg: ExtentMessage): void {
    const handle = msg.disk
    const d = isUint(handle) ? this.disks.get(handle) : undefined
    const a = d?.apply
    if (d === undefined || a === undefined) fail('E_UNEXPECTED', 'Extent for a disk that is not open')
    if (a.sealed) fail('E_UNEXPECTED', 'Extent after DiskEnd')
    const seq = checkUint(msg.seq, 'seq')
    if (seq !== a.nextSeq) fail('E_SEQUENCE', `expected seq ${a.nextSeq}, got ${seq}`)
    const offset = checkUint(msg.offset, 'offset')
    const length = checkUint(msg.length, 'length')
    if (length === 0 || offset % 512 !== 0 || length % 512 !== 0) fail('E_RANGE', 'offset and length must be multiples of 512, length > 0')
    if (offset + length > a.info.capacity) fail('E_RANGE', `extent ${offset}+${length} beyond capacity ${a.info.capacity}`)
    if (typeof msg.zero !== 'boolean' || !isBytes(msg.data) || !isBytes(msg.digest)) fail('E_SCHEMA', 'Extent needs zero, data and digest')
    const neg = this.negotiated as Negotiated
    let data: Uint8Array | undefined
    if (msg.zero) {
      if (msg.data.length !== 0 || msg.digest.length !== 0) fail('E_SCHEMA', 'a zero extent carries no data and no digest')
    } else {
      if (length > neg.limits.maxExtentBytes) fail('E_RANGE', `extent of ${length} bytes exceeds maxExtentBytes ${neg.limits.maxExtentBytes}`)
      if (msg.compression !== 'none' && msg.compression !== neg.compression) fail('E_SCHEMA', `compression ${String(msg.compression)} was not negotiated`)
      data = decompress(msg.compression, msg.data, length)
      const got = createDigest(neg.digest).update(data).digest()
      if (!sameBytes(got, msg.digest)) fail('E_BAD_DIGEST', `digest mismatch on extent seq ${seq}`)
    }
    if (this.batchDisk !== undefined && this.batchDisk !== d) fail('E_INTERNAL', 'batch spans disks')
    a.nextSeq++
    a.extents++
    if (msg.zero) a.zeroBytes += length
    else a.dataBytes += length
    a.cycleDigest.add({ offset, length, zero: msg.zero, digest: msg.digest })
    this.batch.push({ seq, offset, length, zero: msg.zero, data, digest: msg.digest })
    this.batchDisk = d
    // an in-place zero extent costs its full length (journaled old contents
    // and zeros written); a seed's zero extent writes nothing
    this.batchBytes += msg.zero && a.info.target !== 'flat' ? 512 : length
  }

  /** stage 2 (write + fsync + ack) of the previous batch, still running */
  private writing: Promise<void> | undefined

  /**
   * Journal the pending batch (stage 1), then start writing it (stage 2)
   * once the previous batch's write is done; the ack is sent when it is
   * durable. Stage 2 overlaps with receiving and journaling the next batch.
   */
  private async flush (): Promise<void> {
    const d = this.batchDisk
    const batch = this.batch
    if (d === undefined || batch.length === 0) return
    this.batch = []
    this.batchDisk = undefined
    this.batchBytes = 0
    const a = d.apply as DiskApply
    await a.prepareBatch(batch).catch((err: unknown) => { throw ioError(err, `journaling extents of ${d.name}`) })
    await this.drainWrites()
    const p = a.writeBatch(batch).then(
      () => { this.send({ kind: MessageKind.ExtentAck, disk: d.handle, seq: a.appliedSeq }) },
      (err: unknown) => { throw ioError(err, `writing extents of ${d.name}`) })
    p.catch(() => {}) // surfaced by drainWrites
    this.writing = p
  }

  /** Wait for the running stage 2, rethrowing its error. */
  private async drainWrites (): Promise<void> {
    const p = this.writing
    this.writing = undefined
    if (p !== undefined) await p
  }

  private async onDiskEnd (msg: DiskEndMessage): Promise<void> {
    const d = isUint(msg.disk) ? this.disks.get(msg.disk) : undefined
    const a = d?.apply
    if (d === undefined || a === undefined) fail('E_UNEXPECTED', 'DiskEnd for a disk that is not open')
    if (a.sealed) fail('E_UNEXPECTED', 'DiskEnd sent twice')
    if (!isBytes(msg.digest)) fail('E_SCHEMA', 'DiskEnd needs a digest')
    const want = { extents: checkUint(msg.extents, 'extents'), dataBytes: checkUint(msg.dataBytes, 'dataBytes'), zeroBytes: checkUint(msg.zeroBytes, 'zeroBytes') }
    if (want.extents !== a.extents || want.dataBytes !== a.dataBytes || want.zeroBytes !== a.zeroBytes) {
      fail('E_END_MISMATCH', `DiskEnd counts ${JSON.stringify(want)} differ from received ${JSON.stringify({ extents: a.extents, dataBytes: a.dataBytes, zeroBytes: a.zeroBytes })}`)
    }
    const digest = a.cycleDigest.digest()
    if (!sameBytes(digest, msg.digest)) fail('E_END_MISMATCH', 'cycle digest differs')
    await a.seal(digest).catch((err: unknown) => { throw ioError(err, `sealing ${d.name}`) })
    this.log.info({ disk: d.name, extents: a.extents, dataBytes: a.dataBytes, zeroBytes: a.zeroBytes, batches: a.batches, journalMs: Math.round(a.journalMs), writeMs: Math.round(a.writeMs) }, 'disk sealed')
    this.send({ kind: MessageKind.DiskEnded, disk: d.handle })
  }

  private async onCommit (msg: CommitMessage): Promise<void> {
    const vm = this.requireVm(msg.vm)
    if (msg.cycle !== this.cycle) fail('E_UNEXPECTED', `Commit of cycle ${String(msg.cycle)} in a session for cycle ${this.cycle}`)
    if (this.committed) fail('E_UNEXPECTED', 'Commit sent twice')
    const applies: DiskApply[] = []
    const handles: number[] = []
    for (const d of this.disks.values()) {
      if (d.apply === undefined) continue
      if (!d.apply.sealed) fail('E_UNEXPECTED', `disk ${d.name} has no DiskEnd`)
      applies.push(d.apply)
      handles.push(d.handle)
    }
    if (applies.length === 0) fail('E_UNEXPECTED', 'nothing to commit')
    const recs = await vm.commit(this.cycle, applies, this.settings.displaySuffix)
    for (const d of this.disks.values()) d.apply = undefined
    this.committed = true
    this.log.info({ vm: this.vmName, cycle: this.cycle, disks: recs.map((r) => ({ name: r.name, cid: r.mirrorCid, size: r.size })) }, 'cycle committed')
    this.send({
      kind: MessageKind.Committed,
      vm: this.vmName,
      cycle: this.cycle,
      generation: vm.state.generation as string,
      disks: recs.map((r, i) => ({ disk: handles[i] as number, mirrorCid: r.mirrorCid, size: r.size })),
    })
  }

  private committedDisk (handle: unknown): { name: string, path: string, handle: number } {
    const vm = this.requireVm()
    const d = isUint(handle) ? this.disks.get(handle) : undefined
    if (d === undefined) fail('E_UNEXPECTED', 'verification of a disk that was not opened')
    if (d.apply !== undefined) fail('E_UNEXPECTED', 'verification before the disk was committed')
    const rec = vm.state.disks[d.name]
    if (rec === undefined) fail('E_UNEXPECTED', 'verification of a disk that has no committed mirror')
    return { name: d.name, path: vm.paths.flat(rec.stem), handle: d.handle }
  }

  private async onTrivial (msg: TrivialCheckMessage): Promise<void> {
    const d = this.committedDisk(msg.disk)
    if (!isDigestAlgorithm(msg.algorithm)) fail('E_SCHEMA', 'unknown digest algorithm')
    const prefix = checkUint(msg.prefixBytes, 'prefixBytes')
    if (prefix > this.settings.trivialMaxBytes) fail('E_RANGE', `trivial check prefix above ${this.settings.trivialMaxBytes} bytes`)
    checkUint(msg.size, 'size')
    if (!isBytes(msg.digest)) fail('E_SCHEMA', 'TrivialCheck needs a digest')
    const size = (await stat(d.path).catch((err: unknown) => { throw new ReceiverError('E_IO', `cannot stat the mirror: ${(err as Error).message}`) })).size
    const h = createDigest(msg.algorithm)
    await digestFile(d.path, Math.min(prefix, size), (b) => h.update(b), { signal: this.abortCtl.signal })
    const digest = h.digest()
    const ok = size === msg.size && prefix <= size && sameBytes(digest, msg.digest)
    await (this.vm as VmMirror).recordVerify(d.name, 'trivial', { ok, at: new Date().toISOString(), algorithm: msg.algorithm, digest: Buffer.from(digest).toString('hex'), bytes: Math.min(prefix, size) })
    this.log.info({ disk: d.name, ok, size, prefixBytes: prefix }, 'trivial check')
    this.send({ kind: MessageKind.TrivialResult, disk: d.handle, ok, size, digest })
  }

  private async onCertify (msg: CertifyMessage): Promise<void> {
    const d = this.committedDisk(msg.disk)
    if (!isDigestAlgorithm(msg.algorithm)) fail('E_SCHEMA', 'unknown digest algorithm')
    if (!isBytes(msg.digest)) fail('E_SCHEMA', 'Certify needs a digest')
    const size = (await stat(d.path).catch((err: unknown) => { throw new ReceiverError('E_IO', `cannot stat the mirror: ${(err as Error).message}`) })).size
    const h = createDigest(msg.algorithm)
    const bytes = await digestFile(d.path, size, (b) => h.update(b), { signal: this.abortCtl.signal })
    const digest = h.digest()
    const ok = sameBytes(digest, msg.digest)
    await (this.vm as VmMirror).recordVerify(d.name, 'certify', { ok, at: new Date().toISOString(), algorithm: msg.algorithm, digest: Buffer.from(digest).toString('hex'), bytes })
    this.log.info({ disk: d.name, ok, bytes, algorithm: msg.algorithm }, 'certify')
    this.send({ kind: MessageKind.CertifyResult, disk: d.handle, ok, algorithm: msg.algorithm, digest, bytes })
  }

  /** Send a typed Error, close with its code, release everything. */
  private async abortWith (error: unknown): Promise<void> {
    if (this.dead) return
    this.dead = true
    this.inbox.length = 0
    this.inboxBytes = 0
    if (this.paused) {
      this.paused = false
      this.ws.resume()
    }
    // a store that cannot be read is an I/O failure for the agent
    const err = errorCode(error) === 'E_STATE' ? new ReceiverError('E_IO', (error as Error).message) : error
    const msg = toErrorMessage(err)
    if (msg.code === 'E_INTERNAL') this.log.error({ err: error }, 'session aborted')
    else this.log.warn({ code: msg.code, why: msg.message }, 'session aborted')
    try {
      await this.writing?.catch(() => {})
      this.writing = undefined
      // an I/O failure during an apply: put the mirror back at its committed
      // point before the agent hears of the failure
      if ((msg.code === 'E_IO' || msg.code === 'E_NO_SPACE') && this.vm !== undefined && this.vm.state.inflight !== null) {
        this.batch = []
        for (const d of this.disks.values()) await d.apply?.close().catch(() => {})
        try {
          await this.vm.rollback()
        } catch (e) {
          this.log.error({ err: e, code: errorCode(e) }, 'rollback after I/O failure failed: mirror needs recovery')
        }
      }
      this.send(msg)
      this.ws.close(ProtocolErrorCodes[msg.code as ProtocolErrorCode].closeCode, msg.code)
    } catch (e) {
      this.log.error({ err: e }, 'error while aborting a session')
      this.ws.terminate()
    }
    this.stop()
  }

  /** Stop processing (socket closed, shutdown). Resources are released once the current step ends. */
  stop (): void {
    this.dead = true
    this.inbox.length = 0
    this.inboxBytes = 0
    // a paused socket could not read the peer's close frame
    if (this.paused) {
      this.paused = false
      this.ws.resume()
    }
    this.abortCtl.abort()
    this.wake?.()
    if (!this.running) void this.cleanup()
  }

  /** Graceful shutdown: finish the current step, tell the agent, close 1001. */
  shutdown (): void {
    if (this.dead) return
    try {
      this.send({ kind: MessageKind.Error, code: 'E_SHUTDOWN', message: 'receiver shutting down', fatal: true })
      this.ws.close(1001, 'E_SHUTDOWN')
    } catch {
      this.ws.terminate()
    }
    this.stop()
  }

  private cleaned = false
  private async cleanup (): Promise<void> {
    if (this.cleaned) return
    this.cleaned = true
    this.batch = []
    await this.writing?.catch(() => {})
    this.writing = undefined
    for (const d of this.disks.values()) await d.apply?.close().catch(() => {})
    this.vm?.release()
    this.resolveDone()
  }
}

