import { Packr } from 'msgpackr'
import { ProtocolError } from './errors.ts'
import { MessageKind, type Message } from './messages.ts'

// SPEC §2: records off, so every frame stands alone (replay, resume).
const packr = new Packr({ useRecords: false, moreTypes: false, mapsAsObjects: true, int64AsType: 'number' })

const kinds = new Set<number>(Object.values(MessageKind))

/** Limits applied when decoding. */
export interface DecodeLimits {
  /** @default 16 MiB + 64 KiB */
  readonly maxMessageBytes?: number
}

/** Encode one message as a frame: u8(kind) • msgpack(fields). */
export function encodeMessage (msg: Message): Uint8Array {
  const { kind, ...fields } = msg
  const body = packr.pack(fields)
  const out = new Uint8Array(body.length + 1)
  out[0] = kind
  out.set(body, 1)
  return out
}

/** Decode one frame. Throws ProtocolError on anything malformed. */
export function decodeMessage (frame: Uint8Array, limits: DecodeLimits = {}): Message {
  const max = limits.maxMessageBytes ?? (16 * 1024 * 1024 + 65536)
  if (frame.length > max) throw new ProtocolError('E_FRAME_TOO_LARGE', `frame of ${frame.length} bytes exceeds ${max}`)
  if (frame.length < 2) throw new ProtocolError('E_MALFORMED', 'frame too short')
  const kind = frame[0] as number
  if (!kinds.has(kind)) throw new ProtocolError('E_UNKNOWN_KIND', `unknown message kind 0x${kind.toString(16)}`)
  let fields: unknown
  try {
    fields = packr.unpack(frame.subarray(1))
  } catch (err) {
    throw new ProtocolError('E_MALFORMED', `bad msgpack body: ${(err as Error).message}`)
  }
  if (typeof fields !== 'object' || fields === null || Array.isArray(fields)) throw new ProtocolError('E_SCHEMA', 'body is not a map')
  return { kind, ...(fields as object) } as Message
}
