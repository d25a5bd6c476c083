import { ProtocolErrorCodes, type ProtocolErrorCode } from './errors.ts'
import { MAX_REFUSAL_DETAIL_BYTES, MessageKind, type ErrorMessage } from './messages.ts'

/** Longest Error `message` on the wire, UTF-8 bytes (SPEC §6). */
export const MAX_ERROR_TEXT_BYTES = 4096

/** `s` cut to at most `maxBytes` UTF-8 bytes on a character boundary, lone surrogates replaced by U+FFFD. */
export function truncateUtf8(s: string, maxBytes: number): string {
  let bytes = 0
  let out = ''
  for (const ch of s) {
    const cp = ch.codePointAt(0) as number
    const c = cp >= 0xd800 && cp <= 0xdfff ? '\ufffd' : ch
    const n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 || c === '\ufffd' ? 3 : 4
    if (bytes + n > maxBytes) break
    bytes += n
    out += c
  }
  return out
}

/**
 * Build a valid Error message (SPEC §7) from anything thrown: the error's
 * `code` when it is a §7 code (else `E_INTERNAL`, whose text is replaced by
 * "internal error" so that no internals leak), its message cut to 4096 UTF-8
 * bytes, `fatal` from the code table. Never throws, and the result always
 * passes `encodeMessage`.
 */
export function toErrorMessage(err: unknown): ErrorMessage {
  const raw = (err as { code?: unknown } | null)?.code
  const code: ProtocolErrorCode = typeof raw === 'string' && Object.hasOwn(ProtocolErrorCodes, raw) ? (raw as ProtocolErrorCode) : 'E_INTERNAL'
  const text = code === 'E_INTERNAL' ? 'internal error' : String((err as { message?: unknown } | null)?.message ?? '')
  return { kind: MessageKind.Error, code, message: truncateUtf8(text, MAX_ERROR_TEXT_BYTES), fatal: ProtocolErrorCodes[code].fatal }
}

/**
 * A refusal's explanation as a DiskState `detail` (SPEC §5.1, version 9):
 * `text` whole when it fits in {@link MAX_REFUSAL_DETAIL_BYTES} UTF-8 bytes,
 * else cut on a character boundary and ended with "…" within the bound.
 */
export function refusalDetail(text: string): string {
  return truncateUtf8Marked(text, MAX_REFUSAL_DETAIL_BYTES)
}

/** `text` whole when it fits in `maxBytes` UTF-8 bytes, else cut on a character boundary and ended with "…" (3 bytes) within the bound. */
export function truncateUtf8Marked(text: string, maxBytes: number): string {
  const whole = truncateUtf8(text, maxBytes)
  if (whole.length === text.length) return whole
  return `${truncateUtf8(text, maxBytes - 3)}…`
}
