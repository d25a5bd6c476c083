/**
 * The JSON convention of the golden vectors (vectors/README.md): a binary
 * field is written as `{ "$bin": "<lowercase hex>" }`; everything else is
 * plain JSON.
 */
import type { Message } from '../src/messages.ts'

export function toJson(v: unknown): unknown {
  if (v instanceof Uint8Array) return { $bin: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex') }
  if (Array.isArray(v)) return v.map(toJson)
  if (typeof v === 'object' && v !== null) {
    const out: Record<string, unknown> = {}
    for (const [k, x] of Object.entries(v)) out[k] = toJson(x)
    return out
  }
  return v
}

export function fromJson(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(fromJson)
  if (typeof v === 'object' && v !== null) {
    const o = v as Record<string, unknown>
    const keys = Object.keys(o)
    if (keys.length === 1 && keys[0] === '$bin' && typeof o.$bin === 'string') return new Uint8Array(Buffer.from(o.$bin, 'hex'))
    const out: Record<string, unknown> = {}
    for (const [k, x] of Object.entries(o)) out[k] = fromJson(x)
    return out
  }
  return v
}

/** A message as a JSON-able value with sorted keys, for deep comparisons that ignore Buffer vs Uint8Array and key order. */
export function canonical(m: Message | unknown): string {
  return JSON.stringify(toJson(m), (_k, v: unknown) => {
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) {
      return Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
    }
    return v
  })
}
