import type { Logger } from 'pino'
import type { ReceiverObserver } from './metrics.ts'

/** Why the receiver turned a connection or session away. */
export type RefusalReason =
  | 'socket-cap'
  | 'tls-handshake-timeout'
  | 'tls-error'
  | 'upgrade-timeout'
  | 'auth'
  | 'auth-throttled'
  | 'subprotocol'
  | 'session-cap'
  | 'token-session-cap'
  | 'hello-timeout'
  | 'idle-timeout'
  | 'unread-answers'

/**
 * Logs refusals without letting a flood flood the log: at most one line per
 * reason per window, carrying how many refusals of that reason the window
 * swallowed before it (`suppressed`).
 */
export class RefusalLog {
  private readonly log: Logger
  private readonly windowMs: number
  private readonly last = new Map<RefusalReason, { at: number; suppressed: number }>()

  private readonly observer: Pick<ReceiverObserver, 'refused'> | undefined

  /**
   * @param windowMs one line per reason per this many ms. @default 10000
   * @param observer counts every refusal, logged or not (metrics)
   */
  constructor(log: Logger, windowMs = 10_000, observer?: Pick<ReceiverObserver, 'refused'>) {
    this.log = log
    this.windowMs = windowMs
    this.observer = observer
  }

  /** Record one refusal; logs it (warn, 'connection refused') unless its reason was logged within the window. */
  refused(reason: RefusalReason, fields: Readonly<Record<string, unknown>> = {}): void {
    this.observer?.refused(reason)
    const now = Date.now()
    const st = this.last.get(reason)
    if (st !== undefined && now - st.at < this.windowMs) {
      st.suppressed++
      return
    }
    this.log.warn({ reason, ...fields, suppressed: st?.suppressed ?? 0 }, 'connection refused')
    this.last.set(reason, { at: now, suppressed: 0 })
  }
}
