/**
 * Fixed cost charged per queued frame besides its bytes: a Buffer, its queue
 * slot and the decoded message cost a few hundred bytes whatever the frame's
 * size, so a flood of tiny frames (1M frames of 70 bytes once reached 420 MB)
 * must fill the inbox as surely as large ones.
 * @default 1024
 */
export const FRAME_OVERHEAD = 1024

/** The flow control a socket offers (ws `pause()`/`resume()`). */
export interface Pausable {
  pause(): void
  resume(): void
}

/**
 * The frames a session has received and not yet processed. Each frame costs
 * its length plus {@link FRAME_OVERHEAD}; above `highWaterBytes` the socket
 * is paused (backpressure: TCP then stops the peer), and resumed once the
 * inbox has drained to half of that. Memory per connection is bounded by
 * `highWaterBytes` plus what the socket had already buffered.
 */
export class Inbox {
  private readonly frames: Buffer[] = []
  private bytes = 0
  private paused = false
  private readonly socket: Pausable
  private readonly highWaterBytes: number
  private readonly onPause: (state: { frames: number; bytes: number }) => void
  private wake: (() => void) | undefined

  /** @param onPause called each time the socket is paused (the session logs it) */
  constructor(socket: Pausable, highWaterBytes: number, onPause: (state: { frames: number; bytes: number }) => void) {
    this.socket = socket
    this.highWaterBytes = highWaterBytes
    this.onPause = onPause
  }

  /** Frames queued. */
  get length(): number {
    return this.frames.length
  }

  /** The message kind of the next frame (its first byte: `u8(kind) • msgpack(map)`, not yet checked), or undefined when none is queued. */
  peekKind(): number | undefined {
    return this.frames[0]?.[0]
  }

  /** Queue a frame; pause the socket above the high-water mark; wake a waiting reader. */
  push(frame: Buffer): void {
    this.frames.push(frame)
    this.bytes += frame.length + FRAME_OVERHEAD
    if (!this.paused && this.bytes > this.highWaterBytes) {
      this.paused = true
      this.socket.pause()
      this.onPause({ frames: this.frames.length, bytes: this.bytes })
    }
    this.wake?.()
  }

  /** Take the oldest frame; resume the socket once drained to half the high-water mark. */
  shift(): Buffer | undefined {
    const f = this.frames.shift()
    if (f === undefined) return undefined
    this.bytes -= f.length + FRAME_OVERHEAD
    if (this.paused && this.bytes <= this.highWaterBytes / 2) {
      this.paused = false
      this.socket.resume()
    }
    return f
  }

  /** Wait up to `ms` for a frame to arrive (resolves at once on `push` or `interrupt`). */
  wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wake = undefined
        resolve()
      }, ms)
      this.wake = () => {
        clearTimeout(timer)
        this.wake = undefined
        resolve()
      }
    })
  }

  /** End a `wait` now. */
  interrupt(): void {
    this.wake?.()
  }

  /** Drop every frame and resume the socket (a paused socket could not read the peer's close frame). */
  clear(): void {
    this.frames.length = 0
    this.bytes = 0
    if (this.paused) {
      this.paused = false
      this.socket.resume()
    }
  }
}
