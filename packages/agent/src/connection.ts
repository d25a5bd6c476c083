/**
 * One WebSocket connection to a receiver: framing through the protocol codec,
 * the conversation state machine of SPEC §8 checked on every message sent and
 * received, a pull-style `receive()`, ExtentAck routing, and the
 * bufferedAmount high-water mark (STYLE §13: pause above 4 MiB, resume when
 * flushed). Extents go out as fragments with their payload by reference
 * (`encodeMessageParts`), so a data extent is not copied into a frame buffer.
 */
import { once } from 'node:events'
import WebSocket, { type ClientOptions } from 'ws'
import {
  ConversationState,
  decodeMessage,
  DEFAULT_LIMITS,
  encodeMessage,
  encodeMessageParts,
  MessageKind,
  SUBPROTOCOL,
  type CommitProgressMessage,
  type DiskProgressMessage,
  type VmProgressMessage,
  type PointsDroppedMessage,
  type ErrorMessage,
  type ExtentAckMessage,
  type Message,
} from '@grainline/protocol'
import { AgentError, abortReason, checkAborted } from './errors.ts'
import { classifyConnectFailure, tlsProblem, type ConnectSources } from './connect-errors.ts'
import { ConnectionLost } from './connection-lost.ts'
import { checkReceiverUrl } from './receiver-url.ts'
import { connectTlsUnjoined } from './tls-socket.ts'

/** Most bytes of a refused upgrade's body read (its first words say why: connect-errors.ts). */
const MAX_REFUSAL_BYTES = 256

/** The receiver's report of long work before a reply (SPEC §4.2 VmProgress, §5.1 DiskProgress, §5.5 CommitProgress). */
export type ProgressMessage = VmProgressMessage | DiskProgressMessage | CommitProgressMessage

/** What the receiver may send before a reply that is no reply itself: progress, and a commit's PointsDropped (SPEC §5.5, v6). */
export type InterimMessage = ProgressMessage | PointsDroppedMessage

/** TLS and transport options of a connection. */
export interface ConnectOptions extends ConnectSources {
  /** ws:// or wss:// URL of the receiver */
  readonly url: string
  /** bearer token (never logged) */
  readonly token: string
  /** PEM CA certificate(s) to trust for wss:// (a self-signed receiver cert works too) */
  readonly ca?: string | Buffer
  /** skip TLS certificate verification (testing only). @default false */
  readonly insecure?: boolean
  /** allow a plain ws:// URL to a non-loopback host: the token travels in clear (SPEC §1.2). @default false */
  readonly insecurePlaintext?: boolean
  /** largest message accepted from the receiver. @default DEFAULT_LIMITS.maxMessageBytes of @grainline/protocol (16 MiB + 64 KiB) */
  readonly maxMessageBytes?: number
  /** pause sending while ws.bufferedAmount is above this. @default 4 MiB */
  readonly highWaterMark?: number
  /** opening handshake timeout, ms. @default 15000 */
  readonly handshakeTimeoutMs?: number
  /** close the connection when no message arrives for this long while waiting, ms. @default 120000 */
  readonly idleTimeoutMs?: number
  /**
   * the longest the agent stays silent on an open connection: a WebSocket
   * ping goes out when it has sent nothing for half of this (SPEC §1.1: a
   * ping every 30 s), so that the receiver's inactivity deadline and NAT or
   * firewall idle timeouts on the path never end a session the agent is busy
   * in (digesting a large disk for certify after the commit); 0: off, ms.
   * @default 30000
   */
  readonly keepAliveMs?: number
  readonly signal?: AbortSignal
}

export { ConnectionLost, isRetryable } from './connection-lost.ts'

/**
 * True when a failed connect is the receiver's certificate or a TLS setup that
 * cannot work (retrying will not help); a socket cut during the TLS handshake
 * is a lost connection and is retried. See connect-errors.ts.
 */
export function isTlsVerificationFailure(err: unknown): boolean {
  return tlsProblem(err, { url: new URL('wss://receiver') }) !== undefined
}

/**
 * Thrown by {@link Connection.send} once the receiver has ended the
 * conversation with a fatal Error (SPEC §8): nothing more may be sent, and the
 * receiver's own error is the cause to report — not the agent's next message.
 */
export class PeerEnded extends Error {
  override readonly name = 'PeerEnded'
  readonly error: ErrorMessage
  constructor(error: ErrorMessage) {
    super(`the receiver ended the conversation: ${error.code} ${error.message}`)
    this.error = error
  }
}

/** A connected, framed client. */
export class Connection {
  readonly #ws: WebSocket
  readonly #inbox: Message[] = []
  #waiter: { resolve: (m: Message) => void; reject: (e: Error) => void; progress: (m: InterimMessage) => void } | undefined
  /** interim messages that came while nothing waited: PointsDropped only (progress without a wait is stale) */
  readonly #interim: InterimMessage[] = []
  #failure: Error | undefined
  /** the fatal Error the receiver ended the conversation with, if it did */
  #peerError: ErrorMessage | undefined
  /** SPEC §8 legality of the conversation, fed every message both ways */
  readonly #conversation = new ConversationState()
  readonly #maxMessageBytes: number
  readonly #highWaterMark: number
  readonly #idleTimeoutMs: number
  /** called for every ExtentAck (never queued) */
  onAck: (ack: ExtentAckMessage) => void = () => {}
  #rejectClosed: (err: Error) => void = () => {}
  readonly #closed: Promise<never>
  /** bytes handed to the socket */
  bytesSent = 0
  /** when the agent last handed the socket a frame or a ping (performance.now()) */
  #lastSentAt = performance.now()
  #keepAlive: NodeJS.Timeout | undefined
  /** pings sent by the keep-alive */
  pingsSent = 0

  private constructor(ws: WebSocket, opts: ConnectOptions) {
    this.#ws = ws
    this.#maxMessageBytes = opts.maxMessageBytes ?? DEFAULT_LIMITS.maxMessageBytes
    this.#highWaterMark = opts.highWaterMark ?? 4 * 1024 * 1024
    this.#idleTimeoutMs = opts.idleTimeoutMs ?? 120_000
    this.#closed = new Promise<never>((_resolve, reject) => {
      this.#rejectClosed = reject
    })
    this.#closed.catch(() => {})
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        this.#fail(new AgentError('E_PROTOCOL', 'text frame from receiver'))
        ws.close(1003)
        return
      }
      let msg: Message
      try {
        msg = decodeMessage(data, { maxMessageBytes: this.#maxMessageBytes })
      } catch (err) {
        const e = err as { code?: string; closeCode?: number; message: string }
        this.#fail(new AgentError('E_PROTOCOL', `bad frame from receiver: ${e.message}`, { cause: err }))
        ws.close(e.closeCode ?? 1008)
        return
      }
      try {
        this.#conversation.observe(msg, 'receiver')
      } catch (err) {
        const e = err as { closeCode?: number; message: string }
        this.abort(new AgentError('E_PROTOCOL', `receiver broke the conversation (SPEC §8): ${e.message}`, { cause: err }), e.closeCode ?? 4004)
        return
      }
      if (msg.kind === MessageKind.Error && msg.fatal) this.#peerError ??= msg
      if (msg.kind === MessageKind.ExtentAck) {
        this.onAck(msg)
        return
      }
      // SPEC §4.2 (v5), §5.1 (v3), §5.5 (v4, v6): not a reply; the conversation has checked that a VmOpen awaits its VmState or a
      // Rollback its RolledBack, a DiskOpen its DiskState, a Commit its Committed
      if (msg.kind === MessageKind.VmProgress || msg.kind === MessageKind.DiskProgress || msg.kind === MessageKind.CommitProgress || msg.kind === MessageKind.PointsDropped) {
        if (this.#waiter !== undefined) this.#waiter.progress(msg)
        // not progress but news (at most one per Commit, SPEC §8.1): kept for the wait that follows, never lost
        else if (msg.kind === MessageKind.PointsDropped) this.#interim.push(msg)
        return
      }
      if (this.#waiter !== undefined) {
        const w = this.#waiter
        this.#waiter = undefined
        w.resolve(msg)
      } else {
        this.#inbox.push(msg)
      }
    })
    const keepAliveMs = opts.keepAliveMs ?? 30_000
    if (keepAliveMs > 0) {
      // checked twice per period: no silence on the agent's side outlasts keepAliveMs by more than half of it
      this.#keepAlive = setInterval(() => this.#ping(keepAliveMs), Math.max(10, Math.floor(keepAliveMs / 2)))
      this.#keepAlive.unref()
    }
    ws.on('close', (code: number, reason: Buffer) => {
      this.#fail(new ConnectionLost(`connection closed (${code}${reason.length > 0 ? ' ' + reason.toString('utf8') : ''})`, code))
    })
    ws.on('error', (err: Error) => {
      this.#fail(new ConnectionLost(`connection error: ${err.message}`, 1006, { cause: err }))
    })
  }

  /** Connect and wait for the upgrade to complete. */
  static async open(opts: ConnectOptions): Promise<Connection> {
    const u = checkReceiverUrl(opts.url, opts.insecurePlaintext === true ? { insecurePlaintext: true } : {})
    // a listener added to a signal that has already fired never hears it
    checkAborted(opts.signal)
    const ws = new WebSocket(opts.url, SUBPROTOCOL, {
      headers: { Authorization: `Bearer ${opts.token}` },
      perMessageDeflate: false,
      maxPayload: opts.maxMessageBytes ?? DEFAULT_LIMITS.maxMessageBytes,
      handshakeTimeout: opts.handshakeTimeoutMs ?? 15_000,
      ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
      rejectUnauthorized: opts.insecure !== true,
      // RFC 6455 masking protects plaintext intermediaries from attacker-chosen bytes (guest disk data
      // can be). Inside TLS no intermediary sees the frames, so skip the extra pass over every payload.
      ...(u.protocol === 'wss:'
        ? {
            generateMask: (mask: Buffer) => {
              mask.fill(0)
            },
            // TLS encrypts each queued chunk from its own buffer instead of joining them into a new one (tls-socket.ts)
            createConnection: connectTlsUnjoined as unknown as ClientOptions['createConnection'],
          }
        : {}),
    })
    const conn = new Connection(ws, opts)
    let status = 0
    let reason = ''
    ws.once('unexpected-response', (_req, res) => {
      status = res.statusCode ?? 0
      // the refusal's first words (ws sends the receiver's reason as the body: "Forbidden: a viewer token"), bounded in
      // bytes and time; only matched against, never shown (connect-errors.ts)
      let stopped = false
      const stop = (): void => {
        if (stopped) return
        stopped = true
        clearTimeout(timer)
        res.destroy()
        ws.terminate()
      }
      const timer = setTimeout(stop, 1000)
      res.on('data', (d: Buffer) => {
        reason += d.toString('latin1', 0, Math.max(0, MAX_REFUSAL_BYTES - reason.length))
        if (reason.length >= MAX_REFUSAL_BYTES) stop()
      })
      res.once('end', stop)
      res.once('error', stop)
    })
    const onAbort = (): void => {
      ws.terminate()
    }
    opts.signal?.addEventListener('abort', onAbort, { once: true })
    try {
      await Promise.race([once(ws, 'open'), conn.failed()])
    } catch (err) {
      throw await classifyConnectFailure(err, {
        url: u,
        token: opts.token,
        status,
        reason,
        insecure: opts.insecure === true,
        ...(opts.tokenSource === undefined ? {} : { tokenSource: opts.tokenSource }),
        ...(opts.caSource === undefined ? {} : { caSource: opts.caSource }),
        ...(opts.signal === undefined ? {} : { signal: opts.signal }),
      })
    } finally {
      opts.signal?.removeEventListener('abort', onAbort)
    }
    if (ws.protocol !== SUBPROTOCOL) {
      ws.close(1002)
      throw new AgentError('E_PROTOCOL', `receiver did not select subprotocol ${SUBPROTOCOL}`)
    }
    return conn
  }

  /** The keep-alive's tick: a ping when nothing was sent for half the period or more. */
  #ping(keepAliveMs: number): void {
    if (this.#ws.readyState !== WebSocket.OPEN || this.#failure !== undefined) return
    if (performance.now() - this.#lastSentAt < keepAliveMs / 2) return
    this.#lastSentAt = performance.now()
    this.pingsSent++
    try {
      this.#ws.ping()
    } catch {
      // the socket is closing: its 'close' event ends the connection
    }
  }

  #fail(err: Error): void {
    clearInterval(this.#keepAlive)
    if (this.#failure !== undefined) return
    this.#failure = err
    const w = this.#waiter
    this.#waiter = undefined
    w?.reject(err)
    this.#rejectClosed(err)
  }

  /** the fatal Error the receiver ended the conversation with, if it did */
  get peerError(): ErrorMessage | undefined {
    return this.#peerError
  }

  /** the error that ended the connection, if any */
  get failure(): Error | undefined {
    return this.#failure
  }

  /**
   * Send one message; waits while the socket buffer is above the high-water
   * mark. A data Extent goes out as one WebSocket message in fragments, its
   * payload by reference: the caller must not modify `data` afterwards —
   * until `onWritten`, called once the socket is done with the message
   * (written, or failed: never read again). A message that is not sent at all
   * (the connection had failed) never calls it.
   */
  async send(msg: Message, onWritten?: () => void): Promise<void> {
    // the receiver's fatal Error may overtake a stream of Extents: it, not this message, is the cause
    if (this.#peerError !== undefined) throw new PeerEnded(this.#peerError)
    if (this.#failure !== undefined) throw this.#failure
    try {
      this.#conversation.observe(msg, 'agent')
    } catch (err) {
      const e = new AgentError('E_PROTOCOL', `internal: the agent broke the conversation (SPEC §8): ${(err as Error).message}`, { cause: err })
      this.abort(e)
      throw e
    }
    this.#lastSentAt = performance.now()
    const parts = msg.kind === MessageKind.Extent && !msg.zero ? encodeMessageParts(msg) : [encodeMessage(msg)]
    const last = parts.length - 1
    // the fragments' chunks queue up and leave together: the short ones joined into one write (tls-socket.ts)
    const socket = last > 0 ? (this.#ws as unknown as { _socket?: { cork?: () => void; uncork?: () => void } })._socket : undefined
    socket?.cork?.()
    const sent = new Promise<void>((resolve, reject) => {
      for (let i = 0; i <= last; i++) {
        const part = parts[i] as Uint8Array
        this.bytesSent += part.length
        if (i < last) {
          this.#ws.send(part, { binary: true, fin: false })
          continue
        }
        this.#ws.send(part, { binary: true, fin: true }, (err) => {
          // the fragments before this one were written before it (one socket, in order)
          onWritten?.()
          if (err != null) reject(new ConnectionLost(`send failed: ${err.message}`, 1006, { cause: err }))
          else resolve()
        })
      }
    })
    socket?.uncork?.()
    if (this.#ws.bufferedAmount > this.#highWaterMark) {
      // the callback fires once this frame left for the kernel: the buffer drained below it
      await this.#drained(sent)
    } else {
      sent.catch(() => {})
    }
  }

  /**
   * Wait for `sent` while the socket buffer drains. A receiver that stops
   * reading (its socket paused, never resumed) while the connection stays up
   * would hold this wait forever: when the buffer has not shrunk for the idle
   * timeout, the connection is dropped (`ConnectionLost`, retried).
   */
  async #drained(sent: Promise<void>): Promise<void> {
    const limitMs = this.#idleTimeoutMs
    let last = this.#ws.bufferedAmount
    let since = performance.now()
    let timer: NodeJS.Timeout | undefined
    const stalled = new Promise<never>((_resolve, reject) => {
      timer = setInterval(
        () => {
          const now = this.#ws.bufferedAmount
          if (now < last) since = performance.now()
          last = now
          if (performance.now() - since < limitMs) return
          // the connection's failure is this (every waiter and later send gets it), before the socket's own close
          const err = new ConnectionLost(`the receiver read nothing for ${Math.round(limitMs / 1000)} s (${now} bytes wait in the socket buffer)`, 1006)
          this.#fail(err)
          this.#ws.terminate()
          reject(err)
        },
        Math.max(10, Math.min(5000, limitMs / 4)),
      )
    })
    stalled.catch(() => {})
    try {
      await Promise.race([sent, this.#closed, stalled])
    } finally {
      clearInterval(timer)
    }
  }

  /** How long a wait for a reply lasts without a message, ms (ConnectOptions.idleTimeoutMs). */
  get idleTimeoutMs(): number {
    return this.#idleTimeoutMs
  }

  /**
   * The next non-ack message. Error messages are returned, not thrown.
   * `timeoutMs` bounds the wait; a VmProgress, DiskProgress, CommitProgress
   * or PointsDropped that arrives meanwhile goes to `onProgress`, and when
   * that returns true the wait starts over.
   */
  async receive(opts: { signal?: AbortSignal; timeoutMs?: number; onProgress?: (m: InterimMessage) => boolean } = {}): Promise<Message> {
    // a PointsDropped that came before this wait started (its Commit still being sent)
    for (let m = this.#interim.shift(); m !== undefined; m = this.#interim.shift()) opts.onProgress?.(m)
    const queued = this.#inbox.shift()
    if (queued !== undefined) return queued
    if (this.#failure !== undefined) throw this.#failure
    if (this.#waiter !== undefined) throw new AgentError('E_PROTOCOL', 'concurrent receive')
    checkAborted(opts.signal)
    const timeoutMs = opts.timeoutMs ?? this.#idleTimeoutMs
    return await new Promise<Message>((resolve, reject) => {
      const expire = (): void => {
        this.#waiter = undefined
        this.#ws.terminate()
        reject(new ConnectionLost(`no answer from receiver for ${timeoutMs} ms`, 1006))
      }
      let timer = setTimeout(expire, timeoutMs)
      const onAbort = (): void => {
        clearTimeout(timer)
        this.#waiter = undefined
        reject(new AgentError('E_ABORTED', abortReason(opts.signal as AbortSignal)))
      }
      opts.signal?.addEventListener('abort', onAbort, { once: true })
      this.#waiter = {
        progress: (m) => {
          if (opts.onProgress?.(m) !== true) return
          clearTimeout(timer)
          timer = setTimeout(expire, timeoutMs)
        },
        resolve: (m) => {
          clearTimeout(timer)
          opts.signal?.removeEventListener('abort', onAbort)
          resolve(m)
        },
        reject: (e) => {
          clearTimeout(timer)
          opts.signal?.removeEventListener('abort', onAbort)
          reject(e)
        },
      }
    })
  }

  /** A promise that rejects when the connection fails (for racing window waits). */
  failed(): Promise<never> {
    return this.#closed
  }

  /** Graceful close. */
  async close(code = 1000): Promise<void> {
    clearInterval(this.#keepAlive)
    if (this.#ws.readyState === WebSocket.CLOSED) return
    const closed = once(this.#ws, 'close').catch(() => {})
    this.#ws.close(code)
    const t = setTimeout(() => this.#ws.terminate(), 5000)
    await closed
    clearTimeout(t)
  }

  /** Drop the connection now. */
  terminate(): void {
    clearInterval(this.#keepAlive)
    this.#ws.terminate()
  }

  /** Fail the connection with `err` (every waiter and later send gets it) and close it with `closeCode`. */
  abort(err: Error, closeCode = 1008): void {
    this.#fail(err)
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.close(closeCode)
    else this.#ws.terminate()
  }
}
