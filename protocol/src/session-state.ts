/**
 * The conversation state machine of SPEC §8, shared by both roles. Feed it
 * every message a side sends and receives, in order; it throws
 * `ProtocolError('E_UNEXPECTED')` (or `E_SEQUENCE` for an out-of-order
 * Extent) for a message that is not legal at that point.
 */
import { ProtocolError } from './errors.ts'
import {
  COMMIT_PROGRESS_VERSION,
  COMMITTED_CYCLE_ID_VERSION,
  DISK_PROGRESS_VERSION,
  MessageKind,
  POINTS_DROPPED_AT_OPEN_VERSION,
  POINTS_DROPPED_VERSION,
  REFUSAL_DETAIL_VERSION,
  VM_PROGRESS_VERSION,
  type Message,
} from './messages.ts'
import { MAX_MAP_REQUESTS, blockCount } from './block-map.ts'
import { DigestLengths } from './digest.ts'

const KNOWN_DIGEST_LENGTHS = new Set(Object.values(DigestLengths))

/** Who sent a message. */
export type Sender = 'agent' | 'receiver'

/** Connection phase (SPEC §8.1). */
export type Phase = 'start' | 'hello' | 'ready' | 'vm-opening' | 'vm-open' | 'rolling-back' | 'committing' | 'committed' | 'closed'

/** Per-disk state (SPEC §8.2). */
export type DiskPhase = 'opening' | 'accepted' | 'refused' | 'ending' | 'sealed' | 'committed'

interface DiskTrack {
  /** the disk name of the DiskOpen */
  readonly name: string
  phase: DiskPhase
  /** next Extent seq the agent may send */
  nextSeq: number
  /** highest acknowledged seq, -1 if none */
  acked: number
  /** outstanding TrivialCheck / Certify / BlockCheck requests */
  trivial: number
  certify: number
  blockChecks: number
  /** resync (SPEC §5.9): block size, 0 for other modes */
  readonly blockSize: number
  readonly capacity: number
  /** resync: blocks of the disk */
  readonly blocks: number
  /** resync: the `first` the next BlockMapRequest must carry */
  mapNext: number
  /** resync: the unanswered BlockMapRequests, oldest first */
  readonly mapPending: Array<{ readonly first: number; readonly count: number }>
  /** resync: blocks whose digests the receiver has sent (extents may not go beyond them) */
  mapAnswered: number
}

/** Which side sends each kind (SPEC §6). Error is sent by both. */
export const SENDER: Readonly<Record<number, Sender | 'both'>> = {
  [MessageKind.Hello]: 'agent',
  [MessageKind.Welcome]: 'receiver',
  [MessageKind.VmOpen]: 'agent',
  [MessageKind.VmState]: 'receiver',
  [MessageKind.DiskOpen]: 'agent',
  [MessageKind.DiskState]: 'receiver',
  [MessageKind.VmProgress]: 'receiver',
  [MessageKind.DiskProgress]: 'receiver',
  [MessageKind.Extent]: 'agent',
  [MessageKind.ExtentAck]: 'receiver',
  [MessageKind.DiskEnd]: 'agent',
  [MessageKind.DiskEnded]: 'receiver',
  [MessageKind.BlockMapRequest]: 'agent',
  [MessageKind.BlockMap]: 'receiver',
  [MessageKind.Commit]: 'agent',
  [MessageKind.Committed]: 'receiver',
  [MessageKind.CommitProgress]: 'receiver',
  [MessageKind.PointsDropped]: 'receiver',
  [MessageKind.TrivialCheck]: 'agent',
  [MessageKind.TrivialResult]: 'receiver',
  [MessageKind.Certify]: 'agent',
  [MessageKind.CertifyResult]: 'receiver',
  [MessageKind.BlockCheck]: 'agent',
  [MessageKind.BlockCheckResult]: 'receiver',
  [MessageKind.Rollback]: 'agent',
  [MessageKind.RolledBack]: 'receiver',
  [MessageKind.Error]: 'both',
}

function unexpected(msg: string): ProtocolError {
  return new ProtocolError('E_UNEXPECTED', msg)
}

/**
 * Legality tracker for one connection (one VM cycle). Pure bookkeeping: no
 * I/O, no timers. Typical use on the receiver: `state.observe(msg, 'agent')`
 * right after `decodeMessage`, and `state.observe(reply, 'receiver')` before
 * sending a reply.
 */
export class ConversationState {
  #phase: Phase = 'start'
  #vm = ''
  #cycle = 0
  /** the version Welcome chose (0 before it) */
  #version = 0
  /** a PointsDropped was sent for the Commit in flight, or (version 7) for the VmOpen in flight: at most one each */
  #pointsDropped = false
  readonly #disks = new Map<number, DiskTrack>()

  get phase(): Phase {
    return this.#phase
  }

  /** The version Welcome chose, 0 before Welcome. */
  get version(): number {
    return this.#version
  }

  /** The phase of disk `handle`, or undefined if it was never opened. */
  diskPhase(handle: number): DiskPhase | undefined {
    return this.#disks.get(handle)?.phase
  }

  /** Check that `msg`, sent by `from`, is legal now, and advance. Throws ProtocolError; the state is unchanged on a throw. */
  observe(msg: Message, from: Sender): void {
    const sender = SENDER[msg.kind]
    if (sender === undefined) throw new ProtocolError('E_UNKNOWN_KIND', `unknown message kind ${String(msg.kind)}`)
    if (this.#phase === 'closed') throw unexpected('the conversation ended with a fatal Error')
    if (sender !== 'both' && sender !== from) throw unexpected(`kind 0x${msg.kind.toString(16)} is sent by the ${sender}, not the ${from}`)
    const p = this.#phase
    const need = (...ok: Phase[]): void => {
      if (!ok.includes(p)) throw unexpected(`kind 0x${msg.kind.toString(16)} is not legal in phase ${p}`)
    }
    const disk = (handle: number, ...ok: DiskPhase[]): DiskTrack => {
      const d = this.#disks.get(handle)
      if (d === undefined) throw unexpected(`disk ${handle} is not open`)
      if (!ok.includes(d.phase)) throw unexpected(`kind 0x${msg.kind.toString(16)} is not legal for disk ${handle} in state ${d.phase}`)
      return d
    }
    switch (msg.kind) {
      case MessageKind.Hello:
        need('start')
        this.#phase = 'hello'
        return
      case MessageKind.Welcome:
        need('hello')
        this.#version = msg.version
        this.#phase = 'ready'
        return
      case MessageKind.VmOpen:
        need('ready')
        this.#vm = msg.vm
        this.#cycle = msg.cycle
        this.#pointsDropped = false
        this.#phase = 'vm-opening'
        return
      case MessageKind.VmState:
        need('vm-opening')
        if (msg.vm !== this.#vm) throw unexpected('VmState names another VM')
        // SPEC §4.2 (v7): a PointsDropped before the VmState is the notice of the VmOpen's cycle, committed already
        if (this.#pointsDropped && msg.committedCycle !== this.#cycle) throw unexpected(`PointsDropped of cycle ${this.#cycle} before a VmState whose committed cycle is ${msg.committedCycle}`)
        // SPEC §4.2, §9 (v8): committedCycleId is part of the VmState of version 8 and later, and of no earlier one
        if (this.#version >= COMMITTED_CYCLE_ID_VERSION && msg.committedCycleId === undefined) throw unexpected(`a VmState of protocol version ${this.#version} needs committedCycleId`)
        if (this.#version < COMMITTED_CYCLE_ID_VERSION && msg.committedCycleId !== undefined) throw unexpected(`committedCycleId is not part of the VmState of protocol version ${this.#version}`)
        this.#phase = 'vm-open'
        return
      case MessageKind.VmProgress:
        // SPEC §4.2, §4.3: version 5 and later, between a VmOpen and its VmState or a Rollback and its RolledBack
        if (this.#version < VM_PROGRESS_VERSION) throw unexpected(`VmProgress is not part of protocol version ${this.#version}`)
        need('vm-opening', 'rolling-back')
        if (msg.vm !== this.#vm) throw unexpected('VmProgress names another VM')
        return
      case MessageKind.Rollback:
        need('vm-open')
        if (msg.vm !== this.#vm) throw unexpected('Rollback names another VM')
        if (this.#disks.size > 0) throw unexpected('Rollback must come before any DiskOpen')
        this.#phase = 'rolling-back'
        return
      case MessageKind.RolledBack:
        need('rolling-back')
        this.#phase = 'vm-open'
        return
      case MessageKind.DiskOpen:
        need('vm-open')
        // SPEC §8.2: a handle is used once; a disk name may be opened again with
        // a new handle only when every earlier handle of it was refused
        if (this.#disks.has(msg.disk)) throw unexpected(`disk handle ${msg.disk} already used`)
        if (msg.cycle !== this.#cycle) throw unexpected(`DiskOpen for cycle ${msg.cycle} after VmOpen of cycle ${this.#cycle}`)
        for (const [h, d] of this.#disks) {
          if (d.name === msg.name && d.phase !== 'refused') throw unexpected(`disk ${JSON.stringify(msg.name)} is already open with handle ${h}`)
        }
        this.#disks.set(msg.disk, {
          name: msg.name,
          phase: 'opening',
          nextSeq: 0,
          acked: -1,
          trivial: 0,
          certify: 0,
          blockChecks: 0,
          blockSize: msg.mode === 'resync' ? msg.blockSize : 0,
          capacity: msg.capacity,
          blocks: msg.mode === 'resync' && msg.blockSize > 0 ? blockCount(msg.capacity, msg.blockSize) : 0,
          mapNext: 0,
          mapPending: [],
          mapAnswered: 0,
        })
        return
      case MessageKind.DiskState: {
        const d = disk(msg.disk, 'opening')
        // SPEC §5.1, §9 (v9): detail is part of a refused DiskState of version 9 and later (optional there), of no earlier one
        if (this.#version < REFUSAL_DETAIL_VERSION && msg.detail !== undefined) throw unexpected(`detail is not part of the DiskState of protocol version ${this.#version}`)
        d.phase = msg.accepted ? 'accepted' : 'refused'
        d.nextSeq = msg.resumeSeq
        d.acked = msg.resumeSeq - 1
        return
      }
      case MessageKind.DiskProgress: {
        // SPEC §5.1: version 3 only, between a DiskOpen and its DiskState
        if (this.#version < DISK_PROGRESS_VERSION) throw unexpected(`DiskProgress is not part of protocol version ${this.#version}`)
        disk(msg.disk, 'opening')
        return
      }
      case MessageKind.Extent: {
        need('vm-open')
        const d = disk(msg.disk, 'accepted')
        if (msg.seq !== d.nextSeq) throw new ProtocolError('E_SEQUENCE', `disk ${msg.disk}: expected seq ${d.nextSeq}, got ${msg.seq}`)
        // SPEC §5.9: a resync writes no block whose mirror digest has not been sent
        if (d.blockSize > 0 && msg.offset + msg.length > Math.min(d.capacity, d.mapAnswered * d.blockSize)) {
          throw new ProtocolError('E_RANGE', `disk ${msg.disk}: extent ending at ${msg.offset + msg.length} runs ahead of the block map sent (${d.mapAnswered} blocks)`)
        }
        d.nextSeq++
        return
      }
      case MessageKind.BlockMapRequest: {
        need('vm-open')
        const d = disk(msg.disk, 'accepted')
        if (d.blockSize === 0) throw unexpected(`disk ${msg.disk} is not a resync: no block map`)
        if (msg.first !== d.mapNext) throw new ProtocolError('E_SEQUENCE', `disk ${msg.disk}: block map requests are contiguous: expected first ${d.mapNext}, got ${msg.first}`)
        if (msg.first + msg.count > d.blocks) throw new ProtocolError('E_RANGE', `disk ${msg.disk}: blocks ${msg.first} … ${msg.first + msg.count - 1} beyond the ${d.blocks} blocks of the disk`)
        if (d.mapPending.length >= MAX_MAP_REQUESTS) throw unexpected(`disk ${msg.disk}: more than ${MAX_MAP_REQUESTS} block map requests unanswered`)
        d.mapPending.push({ first: msg.first, count: msg.count })
        d.mapNext = msg.first + msg.count
        return
      }
      case MessageKind.BlockMap: {
        const d = disk(msg.disk, 'accepted')
        const req = d.mapPending[0]
        if (req === undefined) throw unexpected(`disk ${msg.disk}: BlockMap without a request`)
        if (msg.first !== req.first) throw new ProtocolError('E_SEQUENCE', `disk ${msg.disk}: BlockMap for block ${msg.first}, the oldest request is for ${req.first}`)
        const len = msg.digests.length / req.count
        if (!Number.isInteger(len) || !KNOWN_DIGEST_LENGTHS.has(len)) {
          throw new ProtocolError('E_SCHEMA', `disk ${msg.disk}: ${msg.digests.length} digest bytes for ${req.count} blocks`, { field: 'digests' })
        }
        d.mapPending.shift()
        d.mapAnswered = req.first + req.count
        return
      }
      case MessageKind.ExtentAck: {
        const d = disk(msg.disk, 'accepted', 'ending', 'sealed')
        if (msg.seq >= d.nextSeq) throw unexpected(`disk ${msg.disk}: ack of seq ${msg.seq} that was not sent`)
        if (msg.seq < d.acked) throw unexpected(`disk ${msg.disk}: ack went back from ${d.acked} to ${msg.seq}`)
        d.acked = msg.seq
        return
      }
      case MessageKind.DiskEnd: {
        need('vm-open')
        const d = disk(msg.disk, 'accepted')
        if (msg.extents !== d.nextSeq) throw unexpected(`disk ${msg.disk}: DiskEnd counts ${msg.extents} extents, ${d.nextSeq} were sent`)
        if (d.blockSize > 0 && d.mapAnswered !== d.blocks) throw unexpected(`disk ${msg.disk}: a resync ends after the whole block map (${d.mapAnswered} of ${d.blocks} blocks)`)
        d.phase = 'ending'
        return
      }
      case MessageKind.DiskEnded:
        disk(msg.disk, 'ending').phase = 'sealed'
        return
      case MessageKind.Commit: {
        need('vm-open')
        if (msg.vm !== this.#vm || msg.cycle !== this.#cycle) throw unexpected('Commit names another VM or cycle than VmOpen')
        const all = [...this.#disks.values()]
        if (!all.some((d) => d.phase === 'sealed')) throw unexpected('Commit without a sealed disk')
        if (all.some((d) => d.phase !== 'sealed' && d.phase !== 'refused')) throw unexpected('Commit while a disk is still open')
        this.#phase = 'committing'
        this.#pointsDropped = false
        return
      }
      case MessageKind.Committed:
        need('committing')
        if (msg.vm !== this.#vm || msg.cycle !== this.#cycle) throw unexpected('Committed names another VM or cycle')
        for (const d of this.#disks.values()) if (d.phase === 'sealed') d.phase = 'committed'
        this.#phase = 'committed'
        return
      case MessageKind.CommitProgress:
        // SPEC §5.5: version 4 and later, between a Commit and its Committed
        if (this.#version < COMMIT_PROGRESS_VERSION) throw unexpected(`CommitProgress is not part of protocol version ${this.#version}`)
        need('committing')
        if (msg.vm !== this.#vm || msg.cycle !== this.#cycle) throw unexpected('CommitProgress names another VM or cycle')
        return
      case MessageKind.PointsDropped:
        // SPEC §5.5: version 6 and later, between a Commit and its Committed, at most once; version 7 and later also
        // between a VmOpen and its VmState (the notice of the VmOpen's cycle, which the VmState must say is committed)
        if (this.#version < POINTS_DROPPED_VERSION) throw unexpected(`PointsDropped is not part of protocol version ${this.#version}`)
        if (p === 'vm-opening' && this.#version < POINTS_DROPPED_AT_OPEN_VERSION) throw unexpected(`PointsDropped before a VmState is not part of protocol version ${this.#version}`)
        need('committing', 'vm-opening')
        if (msg.vm !== this.#vm || msg.cycle !== this.#cycle) throw unexpected(`PointsDropped names another VM or cycle than the ${p === 'committing' ? 'Commit' : 'VmOpen'}`)
        if (this.#pointsDropped) throw unexpected(`a second PointsDropped for one ${p === 'committing' ? 'Commit' : 'VmOpen'}`)
        this.#pointsDropped = true
        return
      case MessageKind.TrivialCheck:
        need('committed')
        disk(msg.disk, 'committed').trivial++
        return
      case MessageKind.Certify:
        need('committed')
        disk(msg.disk, 'committed').certify++
        return
      case MessageKind.BlockCheck: {
        need('committed')
        const d = disk(msg.disk, 'committed')
        if (d.blockChecks >= MAX_MAP_REQUESTS) throw unexpected(`disk ${msg.disk}: more than ${MAX_MAP_REQUESTS} block checks unanswered`)
        d.blockChecks++
        return
      }
      case MessageKind.BlockCheckResult: {
        const d = disk(msg.disk, 'committed')
        if (d.blockChecks === 0) throw unexpected(`BlockCheckResult for disk ${msg.disk} without a BlockCheck`)
        d.blockChecks--
        return
      }
      case MessageKind.TrivialResult: {
        const d = disk(msg.disk, 'committed')
        if (d.trivial === 0) throw unexpected(`TrivialResult for disk ${msg.disk} without a TrivialCheck`)
        d.trivial--
        return
      }
      case MessageKind.CertifyResult: {
        const d = disk(msg.disk, 'committed')
        if (d.certify === 0) throw unexpected(`CertifyResult for disk ${msg.disk} without a Certify`)
        d.certify--
        return
      }
      case MessageKind.Error:
        if (msg.fatal) this.#phase = 'closed'
    }
  }
}
