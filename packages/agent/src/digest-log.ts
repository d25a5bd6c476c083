/**
 * The per-extent digests of a disk cycle, kept compactly (digest bytes plus a
 * zero bit per seq) so that the cycle digest can be replayed after a
 * reconnect without reading the data again. Bounded: past `maxBytes` it stops
 * recording and the replay reads the rest of the prefix from the frozen view.
 */
export class DigestLog {
  readonly digestLength: number
  readonly maxBytes: number
  #digests: Buffer
  #zero: Uint8Array
  #length = 0

  constructor(digestLength: number, maxBytes = 32 * 1024 * 1024) {
    this.digestLength = digestLength
    this.maxBytes = maxBytes
    this.#digests = Buffer.alloc(digestLength * 1024)
    this.#zero = new Uint8Array(128)
  }

  /** number of consecutive seqs recorded from 0 */
  get length(): number {
    return this.#length
  }

  /** Record extent `seq`; only the next seq in order is kept (and only while under the bound). */
  record(seq: number, zero: boolean, digest: Uint8Array): void {
    if (seq !== this.#length) return
    const need = (seq + 1) * this.digestLength
    if (need + (seq >> 3) + 1 > this.maxBytes) return
    if (need > this.#digests.length) {
      const grown = Buffer.alloc(Math.min(Math.max(need, this.#digests.length * 2), this.maxBytes))
      this.#digests.copy(grown)
      this.#digests = grown
    }
    if (seq >> 3 >= this.#zero.length) {
      const grown = new Uint8Array(this.#zero.length * 2)
      grown.set(this.#zero)
      this.#zero = grown
    }
    if (zero) {
      this.#zero[seq >> 3] = (this.#zero[seq >> 3] as number) | (1 << (seq & 7))
    } else {
      if (digest.length !== this.digestLength) throw new RangeError(`digest of ${digest.length} bytes, expected ${this.digestLength}`)
      this.#digests.set(digest, seq * this.digestLength)
    }
    this.#length++
  }

  /** whether extent `seq` (< length) was zero */
  isZero(seq: number): boolean {
    return ((this.#zero[seq >> 3] as number) & (1 << (seq & 7))) !== 0
  }

  /** the digest of extent `seq` (< length); empty for a zero extent */
  digest(seq: number): Uint8Array {
    return this.isZero(seq) ? new Uint8Array(0) : this.#digests.subarray(seq * this.digestLength, (seq + 1) * this.digestLength)
  }

  /** Forget everything (a new plan). */
  clear(): void {
    this.#length = 0
    this.#zero.fill(0)
  }
}
