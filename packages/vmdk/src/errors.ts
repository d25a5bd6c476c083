/**
 * Stable error codes of `@grainline/vmdk`. Match on `err.code`, not on `instanceof`
 * across packages. Every code is listed in the package README.
 */
export const VmdkErrorCodes = [
  'E_NOT_FOUND',
  'E_DESCRIPTOR',
  'E_FORMAT',
  'E_TRUNCATED',
  'E_RANGE',
  'E_UNSUPPORTED',
  'E_VERSION',
  'E_DIRTY',
  'E_CHAIN_CID',
  'E_CHAIN_CAPACITY',
  'E_CHAIN_LOOP',
  'E_CHAIN_MISSING',
  'E_READONLY',
  'E_IO',
  'E_EXISTS',
  'E_ABORTED',
  'E_NOT_REGULAR',
  'E_ENCODING',
  'E_OUTSIDE_ROOT',
] as const
export type VmdkErrorCode = (typeof VmdkErrorCodes)[number]

/** The one error class this package throws for bad input, broken chains and I/O failures. */
export class VmdkError extends Error {
  override readonly name = 'VmdkError'
  readonly code: VmdkErrorCode
  /** The file the problem was found in ('' when no file is involved, e.g. a pure parse). */
  readonly file: string
  constructor(code: VmdkErrorCode, message: string, file = '', options?: { cause?: unknown }) {
    super(file !== '' ? `${message} (${file})` : message, options)
    this.code = code
    this.file = file
  }
}

/** True if `err` is a VmdkError (by name and code, so it works across copies of the package). */
export function isVmdkError(err: unknown): err is VmdkError {
  return err instanceof Error && err.name === 'VmdkError' && typeof (err as { code?: unknown }).code === 'string'
}

/**
 * Narrow a 64-bit on-disk value to a safe integer once (STYLE §10).
 * Throws `E_RANGE` above `Number.MAX_SAFE_INTEGER`.
 */
export function toSafeInteger(v: bigint, field: string, file = ''): number {
  if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new VmdkError('E_RANGE', `${field} out of range: ${v}`, file)
  }
  return Number(v)
}

/** Wrap a Node I/O error into a VmdkError (ENOENT → E_NOT_FOUND, others → E_IO). */
export function ioError(err: unknown, file: string, what: string): VmdkError {
  if (isVmdkError(err)) return err
  const code = (err as { code?: unknown } | null)?.code
  if (code === 'ENOENT') return new VmdkError('E_NOT_FOUND', `${what}: no such file`, file, { cause: err })
  if (code === 'EISDIR' || code === 'ENXIO') return new VmdkError('E_NOT_REGULAR', `${what}: not a regular file`, file, { cause: err })
  if (code === 'EEXIST') return new VmdkError('E_EXISTS', `${what}: file exists`, file, { cause: err })
  // ABORT_ERR: Node's own; E_ABORTED: a FileAccess that heard its stop (the agent's SFTP access)
  if (code === 'ABORT_ERR' || code === 'E_ABORTED' || (err as { name?: unknown } | null)?.name === 'AbortError') {
    return new VmdkError('E_ABORTED', `${what}: aborted`, file, { cause: err })
  }
  return new VmdkError('E_IO', `${what}: ${(err as Error)?.message ?? String(err)}`, file, { cause: err })
}
