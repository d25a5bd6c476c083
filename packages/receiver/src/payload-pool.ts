/**
 * Reused buffers for extent payloads on their way to the store (issue #17).
 *
 * Each WebSocket message arrives in a freshly allocated buffer (ws joins the
 * TLS chunks into a new one), and writing from fresh memory is slow here:
 * the kernel's copy into the page cache faults the new pages in one by one.
 * Measured on the 2-core development VM (256 MiB in 4 MiB pwrites, then one
 * fdatasync): from reused buffers 1076 MiB/s, from fresh ones 292 MiB/s,
 * copying each fresh buffer into a reused one first 675 MiB/s. So a payload
 * is copied into a buffer of this pool before it is queued, and the buffer
 * comes back once its batch's bytes are written.
 *
 * Bounded: the pool owns at most `maxBytes`; when none of the right size is
 * free and the bound is reached, the payload is used as it came (slower, never
 * blocking); free buffers of other lengths are dropped first to make room. A buffer lent and never given back (an aborted session drops its
 * batches) is simply garbage once the pool is.
 *
 * One pool serves every session of a receiver (server.ts; a session without
 * one makes its own), so that its buffers outlive the connection of one cycle.
 */
export class PayloadPool {
  private readonly free = new Map<number, Buffer[]>()
  private readonly lent = new WeakSet<Uint8Array>()
  private owned = 0
  private readonly maxBytes: () => number
  /** payloads copied into a pooled buffer, and passed through uncopied (pool at its bound), for logs and tests */
  copied = 0
  passed = 0
  /** buffers handed out by {@link take}, and buffers allocated by either (the others handed out were reused) */
  taken = 0
  created = 0

  /** @param maxBytes bytes the pool may own at most (read at each allocation) */
  constructor(maxBytes: () => number) {
    this.maxBytes = maxBytes
  }

  /** Bytes of buffers the pool owns (free or lent). */
  get ownedBytes(): number {
    return this.owned
  }

  /** A copy of `data` in a pooled buffer of the same length, or `data` itself when the pool is at its bound. */
  copy(data: Uint8Array): Uint8Array {
    const b = this.#lend(data.length)
    if (b === undefined) {
      this.passed++
      return data
    }
    b.set(data)
    this.copied++
    return b
  }

  /**
   * A buffer of `length` bytes to fill (its contents are whatever it last
   * held, or uninitialised: the caller overwrites every byte it uses): a
   * pooled one, or a fresh one outside the pool at its bound. Give it back
   * (or forget it) by this very object.
   */
  take(length: number): Buffer {
    this.taken++
    return this.#lend(length) ?? Buffer.allocUnsafeSlow(length)
  }

  /** A pooled buffer of `length` bytes, lent; undefined at the bound. */
  #lend(length: number): Buffer | undefined {
    let b = this.free.get(length)?.pop()
    if (b === undefined) {
      // make room: free buffers of other sizes go first (an incremental's extents vary in length)
      for (const [len, list] of this.free) {
        while (this.owned + length > this.maxBytes() && list.pop() !== undefined) this.owned -= len
        if (list.length === 0) this.free.delete(len)
      }
      if (this.owned + length > this.maxBytes()) return undefined
      // not zero-filled: the borrower overwrites what it uses
      b = Buffer.allocUnsafeSlow(length)
      this.owned += length
      this.created++
    }
    this.lent.add(b)
    return b as Buffer
  }

  /** Give back a payload (a no-op for one the pool did not lend); it may be reused at once. */
  give(data: Uint8Array | undefined): void {
    if (data === undefined || !this.lent.delete(data)) return
    const list = this.free.get(data.length)
    if (list === undefined) this.free.set(data.length, [data as Buffer])
    else list.push(data as Buffer)
  }

  /** Drop a lent buffer from the pool without reusing it (something may still read it). */
  forget(data: Uint8Array | undefined): void {
    if (data === undefined || !this.lent.delete(data)) return
    this.owned -= data.length
  }

  /** A borrower of this pool for one session: see {@link PayloadBorrower}. */
  borrower(): PayloadBorrower {
    return new PayloadBorrower(this)
  }
}

/** What the apply pipeline uses of a payload pool. */
export interface PayloadLender {
  copy(data: Uint8Array): Uint8Array
  give(data: Uint8Array | undefined): void
}

/**
 * One session's share of a {@link PayloadPool} shared by the sessions of a
 * receiver: {@link release}, once the session's batches are settled, forgets
 * every buffer it never gave back (a discarded or failed batch's), so the
 * pool's count stays exact and nothing is lent again that a dead session may
 * still read. After `release` it copies nothing (payloads pass as they came).
 */
export class PayloadBorrower implements PayloadLender {
  readonly #pool: PayloadPool
  readonly #held = new Set<Uint8Array>()
  #released = false
  /** payloads copied by this borrower, of them into new buffers, and buffers forgotten at its release (logs, tests) */
  readonly counts = { copied: 0, created: 0, released: 0 }

  constructor(pool: PayloadPool) {
    this.#pool = pool
  }

  /** Buffers lent to this borrower and not yet given back. */
  get held(): number {
    return this.#held.size
  }

  copy(data: Uint8Array): Uint8Array {
    if (this.#released) return data
    const created = this.#pool.created
    const b = this.#pool.copy(data)
    if (b === data) return b
    this.#held.add(b)
    this.counts.copied++
    if (this.#pool.created > created) this.counts.created++
    return b
  }

  give(data: Uint8Array | undefined): void {
    if (data === undefined || !this.#held.delete(data)) return
    this.#pool.give(data)
  }

  /** Forget every buffer still held (never reused) and copy nothing more. */
  release(): void {
    this.#released = true
    this.counts.released += this.#held.size
    for (const b of this.#held) this.#pool.forget(b)
    this.#held.clear()
  }
}
