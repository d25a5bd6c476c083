/**
 * Cross-field rules of SPEC §6 that a field schema cannot express. Run after
 * decoding and before encoding; throw ProtocolError.
 */
import { DigestLengths, isDigestAlgorithm } from './digest.ts'
import { isCompressionAlgorithm } from './compression.ts'
import { ProtocolError } from './errors.ts'
import { DEFAULT_MAX_EXTENT_BYTES } from './limits.ts'
import { MIN_BLOCK_SIZE } from './block-map.ts'
import { MessageKind, type CompressionAlgorithm, type DigestAlgorithm, type Limits, type Message } from './messages.ts'

/** Limits applied when decoding (and, optionally, encoding). */
export interface DecodeLimits {
  /**
   * largest frame accepted, bytes
   * @default 16 MiB + 64 KiB
   */
  readonly maxMessageBytes?: number
  /**
   * largest extent payload (`length` of a data extent), bytes
   * @default 16 MiB
   */
  readonly maxExtentBytes?: number
  /**
   * the negotiated digest algorithm; when set, Extent and DiskEnd digests
   * must have exactly its length, otherwise any known digest length is accepted
   * @default undefined
   */
  readonly digest?: DigestAlgorithm
  /**
   * the negotiated compression; when set, a data Extent must use it or "none"
   * (SPEC §3.3)
   * @default undefined
   */
  readonly compression?: CompressionAlgorithm
}

/** Sector size: offsets, lengths and capacities are multiples of it (SPEC §6). */
export const SECTOR = 512
/** 2^53: no offset + length may exceed it. */
export const MAX_END = 2 ** 53
const KNOWN_DIGEST_LENGTHS = new Set(Object.values(DigestLengths))

function bad(field: string, msg: string): ProtocolError {
  return new ProtocolError('E_SCHEMA', `${field}: ${msg}`, { field })
}

function checkLimits(l: Limits, field: string): void {
  if (l.maxExtentBytes < SECTOR || l.maxExtentBytes % SECTOR !== 0) throw bad(`${field}.maxExtentBytes`, 'must be a positive multiple of 512')
  if (l.maxMessageBytes < 4096) throw bad(`${field}.maxMessageBytes`, 'must be at least 4096')
  if (l.windowBytes < 1) throw bad(`${field}.windowBytes`, 'must be positive')
}

function checkDigestLength(d: Uint8Array, field: string, alg: DigestAlgorithm | undefined, allowEmpty: boolean): void {
  if (allowEmpty && d.length === 0) return
  if (alg !== undefined) {
    if (d.length !== DigestLengths[alg]) throw bad(field, `${d.length} bytes, ${alg} digests are ${DigestLengths[alg]}`)
  } else if (!KNOWN_DIGEST_LENGTHS.has(d.length)) {
    throw bad(field, `${d.length} bytes is no known digest length`)
  }
}

function knownDigest(alg: string, field: string): DigestAlgorithm {
  if (!isDigestAlgorithm(alg)) throw bad(field, `unknown digest algorithm ${JSON.stringify(alg)}`)
  return alg
}

function unique<T>(items: readonly T[], key: (t: T) => unknown, field: string): void {
  const seen = new Set<unknown>()
  for (const [i, item] of items.entries()) {
    const k = key(item)
    if (seen.has(k)) throw bad(`${field}[${i}]`, `duplicate ${JSON.stringify(k)}`)
    seen.add(k)
  }
}

/** A list of u64le block indexes: whole entries, strictly ascending, below 2^53. Returns the count. */
function blockList(b: Uint8Array, field: string): number {
  if (b.length % 8 !== 0) throw bad(field, `${b.length} bytes is not a list of u64le block indexes`)
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength)
  let prev = -1
  for (let i = 0; i < b.length; i += 8) {
    const x = v.getBigUint64(i, true)
    if (x >= BigInt(MAX_END)) throw bad(field, `block index ${x} is above 2^53`)
    const n = Number(x)
    if (n <= prev) throw bad(field, `block indexes must be strictly ascending (${n} after ${prev})`)
    prev = n
  }
  return b.length / 8
}

/** Apply the cross-field rules to a schema-valid message. */
export function checkMessage(m: Message, limits: DecodeLimits): void {
  const maxExtent = limits.maxExtentBytes ?? DEFAULT_MAX_EXTENT_BYTES
  switch (m.kind) {
    case MessageKind.Hello:
      if (m.versions.some((v) => v < 1)) throw bad('versions', 'versions start at 1')
      checkLimits(m.limits, 'limits')
      return
    case MessageKind.Welcome:
      if (m.version < 1) throw bad('version', 'versions start at 1')
      knownDigest(m.digest, 'digest')
      if (!isCompressionAlgorithm(m.compression)) throw bad('compression', `unknown compression ${JSON.stringify(m.compression)}`)
      checkLimits(m.limits, 'limits')
      return
    case MessageKind.VmOpen:
      if (m.cycle < 1) throw bad('cycle', 'cycles start at 1')
      unique(m.files, (f) => f.name, 'files')
      unique(m.disks, (d) => d, 'disks')
      return
    case MessageKind.VmState:
      if (!m.exists && (m.committedCycle !== 0 || m.generation !== '')) throw bad('exists', 'no mirror has no committed cycle and no generation')
      // SPEC §5.10: the identity of a committed cycle; nothing committed, none
      if (m.committedCycle === 0 && m.committedCycleId !== undefined && m.committedCycleId !== '') throw bad('committedCycleId', 'must be "" when no cycle is committed')
      return
    case MessageKind.DiskOpen:
      if (m.capacity < SECTOR || m.capacity % SECTOR !== 0) throw bad('capacity', 'must be a positive multiple of 512')
      if (m.cycle < 1) throw bad('cycle', 'cycles start at 1')
      if (m.mode === 'incremental' ? m.baseCycle < 1 || m.baseCycle >= m.cycle : m.baseCycle !== 0) {
        throw bad('baseCycle', m.mode === 'incremental' ? 'must be ≥ 1 and below cycle for an incremental' : `must be 0 for a ${m.mode}`)
      }
      // SPEC §5.8: an incremental names the generation it was planned against; a seed or resync has none
      if ((m.mode === 'incremental') === (m.baseGeneration === '')) {
        throw bad('baseGeneration', m.mode === 'incremental' ? 'must be the generation the incremental was planned against' : `must be "" for a ${m.mode}`)
      }
      // SPEC §5.9: a resync compares blocks of a power-of-two size that fits in one extent
      if (m.mode === 'resync') {
        if (m.blockSize < MIN_BLOCK_SIZE || (m.blockSize & (m.blockSize - 1)) !== 0) throw bad('blockSize', `must be a power of two ≥ ${MIN_BLOCK_SIZE} for a resync`)
        if (m.blockSize > maxExtent) throw bad('blockSize', `${m.blockSize} exceeds maxExtentBytes ${maxExtent}`)
      } else if (m.blockSize !== 0) {
        throw bad('blockSize', `must be 0 for a ${m.mode}`)
      }
      return
    case MessageKind.DiskState:
      if (m.accepted !== (m.reason === '')) throw bad('reason', m.accepted ? 'must be "" when accepted' : 'must be an error code when refused')
      // SPEC §5.1: the explanation of a refusal; an accepted open has none
      if (m.accepted && m.detail !== undefined) throw bad('detail', 'must be absent when accepted')
      return
    case MessageKind.Extent: {
      if (m.offset % SECTOR !== 0) throw bad('offset', 'must be a multiple of 512')
      if (m.length < SECTOR || m.length % SECTOR !== 0) throw bad('length', 'must be a positive multiple of 512')
      if (m.offset + m.length > MAX_END) throw bad('length', 'offset + length exceeds 2^53')
      if (m.zero) {
        if (m.compression !== 'none') throw bad('compression', 'must be "none" for a zero extent')
        if (m.data.length !== 0) throw bad('data', 'must be empty for a zero extent')
        if (m.digest.length !== 0) throw bad('digest', 'must be empty for a zero extent')
        return
      }
      if (m.length > maxExtent) throw new ProtocolError('E_FRAME_TOO_LARGE', `length: extent of ${m.length} bytes exceeds maxExtentBytes ${maxExtent}`, { field: 'length' })
      if (!isCompressionAlgorithm(m.compression)) throw bad('compression', `unknown compression ${JSON.stringify(m.compression)}`)
      if (limits.compression !== undefined && m.compression !== 'none' && m.compression !== limits.compression) {
        throw bad('compression', `${m.compression} was not negotiated (${limits.compression})`)
      }
      if (m.compression === 'none') {
        if (m.data.length !== m.length) throw bad('data', `${m.data.length} bytes, length says ${m.length}`)
      } else if (m.data.length < 1 || m.data.length > m.length) {
        throw bad('data', `compressed payload of ${m.data.length} bytes must be 1 … length (${m.length}); send "none" when compression does not shrink`)
      }
      checkDigestLength(m.digest, 'digest', limits.digest, false)
      return
    }
    case MessageKind.BlockMapRequest:
      if (m.count < 1) throw bad('count', 'must be at least 1')
      if (m.first + m.count > MAX_END) throw bad('count', 'first + count exceeds 2^53')
      return
    case MessageKind.BlockMap: {
      if (m.digests.length === 0) throw bad('digests', 'must not be empty')
      const len = limits.digest === undefined ? undefined : DigestLengths[limits.digest]
      if (len !== undefined && m.digests.length % len !== 0) throw bad('digests', `${m.digests.length} bytes is not a whole number of ${limits.digest} digests (${len} bytes)`)
      return
    }
    case MessageKind.BlockCheck: {
      if (m.blockSize < MIN_BLOCK_SIZE || (m.blockSize & (m.blockSize - 1)) !== 0) throw bad('blockSize', `must be a power of two ≥ ${MIN_BLOCK_SIZE}`)
      // SPEC §5.6: a block fits in one extent, as a resync's (§5.9): a receiver reads several blocks ahead, and
      // blocks of up to 64 MiB would let one BlockCheck hold hundreds of MiB of it per session
      if (m.blockSize > maxExtent) throw bad('blockSize', `${m.blockSize} exceeds maxExtentBytes ${maxExtent}`)
      const n = blockList(m.blocks, 'blocks')
      if (n === 0) throw bad('blocks', 'must list at least one block')
      if (m.digests.length % n !== 0 || !KNOWN_DIGEST_LENGTHS.has(m.digests.length / n)) throw bad('digests', `${m.digests.length} bytes for ${n} blocks`)
      const len = limits.digest === undefined ? undefined : DigestLengths[limits.digest]
      if (len !== undefined && m.digests.length !== n * len) throw bad('digests', `${m.digests.length} bytes, ${n} ${limits.digest} digests are ${n * len}`)
      return
    }
    case MessageKind.BlockCheckResult:
      blockList(m.mismatched, 'mismatched')
      if (m.ok !== (m.mismatched.length === 0)) throw bad('mismatched', m.ok ? 'must be empty when ok' : 'must list a block when not ok')
      return
    case MessageKind.VmProgress:
    case MessageKind.DiskProgress:
    case MessageKind.CommitProgress:
      if (m.doneBytes > m.totalBytes) throw bad('doneBytes', `${m.doneBytes} exceeds totalBytes (${m.totalBytes})`)
      return
    case MessageKind.PointsDropped:
      if (m.count < 1) throw bad('count', 'at least one point is dropped')
      if (m.oldest > m.newest) throw bad('oldest', `${m.oldest} is after newest (${m.newest})`)
      if (m.newest >= m.cycle) throw bad('newest', `point ${m.newest} is not older than the committed cycle ${m.cycle}`)
      if (m.count > m.newest - m.oldest + 1) throw bad('count', `${m.count} points do not fit between cycles ${m.oldest} and ${m.newest}`)
      return
    case MessageKind.ExtentAck:
    case MessageKind.DiskEnded:
    case MessageKind.Rollback:
    case MessageKind.RolledBack:
    case MessageKind.Error:
      return
    case MessageKind.DiskEnd:
      if (m.dataBytes + m.zeroBytes > MAX_END) throw bad('zeroBytes', 'dataBytes + zeroBytes exceeds 2^53')
      checkDigestLength(m.digest, 'digest', limits.digest, false)
      return
    case MessageKind.Commit:
      if (m.cycle < 1) throw bad('cycle', 'cycles start at 1')
      return
    case MessageKind.Committed:
      if (m.cycle < 1) throw bad('cycle', 'cycles start at 1')
      unique(m.disks, (d) => d.disk, 'disks')
      return
    case MessageKind.TrivialCheck:
      if (m.prefixBytes > m.size) throw bad('prefixBytes', 'exceeds size')
      checkDigestLength(m.digest, 'digest', knownDigest(m.algorithm, 'algorithm'), false)
      return
    case MessageKind.TrivialResult:
      checkDigestLength(m.digest, 'digest', undefined, true)
      return
    case MessageKind.Certify:
      checkDigestLength(m.digest, 'digest', knownDigest(m.algorithm, 'algorithm'), false)
      return
    case MessageKind.CertifyResult:
      checkDigestLength(m.digest, 'digest', knownDigest(m.algorithm, 'algorithm'), true)
      return
    default:
      throw new ProtocolError('E_UNKNOWN_KIND', `unknown message kind ${String((m as { kind: unknown }).kind)}`)
  }
}
