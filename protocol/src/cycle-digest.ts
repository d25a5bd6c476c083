import { createDigest, type StreamingDigest } from './digest.ts'
import type { DigestAlgorithm } from './messages.ts'

/** The fields of an extent that the cycle digest covers. */
export interface CycleDigestExtent {
  readonly offset: number
  readonly length: number
  readonly zero: boolean
  /** the extent's own digest (empty for zero extents) */
  readonly digest: Uint8Array
}

/**
 * The digest over a whole cycle of one disk, carried by DiskEnd (SPEC §5.4):
 *
 *   cycleDigest := H( for each extent in seq order:
 *                     u64le(offset) • u64le(length) • u8(zero ? 1 : 0) • extentDigest )
 *
 * where H is the negotiated digest algorithm and extentDigest is the Extent's
 * `digest` field (empty for zero extents). Both sides compute it independently
 * — the agent as it sends, the receiver as it applies — so a resumed cycle is
 * only sealed if every extent, old and new connection alike, matches.
 */
export class CycleDigest {
  readonly algorithm: DigestAlgorithm
  readonly #hash: StreamingDigest
  readonly #head = new Uint8Array(17)
  readonly #view = new DataView(this.#head.buffer)
  #count = 0

  /** `xxh64` needs `await initDigests()` first. */
  constructor(algorithm: DigestAlgorithm) {
    this.algorithm = algorithm
    this.#hash = createDigest(algorithm)
  }

  /** number of extents added so far */
  get count(): number {
    return this.#count
  }

  /** add the next extent (in seq order); returns `this` */
  add(extent: CycleDigestExtent): this {
    this.#view.setBigUint64(0, BigInt(extent.offset), true)
    this.#view.setBigUint64(8, BigInt(extent.length), true)
    this.#head[16] = extent.zero ? 1 : 0
    this.#hash.update(this.#head)
    if (extent.digest.length > 0) this.#hash.update(extent.digest)
    this.#count++
    return this
  }

  /** the digest bytes; call once */
  digest(): Uint8Array {
    return this.#hash.digest()
  }
}
