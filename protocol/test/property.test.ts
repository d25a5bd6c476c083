import fc from 'fast-check'
import t from 'tap'
import { decodeMessage, encodeMessage, encodeMessageParts } from '../src/codec.ts'
import { ProtocolError } from '../src/errors.ts'
import { MessageKind, type Message } from '../src/messages.ts'
import { message } from './arbitraries.ts'
import { canonical } from './json.ts'

const LIMITS = { maxExtentBytes: 64 << 20 }
const kinds = Object.values(MessageKind)
const good = encodeMessage({ kind: MessageKind.ExtentAck, disk: 1, seq: 99 })
const goodJson = canonical(decodeMessage(good))

/** decode `f`; anything but a ProtocolError fails the property; a decoded message must itself be valid */
function decodeOnlyTyped(f: Uint8Array): void {
  let m: Message
  try {
    m = decodeMessage(f, LIMITS)
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw err
    if (canonical(decodeMessage(good)) !== goodJson) throw new Error('decoder not usable after an error')
    return
  }
  // whatever the decoder lets through is a valid message: it re-encodes and round-trips
  const again = decodeMessage(encodeMessage(m, LIMITS), LIMITS)
  if (canonical(again) !== canonical(m)) throw new Error('accepted message does not round-trip')
}

t.test('decode(encode(m)) equals m for every kind', async (t) => {
  const seen = new Set<number>()
  fc.assert(
    fc.property(message, (m) => {
      seen.add(m.kind)
      const f = encodeMessage(m, LIMITS)
      if (!Buffer.concat(encodeMessageParts(m, LIMITS)).equals(f)) return false
      return canonical(decodeMessage(f, LIMITS)) === canonical(m)
    }),
    { numRuns: 3000 },
  )
  t.equal(seen.size, kinds.length, 'every kind generated')
})

t.test('arbitrary bytes only ever throw ProtocolError', async (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), (b) => decodeOnlyTyped(b)),
    { numRuns: 5000 },
  )
  fc.assert(
    fc.property(fc.constantFrom(...kinds), fc.uint8Array({ maxLength: 200 }), (k, b) => decodeOnlyTyped(Buffer.concat([Uint8Array.of(k), b]))),
    { numRuns: 5000 },
  )
  t.pass()
})

const mutation = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ op: fc.constant('set' as const), at: fc.nat(), v: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ op: fc.constant('cut' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), v: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat() }),
)

t.test('mutated valid frames only ever throw ProtocolError, and what passes is valid', async (t) => {
  fc.assert(
    fc.property(message, fc.array(mutation, { minLength: 1, maxLength: 4 }), (m, ops) => {
      let f = Buffer.from(encodeMessage(m, LIMITS))
      for (const op of ops) {
        const at = op.at % Math.max(1, f.length)
        if (op.op === 'flip') f[at] = (f[at] ?? 0) ^ (1 << op.bit)
        else if (op.op === 'set') f[at] = op.v
        else if (op.op === 'cut') f = f.subarray(0, at)
        else if (op.op === 'insert') f = Buffer.concat([f.subarray(0, at), Uint8Array.of(op.v), f.subarray(at)])
        else f = Buffer.concat([f.subarray(0, at), f.subarray(at + 1)])
      }
      decodeOnlyTyped(f)
    }),
    { numRuns: 5000 },
  )
  t.pass()
})

t.test("negotiate: the choice is common, the agent's first supported, limits the minimum; else a typed error", async (t) => {
  const { negotiate } = await import('../src/negotiation.ts')
  const algs = fc.subarray(['xxh64', 'sha256', 'sha1', 'md5', 'blake3'] as never[])
  const comps = fc.subarray(['lz4', 'deflate', 'none', 'zstd'] as never[])
  const lim = fc.record({ maxMessageBytes: fc.nat(), maxExtentBytes: fc.nat(), windowBytes: fc.nat() })
  const side = fc.record({
    versions: fc.uniqueArray(fc.integer({ min: 1, max: 5 }), { maxLength: 5 }),
    digests: algs.chain((a) => fc.shuffledSubarray(a, { minLength: a.length })),
    compressions: comps.chain((a) => fc.shuffledSubarray(a, { minLength: a.length })),
    limits: lim,
  })
  fc.assert(
    fc.property(side, side, (a, r) => {
      try {
        const n = negotiate(a, r)
        const common = a.versions.filter((v) => r.versions.includes(v))
        if (n.version !== Math.max(...common)) return false
        if (n.digest !== a.digests.find((d) => (r.digests as string[]).includes(d))) return false
        if (n.compression !== a.compressions.find((c) => (r.compressions as string[]).includes(c))) return false
        return (
          n.limits.maxMessageBytes === Math.min(a.limits.maxMessageBytes, r.limits.maxMessageBytes) &&
          n.limits.maxExtentBytes === Math.min(a.limits.maxExtentBytes, r.limits.maxExtentBytes) &&
          n.limits.windowBytes === Math.min(a.limits.windowBytes, r.limits.windowBytes)
        )
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw err
        const noVersion = !a.versions.some((v) => r.versions.includes(v))
        const noDigest = !a.digests.some((d) => (r.digests as string[]).includes(d))
        const noComp = !a.compressions.some((c) => (r.compressions as string[]).includes(c))
        return err.code === (noVersion ? 'E_VERSION' : noDigest ? 'E_NO_COMMON_DIGEST' : noComp ? 'E_NO_COMMON_COMPRESSION' : 'none')
      }
    }),
    { numRuns: 3000 },
  )
  t.pass()
})

t.test('decompress of arbitrary bytes only throws E_DECOMPRESS and never exceeds the expected length', async (t) => {
  const { decompress, compress } = await import('../src/compression.ts')
  const alg = fc.constantFrom('lz4', 'deflate', 'none' as const)
  fc.assert(
    fc.property(alg, fc.uint8Array({ maxLength: 300 }), fc.integer({ min: 0, max: 1 << 20 }), (a, b, n) => {
      try {
        return decompress(a, b, n).length === n
      } catch (err) {
        return err instanceof ProtocolError && err.code === 'E_DECOMPRESS'
      }
    }),
    { numRuns: 3000 },
  )
  // and valid compressed data with a few bytes changed
  fc.assert(
    fc.property(alg, fc.uint8Array({ minLength: 1, maxLength: 2000 }), fc.nat(), fc.integer({ min: 1, max: 255 }), (a, raw, at, x) => {
      const c = Buffer.from(compress(a, raw))
      if (c.length === 0) return true
      c[at % c.length] = (c[at % c.length] as number) ^ x
      try {
        return decompress(a, c, raw.length).length === raw.length
      } catch (err) {
        return err instanceof ProtocolError && err.code === 'E_DECOMPRESS'
      }
    }),
    { numRuns: 2000 },
  )
  t.pass()
})

t.test('msgpackr-encoded arbitrary values (dates, maps, floats, negatives, nesting) only throw ProtocolError', async (t) => {
  const { Packr } = await import('msgpackr')
  const packrs = [new Packr({ useRecords: false }), new Packr({ useRecords: true }), new Packr({ useRecords: false, mapsAsObjects: false, moreTypes: true })]
  const value = fc.oneof(
    fc.anything({ withDate: true, withMap: true, withSet: true, withBigInt: true, withTypedArray: true, withNullPrototype: true, maxDepth: 4 }),
    // valid messages with one field replaced by an arbitrary value
    fc.tuple(message, fc.anything({ withDate: true, maxDepth: 2 }), fc.nat()).map(([m, v, i]) => {
      const { kind, ...fields } = m
      const keys = Object.keys(fields)
      const k = keys[i % keys.length] as string
      return { kind, fields: { ...fields, [k]: v } }
    }),
  )
  fc.assert(
    fc.property(fc.constantFrom(...kinds), value, fc.nat(2), (kind, v, p) => {
      let body: Uint8Array
      let k: number = kind
      let payload: unknown = v
      if (typeof v === 'object' && v !== null && 'fields' in v && 'kind' in v) {
        k = (v as { kind: number }).kind
        payload = (v as { fields: unknown }).fields
      }
      try {
        body = packrs[p]!.pack(payload)
      } catch {
        return // msgpackr cannot encode it: nothing to test
      }
      decodeOnlyTyped(Buffer.concat([Uint8Array.of(k), body]))
    }),
    { numRuns: 4000 },
  )
  t.pass()
})
