import { checkMessage, type DecodeLimits } from './checks.ts'
import { ProtocolError } from './errors.ts'
import { CompressionAlgorithms, MessageKind, type ExtentMessage, type Message } from './messages.ts'
import { RESERVE_START_SPACE } from 'msgpackr'
import { type BinRef, binHeaderSize, PART_MIN_BYTES, packr, Scanner, uintSize, unpackr } from './msgpack.ts'
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

/** A frame of `size` bytes is within the negotiated (or default) maxMessageBytes, else `E_FRAME_TOO_LARGE`. */
function checkFrameSize(size: number, limits: DecodeLimits): void {
  const max = limits.maxMessageBytes ?? DEFAULT_LIMITS.maxMessageBytes
  if (size > max) throw new ProtocolError('E_FRAME_TOO_LARGE', `frame of ${size} bytes exceeds ${max}`)
}

function encode(msg: Message, limits: DecodeLimits, refs: BinRef[] | undefined): Uint8Array[] {
  if (msg?.kind === MessageKind.Extent) {
    const parts = encodeExtent(msg, limits, refs !== undefined)
    if (parts !== undefined) return parts
  }
  return encodeGeneric(msg, limits, refs)
}

/** Counters of the Extent encoder (tests: the hand-written path was taken). */
export const extentEncoderStats = { fast: 0, generic: 0 }

/**
 * Encode like {@link encodeMessage} / {@link encodeMessageParts} (`byRef`) through
 * msgpackr and the generic schema walk, whatever the kind (tests compare the
 * Extent encoder with it).
 * @internal
 */
export function encodeGeneric(msg: Message, limits: DecodeLimits, refs: BinRef[] | undefined): Uint8Array[] {
  if (msg?.kind === MessageKind.Extent) extentEncoderStats.generic++
  const spec = typeof msg === 'object' && msg !== null ? Schemas[msg.kind] : undefined
  if (spec === undefined) throw new ProtocolError('E_UNKNOWN_KIND', `cannot encode message kind ${String((msg as { kind?: unknown } | null)?.kind)}`)
  const tally: SizeTally = { maxStr: 0, bigBin: 0 }
  const size = 1 + sizeSpec(spec, msg, '', tally)
  checkMessage(msg, limits)
  checkFrameSize(size, limits)
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
  checkFrameSize(frame.length, limits)
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

/** The Extent's fields in schema order: the encoder below writes them so (checked at load). */
const EXTENT_ORDER = ['disk', 'seq', 'offset', 'length', 'zero', 'compression', 'data', 'digest'] as const
const extentSpec = Schemas[MessageKind.Extent]
if (extentSpec?.t !== 'struct' || extentSpec.keys.join() !== EXTENT_ORDER.join()) throw new Error('internal: the Extent encoder does not follow the schema')
/** every key's fixstr, in schema order */
const extentKey = EXTENT_ORDER.map((k) => Buffer.from([0xa0 | k.length, ...Buffer.from(k, 'ascii')]))
const EXTENT_KEY_BYTES = extentKey.reduce((n, k) => n + k.length, 0)
const EXTENT_FIELDS = new Set<string>(['kind', ...EXTENT_ORDER])
/** the compression tokens this build knows (all short ASCII: fixstr) */
const compressionBytes = new Map(CompressionAlgorithms.map((c) => [c as string, Buffer.from(c, 'ascii')]))
const MAX_DISK = HARD_LIMITS.maxDisks - 1

function isUint(v: unknown, max: number): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= max
}

function putUint(buf: Buffer, at: number, v: number): number {
  if (v <= 0x7f) {
    buf[at] = v
    return at + 1
  }
  if (v <= 0xffffffff) return putSized(buf, at, v, 0xcc)
  buf[at] = 0xcf
  putU32(buf, at + 1, Math.floor(v / 0x100000000))
  putU32(buf, at + 5, v >>> 0)
  return at + 9
}

/** A bin header: `c4`, `c5` or `c6` and the length. */
function putBinHeader(buf: Buffer, at: number, n: number): number {
  return putSized(buf, at, n, 0xc4)
}

/** `tag8` (u8), `tag8 + 1` (u16) or `tag8 + 2` (u32) and `v` (≤ 2^32 − 1) in as few bytes, big-endian. */
function putSized(buf: Buffer, at: number, v: number, tag8: number): number {
  if (v <= 0xff) {
    buf[at] = tag8
    buf[at + 1] = v
    return at + 2
  }
  if (v <= 0xffff) {
    buf[at] = tag8 + 1
    buf[at + 1] = v >>> 8
    buf[at + 2] = v & 0xff
    return at + 3
  }
  buf[at] = tag8 + 2
  putU32(buf, at + 1, v)
  return at + 5
}

/** big-endian u32 (plain stores: Buffer#writeUInt32BE checks its arguments in JS) */
function putU32(buf: Buffer, at: number, v: number): void {
  buf[at] = v >>> 24
  buf[at + 1] = (v >>> 16) & 0xff
  buf[at + 2] = (v >>> 8) & 0xff
  buf[at + 3] = v & 0xff
}

function putKey(buf: Buffer, at: number, i: number): number {
  // TypedArray set: no JS in between (Buffer#copy validates its arguments in JS)
  const k = extentKey[i] as Buffer
  buf.set(k, at)
  return at + k.length
}

/**
 * The Extent encoder (issue #17: an incremental sends hundreds of Extents, and
 * the generic schema walk and msgpackr took ~30–50 µs per Extent in a fresh
 * agent process, 25–33 ms of an incremental's ship lap). Writes the bytes
 * msgpackr writes for the same message (keys in schema order, the smallest
 * integer and header forms, `cf` above 2^32 - 1; the codec tests compare the
 * two over the boundaries and the golden vectors), after the same checks:
 * field types and bounds here, the cross-field rules through `checkMessage`.
 * Returns undefined for a message whose fields it does not take as they
 * are (a wrong type, an unknown field or compression): the generic path then
 * throws its usual error.
 */
function encodeExtent(msg: ExtentMessage, limits: DecodeLimits, byRef: boolean): Uint8Array[] | undefined {
  const { disk, seq, offset, length, zero, compression, data, digest } = msg
  if (!isUint(disk, MAX_DISK) || !isUint(seq, Number.MAX_SAFE_INTEGER) || !isUint(offset, Number.MAX_SAFE_INTEGER) || !isUint(length, Number.MAX_SAFE_INTEGER)) return undefined
  if (typeof zero !== 'boolean' || !(data instanceof Uint8Array) || !(digest instanceof Uint8Array)) return undefined
  if (data.length > HARD_LIMITS.maxExtentBytes || digest.length > 64) return undefined
  const comp = typeof compression === 'string' ? compressionBytes.get(compression) : undefined
  if (comp === undefined) return undefined
  for (const key in msg) if (!EXTENT_FIELDS.has(key) && (msg as unknown as Record<string, unknown>)[key] !== undefined) return undefined
  checkMessage(msg, limits)
  const dataHeader = binHeaderSize(data.length)
  // kind, map header, the keys, the four integers, the bool, the compression's fixstr, data and digest as bin
  const size =
    2 + EXTENT_KEY_BYTES + uintSize(disk) + uintSize(seq) + uintSize(offset) + uintSize(length) + 1 + (1 + comp.length) + (dataHeader + data.length) + (binHeaderSize(digest.length) + digest.length)
  checkFrameSize(size, limits)
  const ref = byRef && data.length >= PART_MIN_BYTES
  const tailLen = (extentKey[7] as Buffer).length + binHeaderSize(digest.length) + digest.length
  const headLen = size - data.length - tailLen
  // small frames and parts come from node's buffer pool (never rewritten once handed out)
  const head = ref ? Buffer.allocUnsafe(headLen) : size > SHARED_MAX ? Buffer.allocUnsafeSlow(size) : Buffer.allocUnsafe(size)
  head[0] = MessageKind.Extent
  head[1] = 0x80 | EXTENT_ORDER.length
  let at = putKey(head, 2, 0)
  at = putUint(head, at, disk)
  at = putKey(head, at, 1)
  at = putUint(head, at, seq)
  at = putKey(head, at, 2)
  at = putUint(head, at, offset)
  at = putKey(head, at, 3)
  at = putUint(head, at, length)
  at = putKey(head, at, 4)
  head[at++] = zero ? 0xc3 : 0xc2
  at = putKey(head, at, 5)
  head[at++] = 0xa0 | comp.length
  head.set(comp, at)
  at += comp.length
  at = putKey(head, at, 6)
  at = putBinHeader(head, at, data.length)
  if (at !== headLen) throw new ProtocolError('E_INTERNAL', `Extent encoder wrote a head of ${at} bytes, expected ${headLen}`)
  let tail = head
  if (ref) {
    tail = Buffer.allocUnsafe(tailLen)
    at = 0
  } else {
    head.set(data, at)
    at += data.length
  }
  at = putKey(tail, at, 7)
  at = putBinHeader(tail, at, digest.length)
  tail.set(digest, at)
  at += digest.length
  if (at !== (ref ? tailLen : size)) throw new ProtocolError('E_INTERNAL', `Extent encoder wrote ${at} bytes, expected ${ref ? tailLen : size}`)
  extentEncoderStats.fast++
  return ref ? [head, data, tail] : [head]
}
