/**
 * The strict pre-scan of the msgpack subset of SPEC §2.2, and the msgpackr
 * configuration the codec encodes and decodes with.
 *
 * msgpackr does the actual encoding and decoding (codec.ts). Before a frame
 * reaches msgpackr's decoder, `Scanner` walks it once: it refuses extension
 * types (timestamps, msgpackr records/structures, …) and the reserved byte
 * 0xc1, checks every claimed length and count against the bytes that remain
 * (and against the schema's bounds) and never builds a value — msgpackr only
 * ever sees frames whose every length is known to be backed by bytes.
 */
import { isUtf8 } from 'node:buffer'
import { addExtension, Packr, Unpackr } from 'msgpackr'
import { ProtocolError } from './errors.ts'

const utf8 = new TextDecoder('utf-8', { ignoreBOM: true })

/** Thrown for a malformed msgpack body (truncated, reserved byte, extension). */
function malformed(msg: string, pos: number): ProtocolError {
  return new ProtocolError('E_MALFORMED', `${msg} at body offset ${pos}`)
}

function schema(field: string, msg: string): ProtocolError {
  return new ProtocolError('E_SCHEMA', `${field}: ${msg}`, { field })
}

/** Human name of the msgpack type starting with `b`, for error messages. */
function typeName(b: number): string {
  if (b <= 0x7f || (b >= 0xcc && b <= 0xd3) || b >= 0xe0) return b >= 0xe0 || (b >= 0xd0 && b <= 0xd3) ? 'int' : 'uint'
  if (b <= 0x8f || b === 0xde || b === 0xdf) return 'map'
  if (b <= 0x9f || b === 0xdc || b === 0xdd) return 'array'
  if (b <= 0xbf || (b >= 0xd9 && b <= 0xdb)) return 'str'
  if (b === 0xc0) return 'nil'
  if (b === 0xc2 || b === 0xc3) return 'bool'
  if (b >= 0xc4 && b <= 0xc6) return 'bin'
  if (b === 0xca || b === 0xcb) return 'float'
  return 'ext'
}

/** Kinds of the segments of the path to the value being scanned. */
export const PATH_KEY = 0
export const PATH_INDEX = 1
export const PATH_DICT_VALUE = 2
export const PATH_DICT_KEY = 3
export const PATH_STRUCT_KEY = 4
const MAX_DEPTH = 16
// One path stack for all scans (scanning is synchronous and never re-entered):
// field paths are only turned into strings when an error is thrown.
const pathKinds = new Uint8Array(MAX_DEPTH)
const pathA = new Float64Array(MAX_DEPTH)
const pathB = new Float64Array(MAX_DEPTH)
const pathKeys: string[] = new Array<string>(MAX_DEPTH).fill('')

/**
 * A cursor over one msgpack body that validates and skips values without
 * building them (nor their field paths, unless it throws). Methods throw
 * ProtocolError only.
 */
export class Scanner {
  readonly buf: Uint8Array
  readonly view: DataView
  pos: number
  readonly end: number
  /** start of the payload of the last `str` scanned */
  strStart = 0

  /** depth of the path stack */
  depth = 0

  constructor(buf: Uint8Array, start: number) {
    this.buf = buf
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
    this.pos = start
    this.end = buf.length
  }

  /** Enter a path segment: a struct key (`key`), an array index (`a`), a dict value (key bytes at `a`, `b` long), a dict or struct key. */
  enter(kind: number, key: string, a: number, b: number): void {
    const d = this.depth
    if (d >= MAX_DEPTH) throw new ProtocolError('E_INTERNAL', 'schema nesting too deep')
    pathKinds[d] = kind
    pathKeys[d] = key
    pathA[d] = a
    pathB[d] = b
    this.depth = d + 1
  }

  /** Update the array index of the innermost segment. */
  index(i: number): void {
    pathA[this.depth - 1] = i
  }

  leave(): void {
    this.depth--
  }

  /** The dotted path of the value being scanned (built only for errors). */
  field(): string {
    let s = ''
    for (let d = 0; d < this.depth; d++) {
      switch (pathKinds[d]) {
        case PATH_KEY:
          s = s === '' ? (pathKeys[d] as string) : `${s}.${pathKeys[d] as string}`
          break
        case PATH_INDEX:
          s = `${s}[${pathA[d] as number}]`
          break
        case PATH_DICT_VALUE:
          s = `${s}[${JSON.stringify(this.text(pathA[d] as number, pathB[d] as number))}]`
          break
        case PATH_DICT_KEY:
          s = `${s}(key)`
          break
        default:
          s = s === '' ? '(key)' : `${s}.(key)`
      }
    }
    return s
  }

  /** E_SCHEMA at the current path (`sub` appended as a struct key) */
  bad(msg: string, sub?: string): ProtocolError {
    const f = this.field()
    return schema(sub === undefined ? f : f === '' ? sub : `${f}.${sub}`, msg)
  }

  /** Peek the next type byte, refusing the bytes that are never allowed. */
  peek(): number {
    if (this.pos >= this.end) throw malformed('unexpected end of data', this.pos)
    const b = this.buf[this.pos] as number
    if (b === 0xc1) throw malformed('reserved byte 0xc1', this.pos)
    if ((b >= 0xc7 && b <= 0xc9) || (b >= 0xd4 && b <= 0xd8)) throw malformed('msgpack extension types are not allowed', this.pos)
    return b
  }

  #need(n: number): void {
    if (this.end - this.pos < n) throw malformed(`need ${n} more bytes`, this.pos)
  }

  #u8(): number {
    this.#need(1)
    return this.buf[this.pos++] as number
  }

  #u16(): number {
    this.#need(2)
    const v = this.view.getUint16(this.pos)
    this.pos += 2
    return v
  }

  #u32(): number {
    this.#need(4)
    const v = this.view.getUint32(this.pos)
    this.pos += 4
    return v
  }

  /** A non-negative integer ≤ max. Accepts every msgpack integer width and an integral float (as msgpackr writes integers ≥ 2^32 by default). */
  uint(max: number): number {
    const b = this.peek()
    const at = this.pos
    this.pos++
    let v: number
    if (b <= 0x7f) v = b
    else if (b === 0xcc) v = this.#u8()
    else if (b === 0xcd) v = this.#u16()
    else if (b === 0xce) v = this.#u32()
    else if (b === 0xcf || b === 0xd3) {
      this.#need(8)
      const hi = b === 0xcf ? this.view.getUint32(this.pos) : this.view.getInt32(this.pos)
      const lo = this.view.getUint32(this.pos + 4)
      this.pos += 8
      if (hi < 0) throw this.bad('negative integer')
      if (hi > 0x1fffff) throw this.bad('integer above 2^53 - 1')
      v = hi * 0x100000000 + lo
    } else if (b === 0xd0) {
      this.#need(1)
      v = this.view.getInt8(this.pos++)
    } else if (b === 0xd1) {
      this.#need(2)
      v = this.view.getInt16(this.pos)
      this.pos += 2
    } else if (b === 0xd2) {
      this.#need(4)
      v = this.view.getInt32(this.pos)
      this.pos += 4
    } else if (b === 0xca || b === 0xcb) {
      this.#need(b === 0xca ? 4 : 8)
      v = b === 0xca ? this.view.getFloat32(this.pos) : this.view.getFloat64(this.pos)
      this.pos += b === 0xca ? 4 : 8
      if (!Number.isInteger(v)) throw this.bad('not an integer')
    } else if (b >= 0xe0) v = b - 0x100
    else {
      this.pos = at
      throw this.bad(`expected an integer, got ${typeName(b)}`)
    }
    if (v < 0) throw this.bad('negative integer')
    if (v > max) throw this.bad(`${v} exceeds ${max}`)
    return v
  }

  bool(): void {
    const b = this.peek()
    if (b === 0xc2 || b === 0xc3) {
      this.pos++
      return
    }
    throw this.bad(`expected a bool, got ${typeName(b)}`)
  }

  /** true (and consumed) if the next value is nil */
  nil(): boolean {
    if (this.peek() === 0xc0) {
      this.pos++
      return true
    }
    return false
  }

  /** Skip a str of at most `maxBytes` valid UTF-8 bytes; returns its byte length (payload at `strStart`). */
  str(maxBytes: number): number {
    const b = this.peek()
    this.pos++
    let n: number
    if (b >= 0xa0 && b <= 0xbf) n = b - 0xa0
    else if (b === 0xd9) n = this.#u8()
    else if (b === 0xda) n = this.#u16()
    else if (b === 0xdb) n = this.#u32()
    else {
      this.pos--
      throw this.bad(`expected a str, got ${typeName(b)}`)
    }
    if (n > maxBytes) throw this.bad(`string of ${n} bytes exceeds ${maxBytes}`)
    this.#need(n)
    const start = this.pos
    this.strStart = start
    this.pos += n
    if (n > 0 && !isAscii(this.buf, start, n) && !isUtf8(this.buf.subarray(start, start + n))) throw this.bad('invalid UTF-8')
    return n
  }

  /** The text of `n` bytes at `start` (already validated), for error messages only. */
  text(start: number, n: number): string {
    return utf8.decode(this.buf.subarray(start, start + n))
  }

  /** Skip a bin of at most `maxBytes`; returns its length. */
  bin(maxBytes: number): number {
    const b = this.peek()
    this.pos++
    let n: number
    if (b === 0xc4) n = this.#u8()
    else if (b === 0xc5) n = this.#u16()
    else if (b === 0xc6) n = this.#u32()
    else {
      this.pos--
      throw this.bad(`expected a bin, got ${typeName(b)}`)
    }
    if (n > maxBytes) throw this.bad(`${n} bytes exceed ${maxBytes}`)
    this.#need(n)
    this.pos += n
    return n
  }

  /** Header of an array; its count is bounded by `max` and by the bytes left (≥ 1 byte per item). */
  arrayHeader(max: number): number {
    const b = this.peek()
    this.pos++
    let n: number
    if (b >= 0x90 && b <= 0x9f) n = b - 0x90
    else if (b === 0xdc) n = this.#u16()
    else if (b === 0xdd) n = this.#u32()
    else {
      this.pos--
      throw this.bad(`expected an array, got ${typeName(b)}`)
    }
    if (n > max) throw this.bad(`${n} items exceed ${max}`)
    if (n > this.end - this.pos) throw malformed(`array of ${n} items in ${this.end - this.pos} bytes`, this.pos)
    return n
  }

  /** Header of a map; its count is bounded by `max` and by the bytes left (≥ 2 bytes per entry). */
  mapHeader(max: number): number {
    const b = this.peek()
    this.pos++
    let n: number
    if (b >= 0x80 && b <= 0x8f) n = b - 0x80
    else if (b === 0xde) n = this.#u16()
    else if (b === 0xdf) n = this.#u32()
    else {
      this.pos--
      throw this.bad(`expected a map, got ${typeName(b)}`)
    }
    if (n > max) throw this.bad(`${n} entries exceed ${max}`)
    if (n * 2 > this.end - this.pos) throw malformed(`map of ${n} entries in ${this.end - this.pos} bytes`, this.pos)
    return n
  }
}

function isAscii(b: Uint8Array, start: number, n: number): boolean {
  for (let i = start; i < start + n; i++) if ((b[i] as number) >= 0x80) return false
  return true
}

/** Header bytes of the str at `pos` (already scanned and valid). */
export function strHeaderAt(b: Uint8Array, pos: number): number {
  const h = b[pos] as number
  return h <= 0xbf ? 1 : h === 0xd9 ? 2 : h === 0xda ? 3 : 5
}

/** Byte length of the str at `pos` (already scanned and valid). */
export function strLengthAt(b: Uint8Array, v: DataView, pos: number): number {
  const h = b[pos] as number
  return h <= 0xbf ? h - 0xa0 : h === 0xd9 ? (b[pos + 1] as number) : h === 0xda ? v.getUint16(pos + 1) : v.getUint32(pos + 1)
}

/** true if the `n` bytes at `a` and at `c` of `b` are equal */
export function sameBytes(b: Uint8Array, a: number, c: number, n: number): boolean {
  for (let i = 0; i < n; i++) if (b[a + i] !== b[c + i]) return false
  return true
}

/** Bytes `uint(v)` takes (smallest form, SPEC §2.2). */
export function uintSize(v: number): number {
  return v <= 0x7f ? 1 : v <= 0xff ? 2 : v <= 0xffff ? 3 : v <= 0xffffffff ? 5 : 9
}

/** Bytes a str/bin/array/map header for `n` takes. */
export function strHeaderSize(n: number): number {
  return n < 32 ? 1 : n <= 0xff ? 2 : n <= 0xffff ? 3 : 5
}
export function binHeaderSize(n: number): number {
  return n <= 0xff ? 2 : n <= 0xffff ? 3 : 5
}
export function collectionHeaderSize(n: number): number {
  return n < 16 ? 1 : n <= 0xffff ? 3 : 5
}

/** `bin` values at least this long are passed through by reference in parts mode. */
export const PART_MIN_BYTES = 4096

/**
 * An integer above 2^32 - 1, written as msgpack uint64 (`cf`). msgpackr on its
 * own writes such a number as float64 (`cb`) and a BigInt as int64 (`d3`);
 * SPEC §2.2 (and the golden vectors) write the smallest unsigned form.
 */
export class Uint64 {
  readonly value: number
  constructor(value: number) {
    this.value = value
  }
}

/**
 * A `bin` that `encodeMessageParts` passes by reference: msgpackr writes only
 * its header and records where the payload belongs (`at`, a frame offset).
 */
export class BinRef {
  readonly data: Uint8Array
  at = -1
  constructor(data: Uint8Array) {
    this.data = data
  }
}

interface Room {
  target: Uint8Array
  targetView: DataView
  position: number
}
type AllocateForWrite = (size: number) => Room

// msgpackr extensions whose pack() writes plain msgpack through allocateForWrite
// and returns nothing, so no ext header is ever written (their `type` is only a
// registration key; the pre-scan refuses every ext type on the way in).
const noUnpack = (): never => {
  throw new ProtocolError('E_MALFORMED', 'msgpack extension types are not allowed')
}
addExtension({
  Class: Uint64,
  type: 0x67,
  pack(u: Uint64, allocateForWrite: AllocateForWrite): undefined {
    const { targetView, position } = allocateForWrite(9)
    targetView.setUint8(position, 0xcf)
    targetView.setUint32(position + 1, Math.floor(u.value / 0x100000000))
    targetView.setUint32(position + 5, u.value >>> 0)
    return undefined
  },
  unpack: noUnpack,
} as never)
addExtension({
  Class: BinRef,
  type: 0x68,
  pack(r: BinRef, allocateForWrite: AllocateForWrite): undefined {
    const n = r.data.length
    const size = binHeaderSize(n)
    const { targetView, position } = allocateForWrite(size)
    if (size === 2) {
      targetView.setUint8(position, 0xc4)
      targetView.setUint8(position + 1, n)
    } else if (size === 3) {
      targetView.setUint8(position, 0xc5)
      targetView.setUint16(position + 1, n)
    } else {
      targetView.setUint8(position, 0xc6)
      targetView.setUint32(position + 1, n)
    }
    r.at = position + size
    return undefined
  },
  unpack: noUnpack,
} as never)

/** The encoder: records off, preferred (smallest) map headers, no extra types. */
export const packr = new Packr({ useRecords: false, moreTypes: false, variableMapSize: true, mapsAsObjects: true })

/** The decoder: records off, maps as plain objects, uint64 as number (the pre-scan bounds it to 2^53 - 1), bin as views. */
export const unpackr = new Unpackr({ useRecords: false, moreTypes: false, mapsAsObjects: true, int64AsType: 'number', copyBuffers: false })
