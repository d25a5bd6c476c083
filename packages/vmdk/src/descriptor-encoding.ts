/**
 * Descriptor text ⇄ bytes by the descriptor's own `encoding=` key (VMDK.md §1.3:
 * `UTF-8` on ESXi; `windows-1252`, `GBK`, `Big5`, `Shift_JIS` seen from
 * Workstation). Decoding uses the WHATWG `TextDecoder` (Node's full ICU), so
 * every label it knows works; encoding back covers UTF-8 and every encoding
 * whose characters are one or two bytes (all single-byte code pages, GBK, Big5,
 * Shift_JIS, EUC-KR), through a reverse table built once from the decoder.
 */
import { TextDecoder } from 'node:util'
import { VmdkError } from './errors.ts'

/** The label a descriptor declares in its `encoding=` line (ASCII scan of the raw bytes), or undefined. */
export function declaredEncoding(bytes: Uint8Array): string | undefined {
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1')
  const m = /^[ \t]*encoding[ \t]*=[ \t]*"?([^"\r\n]*?)"?[ \t]*\r?$/im.exec(text)
  const label = m?.[1]?.trim()
  return label === undefined || label === '' ? undefined : label
}

function decoderFor(label: string, file: string): TextDecoder {
  try {
    return new TextDecoder(label, { fatal: true, ignoreBOM: true })
  } catch (err) {
    throw new VmdkError('E_ENCODING', `descriptor declares encoding=${JSON.stringify(label)}, which is not a known encoding`, file, { cause: err })
  }
}

/** True if a label names UTF-8 (or is absent, which means UTF-8 here). */
export function isUtf8(label: string | undefined): boolean {
  if (label === undefined) return true
  try {
    return new TextDecoder(label).encoding === 'utf-8'
  } catch {
    return false
  }
}

/**
 * Decode descriptor bytes by their `encoding=` key (UTF-8 when there is none).
 * Unknown labels and bytes that are not valid in the declared encoding are
 * `E_ENCODING` (a file name decoded wrongly would only fail later as "not found").
 */
export function decodeDescriptor(bytes: Uint8Array, file = ''): string {
  const label = declaredEncoding(bytes) ?? 'UTF-8'
  const dec = decoderFor(label, file)
  try {
    return dec.decode(bytes)
  } catch (err) {
    throw new VmdkError('E_ENCODING', `descriptor bytes are not valid ${dec.encoding} (its encoding= key)`, file, { cause: err })
  }
}

/** char → bytes, per canonical encoding name; built on first use. */
const TABLES = new Map<string, Map<string, Buffer>>()

function reverseTable(dec: TextDecoder): Map<string, Buffer> {
  const hit = TABLES.get(dec.encoding)
  if (hit !== undefined) return hit
  const t = new Map<string, Buffer>()
  const fatal = new TextDecoder(dec.encoding, { fatal: true, ignoreBOM: true })
  const one = Buffer.alloc(1)
  const two = Buffer.alloc(2)
  for (let a = 0; a < 256; a++) {
    one[0] = a
    let s: string | undefined
    try {
      s = fatal.decode(one)
    } catch {
      s = undefined
    }
    if (s !== undefined && s.length > 0) {
      if (!t.has(s)) t.set(s, Buffer.from([a]))
      continue
    }
    // a lead byte: try every trail byte
    for (let b = 0; b < 256; b++) {
      two[0] = a
      two[1] = b
      let u: string
      try {
        u = fatal.decode(two)
      } catch {
        continue
      }
      if (u.length > 0 && u.length <= 2 && !t.has(u) && [...u].length === 1) t.set(u, Buffer.from([a, b]))
    }
  }
  TABLES.set(dec.encoding, t)
  return t
}

/**
 * Encode descriptor text in `encoding` (by default the label its own
 * `encoding=` key declares, UTF-8 when there is none). A character the
 * encoding cannot represent, or an encoding with no encoder here, is
 * `E_ENCODING`. The result always decodes back to `text`.
 */
export function encodeDescriptor(text: string, encoding?: string, file = ''): Buffer {
  const label = encoding ?? declaredEncoding(Buffer.from(text, 'latin1')) ?? 'UTF-8'
  const dec = decoderFor(label, file)
  if (dec.encoding === 'utf-8') return Buffer.from(text, 'utf8')
  const table = reverseTable(dec)
  const parts: Buffer[] = []
  let ascii = ''
  for (const ch of text) {
    const b = table.get(ch)
    if (b === undefined) {
      throw new VmdkError('E_ENCODING', `cannot write ${JSON.stringify(ch)} (U+${(ch.codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0')}) in ${dec.encoding}`, file)
    }
    if (b.length === 1 && (b[0] as number) < 0x80 && ch.charCodeAt(0) === b[0]) {
      ascii += ch
      continue
    }
    if (ascii !== '') {
      parts.push(Buffer.from(ascii, 'latin1'))
      ascii = ''
    }
    parts.push(b)
  }
  if (ascii !== '') parts.push(Buffer.from(ascii, 'latin1'))
  const out = Buffer.concat(parts)
  let back: string | undefined
  try {
    back = dec.decode(out)
  } catch {
    back = undefined
  }
  if (back !== text) throw new VmdkError('E_ENCODING', `text does not survive a round trip through ${dec.encoding}`, file)
  return out
}
