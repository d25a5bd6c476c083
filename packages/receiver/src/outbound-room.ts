/**
 * Backpressure on what the receiver sends. The agent asks (BlockMapRequest,
 * BlockCheck, TrivialCheck, Certify) and the receiver answers; each answer
 * costs a read of the mirror and waits in the socket until the agent reads
 * it. A peer that asks without reading would otherwise make the receiver
 * queue answers in memory as fast as it can read its disks — a BlockMap of
 * 4 KiB blocks is 32 bytes of answer per 4 KiB of mirror, hundreds of MB for
 * a large disk — until the ping timeout. So the session takes its next frame
 * only while at most {@link outboundLimit} bytes of its messages wait in the
 * socket; meanwhile its inbox fills and pauses the socket, which holds the
 * peer back in turn. An agent reads continuously, so one that reads waits
 * only when its link is slower than the mirror reads. A peer that reads
 * nothing is normally ended by the ping first; the stall deadline here
 * (no whole message left the buffer for `stallMs`) is the backstop.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { ReceiverError } from './errors.ts'

/** Bytes of sent messages that may wait in the socket before the next frame waits (at least one frame of the negotiated size). */
export const OUTBOUND_HIGH_WATER = 4 * 1024 * 1024
/** How often the socket's buffer is looked at while waiting. */
const POLL_MS = 20

/** The most the session lets wait in its socket: {@link OUTBOUND_HIGH_WATER}, or one whole frame when frames are larger. */
export function outboundLimit(maxMessageBytes: number | undefined): number {
  return Math.max(OUTBOUND_HIGH_WATER, maxMessageBytes ?? 0)
}

/** What {@link waitForOutboundRoom} looks at: a ws WebSocket. */
export interface OutboundSocket {
  readonly bufferedAmount: number
}

/**
 * Wait until at most `limit` bytes wait in the socket. Returns how long it
 * waited (ms). Throws `E_TIMEOUT` when the buffer has not shrunk for
 * `stallMs` (the peer reads nothing); returns early once `stopped()`.
 */
export async function waitForOutboundRoom(ws: OutboundSocket, opts: { limit: number; stallMs: number; stopped: () => boolean }): Promise<number> {
  const started = performance.now()
  let last = ws.bufferedAmount
  let since = started
  while (!opts.stopped() && ws.bufferedAmount > opts.limit) {
    await sleep(POLL_MS)
    const now = ws.bufferedAmount
    if (now < last) since = performance.now()
    last = now
    if (performance.now() - since >= opts.stallMs) {
      throw new ReceiverError('E_TIMEOUT', `the agent read nothing for ${Math.round(opts.stallMs / 1000)} s (${now} bytes of answers wait in the socket)`)
    }
  }
  return performance.now() - started
}
