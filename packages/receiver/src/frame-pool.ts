/**
 * Inbound WebSocket frames in reused memory (issue #17).
 *
 * ws reads a frame's payload by copying the TLS chunks it arrived in into a
 * newly allocated buffer, and joins the fragments of a message into another
 * one; an agent sends each Extent as three fragments (the map's head, the
 * payload by reference, the digest). On the 2-core development VM every
 * fresh buffer costs page faults and V8 garbage collection (perf6: 13 % of
 * the receiver's CPU in GC, 5 % in ws's join), and the payload was then
 * copied a third time into the payload pool before it was written.
 *
 * Here a session's ws receiver copies each large payload (at least
 * {@link POOL_MIN_BYTES}) straight from the TLS chunks into a buffer of a
 * {@link FramePool}, with room before and after it, and hands the message
 * over as fragments (`binaryType: 'fragments'`): {@link joinFragments} puts
 * the small fragments around the pooled one in that room, so a message is
 * one contiguous view without copying its payload again. An Extent's payload
 * is a view into that frame (msgpackr decodes `bin` as views) and is written
 * from it; the frame goes back to the pool once its batch's bytes are
 * written (apply-pipeline.ts). A frame the session does not hand to the
 * pipeline is {@link FramePool.forget forgotten}: never reused, left to the
 * garbage collector, because the decoded message may still point into it.
 *
 * Bounded: the pool owns at most `maxBytes`; at the bound ws allocates as it
 * always did. If ws's internals ever differ from what {@link consumeIntoPool}
 * expects it installs nothing and ws works as before.
 */

/** Payloads shorter than this are left to ws (headers, small messages; a TLS record holds at most 16 KiB, so a shorter payload often lies within one chunk and ws hands out a view of it). */
export const POOL_MIN_BYTES = 16 * 1024

/** Room kept before and after a pooled payload for the fragments around it (an Extent's map head and its digest: under 200 bytes). */
export const FRAME_ROOM = 512

/** Pooled buffers are sized in steps of this many bytes (a buffer is reused for any frame of its step). */
const STEP_BYTES = 64 * 1024

/**
 * Reused buffers for inbound frames. A buffer is lent by {@link take}, and
 * either given back ({@link give}: reused at once, so only when nothing
 * points into it any more) or {@link forget forgotten} (dropped from the
 * pool's count, never reused).
 */
export class FramePool {
  private readonly free = new Map<number, ArrayBuffer[]>()
  private readonly lent = new WeakSet<ArrayBuffer>()
  private owned = 0
  private readonly maxBytes: () => number
  /** frames taken from the pool, and refused at the bound (ws allocated them), for logs and tests */
  taken = 0
  refused = 0

  /** @param maxBytes bytes the pool may own at most (read at each allocation) */
  constructor(maxBytes: () => number) {
    this.maxBytes = maxBytes
  }

  /** Bytes of buffers the pool owns (free or lent). */
  get ownedBytes(): number {
    return this.owned
  }

  /**
   * A view of `n` bytes in a reused buffer, with `room` bytes free before
   * and after it; undefined when the pool is at its bound (free buffers of
   * other sizes are dropped first to make room).
   */
  take(n: number, room = 0): Buffer | undefined {
    const size = Math.ceil((n + 2 * room) / STEP_BYTES) * STEP_BYTES
    let ab = this.free.get(size)?.pop()
    if (ab === undefined) {
      for (const [len, list] of this.free) {
        while (this.owned + size > this.maxBytes() && list.pop() !== undefined) this.owned -= len
        if (list.length === 0) this.free.delete(len)
      }
      if (this.owned + size > this.maxBytes()) {
        this.refused++
        return undefined
      }
      ab = new ArrayBuffer(size)
      this.owned += size
    }
    this.lent.add(ab)
    this.taken++
    return Buffer.from(ab, room, n)
  }

  /** Whether `view` lies in a buffer this pool has lent. */
  owns(view: Uint8Array): boolean {
    return view.buffer instanceof ArrayBuffer && this.lent.has(view.buffer)
  }

  /** Give back the buffer `view` lies in (a no-op for one the pool did not lend, or gave back already): it may be reused at once. */
  give(view: Uint8Array | undefined): void {
    const ab = view?.buffer
    if (!(ab instanceof ArrayBuffer) || !this.lent.delete(ab)) return
    const list = this.free.get(ab.byteLength)
    if (list === undefined) this.free.set(ab.byteLength, [ab])
    else list.push(ab)
  }

  /** Drop the buffer `view` lies in from the pool without reusing it (something may still point into it). */
  forget(view: Uint8Array | undefined): void {
    const ab = view?.buffer
    if (!(ab instanceof ArrayBuffer) || !this.lent.delete(ab)) return
    this.owned -= ab.byteLength
  }
}

/**
 * One message from the fragments ws handed over (`binaryType: 'fragments'`),
 * as one contiguous buffer. A single fragment is the message. One pooled
 * fragment with room for the others around it: they are copied into that
 * room (a few hundred bytes) and the message is a view of the pooled buffer.
 * Otherwise the fragments are joined into a pooled buffer, or a new one at
 * the pool's bound, and pooled fragments are given back (nothing else
 * points into them).
 */
export function joinFragments(fragments: readonly Buffer[], pool: FramePool): Buffer {
  const only = fragments.length === 1 ? fragments[0] : undefined
  if (only !== undefined) return only
  let total = 0
  let pooled = -1
  for (const [i, f] of fragments.entries()) {
    total += f.length
    if (pool.owns(f)) pooled = pooled === -1 ? i : -2
  }
  const big = fragments[pooled]
  if (big !== undefined) {
    let before = 0
    for (let i = 0; i < pooled; i++) before += (fragments[i] as Buffer).length
    const start = big.byteOffset - before
    if (start >= 0 && start + total <= big.buffer.byteLength) {
      const whole = Buffer.from(big.buffer, start, total)
      let at = 0
      for (const f of fragments) {
        if (f !== big) whole.set(f, at)
        at += f.length
      }
      return whole
    }
  }
  const into = total >= POOL_MIN_BYTES ? pool.take(total) : undefined
  const whole = into ?? Buffer.allocUnsafe(total)
  let at = 0
  for (const f of fragments) {
    whole.set(f, at)
    at += f.length
  }
  for (const f of fragments) pool.give(f)
  return whole
}

/** What {@link consumeIntoPool} relies on in ws's `Receiver` (ws 8: `lib/receiver.js`). */
interface WsReceiverInternals {
  _buffers: Buffer[]
  _bufferedBytes: number
  consume(n: number): Buffer
}

/**
 * Make a ws `Receiver` (a WebSocket's `_receiver`) read payloads of at least
 * {@link POOL_MIN_BYTES} that span several TLS chunks into buffers of `pool`
 * (with {@link FRAME_ROOM} before and after), instead of a new allocation
 * each. Its `consume(n)` is replaced on that instance only, with the same
 * contract: the next `n` buffered bytes, removed from the queue. Returns
 * false, changing nothing, when the object is not such a receiver.
 */
export function consumeIntoPool(receiver: unknown, pool: FramePool): boolean {
  const r = receiver as Partial<WsReceiverInternals> | null | undefined
  if (typeof r !== 'object' || r === null || typeof r.consume !== 'function' || !Array.isArray(r._buffers) || typeof r._bufferedBytes !== 'number') return false
  const own = r.consume
  r.consume = function (this: WsReceiverInternals, n: number): Buffer {
    const first = this._buffers[0]
    // small reads, and a payload within one chunk (ws returns a view of it, no copy), stay ws's
    if (n < POOL_MIN_BYTES || first === undefined || n <= first.length || n > this._bufferedBytes) return own.call(this, n)
    const dst = pool.take(n, FRAME_ROOM)
    if (dst === undefined) return own.call(this, n)
    this._bufferedBytes -= n
    let at = 0
    while (at < n) {
      const buf = this._buffers[0] as Buffer
      const want = n - at
      if (buf.length <= want) {
        dst.set(buf, at)
        this._buffers.shift()
        at += buf.length
      } else {
        dst.set(buf.subarray(0, want), at)
        this._buffers[0] = buf.subarray(want)
        at += want
      }
    }
    return dst
  }
  return true
}
