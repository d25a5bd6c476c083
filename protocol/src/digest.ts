import { createHash, type Hash } from 'node:crypto'
import xxhash, { type XXHashAPI } from 'xxhash-wasm'
import { ProtocolError } from './errors.ts'
import { DigestAlgorithms, type DigestAlgorithm } from './messages.ts'

/** A streaming digest: feed bytes with `update`, read the result once with `digest`. */
export interface StreamingDigest {
  readonly algorithm: DigestAlgorithm
  /** feed more bytes; returns `this` for chaining */
  update(data: Uint8Array): this
  /** the digest bytes (SPEC §3.2: xxh64 is 8 bytes big-endian); call once */
  digest(): Uint8Array
}

/** Digest output length in bytes per algorithm (SPEC §3.2). */
export const DigestLengths: Readonly<Record<DigestAlgorithm, number>> = Object.freeze({
  xxh64: 8,
  sha256: 32,
  sha1: 20,
  md5: 16,
})

let api: XXHashAPI | undefined
let loading: Promise<void> | undefined

/**
 * Load the xxhash-wasm module once. Call (and await) before `createDigest('xxh64')`;
 * the node:crypto algorithms need no initialisation. Safe to call many times.
 */
export function initDigests(): Promise<void> {
  loading ??= xxhash().then((x) => {
    api = x
  })
  return loading
}

/** True when `name` is a digest algorithm this build implements. */
export function isDigestAlgorithm(name: unknown): name is DigestAlgorithm {
  return typeof name === 'string' && (DigestAlgorithms as readonly string[]).includes(name)
}

class NodeDigest implements StreamingDigest {
  readonly algorithm: DigestAlgorithm
  readonly #hash: Hash
  constructor(algorithm: DigestAlgorithm) {
    this.algorithm = algorithm
    this.#hash = createHash(algorithm)
  }

  update(data: Uint8Array): this {
    this.#hash.update(data)
    return this
  }

  digest(): Uint8Array {
    return this.#hash.digest()
  }
}

/**
 * Largest piece handed to xxhash-wasm at once. Its `update` copies the input
 * into the module's linear memory, which grows to the largest input ever fed
 * and never shrinks: a 4 MiB update grew it to 4 MiB, ~12 ms on a quiet
 * machine and 60–70 ms of an incremental's ship lap under load (fresh pages
 * faulted in; issue #17, the trivial check's prefix digested in 4 MiB steps).
 * Fed in pieces of 64 KiB, the memory stays at two wasm pages and the copy in
 * cache; the digest is the same (streaming).
 */
export const XXH64_PIECE_BYTES = 64 * 1024

/** The largest piece handed to xxhash-wasm in this process (tests: the memory stays small). */
export const xxh64Stats = { largestPiece: 0 }

class Xxh64Digest implements StreamingDigest {
  readonly algorithm = 'xxh64' as const
  readonly #state: ReturnType<XXHashAPI['create64']>
  constructor(x: XXHashAPI) {
    this.#state = x.create64(0n)
  }

  update(data: Uint8Array): this {
    const n = data.byteLength
    if (n <= XXH64_PIECE_BYTES) {
      if (n > xxh64Stats.largestPiece) xxh64Stats.largestPiece = n
      this.#state.update(data)
      return this
    }
    if (XXH64_PIECE_BYTES > xxh64Stats.largestPiece) xxh64Stats.largestPiece = XXH64_PIECE_BYTES
    for (let at = 0; at < n; at += XXH64_PIECE_BYTES) this.#state.update(data.subarray(at, Math.min(n, at + XXH64_PIECE_BYTES)))
    return this
  }

  digest(): Uint8Array {
    const out = new Uint8Array(8)
    new DataView(out.buffer).setBigUint64(0, this.#state.digest(), false)
    return out
  }
}

/**
 * Create a streaming digest. `xxh64` (seed 0, output big-endian, as `xxhsum`
 * prints it) needs `await initDigests()` first; otherwise throws
 * `ProtocolError('E_INTERNAL')`. An unknown name throws `E_NO_COMMON_DIGEST`.
 */
export function createDigest(algorithm: DigestAlgorithm): StreamingDigest {
  switch (algorithm) {
    case 'xxh64':
      if (api === undefined) throw new ProtocolError('E_INTERNAL', 'xxh64 used before initDigests() resolved')
      return new Xxh64Digest(api)
    case 'sha256':
    case 'sha1':
    case 'md5':
      return new NodeDigest(algorithm)
    default:
      throw new ProtocolError('E_NO_COMMON_DIGEST', `unsupported digest algorithm ${JSON.stringify(algorithm as unknown)}`)
  }
}

/** One-shot convenience: digest of `data` with `algorithm`. */
export function digestOf(algorithm: DigestAlgorithm, data: Uint8Array): Uint8Array {
  return createDigest(algorithm).update(data).digest()
}

/** Zero bytes compared against per step by {@link isZeroBytes} (memcmp, no copy). */
const ZERO_STEP = new Uint8Array(1024 * 1024)
/** Digests of all-zero blocks, by algorithm and length (a handful of entries: block size and a tail). */
const zeroDigests = new Map<string, Uint8Array>()
const ZERO_DIGESTS_KEPT = 16

/** True when every byte of `data` is zero (compared with `Buffer.compare`: memcmp speed, no copy). */
export function isZeroBytes(data: Uint8Array): boolean {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  for (let pos = 0; pos < buf.length; pos += ZERO_STEP.length) {
    const n = Math.min(ZERO_STEP.length, buf.length - pos)
    if (buf.compare(ZERO_STEP, 0, n, pos, pos + n) !== 0) return false
  }
  return true
}

/** The digest of `length` zero bytes with `algorithm`, computed once per length (shared: do not modify). */
export function zeroDigest(algorithm: DigestAlgorithm, length: number): Uint8Array {
  const key = `${algorithm}:${length}`
  let d = zeroDigests.get(key)
  if (d === undefined) {
    const h = createDigest(algorithm)
    for (let done = 0; done < length; done += ZERO_STEP.length) h.update(ZERO_STEP.subarray(0, Math.min(ZERO_STEP.length, length - done)))
    d = h.digest()
    if (zeroDigests.size >= ZERO_DIGESTS_KEPT) zeroDigests.clear()
    zeroDigests.set(key, d)
  }
  return d
}

/**
 * The digest of one block — equal to `digestOf(algorithm, data)` — with an
 * all-zero block recognised by comparison (memcmp, several times faster than
 * hashing) and answered with (a copy of) the cached {@link zeroDigest}. For
 * block maps of sparse disks, where most blocks read as zeros.
 */
export function blockDigest(algorithm: DigestAlgorithm, data: Uint8Array): Uint8Array {
  // Uint8Array's slice copies; a Buffer's (Node's hashes) would be a view of the cached digest
  if (isZeroBytes(data)) return Uint8Array.prototype.slice.call(zeroDigest(algorithm, data.length))
  return createDigest(algorithm).update(data).digest()
}
