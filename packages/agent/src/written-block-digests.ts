/**
 * `--verify changed` (SPEC §5.6): the frozen-view digests of the blocks a
 * cycle writes, collected before its commit so that after the commit only
 * the BlockChecks go (issue #13: reading the changed blocks a second time
 * after the commit was most of the check's cost). The frozen view never
 * changes, so a digest taken while the cycle ships is the digest the check
 * would have read afterwards. The receiver's side is unchanged: it reads its
 * blocks back from the mirror after the commit.
 *
 * Memory: the digest and the index of each block (16 bytes a block with
 * xxh64, 40 with sha256), grown as blocks come, at most
 * {@link READY_DIGESTS_MAX_BLOCKS} blocks; beyond that everything is let go
 * and the check reads the blocks after the commit, as before.
 */
import { DigestLengths, type DigestAlgorithm } from '@grainline/protocol'

/**
 * Most blocks whose digests are kept for the check (4 MiB with xxh64, 10 MiB
 * with sha256, at 1 MiB blocks a cycle that wrote 256 GiB); a cycle that
 * writes more is checked by reading its blocks after the commit.
 * @default 262144
 */
export const READY_DIGESTS_MAX_BLOCKS = 256 * 1024

/** Blocks the arrays hold at first (grown by doubling). */
const INITIAL_BLOCKS = 64

/** See the file comment. {@link add} blocks in ascending order, then {@link complete}. */
export class WrittenBlockDigests {
  readonly blockSize: number
  readonly algorithm: DigestAlgorithm
  readonly #len: number
  readonly #max: number
  #blocks: Float64Array
  #digests: Uint8Array
  #count = 0
  #state: 'filling' | 'complete' | 'dropped' = 'filling'
  /** why the digests were let go (a cap, a failed read); undefined while kept */
  dropped: string | undefined

  constructor(blockSize: number, algorithm: DigestAlgorithm, maxBlocks = READY_DIGESTS_MAX_BLOCKS) {
    this.blockSize = blockSize
    this.algorithm = algorithm
    this.#len = DigestLengths[algorithm]
    this.#max = Math.max(0, maxBlocks)
    this.#blocks = new Float64Array(Math.min(INITIAL_BLOCKS, this.#max))
    this.#digests = new Uint8Array(this.#blocks.length * this.#len)
  }

  /** blocks held */
  get count(): number {
    return this.#count
  }

  /** true once every block written is here (complete, not dropped) */
  get ready(): boolean {
    return this.#state === 'complete'
  }

  /**
   * The next block written (ascending) and its digest (copied). Past the cap
   * every digest is let go: the check reads the blocks after the commit.
   */
  add(block: number, digest: Uint8Array): void {
    if (this.#state !== 'filling') return
    if (digest.length !== this.#len) throw new RangeError(`a ${this.algorithm} digest is ${this.#len} bytes, got ${digest.length}`)
    if (this.#count > 0 && block <= (this.#blocks[this.#count - 1] as number)) throw new RangeError(`block ${block} after block ${this.#blocks[this.#count - 1]}: blocks are added in ascending order`)
    if (this.#count === this.#max) {
      this.drop(`more than ${this.#max} blocks written`)
      return
    }
    if (this.#count === this.#blocks.length) {
      const n = Math.min(this.#max, this.#blocks.length * 2)
      const blocks = new Float64Array(n)
      blocks.set(this.#blocks)
      const digests = new Uint8Array(n * this.#len)
      digests.set(this.#digests)
      this.#blocks = blocks
      this.#digests = digests
    }
    this.#blocks[this.#count] = block
    this.#digests.set(digest, this.#count * this.#len)
    this.#count++
  }

  /** Every block written was added: the digests are ready for the check. */
  complete(): void {
    if (this.#state === 'filling') this.#state = 'complete'
  }

  /** Let every digest go (the check reads the blocks after the commit). */
  drop(reason: string): void {
    if (this.#state === 'dropped') return
    this.#state = 'dropped'
    this.dropped = reason
    this.#count = 0
    this.#blocks = new Float64Array(0)
    this.#digests = new Uint8Array(0)
  }

  /** The blocks and their digests, ascending (views into the store: copy to keep them). */
  *entries(): Generator<readonly [block: number, digest: Uint8Array]> {
    for (let i = 0; i < this.#count; i++) yield [this.#blocks[i] as number, this.#digests.subarray(i * this.#len, (i + 1) * this.#len)]
  }
}
