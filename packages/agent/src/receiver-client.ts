/**
 * A typed receiver client over one {@link Connection}: one method per request
 * of SPEC §8.4, each resolving to the typed reply or to a typed refusal (an
 * Error message from the receiver, or a refused DiskState) — a value the
 * cycle handles, never an exception used for control flow.
 *
 * What still throws: a lost connection (`ConnectionLost`, retried by the
 * cycle), a receiver Error that ends the connection but invites a retry
 * (`E_BUSY`, `E_SHUTDOWN`, `E_TIMEOUT`: also `ConnectionLost`), a message that breaks the
 * protocol (`AgentError` `E_PROTOCOL`) and an abort (`E_ABORTED`).
 */
import {
  MAX_ERROR_TEXT_BYTES,
  MessageKind,
  type BlockCheckMessage,
  type BlockCheckResultMessage,
  type BlockMapMessage,
  type BlockMapRequestMessage,
  type CertifyMessage,
  type CertifyResultMessage,
  type CommittedMessage,
  type DiskEndMessage,
  type DiskOpenMessage,
  type CommitProgressMessage,
  type DiskProgressMessage,
  type VmProgressMessage,
  type PointsDroppedMessage,
  type DiskStateMessage,
  type ErrorMessage,
  type ExtentAckMessage,
  type ExtentMessage,
  type HelloMessage,
  type Message,
  type RolledBackMessage,
  type TrivialCheckMessage,
  type TrivialResultMessage,
  type VmOpenMessage,
  type VmStateMessage,
  type WelcomeMessage,
  type RetentionSpec,
} from '@grainline/protocol'
import { Connection, ConnectionLost, PeerEnded, type ConnectOptions, type InterimMessage } from './connection.ts'
import { AgentError } from './errors.ts'
import { untrustedText } from './untrusted-text.ts'

/** The receiver said no: an Error message in place of the reply, or a refused DiskOpen. */
export interface Refusal {
  /** the receiver's code (SPEC §7), e.g. `E_FORBIDDEN`, `E_CHAIN_MISMATCH` */
  readonly code: string
  readonly message: string
  /** whether the receiver ends the conversation with it */
  readonly fatal: boolean
  /** a refused DiskState's `detail` (protocol version 9), made safe to print (untrustedText); absent when the receiver gave none */
  readonly detail?: string
}

/** The reply to a request, or the receiver's refusal. */
export type Reply<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly refusal: Refusal }

/** The reply to a DiskOpen: accepted (with the resume point) or refused (with the mirror's committed facts). */
export type DiskOpenReply = { readonly ok: true; readonly value: DiskStateMessage } | { readonly ok: false; readonly refusal: Refusal; readonly state?: DiskStateMessage }

// receiver Errors that end the connection but are worth a reconnect (SPEC §7): another session holds
// the VM, the receiver is shutting down, or it timed the connection out (the agent was slow to send)
const RETRY_CODES: Readonly<Record<string, number>> = { E_BUSY: 4429, E_SHUTDOWN: 1001, E_TIMEOUT: 4408 }

type Of<K extends Message['kind']> = Extract<Message, { kind: K }>

/** One connection to a receiver, spoken through typed requests. */
export class ReceiverClient {
  readonly #conn: Connection
  readonly #signal: AbortSignal | undefined

  private constructor(conn: Connection, signal: AbortSignal | undefined) {
    this.#conn = conn
    this.#signal = signal
  }

  /** Connect (TLS, bearer token, subprotocol) and wait for the upgrade. */
  static async connect(opts: ConnectOptions): Promise<ReceiverClient> {
    return new ReceiverClient(await Connection.open(opts), opts.signal)
  }

  /** Called for every ExtentAck (acks are never queued). */
  set onAck(fn: (ack: ExtentAckMessage) => void) {
    this.#conn.onAck = fn
  }

  /**
   * A promise that rejects when the connection fails (for racing window
   * waits); when the receiver ended it with a fatal Error, with that Error as a
   * refusal, not as the lost connection that followed it.
   */
  failed(): Promise<never> {
    const f = this.#conn.failed().catch((err: unknown) => {
      const pe = this.#conn.peerError
      if (pe === undefined) throw err
      throw refusalError('the cycle', errorReply(pe).refusal)
    })
    f.catch(() => {})
    return f
  }

  /** Fail the connection with `err`: every pending and later request gets it; the socket closes with `closeCode`. */
  abort(err: Error, closeCode?: number): void {
    this.#conn.abort(err, closeCode)
  }

  /** Drop the connection now. */
  terminate(): void {
    this.#conn.terminate()
  }

  /** Graceful close (1000). */
  async close(): Promise<void> {
    await this.#conn.close()
  }

  /**
   * Hello → Welcome (the negotiated digest, compression and limits). SPEC
   * §3.4: the receiver picks from what the Hello offered; a version, digest or
   * compression the agent did not offer breaks the conversation (`E_PROTOCOL`):
   * the agent would speak a protocol it does not know, or digest and compress
   * with an algorithm it never agreed to.
   */
  async hello(msg: Omit<HelloMessage, 'kind'>): Promise<Reply<WelcomeMessage>> {
    const r = await this.#request({ kind: MessageKind.Hello, ...msg }, MessageKind.Welcome)
    if (!r.ok) return r
    const w = r.value
    const offered = (what: string, chosen: string | number, list: readonly (string | number)[]): void => {
      if (!list.includes(chosen))
        throw this.#protocol(
          `Welcome chose ${what} ${JSON.stringify(chosen)}, which the agent did not offer (${list.join(', ')}): the receiver does not follow the protocol (SPEC §3.4); check its version and configuration`,
        )
    }
    offered('protocol version', w.version, msg.versions)
    offered('digest', w.digest, msg.digests)
    offered('compression', w.compression, msg.compressions)
    return r
  }

  /**
   * VmOpen → VmState (the mirror's committed and in-flight cycles). The
   * receiver may first finish a commit or prune a crash interrupted (its
   * merges of dropped restore points) and say so with VmProgress (SPEC §4.2,
   * v5): each one that moves forward restarts the wait and goes to
   * `onProgress`, within a bound (vmProgressLimitMs). A PointsDropped
   * before the VmState (SPEC §4.2, v7: the VmOpen's cycle is the receiver's
   * last commit, which dropped every restore point of the VM) goes to
   * `onPointsDropped` and does not restart the wait; the conversation has
   * checked that the VmState then says that cycle is committed.
   */
  async vmOpen(msg: Omit<VmOpenMessage, 'kind'>, onProgress?: (p: VmProgressMessage) => void, onPointsDropped?: (p: PointsDroppedMessage) => void): Promise<Reply<VmStateMessage>> {
    const progress = this.#vmProgress(msg.vm, onProgress)
    const interim = (p: InterimMessage): boolean => {
      if (p.kind !== MessageKind.PointsDropped) return progress(p)
      onPointsDropped?.(p)
      return false
    }
    return await this.#request({ kind: MessageKind.VmOpen, ...msg }, MessageKind.VmState, undefined, true, interim)
  }

  /**
   * Rollback → RolledBack: the receiver undoes its in-flight cycle, which
   * takes as long as the cycle's writes, and says so with VmProgress (SPEC
   * §4.3, v5), heard like a VmOpen's.
   */
  async rollback(vm: string, onProgress?: (p: VmProgressMessage) => void): Promise<Reply<RolledBackMessage>> {
    return await this.#request({ kind: MessageKind.Rollback, vm }, MessageKind.RolledBack, undefined, true, this.#vmProgress(vm, onProgress))
  }

  /** A VmProgress listener for one VmOpen or Rollback of `vm`: true (restart the wait) while it moves forward, within vmProgressLimitMs. */
  #vmProgress(vm: string, onProgress: ((p: VmProgressMessage) => void) | undefined): (p: InterimMessage) => boolean {
    const started = performance.now()
    let limitMs: number | undefined
    let done = -1
    return (p) => {
      if (p.kind !== MessageKind.VmProgress || p.vm !== vm || p.doneBytes <= done) return false
      done = p.doneBytes
      // the bound is set by the first report: a later, larger total cannot stretch it
      limitMs ??= vmProgressLimitMs(p.totalBytes, this.#conn.idleTimeoutMs)
      onProgress?.(p)
      return performance.now() - started < limitMs
    }
  }

  /**
   * DiskOpen → DiskState; a refused DiskState is a refusal carrying the
   * mirror's committed facts. The receiver may work long before it answers
   * (a capacity change's base copy) and say so with DiskProgress (SPEC §5.1,
   * v3): each one that moves forward restarts the wait for the answer and
   * goes to `onProgress`. A copy that stops moving still times out after the
   * idle timeout, and the whole wait stays bounded, so that a receiver cannot
   * hold the agent with progress that never ends (diskOpenLimitMs).
   */
  async openDisk(msg: Omit<DiskOpenMessage, 'kind'>, onProgress?: (p: DiskProgressMessage) => void): Promise<DiskOpenReply> {
    const started = performance.now()
    const limitMs = diskOpenLimitMs(msg.capacity, this.#conn.idleTimeoutMs)
    let done = -1
    const progress = (p: InterimMessage): boolean => {
      if (p.kind !== MessageKind.DiskProgress || p.disk !== msg.disk || p.doneBytes <= done) return false
      done = p.doneBytes
      onProgress?.(p)
      return performance.now() - started < limitMs
    }
    const r = await this.#request({ kind: MessageKind.DiskOpen, ...msg }, MessageKind.DiskState, undefined, true, progress)
    if (!r.ok) return r
    if (r.value.disk !== msg.disk) throw this.#protocol(`DiskState for disk ${r.value.disk}, expected ${msg.disk}`)
    if (r.value.accepted) return r
    // SPEC §5.1 (v9): the receiver's own words for the refusal, untrusted text
    const detail = r.value.detail === undefined ? '' : untrustedText(r.value.detail)
    const said = detail === '' ? {} : { detail }
    return {
      ok: false,
      refusal: { code: r.value.reason, message: `disk ${msg.name} refused: ${r.value.reason}${detail === '' ? '' : `: receiver says: ${detail}`}`, fatal: false, ...said },
      state: r.value,
    }
  }

  /**
   * Send one Extent (flow control is the caller's: the window and the rate
   * limit). Its payload is sent by reference: `onWritten` is called once the
   * socket is done with it (then its memory may be reused).
   */
  async sendExtent(msg: Omit<ExtentMessage, 'kind'>, onWritten?: () => void): Promise<void> {
    await this.#send({ kind: MessageKind.Extent, ...msg }, `extent ${msg.seq} of disk ${msg.disk}`, onWritten)
  }

  /** Send a BlockMapRequest (SPEC §5.9); its BlockMap is read with {@link blockMap}, in request order. */
  async requestBlockMap(msg: Omit<BlockMapRequestMessage, 'kind'>): Promise<void> {
    await this.#send({ kind: MessageKind.BlockMapRequest, ...msg }, `block map request for disk ${msg.disk}`)
  }

  /** The next BlockMap: the answer to the oldest unanswered BlockMapRequest of `disk`, starting at block `first`. */
  async blockMap(disk: number, first: number, timeoutMs: number): Promise<Reply<BlockMapMessage>> {
    const r = await this.#reply(MessageKind.BlockMap, timeoutMs, true)
    if (r.ok && (r.value.disk !== disk || r.value.first !== first)) throw this.#protocol(`BlockMap for disk ${r.value.disk} block ${r.value.first}, expected disk ${disk} block ${first}`)
    return r
  }

  /** DiskEnd → DiskEnded: the disk is sealed. */
  async endDisk(msg: Omit<DiskEndMessage, 'kind'>): Promise<Reply<void>> {
    const r = await this.#request({ kind: MessageKind.DiskEnd, ...msg }, MessageKind.DiskEnded)
    if (!r.ok) return r
    if (r.value.disk !== msg.disk) throw this.#protocol(`DiskEnded for disk ${r.value.disk}, expected ${msg.disk}`)
    return { ok: true, value: undefined }
  }

  /**
   * Commit → Committed: every sealed disk of the cycle is committed at once.
   * The receiver may work long before it answers (the merges of the restore
   * points its retention drops) and say so with CommitProgress (SPEC §5.5,
   * v4): each one of this Commit that moves forward restarts the wait and
   * goes to `onProgress`. Work that stops moving still times out after the
   * idle timeout, and the whole wait stays bounded (commitLimitMs of the
   * first report's total and `capacity`, the cycle's disks together). Once
   * `stop` is aborted (an unabortable commit's answer is awaited through a
   * stop), progress no longer restarts the wait either: a stop waits at
   * most one idle timeout more, as without progress. A PointsDropped (SPEC
   * §5.5, v6: the commit dropped every restore point of the VM) goes to
   * `onPointsDropped` and does not restart the wait.
   */
  async commit(
    vm: string,
    cycle: number,
    opts: {
      abortable?: boolean
      retention?: RetentionSpec | null
      capacity?: number
      onProgress?: (p: CommitProgressMessage) => void
      onPointsDropped?: (p: PointsDroppedMessage) => void
      stop?: AbortSignal
    } = {},
  ): Promise<Reply<CommittedMessage>> {
    const started = performance.now()
    let limitMs: number | undefined
    let done = -1
    const progress = (p: InterimMessage): boolean => {
      // the conversation has checked its VM and cycle, and that it comes once
      if (p.kind === MessageKind.PointsDropped) {
        opts.onPointsDropped?.(p)
        return false
      }
      if (p.kind !== MessageKind.CommitProgress || p.vm !== vm || p.cycle !== cycle || p.doneBytes <= done) return false
      done = p.doneBytes
      // the bound is set by the first report: a later, larger total cannot stretch it
      limitMs ??= commitLimitMs(p.totalBytes, opts.capacity ?? 0, this.#conn.idleTimeoutMs)
      opts.onProgress?.(p)
      return opts.stop?.aborted !== true && performance.now() - started < limitMs
    }
    // the conversation has checked that a Committed names this VM and cycle
    return await this.#request({ kind: MessageKind.Commit, vm, cycle, retention: opts.retention ?? null }, MessageKind.Committed, undefined, opts.abortable ?? true, progress)
  }

  /** TrivialCheck → TrivialResult. */
  async trivialCheck(msg: Omit<TrivialCheckMessage, 'kind'>): Promise<Reply<TrivialResultMessage>> {
    const r = await this.#request({ kind: MessageKind.TrivialCheck, ...msg }, MessageKind.TrivialResult)
    if (r.ok && r.value.disk !== msg.disk) throw this.#protocol(`TrivialResult for disk ${r.value.disk}, expected ${msg.disk}`)
    return r
  }

  /**
   * Send a TrivialCheck without waiting for its answer, so that the disk's
   * BlockChecks can follow right behind it (SPEC §5.6: a disk's checks are
   * answered in the order received); read its answer with
   * {@link trivialResult} before any answer to a later request.
   */
  async sendTrivialCheck(msg: Omit<TrivialCheckMessage, 'kind'>): Promise<void> {
    await this.#send({ kind: MessageKind.TrivialCheck, ...msg }, `trivial check of disk ${msg.disk}`)
  }

  /** The TrivialResult of a TrivialCheck sent with {@link sendTrivialCheck} for `disk`. */
  async trivialResult(disk: number): Promise<Reply<TrivialResultMessage>> {
    const r = await this.#reply(MessageKind.TrivialResult, undefined, true)
    if (r.ok && r.value.disk !== disk) throw this.#protocol(`TrivialResult for disk ${r.value.disk}, expected ${disk}`)
    return r
  }

  /** Certify → CertifyResult; the receiver digests the whole mirror, so the wait is `timeoutMs`. */
  async certify(msg: Omit<CertifyMessage, 'kind'>, timeoutMs: number): Promise<Reply<CertifyResultMessage>> {
    const r = await this.#request({ kind: MessageKind.Certify, ...msg }, MessageKind.CertifyResult, timeoutMs)
    if (r.ok && r.value.disk !== msg.disk) throw this.#protocol(`CertifyResult for disk ${r.value.disk}, expected ${msg.disk}`)
    return r
  }

  /**
   * Send a BlockCheck (the receiver reads the listed blocks back from the
   * mirror) without waiting for its answer (SPEC §5.6: at most 4 of
   * a disk unanswered); the answers are read with {@link blockCheckResult},
   * in the order sent. A receiver's fatal Error that overtook it is thrown as
   * the refusal it is.
   */
  async sendBlockCheck(msg: Omit<BlockCheckMessage, 'kind'>): Promise<void> {
    await this.#send({ kind: MessageKind.BlockCheck, ...msg }, `block check of disk ${msg.disk}`)
  }

  /** The next BlockCheckResult: the answer to the oldest unanswered BlockCheck, which was of `disk`. */
  async blockCheckResult(disk: number, timeoutMs: number): Promise<Reply<BlockCheckResultMessage>> {
    const r = await this.#reply(MessageKind.BlockCheckResult, timeoutMs, true)
    if (r.ok && r.value.disk !== disk) throw this.#protocol(`BlockCheckResult for disk ${r.value.disk}, expected ${disk}`)
    return r
  }

  #protocol(message: string): AgentError {
    const err = new AgentError('E_PROTOCOL', message)
    this.#conn.abort(err)
    return err
  }

  /** Send `msg` and read the next message: the reply of kind `kind`, or an Error as a refusal. */
  async #request<K extends Message['kind']>(msg: Message, kind: K, timeoutMs?: number, abortable = true, onProgress?: (m: InterimMessage) => boolean): Promise<Reply<Of<K>>> {
    try {
      await this.#conn.send(msg)
    } catch (err) {
      // the receiver ended the conversation before this request: its Error is the reply
      if (err instanceof PeerEnded) return errorReply(err.error)
      throw err
    }
    return await this.#reply(kind, timeoutMs, abortable, onProgress)
  }

  /** Send a message that has no reply of its own; a receiver's fatal Error that overtook it is thrown as the refusal it is. */
  async #send(msg: Message, what: string, onWritten?: () => void): Promise<void> {
    try {
      await this.#conn.send(msg, onWritten)
    } catch (err) {
      if (!(err instanceof PeerEnded)) throw err
      const r = errorReply(err.error)
      throw refusalError(what, r.refusal)
    }
  }

  /** Read the next message: the reply of kind `kind`, or an Error as a refusal. */
  async #reply<K extends Message['kind']>(kind: K, timeoutMs: number | undefined, abortable: boolean, onProgress?: (m: InterimMessage) => boolean): Promise<Reply<Of<K>>> {
    const m = await this.#conn.receive({
      ...(this.#signal === undefined || !abortable ? {} : { signal: this.#signal }),
      ...(timeoutMs === undefined ? {} : { timeoutMs }),
      ...(onProgress === undefined ? {} : { onProgress }),
    })
    if (m.kind === kind) return { ok: true, value: m as Of<K> }
    if (m.kind === MessageKind.Error) return errorReply(m)
    throw this.#protocol(`expected message 0x${kind.toString(16)}, got 0x${m.kind.toString(16)}`)
  }
}

/**
 * The longest a DiskOpen's answer may be put off by DiskProgress: the idle
 * timeout (`idleMs`) plus a copy of the whole disk at 10 MB/s (a base copy
 * reads the mirror, at most the disk's capacity). Past it, progress no
 * longer restarts the wait, and the idle timeout ends it.
 */
export function diskOpenLimitMs(capacity: number, idleMs = 120_000): number {
  return idleMs + Math.ceil(capacity / 10_000)
}

/**
 * The longest a Commit's answer may be put off by CommitProgress: the idle
 * timeout (`idleMs`) plus the work the receiver announced (`totalBytes` of
 * its first report) at 10 MB/s, that work counted at most as 16 merges of
 * every disk of the cycle whole (`capacity`), the increments a retention
 * change can drop at once. Past it, progress no longer restarts the wait,
 * and the idle timeout ends it.
 */
export function commitLimitMs(totalBytes: number, capacity: number, idleMs = 120_000): number {
  return idleMs + Math.ceil(Math.min(totalBytes, 16 * capacity) / 10_000)
}

/** The most a VmProgress's total counts towards its bound: 16 TiB (vmProgressLimitMs). */
export const VM_PROGRESS_MAX_BYTES = 16 * 2 ** 40

/**
 * The longest a VmOpen's or a Rollback's answer may be put off by VmProgress:
 * the idle timeout (`idleMs`) plus the work the receiver announced
 * (`totalBytes` of its first report, counted at most as 16 TiB — the agent
 * does not know the mirror's disks yet) at 10 MB/s. Past it, progress no
 * longer restarts the wait, and the idle timeout ends it.
 */
export function vmProgressLimitMs(totalBytes: number, idleMs = 120_000): number {
  return idleMs + Math.ceil(Math.min(totalBytes, VM_PROGRESS_MAX_BYTES) / 10_000)
}

/** How long the answer to a BlockCheck may take: the idle timeout plus its blocks read from a slow disk (20 MB/s). */
export function blockCheckTimeoutMs(msg: Pick<BlockCheckMessage, 'blocks' | 'blockSize'>): number {
  return 120_000 + Math.ceil(((msg.blocks.length / 8) * msg.blockSize) / 20_000)
}

/** The receiver's Error as a refusal; E_BUSY, E_SHUTDOWN and E_TIMEOUT are thrown as retryable connection losses. */
function errorReply(m: ErrorMessage): { ok: false; refusal: Refusal } {
  const closeCode = RETRY_CODES[m.code]
  // untrusted text either way: a retried loss's message is the run's error once its retries end (report, e-mail, webhook)
  const message = untrustedText(m.message, MAX_ERROR_TEXT_BYTES)
  if (closeCode !== undefined) throw new ConnectionLost(`receiver: ${m.code} ${message}`, closeCode)
  return { ok: false, refusal: { code: m.code, message, fatal: m.fatal } }
}

/**
 * The AgentError for a refusal the cycle cannot work around: `E_REFUSED` for
 * a refused disk (`disk: true`), `E_REMOTE` for an Error message; the
 * receiver's code is kept as `remoteCode`.
 */
export function refusalError(what: string, refusal: Refusal, opts: { disk?: boolean } = {}): AgentError {
  const advice = REFUSAL_ADVICE[refusal.code]
  if (opts.disk === true) {
    const says = refusal.detail === undefined ? '' : `: receiver says: ${refusal.detail}`
    return new AgentError('E_REFUSED', `receiver refused disk ${what}: ${refusal.code}${says}${advice === undefined ? '' : `: ${advice}`}`, { remoteCode: refusal.code })
  }
  if (advice !== undefined) return new AgentError('E_REFUSED', `${what}: the receiver refused (${refusal.code}: ${refusal.message}): ${advice}`, { remoteCode: refusal.code })
  return new AgentError('E_REMOTE', `${what}: receiver error ${refusal.code}: ${refusal.message}`, { remoteCode: refusal.code })
}

/** What the operator does about a refusal no retry can change (SPEC §7 codes). */
const REFUSAL_ADVICE: Readonly<Record<string, string>> = {
  E_FORBIDDEN: "this token may not replicate the VM: add the VM's name (or a glob matching it) to the token's \"vms\" in the receiver's tokens file",
  E_HELD: 'a hold on the mirror (an open restore point, a failover test) forbids changing it: release it on the receiver',
  E_INCOMPATIBLE: 'the mirror was made from another virtual hardware version or datastore type: move the mirror folder away on the receiver to seed a new one',
  E_QUOTA: 'the token\'s store quota would be exceeded: raise "quota" in the receiver\'s tokens file or free space in the store',
  E_NO_SPACE: "the receiver's store is full: free space there",
  E_VERSION: 'no common protocol version: upgrade the older side',
  E_BAD_NAME: 'a VM, disk or file name is not a safe path component on the receiver: rename it',
  E_MIRROR_MODIFIED:
    "the receiver's mirror of the disk changed or is damaged behind its store and a resync cannot build on it either: the receiver's log ('disk open refused') and grainline status there say what to do (on a Ceph store whose committed snapshot is gone: restore or archive the restore points still whole, then grainline mirror remove; the next run seeds the VM anew)",
}
