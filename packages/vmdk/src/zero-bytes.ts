/**
 * Whether bytes are all zero: the one check the agent (a read extent that is
 * zeros is sent as a zero extent), the receiver (old contents journaled by
 * length, a seed's zero granules, archive chunks) and this package share.
 */
/** Whether bytes are all zero (compared with a kept zero buffer in 64 KiB steps: memcmp speed, no allocation). */
const ZERO = Buffer.alloc(65536)

/** True when every byte of `b` is zero (true for an empty buffer). */
export function isAllZero(b: Uint8Array): boolean {
  const buf = Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength)
  for (let i = 0; i < buf.length; i += ZERO.length) {
    const n = Math.min(ZERO.length, buf.length - i)
    // the first byte first: most data differs at once
    if (buf[i] !== 0 || buf.compare(ZERO, 0, n, i, i + n) !== 0) return false
  }
  return true
}
