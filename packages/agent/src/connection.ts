/**
 * One WebSocket connection to a receiver: framing through the protocol codec,
 * a pull-style `receive()`, ExtentAck routing, and the bufferedAmount
 * high-water mark (STYLE §13: pause above 4 MiB, resume when flushed).
 */
import { once } from 'node:events'
import WebSocket from 'ws'
import { decodeMessage, encodeMessage, SUBPROTOCOL, type ExtentAckMessage, type Message } from '@grainline/protocol'
import { AgentError } from './errors.ts'

/** TLS and transport options of a connection. */
export interface ConnectOptions {
  /** ws:// or wss:// URL of the receiver */
  readonly url: string
  /** bearer token (never logged) */
  readonly token: string
  /** PEM CA certificate(s) to trust for wss:// (a self-signed receiver cert works too) */
  readonly ca?: string | Buffer
  /** skip TLS certificate verification (testing only). @default false */
  readonly insecure?: boolean
  /** largest message accepted from the receiver. @default 16 MiB + 64 KiB */
  readonly maxMessageBytes?: number
  /** pause sending while ws.bufferedAmount is above this. @default 4 MiB */
  readonly highWaterMark?: number
  /** opening handshake timeout, ms. @default 15000 */
  readonly handshakeTimeoutMs?: number
  /** close the connection when no message arrives for this long while waiting, ms. @default 120000 */
  readonly idleTimeoutMs?: number
  readonly signal?: AbortSignal
}

/** The connection dropped or could not be made; the cycle may retry. */
export class ConnectionLost extends Error {
  override readonly name = 'ConnectionLost'
  readonly closeCode: number
  constructor (message: string, closeCode = 1006, opts?: { cause?: unknown }) {
    super(message, opts)
    this.closeCode = closeCode
  }
}

// close codes after which a retry makes sense (SPEC §7: E_BUSY, E_SHUTDOWN, E_INTERNAL, abnormal)
const RETRYABLE_CLOSE = new Set([1001, 1005, 1006, 1011, 1012, 1013, 4429])

/** True when `err` is worth a reconnect. */
export function isRetryable (err: unknown): boolean {
  if (err instanceof ConnectionLost) return RETRYABLE_CLOSE.has(err.closeCode) || err.closeCode < 1000
  return false
}

/** A connected, framed client. */
export class Connection {
  readonly #ws: WebSocket
  readonly #inbox: Message[] = []
  #waiter: { resolve: (m: Message) => void, reject: (e: Error) => void } | undefined
  #failure: Error | undefined
  readonly #maxMessageBytes: number
  readonly #highWaterMark: number
  readonly #idleTimeoutMs: number
  /** called for every ExtentAck (never queued) */
  onAck: (ack: ExtentAckMessage) => void = () => {}
  #rejectClosed: (err: Error) => void = () => {}
  readonly #closed: Promise<never>
  /** bytes handed to the socket */
  bytesSent = 0

  private constructor (ws: WebSocket, opts: ConnectOptions) {
    this.#ws = ws
    this.#maxMessageBytes = opts.maxMessageBytes ?? (16 * 1024 * 1024 + 65536)
    this.#highWaterMark = opts.highWaterMark ?? 4 * 1024 * 1024
    this.#idleTimeoutMs = opts.idleTimeoutMs ?? 120_000
    this.#closed = new Promise<never>((_resolve, reject) => { this.#rejectClosed = reject })
    this.#closed.catch(() => {})
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) { this.#fail(new AgentError('E_PROTOCOL', 'text frame from receiver')); ws.close(1003); return }
      let msg: Message
      try {
        msg = decodeMessage(data, { maxMessageBytes: this.#maxMessageBytes })
      } catch (err) {
        const e = err as { code?: string, closeCode?: number, message: string }
        this.#fail(new AgentError('E_PROTOCOL', `bad frame from receiver: ${e.message}`, { cause: err }))
        ws.close(e.closeCode ?? 1008)
        return
      }
      if (msg.kind === 0x21) { this.onAck(msg); return }
      if (this.#waiter !== undefined) {
        const w = this.#waiter
        this.#waiter = undefined
        w.resolve(msg)
      } else {
        this.#inbox.push(msg)
      }
    })
    ws.on('close', (code: number, reason: Buffer) => {
      this.#fail(new ConnectionLost(`connection closed (${code}${reason.length > 0 ? ' ' + reason.toString('utf8') : ''})`, code))
    })
    ws.on('error', (err: Error) => { this.#fail(new ConnectionLost(`connection error: ${err.message}`, 1006, { cause: err })) })
  }

  /** Connect and wait for the upgrade to complete. */
  static async open (opts: ConnectOptions): Promise<Connection> {
    const u = new URL(opts.url)
    if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new AgentError('E_CONFIG', `receiver URL must be ws:// or wss://, got ${u.protocol}`)
    const ws = new WebSocket(opts.url, SUBPROTOCOL, {
      headers: { Authorization: `Bearer ${opts.token}` },
      perMessageDeflate: false,
      maxPayload: opts.maxMessageBytes ?? (16 * 1024 * 1024 + 65536),
      handshakeTimeout: opts.handshakeTimeoutMs ?? 15_000,
      ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
      rejectUnauthorized: opts.insecure !== true,
      // RFC 6455 masking protects plaintext intermediaries from attacker-chosen bytes (guest disk data
      // can be). Inside TLS no intermediary sees the frames, so skip the extra pass over every payload.
      ...(u.protocol === 'wss:' ? { generateMask: (mask: Buffer) => { mask.fill(0) } } : {}),
    })
    const conn = new Connection(ws, opts)
    let status = 0
    ws.once('unexpected-response', (_req, res) => {
      status = res.statusCode ?? 0
      res.resume()
      ws.terminate()
    })
    const onAbort = (): void => { ws.terminate() }
    opts.signal?.addEventListener('abort', onAbort, { once: true })
    try {
      await Promise.race([
        once(ws, 'open'),
        conn.failed(),
      ])
    } catch (err) {
      if (opts.signal?.aborted === true) throw new AgentError('E_ABORTED', 'aborted')
      if (status === 401 || status === 403) throw new AgentError('E_REFUSED', `receiver refused the token (HTTP ${status})`, { remoteCode: 'E_AUTH' })
      if (status !== 0) throw new ConnectionLost(`receiver answered HTTP ${status}`, status >= 500 ? 1011 : 4000 + status)
      const e = err as Error & { cause?: { code?: string } }
      if (/certificate|self.signed|SSL|TLS/i.test(e.message + String((e.cause as Error | undefined)?.message ?? ''))) {
        throw new AgentError('E_CONNECT', `TLS failure: ${e.message}`, { cause: err })
      }
      throw err
    } finally {
      opts.signal?.removeEventListener('abort', onAbort)
    }
    if (ws.protocol !== SUBPROTOCOL) {
      ws.close(1002)
      throw new AgentError('E_PROTOCOL', `receiver did not select subprotocol ${SUBPROTOCOL}`)
    }
    return conn
  }

  #fail (err: Error): void {
    if (this.#failure !== undefined) return
    this.#failure = err
    const w = this.#waiter
    this.#waiter = undefined
    w?.reject(err)
    this.#rejectClosed(err)
  }

  /** the error that ended the connection, if any */
  get failure (): Error | undefined { return this.#failure }

  /** Send one message; waits while the socket buffer is above the high-water mark. */
  async send (msg: Message): Promise<void> {
    if (this.#failure !== undefined) throw this.#failure
    const frame = encodeMessage(msg)
    const sent = new Promise<void>((resolve, reject) => {
      this.#ws.send(frame, { binary: true }, (err) => { if (err != null) reject(new ConnectionLost(`send failed: ${err.message}`, 1006, { cause: err })); else resolve() })
    })
    this.bytesSent += frame.length
    if (this.#ws.bufferedAmount > this.#highWaterMark) {
      // the callback fires once this frame left for the kernel: the buffer drained below it
      await Promise.race([sent, this.#closed])
    } else {
      sent.catch(() => {})
    }
  }

  /** The next non-ack message. Error messages are returned, not thrown. */
  async receive (opts: { signal?: AbortSignal, timeoutMs?: number } = {}): Promise<Message> {
    const queued = this.#inbox.shift()
    if (queued !== undefined) return queued
    if (this.#failure !== undefined) throw this.#failure
    if (this.#waiter !== undefined) throw new AgentError('E_PROTOCOL', 'concurrent receive')
    const timeoutMs = opts.timeoutMs ?? this.#idleTimeoutMs
    return await new Promise<Message>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiter = undefined
        this.#ws.terminate()
        reject(new ConnectionLost(`no answer from receiver for ${timeoutMs} ms`, 1006))
      }, timeoutMs)
      const onAbort = (): void => { clearTimeout(timer); this.#waiter = undefined; reject(new AgentError('E_ABORTED', 'aborted')) }
      opts.signal?.addEventListener('abort', onAbort, { once: true })
      this.#waiter = {
        resolve: (m) => { clearTimeout(timer); opts.signal?.removeEventListener('abort', onAbort); resolve(m) },
        reject: (e) => { clearTimeout(timer); opts.signal?.removeEventListener('abort', onAbort); reject(e) },
      }
    })
  }

  /** A promise that rejects when the connection fails (for racing window waits). */
  failed (): Promise<never> { return this.#closed }

  /** Graceful close. */
  async close (code = 1000): Promise<void> {
    if (this.#ws.readyState === WebSocket.CLOSED) return
    const closed = once(this.#ws, 'close').catch(() => {})
    this.#ws.close(code)
    const t = setTimeout(() => this.#ws.terminate(), 5000)
    await closed
    clearTimeout(t)
  }

  /** Drop the connection now. */
  terminate (): void { this.#ws.terminate() }
}
