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
 */
export class PayloadPool {
  private readonly free = new Map<number, Uint8Array[]>()
  private readonly lent = new WeakSet<Uint8Array>()
  private owned = 0
  private readonly maxBytes: () => number
  /** payloads copied into a pooled buffer, and passed through uncopied (pool at its bound), for logs and tests */
  copied = 0
  passed = 0

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
    let b = this.free.get(data.length)?.pop()
    if (b === undefined) {
      // make room: free buffers of other sizes go first (an incremental's extents vary in length)
      for (const [len, list] of this.free) {
        while (this.owned + data.length > this.maxBytes() && list.pop() !== undefined) this.owned -= len
        if (list.length === 0) this.free.delete(len)
      }
      if (this.owned + data.length > this.maxBytes()) {
        this.passed++
        return data
      }
      b = new Uint8Array(data.length)
      this.owned += data.length
    }
    b.set(data)
    this.lent.add(b)
    this.copied++
    return b
  }

  /** Give back a payload (a no-op for one the pool did not lend); it may be reused at once. */
  give(data: Uint8Array | undefined): void {
    if (data === undefined || !this.lent.delete(data)) return
    const list = this.free.get(data.length)
    if (list === undefined) this.free.set(data.length, [data])
    else list.push(data)
  }
}
