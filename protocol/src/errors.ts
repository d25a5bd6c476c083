/** Stable protocol error codes (SPEC §7). */
export const ProtocolErrorCodes = {
  E_MALFORMED: { closeCode: 1007, fatal: true, meaning: 'frame is not a well-formed frame: too short, truncated msgpack, trailing bytes, extension types, reserved byte, text frame' },
  E_UNKNOWN_KIND: { closeCode: 1008, fatal: true, meaning: 'first byte is not a message kind of this version' },
  E_FRAME_TOO_LARGE: { closeCode: 1009, fatal: true, meaning: 'frame above maxMessageBytes, or data extent above maxExtentBytes' },
  E_SCHEMA: { closeCode: 1008, fatal: true, meaning: 'a field is missing, unknown, duplicated, of the wrong type or out of range, or fields contradict each other' },
  E_VERSION: { closeCode: 4001, fatal: true, meaning: 'no common protocol version' },
  E_NO_COMMON_DIGEST: { closeCode: 4002, fatal: true, meaning: 'no common digest algorithm' },
  E_NO_COMMON_COMPRESSION: { closeCode: 4003, fatal: true, meaning: 'no common compression algorithm' },
  E_UNEXPECTED: { closeCode: 4004, fatal: true, meaning: 'a valid message that is not legal in the current state (SPEC §8)' },
  E_AUTH: { closeCode: 4401, fatal: true, meaning: 'missing or wrong bearer token (HTTP 401 before the upgrade)' },
  E_FORBIDDEN: { closeCode: 4403, fatal: true, meaning: 'the token may not replicate this VM' },
  E_BAD_NAME: { closeCode: 4400, fatal: true, meaning: 'a VM, disk or file name is not a safe path component (SPEC §4.1)' },
  E_BAD_DIGEST: { closeCode: 4410, fatal: true, meaning: 'an extent payload does not match its digest' },
  E_SEQUENCE: { closeCode: 4411, fatal: true, meaning: 'an Extent seq is not the next expected one, or a BlockMapRequest or BlockMap is out of order (SPEC §5.9)' },
  E_RANGE: {
    closeCode: 4412,
    fatal: true,
    meaning:
      'offset + length beyond the disk capacity, a block map request beyond the last block, a resync extent ahead of the block map (SPEC §5.9), or another value beyond what the receiver allows',
  },
  E_DECOMPRESS: { closeCode: 4413, fatal: true, meaning: 'a compressed payload is corrupt or does not expand to exactly length bytes' },
  E_CYCLE_MISMATCH: {
    closeCode: 4420,
    fatal: false,
    meaning: "a DiskOpen's cycle is not the committed cycle + 1, another cycle is in flight, or a resume's in-flight cycle has another cycle identity",
  },
  E_MIRROR_MODIFIED: { closeCode: 4421, fatal: false, meaning: 'the mirror changed since its last commit (CID or size): incremental refused' },
  E_CHAIN_MISMATCH: { closeCode: 4422, fatal: false, meaning: 'the source chain does not continue the committed one: incremental refused' },
  E_INCOMPATIBLE: { closeCode: 4423, fatal: false, meaning: "the VM's compat record differs from the mirror's" },
  E_GENERATION: { closeCode: 4424, fatal: false, meaning: "the incremental was planned against another generation than the mirror's last commit (SPEC §5.8): resync" },
  E_DIVERGED: { closeCode: 4425, fatal: false, meaning: 'the mirror failed a check since it was last written whole (SPEC §5.8): incremental refused, resync' },
  E_HELD: { closeCode: 4426, fatal: false, meaning: 'a hold on the mirror (an open restore point, a failover test) forbids changing it' },
  E_TIMEOUT: { closeCode: 4408, fatal: true, meaning: 'a deadline passed: Hello not sent in time, or the connection was idle too long' },
  E_BUSY: { closeCode: 4429, fatal: true, meaning: 'another connection holds this VM' },
  E_END_MISMATCH: { closeCode: 4430, fatal: true, meaning: 'DiskEnd counts or cycle digest differ from what the receiver applied' },
  E_IO: { closeCode: 4500, fatal: true, meaning: 'an I/O error on the receiver (or agent) side' },
  E_NO_SPACE: { closeCode: 4507, fatal: true, meaning: 'the receiver ran out of space' },
  E_QUOTA: { closeCode: 4508, fatal: true, meaning: "the token's store quota would be exceeded" },
  E_SHUTDOWN: { closeCode: 1001, fatal: true, meaning: 'the peer is shutting down' },
  E_INTERNAL: { closeCode: 1011, fatal: true, meaning: 'a bug; details are logged, not sent' },
} as const
/** A stable error code (SPEC §7). */
export type ProtocolErrorCode = keyof typeof ProtocolErrorCodes

/** A typed protocol error with a stable code and the WebSocket close code to send. */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError'
  readonly code: ProtocolErrorCode
  readonly closeCode: number
  readonly fatal: boolean
  /** dotted path of the offending field when a decoded/encoded message is invalid, e.g. "source.layers[0].cid" */
  readonly field?: string
  constructor(code: ProtocolErrorCode, message: string, options: { field?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    this.closeCode = ProtocolErrorCodes[code].closeCode
    this.fatal = ProtocolErrorCodes[code].fatal
    if (options.field !== undefined) this.field = options.field
  }
}
