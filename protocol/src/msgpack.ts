/**
 * The msgpack subset of SPEC §2.2, read and written directly.
 *
 * Only nil, bool, non-negative integers, str, bin, array and map exist on the
 * wire. Extension types (timestamps, msgpackr records/structures, …) and the
 * reserved byte 0xc1 are refused. Every length is checked against the bytes
 * that remain before anything is allocated, and `bin` values are returned as
 * views into the frame (no copy).
 */
import { ProtocolError } from './errors.ts'

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

/** Thrown for a malformed msgpack body (truncated, reserved byte, extension). */
function malformed (msg: string, pos: number): ProtocolError {
  return new ProtocolError('E_MALFORMED', `${msg} at body offset ${pos}`)
}

function schema (field: string, msg: string): ProtocolError {
  return new ProtocolError('E_SCHEMA', `${field}: ${msg}`, { field })
}

/** Human name of the msgpack type starting with `b`, for error messages. */
function typeName (b: number): string {
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

/** A cursor over one msgpack body. Methods throw ProtocolError only. */
export class Reader {
  readonly buf: Uint8Array
  readonly view: DataView
  pos: number
  readonly end: number

  constructor (buf: Uint8Array, start: number) {
    this.buf = buf
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
    this.pos = start
    this.end = buf.length
  }

  /** Peek the next type byte, refusing the bytes that are never allowed. */
  peek (): number {
    if (this.pos >= this.end) throw malformed('unexpected end of data', this.pos)
    const b = this.buf[this.pos] as number
    if (b === 0xc1) throw malformed('reserved byte 0xc1', this.pos)
    if ((b >= 0xc7 && b <= 0xc9) || (b >= 0xd4 && b <= 0xd8)) throw malformed('msgpack extension types are not allowed', this.pos)
    return b
  }

  #need (n: number): void {
    if (this.end - this.pos < n) throw malformed(`need ${n} more bytes`, this.pos)
  }

  #u8 (): number {
    this.#need(1)
    return this.buf[this.pos++] as number
  }

  #u16 (): number {
    this.#need(2)
    const v = this.view.getUint16(this.pos)
    this.pos += 2
    return v
  }

  #u32 (): number {
    this.#need(4)
    const v = this.view.getUint32(this.pos)
    this.pos += 4
    return v
  }

  /** A non-negative integer ≤ max. Accepts every msgpack integer width and an integral float (as msgpackr writes integers ≥ 2^32). */
  uint (field: string, max: number): number {
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
      const big = b === 0xcf ? this.view.getBigUint64(this.pos) : this.view.getBigInt64(this.pos)
      this.pos += 8
      if (big < 0n) throw schema(field, 'negative integer')
      if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw schema(field, 'integer above 2^53 - 1')
      v = Number(big)
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
      if (!Number.isInteger(v)) throw schema(field, 'not an integer')
    } else if (b >= 0xe0) v = b - 0x100
    else {
      this.pos = at
      throw schema(field, `expected an integer, got ${typeName(b)}`)
    }
    if (v < 0) throw schema(field, 'negative integer')
    if (v > max) throw schema(field, `${v} exceeds ${max}`)
    return v
  }

  bool (field: string): boolean {
    const b = this.peek()
    if (b === 0xc2 || b === 0xc3) {
      this.pos++
      return b === 0xc3
    }
    throw schema(field, `expected a bool, got ${typeName(b)}`)
  }

  /** true (and consumed) if the next value is nil */
  nil (): boolean {
    if (this.peek() === 0xc0) {
      this.pos++
      return true
    }
    return false
  }

  str (field: string, maxBytes: number): string {
    const b = this.peek()
    this.pos++
    let n: number
    if (b >= 0xa0 && b <= 0xbf) n = b - 0xa0
    else if (b === 0xd9) n = this.#u8()
    else if (b === 0xda) n = this.#u16()
    else if (b === 0xdb) n = this.#u32()
    else {
      this.pos--
      throw schema(field, `expected a str, got ${typeName(b)}`)
    }
    if (n > maxBytes) throw schema(field, `string of ${n} bytes exceeds ${maxBytes}`)
    this.#need(n)
    const start = this.pos
    this.pos += n
    if (n === 0) return ''
    try {
      return utf8.decode(this.buf.subarray(start, start + n))
    } catch {
      throw schema(field, 'invalid UTF-8')
    }
  }

  /** A view into the frame, no copy. */
  bin (field: string, maxBytes: number): Uint8Array {
    const b = this.peek()
    this.pos++
    let n: number
    if (b === 0xc4) n = this.#u8()
    else if (b === 0xc5) n = this.#u16()
    else if (b === 0xc6) n = this.#u32()
    else {
      this.pos--
      throw schema(field, `expected a bin, got ${typeName(b)}`)
    }
    if (n > maxBytes) throw schema(field, `${n} bytes exceed ${maxBytes}`)
    this.#need(n)
    const start = this.pos
    this.pos += n
    return this.buf.subarray(start, start + n)
  }

  /** Header of an array; its count is bounded by `max` and by the bytes left (≥ 1 byte per item). */
  arrayHeader (field: string, max: number): number {
    const b = this.peek()
    this.pos++
    let n: number
    if (b >= 0x90 && b <= 0x9f) n = b - 0x90
    else if (b === 0xdc) n = this.#u16()
    else if (b === 0xdd) n = this.#u32()
    else {
      this.pos--
      throw schema(field, `expected an array, got ${typeName(b)}`)
    }
    if (n > max) throw schema(field, `${n} items exceed ${max}`)
    if (n > this.end - this.pos) throw malformed(`array of ${n} items in ${this.end - this.pos} bytes`, this.pos)
    return n
  }

  /** Header of a map; its count is bounded by `max` and by the bytes left (≥ 2 bytes per entry). */
  mapHeader (field: string, max: number): number {
    const b = this.peek()
    this.pos++
    let n: number
    if (b >= 0x80 && b <= 0x8f) n = b - 0x80
    else if (b === 0xde) n = this.#u16()
    else if (b === 0xdf) n = this.#u32()
    else {
      this.pos--
      throw schema(field, `expected a map, got ${typeName(b)}`)
    }
    if (n > max) throw schema(field, `${n} entries exceed ${max}`)
    if (n * 2 > this.end - this.pos) throw malformed(`map of ${n} entries in ${this.end - this.pos} bytes`, this.pos)
    return n
  }
}

/** Bytes `uint(v)` takes (smallest form, SPEC §2.2). */
export function uintSize (v: number): number {
  return v <= 0x7f ? 1 : v <= 0xff ? 2 : v <= 0xffff ? 3 : v <= 0xffffffff ? 5 : 9
}

/** Bytes a str/bin/array/map header for `n` takes. */
export function strHeaderSize (n: number): number {
  return n < 32 ? 1 : n <= 0xff ? 2 : n <= 0xffff ? 3 : 5
}
export function binHeaderSize (n: number): number {
  return n <= 0xff ? 2 : n <= 0xffff ? 3 : 5
}
export function collectionHeaderSize (n: number): number {
  return n < 16 ? 1 : n <= 0xffff ? 3 : 5
}

/** `bin` values at least this long are passed through by reference in parts mode. */
export const PART_MIN_BYTES = 4096

/** Writes the subset into a buffer sized in advance. */
export class Writer {
  readonly buf: Buffer
  pos: number
  /** parts mode: finished chunks, large `bin` values by reference in between */
  readonly parts: Uint8Array[] | undefined
  #chunkStart = 0

  constructor (buf: Buffer, start: number, parts?: Uint8Array[]) {
    this.buf = buf
    this.pos = start
    this.parts = parts
  }

  /** parts mode: close the list with the bytes written since the last large `bin` */
  finish (): Uint8Array[] {
    const parts = this.parts ?? []
    if (this.pos > this.#chunkStart || parts.length === 0) parts.push(this.buf.subarray(this.#chunkStart, this.pos))
    return parts
  }

  uint (v: number): void {
    const b = this.buf
    if (v <= 0x7f) b[this.pos++] = v
    else if (v <= 0xff) {
      b[this.pos++] = 0xcc
      b[this.pos++] = v
    } else if (v <= 0xffff) {
      b[this.pos++] = 0xcd
      this.pos = b.writeUInt16BE(v, this.pos)
    } else if (v <= 0xffffffff) {
      b[this.pos++] = 0xce
      this.pos = b.writeUInt32BE(v, this.pos)
    } else {
      b[this.pos++] = 0xcf
      this.pos = b.writeUInt32BE(Math.floor(v / 0x100000000), this.pos)
      this.pos = b.writeUInt32BE(v >>> 0, this.pos)
    }
  }

  bool (v: boolean): void {
    this.buf[this.pos++] = v ? 0xc3 : 0xc2
  }

  nil (): void {
    this.buf[this.pos++] = 0xc0
  }

  /** `byteLength` is the UTF-8 length computed while sizing. */
  str (s: string, byteLength: number): void {
    const b = this.buf
    const n = byteLength
    if (n < 32) b[this.pos++] = 0xa0 | n
    else if (n <= 0xff) {
      b[this.pos++] = 0xd9
      b[this.pos++] = n
    } else if (n <= 0xffff) {
      b[this.pos++] = 0xda
      this.pos = b.writeUInt16BE(n, this.pos)
    } else {
      b[this.pos++] = 0xdb
      this.pos = b.writeUInt32BE(n, this.pos)
    }
    if (n > 0) this.pos += b.write(s, this.pos, n, 'utf8')
  }

  /** Copies `data` into the frame: the one copy of an extent payload. */
  bin (data: Uint8Array): void {
    const b = this.buf
    const n = data.length
    if (n <= 0xff) {
      b[this.pos++] = 0xc4
      b[this.pos++] = n
    } else if (n <= 0xffff) {
      b[this.pos++] = 0xc5
      this.pos = b.writeUInt16BE(n, this.pos)
    } else {
      b[this.pos++] = 0xc6
      this.pos = b.writeUInt32BE(n, this.pos)
    }
    if (this.parts !== undefined && n >= PART_MIN_BYTES) {
      this.parts.push(b.subarray(this.#chunkStart, this.pos), data)
      this.#chunkStart = this.pos
      return
    }
    b.set(data, this.pos)
    this.pos += n
  }

  arrayHeader (n: number): void {
    this.#collection(n, 0x90, 0xdc)
  }

  mapHeader (n: number): void {
    this.#collection(n, 0x80, 0xde)
  }

  #collection (n: number, fix: number, c16: number): void {
    const b = this.buf
    if (n < 16) b[this.pos++] = fix | n
    else if (n <= 0xffff) {
      b[this.pos++] = c16
      this.pos = b.writeUInt16BE(n, this.pos)
    } else {
      b[this.pos++] = c16 + 1
      this.pos = b.writeUInt32BE(n, this.pos)
    }
  }

  /** Pre-encoded bytes (map keys). */
  raw (bytes: Uint8Array): void {
    this.buf.set(bytes, this.pos)
    this.pos += bytes.length
  }
}
