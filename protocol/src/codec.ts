import { checkMessage, type DecodeLimits } from './checks.ts'
import { ProtocolError } from './errors.ts'
import { MessageKind, type Message } from './messages.ts'
import { RESERVE_START_SPACE } from 'msgpackr'
import { type BinRef, packr, Scanner, unpackr } from './msgpack.ts'
import { HARD_LIMITS, scanSpec, Schemas, sizeSpec, toWire, type SizeTally } from './schema.ts'
import { DEFAULT_MAX_EXTENT_BYTES, maxMessageBytesFor } from './limits.ts'

export type { DecodeLimits } from './checks.ts'

/** Default decode limits (SPEC §1.3). */
export const DEFAULT_LIMITS = Object.freeze({
  maxMessageBytes: maxMessageBytesFor(DEFAULT_MAX_EXTENT_BYTES),
  maxExtentBytes: DEFAULT_MAX_EXTENT_BYTES,
})

/** Limits `encodeMessage` applies unless told otherwise: the protocol's hard caps. */
const ENCODE_LIMITS: DecodeLimits = { maxMessageBytes: HARD_LIMITS.maxMessageBytes, maxExtentBytes: HARD_LIMITS.maxExtentBytes }

const kindNames = new Map<number, string>(Object.entries(MessageKind).map(([k, v]) => [v, k]))

/** Name of a message kind ("Extent"), or undefined for an unknown byte. */
export function kindName(kind: number): string | undefined {
  return kindNames.get(kind)
}

/**
 * Encode one message as a frame (SPEC §2): `u8(kind) • msgpack(map)`, the map
 * keys in schema order, every value in its smallest msgpack form, written by
 * msgpackr (records off). The message is validated first (same rules as
 * `decodeMessage`, with the protocol's hard caps unless `limits` is given) and
 * an invalid one throws `ProtocolError` (`E_SCHEMA`, `E_BAD_NAME`, …) — a bug
 * is caught at the sender. Binary fields are copied exactly once, into the
 * returned buffer, which is sized for this frame (no growing, no re-copy).
 */
export function encodeMessage(msg: Message, limits: DecodeLimits = ENCODE_LIMITS): Buffer {
  return encode(msg, limits, undefined)[0] as Buffer
}

/**
 * Encode like `encodeMessage`, but return the frame as chunks whose
 * concatenation is exactly `encodeMessage(msg)`: binary fields of 4 KiB or
 * more are not copied but returned by reference as chunks of their own. Send
 * them as one WebSocket message in fragments (`ws.send(chunk, { fin })`), and
 * do not modify those buffers until sent.
 */
export function encodeMessageParts(msg: Message, limits: DecodeLimits = ENCODE_LIMITS): Uint8Array[] {
  return encode(msg, limits, [])
}

/** Frames up to this size share slabs of SLAB_BYTES; larger ones get a buffer of their own. */
const SLAB_BYTES = 64 * 1024
const SHARED_MAX = 16 * 1024
let slab = Buffer.allocUnsafeSlow(0)
let slabPos = 0
/** Handed to msgpackr after each encode so that no other user of msgpackr in the process writes into our buffers. */
const DETACHED = Buffer.alloc(16)

/**
 * A buffer msgpackr can encode `own` bytes into without growing it: msgpackr
 * wants 0x800 bytes free at the start and 10 spare bytes at the end, and
 * reserves 3 bytes per UTF-16 unit before writing a string.
 */
function region(own: number, maxStr: number): Buffer {
  const len = Math.max(own + 2 * maxStr + 16, 0x800 + 16)
  if (len > SHARED_MAX) return Buffer.allocUnsafeSlow(len)
  if (slab.length - slabPos < len) {
    slab = Buffer.allocUnsafeSlow(SLAB_BYTES)
    slabPos = 0
  }
  return slab.subarray(slabPos, slabPos + len)
}

function encode(msg: Message, limits: DecodeLimits, refs: BinRef[] | undefined): Uint8Array[] {
  const spec = typeof msg === 'object' && msg !== null ? Schemas[msg.kind] : undefined
  if (spec === undefined) throw new ProtocolError('E_UNKNOWN_KIND', `cannot encode message kind ${String((msg as { kind?: unknown } | null)?.kind)}`)
  const tally: SizeTally = { maxStr: 0, bigBin: 0 }
  const size = 1 + sizeSpec(spec, msg, '', tally)
  checkMessage(msg, limits)
  const max = limits.maxMessageBytes ?? DEFAULT_LIMITS.maxMessageBytes
  if (size > max) throw new ProtocolError('E_FRAME_TOO_LARGE', `frame of ${size} bytes exceeds ${max}`)
  const own = refs === undefined ? size : size - tally.bigBin
  const wire = toWire(spec, msg, refs)
  const buf = region(own, tally.maxStr)
  let out: Buffer
  try {
    packr.useBuffer(buf)
    out = packr.pack(wire, RESERVE_START_SPACE | 1) // byte 0: the kind
  } catch (err) {
    throw new ProtocolError('E_INTERNAL', `msgpackr failed to encode: ${(err as Error).message}`)
  } finally {
    packr.useBuffer(DETACHED)
  }
  if (out.length !== own) throw new ProtocolError('E_INTERNAL', `msgpackr wrote ${out.length} of ${own} bytes`)
  out[0] = msg.kind
  if (buf.buffer === slab.buffer && out.buffer === slab.buffer) slabPos += (out.length + 7) & ~7
  if (refs === undefined) return [out]
  const parts: Uint8Array[] = []
  let from = 0
  for (const ref of refs) {
    parts.push(out.subarray(from, ref.at), ref.data)
    from = ref.at
  }
  if (from < out.length || parts.length === 0) parts.push(out.subarray(from))
  return parts
}

/**
 * Decode and validate one frame (SPEC §2, §6): a pre-scan of the msgpack
 * structure (extensions refused, every length and count checked against the
 * bytes left and the schema), then msgpackr's decoder (records off), then the
 * schema and cross-field checks. Returns a message whose binary fields are
 * views into `frame` (no copy: keep `frame` alive and unmodified while you use
 * them). Throws `ProtocolError` — and nothing else — on any malformed,
 * unknown, oversized or invalid frame; no state is kept between frames, so
 * decoding the next frame is unaffected.
 */
export function decodeMessage(frame: Uint8Array, limits: DecodeLimits = DEFAULT_LIMITS): Message {
  if (!(frame instanceof Uint8Array)) throw new ProtocolError('E_MALFORMED', 'frame is not binary')
  const max = limits.maxMessageBytes ?? DEFAULT_LIMITS.maxMessageBytes
  if (frame.length > max) throw new ProtocolError('E_FRAME_TOO_LARGE', `frame of ${frame.length} bytes exceeds ${max}`)
  if (frame.length < 2) throw new ProtocolError('E_MALFORMED', `frame of ${frame.length} bytes is too short`)
  const kind = frame[0] as number
  const spec = Schemas[kind]
  if (spec === undefined) throw new ProtocolError('E_UNKNOWN_KIND', `unknown message kind 0x${kind.toString(16).padStart(2, '0')}`)
  const body = frame.subarray(1)
  const r = new Scanner(body, 0)
  scanSpec(r, spec)
  if (r.pos !== r.end)
    throw new ProtocolError('E_MALFORMED', `${r.end - r.pos} trailing bytes after the message`)
    // msgpackr caches the DataView it needs on the source: hand it the scanner's
  ;(body as { dataView?: DataView }).dataView = r.view
  const fields = unpack(body)
  sizeSpec(spec, fields, '', { maxStr: 0, bigBin: 0 })
  const msg = { kind, ...fields } as Message
  checkMessage(msg, limits)
  return msg
}

function unpack(body: Uint8Array): Record<string, unknown> {
  try {
    return unpackr.unpack(body) as Record<string, unknown>
  } catch (err) {
    // cannot happen for a pre-scanned body; never let anything but ProtocolError out
    throw new ProtocolError('E_MALFORMED', `msgpack: ${(err as Error).message}`)
  }
}
