/** Stable protocol error codes (SPEC §7). */
export const ProtocolErrorCodes = {
  E_MALFORMED: { closeCode: 1007, fatal: true },
  E_UNKNOWN_KIND: { closeCode: 1008, fatal: true },
  E_FRAME_TOO_LARGE: { closeCode: 1009, fatal: true },
  E_SCHEMA: { closeCode: 1008, fatal: true },
  E_VERSION: { closeCode: 4001, fatal: true },
  E_NO_COMMON_DIGEST: { closeCode: 4002, fatal: true },
  E_NO_COMMON_COMPRESSION: { closeCode: 4003, fatal: true },
  E_UNEXPECTED: { closeCode: 4004, fatal: true },
  E_AUTH: { closeCode: 4401, fatal: true },
  E_FORBIDDEN: { closeCode: 4403, fatal: true },
  E_BAD_NAME: { closeCode: 4400, fatal: true },
  E_BAD_DIGEST: { closeCode: 4410, fatal: true },
  E_SEQUENCE: { closeCode: 4411, fatal: true },
  E_RANGE: { closeCode: 4412, fatal: true },
  E_DECOMPRESS: { closeCode: 4413, fatal: true },
  E_CYCLE_MISMATCH: { closeCode: 4420, fatal: false },
  E_MIRROR_MODIFIED: { closeCode: 4421, fatal: false },
  E_CHAIN_MISMATCH: { closeCode: 4422, fatal: false },
  E_INCOMPATIBLE: { closeCode: 4423, fatal: false },
  E_BUSY: { closeCode: 4429, fatal: true },
  E_END_MISMATCH: { closeCode: 4430, fatal: true },
  E_IO: { closeCode: 4500, fatal: true },
  E_NO_SPACE: { closeCode: 4507, fatal: true },
  E_SHUTDOWN: { closeCode: 1001, fatal: true },
  E_INTERNAL: { closeCode: 1011, fatal: true },
} as const
export type ProtocolErrorCode = keyof typeof ProtocolErrorCodes

/** A typed protocol error with a stable code and the WebSocket close code to send. */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError'
  readonly code: ProtocolErrorCode
  readonly closeCode: number
  readonly fatal: boolean
  /** dotted path of the offending field when a decoded/encoded message is invalid, e.g. "source.layers[0].cid" */
  readonly field?: string
  constructor (code: ProtocolErrorCode, message: string, options: { field?: string, cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    this.closeCode = ProtocolErrorCodes[code].closeCode
    this.fatal = ProtocolErrorCodes[code].fatal
    if (options.field !== undefined) this.field = options.field
  }
}
