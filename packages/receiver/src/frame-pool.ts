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
 *
 * One pool serves every session of a receiver (server.ts; a session without
 * one makes its own): each cycle of the agent is a new connection, and a pool
 * per session allocated its frames afresh every cycle — a 41 MiB incremental
 * in 64 KiB extents took ~500 new zero-filled 128 KiB buffers per cycle (issue #17).
 * A frame is lent to one session at a time; what a session drops (aborted
 * batches) is forgotten, never reused.
 */

/** Payloads shorter than this are left to ws (headers, small messages; a TLS record holds at most 16 KiB, so a shorter payload often lies within one chunk and ws hands out a view of it). */
export const POOL_MIN_BYTES = 16 * 1024

/** Room kept before and after a pooled payload for the fragments around it (an Extent's map head and its digest: under 200 bytes). */
export const FRAME_ROOM = 512

/**
 * Pooled buffers are sized in steps of this many bytes (a buffer is reused for
 * any frame of its step): a page, so that a 64 KiB payload with its room takes
 * 68 KiB, not the 128 KiB a 64 KiB step gave it.
 */
const STEP_BYTES = 4 * 1024

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
  /** frames taken from the pool, of them in new buffers, and refused at the bound (ws allocated them), for logs and tests */
  taken = 0
  created = 0
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
      // not zero-filled (a memset of every new frame, and its pages faulted in at once): a lent view
      // only ever exposes bytes written into it (consumeIntoPool, joinFragments)
      ab = Buffer.allocUnsafeSlow(size).buffer as ArrayBuffer
      this.owned += size
      this.created++
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

  /** A borrower of this pool for one session: see {@link FrameBorrower}. */
  borrower(): FrameBorrower {
    return new FrameBorrower(this)
  }
}

/** What a session, ws's receiver and the apply pipeline use of a frame pool. */
export interface FrameLender {
  take(n: number, room?: number): Buffer | undefined
  owns(view: Uint8Array): boolean
  give(view: Uint8Array | undefined): void
  forget(view: Uint8Array | undefined): void
}

/**
 * One session's share of a {@link FramePool} shared by the sessions of a
 * receiver: it lends and takes back like the pool, and remembers which
 * buffers it holds, so that {@link release} — when the session has ended and
 * its batches are settled — forgets every one it never gave back (frames
 * left in its inbox, in ws's fragments of a message cut short, in a batch
 * that failed): the pool's count stays exact across sessions, and nothing a
 * dead session may still point into is lent again. After `release` it lends
 * nothing (ws allocates).
 */
export class FrameBorrower implements FrameLender {
  readonly #pool: FramePool
  readonly #held = new Set<ArrayBuffer>()
  #released = false
  /** frames lent to this borrower, of them in new buffers, forgotten by it, and forgotten at its release (logs, tests) */
  readonly counts = { taken: 0, created: 0, forgotten: 0, released: 0 }

  constructor(pool: FramePool) {
    this.#pool = pool
  }

  /** Buffers lent to this borrower and not yet given back or forgotten. */
  get held(): number {
    return this.#held.size
  }

  take(n: number, room = 0): Buffer | undefined {
    if (this.#released) return undefined
    const created = this.#pool.created
    const b = this.#pool.take(n, room)
    if (b === undefined) return undefined
    this.#held.add(b.buffer as ArrayBuffer)
    this.counts.taken++
    if (this.#pool.created > created) this.counts.created++
    return b
  }

  owns(view: Uint8Array): boolean {
    return view.buffer instanceof ArrayBuffer && this.#held.has(view.buffer)
  }

  give(view: Uint8Array | undefined): void {
    if (view === undefined || !(view.buffer instanceof ArrayBuffer) || !this.#held.delete(view.buffer)) return
    this.#pool.give(view)
  }

  forget(view: Uint8Array | undefined): void {
    if (view === undefined || !(view.buffer instanceof ArrayBuffer) || !this.#held.delete(view.buffer)) return
    this.counts.forgotten++
    this.#pool.forget(view)
  }

  /** Forget every buffer still held (never reused) and lend nothing more. */
  release(): void {
    this.#released = true
    this.counts.released += this.#held.size
    for (const ab of this.#held) this.#pool.forget(new Uint8Array(ab, 0, 0))
    this.#held.clear()
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
export function joinFragments(fragments: readonly Buffer[], pool: FrameLender): Buffer {
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
export function consumeIntoPool(receiver: unknown, pool: FrameLender): boolean {
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
