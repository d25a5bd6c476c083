/**
 * `--scrub N` (SPEC §5.6): the frozen-view digests of the blocks of this
 * cycle's scrub slice, taken before the commit so that after the commit only
 * the BlockChecks go (issue #13: the agent's read of its slice after the
 * commit was most of a scrub's cost). The slice follows from the rotation in
 * the agent's record, known before the cycle ships, and the frozen view never
 * changes: a digest taken while the cycle ships is the digest the check
 * would have read afterwards. The receiver's side is unchanged: it reads its
 * slice back from the mirror after the commit.
 *
 * Memory: one digest a block of the slice (8 bytes with xxh64, 32 with
 * sha256; the blocks are consecutive, no index is kept), at most
 * {@link SLICE_DIGESTS_MAX_BLOCKS} blocks; a longer slice is read after the
 * commit, as before.
 */
import { DigestLengths, type DigestAlgorithm } from '@grainline/protocol'

/**
 * Most blocks of a scrub slice whose digests are taken before the commit
 * (2 MiB with xxh64, 8 MiB with sha256; at 1 MiB blocks a slice of 256 GiB,
 * `--scrub 32` of an 8 TiB disk); a longer slice is read after the commit.
 * @default 262144
 */
export const SLICE_DIGESTS_MAX_BLOCKS = 256 * 1024

/** See the file comment. {@link set} every block from `from` in order, then {@link complete}. */
export class ScrubSliceDigests {
  /** the first block of the slice and the block after its last */
  readonly from: number
  readonly to: number
  readonly blockSize: number
  readonly algorithm: DigestAlgorithm
  readonly #len: number
  #digests: Uint8Array
  #count = 0
  #state: 'filling' | 'complete' | 'dropped' = 'filling'
  /** why the digests were let go (a failed read, a stop); undefined while kept */
  dropped: string | undefined
  /** bytes of the slice known to be zero and not read (holes, unallocated grains) */
  holeBytes = 0

  /** @throws RangeError a slice longer than `maxBlocks` (check {@link fits} first) */
  constructor(from: number, to: number, blockSize: number, algorithm: DigestAlgorithm, maxBlocks = SLICE_DIGESTS_MAX_BLOCKS) {
    if (!ScrubSliceDigests.fits(from, to, maxBlocks)) throw new RangeError(`a scrub slice of blocks ${from}–${to}: at most ${maxBlocks} blocks are kept`)
    this.from = from
    this.to = to
    this.blockSize = blockSize
    this.algorithm = algorithm
    this.#len = DigestLengths[algorithm]
    this.#digests = new Uint8Array((to - from) * this.#len)
  }

  /** Whether the slice `[from, to)` is kept ahead (not empty, at most `maxBlocks` blocks). */
  static fits(from: number, to: number, maxBlocks = SLICE_DIGESTS_MAX_BLOCKS): boolean {
    return Number.isSafeInteger(from) && Number.isSafeInteger(to) && from >= 0 && to > from && to - from <= maxBlocks
  }

  /** blocks held */
  get count(): number {
    return this.#count
  }

  /** true once every block of the slice is here (complete, not dropped) */
  get ready(): boolean {
    return this.#state === 'complete'
  }

  /** Whether these are the digests a scrub of blocks `[from, to)` of `blockSize` with `algorithm` needs, ready. */
  serves(from: number, to: number, blockSize: number, algorithm: DigestAlgorithm): boolean {
    return this.ready && this.from === from && this.to === to && this.blockSize === blockSize && this.algorithm === algorithm
  }

  /** The digest of the next block of the slice (`block` must be it), copied. */
  set(block: number, digest: Uint8Array): void {
    if (this.#state !== 'filling') return
    if (digest.length !== this.#len) throw new RangeError(`a ${this.algorithm} digest is ${this.#len} bytes, got ${digest.length}`)
    if (block !== this.from + this.#count) throw new RangeError(`block ${block} of the slice ${this.from}–${this.to}: block ${this.from + this.#count} is next`)
    this.#digests.set(digest, this.#count * this.#len)
    this.#count++
  }

  /** Every block was set: the digests are ready for the check (let go when one is missing). */
  complete(): void {
    if (this.#state !== 'filling') return
    if (this.#count !== this.to - this.from) {
      this.drop(`${this.#count} of the ${this.to - this.from} blocks of the slice digested`)
      return
    }
    this.#state = 'complete'
  }

  /** Let every digest go (the check reads the slice after the commit). */
  drop(reason: string): void {
    if (this.#state === 'dropped') return
    this.#state = 'dropped'
    this.dropped = reason
    this.#count = 0
    this.#digests = new Uint8Array(0)
  }

  /** The blocks and their digests, ascending (views into the store: copy to keep them). */
  *entries(): Generator<readonly [block: number, digest: Uint8Array]> {
    for (let i = 0; i < this.#count; i++) yield [this.from + i, this.#digests.subarray(i * this.#len, (i + 1) * this.#len)]
  }
}
