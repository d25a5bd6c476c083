import { deflateRawSync, inflateRawSync } from 'node:zlib'
import { compressSync as lz4Compress, uncompressSync as lz4Uncompress } from 'lz4-napi'
import { ProtocolError } from './errors.ts'
import { CompressionAlgorithms, type CompressionAlgorithm } from './messages.ts'

/** True when `name` is a compression algorithm this build implements. */
export function isCompressionAlgorithm(name: unknown): name is CompressionAlgorithm {
  return typeof name === 'string' && (CompressionAlgorithms as readonly string[]).includes(name)
}

function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength)
}

/**
 * Compress `data` (SPEC §3.3). `lz4` is an LZ4 block prefixed with the
 * uncompressed length as u32le (lz4_flex `compress_prepend_size`); `deflate`
 * is raw DEFLATE (RFC 1951); `none` returns `data` itself (no copy).
 */
export function compress(algorithm: CompressionAlgorithm, data: Uint8Array): Uint8Array {
  switch (algorithm) {
    case 'none':
      return data
    case 'lz4':
      return lz4Compress(asBuffer(data))
    case 'deflate':
      return deflateRawSync(data, { level: 1 })
    default:
      throw new ProtocolError('E_NO_COMMON_COMPRESSION', `unsupported compression ${JSON.stringify(algorithm as unknown)}`)
  }
}

/**
 * Decompress `data`, which must expand to exactly `expectedLength` bytes.
 * Never allocates more than `expectedLength` (+ a small constant) whatever the
 * input claims, so a "zip bomb" cannot exhaust memory. Throws
 * `ProtocolError('E_DECOMPRESS')` on corrupt input or any length mismatch.
 * For `none`, returns `data` itself after checking its length.
 */
export function decompress(algorithm: CompressionAlgorithm, data: Uint8Array, expectedLength: number): Uint8Array {
  if (!Number.isSafeInteger(expectedLength) || expectedLength < 0) {
    throw new ProtocolError('E_DECOMPRESS', `bad expected length ${expectedLength}`)
  }
  let out: Uint8Array
  switch (algorithm) {
    case 'none':
      out = data
      break
    case 'lz4': {
      // The u32le prefix is what lz4_flex sizes its output buffer from: check it first.
      if (data.length < 4) throw new ProtocolError('E_DECOMPRESS', 'lz4 block shorter than its length prefix')
      const claimedLength = asBuffer(data).readUInt32LE(0)
      if (claimedLength !== expectedLength) {
        throw new ProtocolError('E_DECOMPRESS', `lz4 block claims ${claimedLength} bytes, expected ${expectedLength}`)
      }
      try {
        out = lz4Uncompress(asBuffer(data))
      } catch (err) {
        throw new ProtocolError('E_DECOMPRESS', `corrupt lz4 block: ${(err as Error).message}`)
      }
      break
    }
    case 'deflate':
      try {
        // maxOutputLength + 1 so that "too long" is distinguishable from "exactly right".
        out = inflateRawSync(data, { maxOutputLength: expectedLength + 1 })
      } catch (err) {
        const code = (err as { code?: unknown }).code
        const why = code === 'ERR_BUFFER_TOO_LARGE' ? `inflates beyond ${expectedLength} bytes` : (err as Error).message
        throw new ProtocolError('E_DECOMPRESS', `corrupt deflate stream: ${why}`)
      }
      break
    default:
      throw new ProtocolError('E_DECOMPRESS', `unsupported compression ${JSON.stringify(algorithm as unknown)}`)
  }
  if (out.length !== expectedLength) {
    throw new ProtocolError('E_DECOMPRESS', `${algorithm} payload is ${out.length} bytes, expected ${expectedLength}`)
  }
  return out
}
