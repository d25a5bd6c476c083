import { ProtocolError } from './errors.ts'

/** Longest name accepted, in UTF-8 bytes (SPEC §4.1). */
export const MAX_NAME_BYTES = 255

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

/** True when `s` has no unpaired UTF-16 surrogate (so it survives UTF-8 unchanged). */
export function isWellFormed(s: string): boolean {
  return !LONE_SURROGATE.test(s)
}

/**
 * Check a VM, disk or file name that the receiver turns into a path component
 * (SPEC §4.1). Throws `ProtocolError('E_BAD_NAME')` for a non-string, '', '.',
 * '..', anything containing '/', '\\', NUL or another C0 control character, or
 * a name longer than 255 UTF-8 bytes.
 */
export function validateName(name: unknown, what = 'name'): asserts name is string {
  if (typeof name !== 'string') throw new ProtocolError('E_BAD_NAME', `${what} is not a string`, { field: what })
  if (name === '' || name === '.' || name === '..') throw new ProtocolError('E_BAD_NAME', `${what} ${JSON.stringify(name)} is not allowed`, { field: what })
  // eslint-disable-next-line no-control-regex
  if (/[/\\\u0000-\u001f\u007f]/.test(name)) throw new ProtocolError('E_BAD_NAME', `${what} ${JSON.stringify(name)} contains a separator or control character`, { field: what })
  if (LONE_SURROGATE.test(name)) throw new ProtocolError('E_BAD_NAME', `${what} is not well-formed Unicode`, { field: what })
  if (Buffer.byteLength(name, 'utf8') > MAX_NAME_BYTES) throw new ProtocolError('E_BAD_NAME', `${what} is longer than ${MAX_NAME_BYTES} bytes`, { field: what })
}
