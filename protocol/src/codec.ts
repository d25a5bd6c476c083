import { checkMessage, type DecodeLimits } from './checks.ts'
import { ProtocolError } from './errors.ts'
import { MessageKind, type Message } from './messages.ts'
import { Reader, Writer } from './msgpack.ts'
import { HARD_LIMITS, readSpec, Schemas, sizeSpec, writeSpec } from './schema.ts'

export type { DecodeLimits } from './checks.ts'

/** Default decode limits (SPEC §1.3). */
export const DEFAULT_LIMITS = Object.freeze({
  maxMessageBytes: 16 * 1024 * 1024 + 65536,
  maxExtentBytes: 16 * 1024 * 1024,
})

/** Limits `encodeMessage` applies unless told otherwise: the protocol's hard caps. */
const ENCODE_LIMITS: DecodeLimits = { maxMessageBytes: HARD_LIMITS.maxMessageBytes, maxExtentBytes: HARD_LIMITS.maxExtentBytes }

const kindNames = new Map<number, string>(Object.entries(MessageKind).map(([k, v]) => [v, k]))

/** Name of a message kind ("Extent"), or undefined for an unknown byte. */
export function kindName (kind: number): string | undefined {
  return kindNames.get(kind)
}

/**
 * Encode one message as a frame (SPEC §2): `u8(kind) • msgpack(map)`, the map
 * keys in schema order, every value in its smallest msgpack form. The message
 * is validated first (same rules as `decodeMessage`, with the protocol's hard
 * caps unless `limits` is given) and an invalid one throws `ProtocolError`
 * (`E_SCHEMA`, `E_BAD_NAME`, …) — a bug is caught at the sender. Binary fields
 * are copied exactly once, into the returned buffer.
 */
export function encodeMessage (msg: Message, limits: DecodeLimits = ENCODE_LIMITS): Buffer {
  return encode(msg, limits, false)[0] as Buffer
}

/**
 * Encode like `encodeMessage`, but return the frame as chunks whose
 * concatenation is exactly `encodeMessage(msg)`: binary fields of 4 KiB or
 * more are not copied but returned by reference as chunks of their own. Send
 * them as one WebSocket message in fragments (`ws.send(chunk, { fin })`), and
 * do not modify those buffers until sent.
 */
export function encodeMessageParts (msg: Message, limits: DecodeLimits = ENCODE_LIMITS): Uint8Array[] {
  return encode(msg, limits, true)
}

function encode (msg: Message, limits: DecodeLimits, inParts: boolean): Uint8Array[] {
  const spec = typeof msg === 'object' && msg !== null ? Schemas[msg.kind] : undefined
  if (spec === undefined) throw new ProtocolError('E_UNKNOWN_KIND', `cannot encode message kind ${String((msg as { kind?: unknown } | null)?.kind)}`)
  const strLens: number[] = []
  const big = { bytes: 0 }
  const size = 1 + sizeSpec(spec, msg, '', strLens, inParts ? big : undefined)
  checkMessage(msg, limits)
  const max = limits.maxMessageBytes ?? DEFAULT_LIMITS.maxMessageBytes
  if (size > max) throw new ProtocolError('E_FRAME_TOO_LARGE', `frame of ${size} bytes exceeds ${max}`)
  const own = size - big.bytes
  const buf = Buffer.allocUnsafe(own)
  buf[0] = msg.kind
  const w = new Writer(buf, 1, inParts ? [] : undefined)
  writeSpec(w, spec, msg, strLens, { i: 0 })
  if (w.pos !== own) throw new ProtocolError('E_INTERNAL', `encoder wrote ${w.pos} of ${own} bytes`)
  return inParts ? w.finish() : [buf]
}

/**
 * Decode and validate one frame (SPEC §2, §6). Returns a message whose binary
 * fields are views into `frame` (no copy: keep `frame` alive and unmodified
 * while you use them). Throws `ProtocolError` — and nothing else — on any
 * malformed, unknown, oversized or invalid frame; the function keeps no state,
 * so decoding the next frame is unaffected.
 */
export function decodeMessage (frame: Uint8Array, limits: DecodeLimits = DEFAULT_LIMITS): Message {
  if (!(frame instanceof Uint8Array)) throw new ProtocolError('E_MALFORMED', 'frame is not binary')
  const max = limits.maxMessageBytes ?? DEFAULT_LIMITS.maxMessageBytes
  if (frame.length > max) throw new ProtocolError('E_FRAME_TOO_LARGE', `frame of ${frame.length} bytes exceeds ${max}`)
  if (frame.length < 2) throw new ProtocolError('E_MALFORMED', `frame of ${frame.length} bytes is too short`)
  const kind = frame[0] as number
  const spec = Schemas[kind]
  if (spec === undefined) throw new ProtocolError('E_UNKNOWN_KIND', `unknown message kind 0x${kind.toString(16).padStart(2, '0')}`)
  const r = new Reader(frame, 1)
  const fields = readSpec(r, spec, '') as Record<string, unknown>
  if (r.pos !== r.end) throw new ProtocolError('E_MALFORMED', `${r.end - r.pos} trailing bytes after the message`)
  const msg = { kind, ...fields } as Message
  checkMessage(msg, limits)
  return msg
}
