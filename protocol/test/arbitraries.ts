/** fast-check generators of valid messages of every kind. */
import fc from 'fast-check'
import { MessageKind, type ExtentMessage, type Message } from '../src/messages.ts'
import { validateName } from '../src/names.ts'

const isName = (s: string): boolean => {
  try {
    validateName(s)
    return true
  } catch {
    return false
  }
}

export const name = fc.oneof(fc.stringMatching(/^[A-Za-z0-9_.-]{1,24}$/), fc.string({ unit: 'grapheme', minLength: 1, maxLength: 12 })).filter(isName)
const nat = fc.maxSafeNat()
const cycle = fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER })
const count = fc.integer({ min: 0, max: 1_000_000 })
/** a retention policy on the wire (SPEC §5.5), or null */
const retention = fc.option(fc.record({ keep: count, maxAgeSeconds: fc.nat(), maxBytes: fc.nat(), hourly: count, daily: count, weekly: count, monthly: count }), { nil: null })
const disk = fc.integer({ min: 0, max: 255 })
const sectors = (max: number): fc.Arbitrary<number> => fc.integer({ min: 0, max }).map((x) => x * 512)
const digestLen = fc.constantFrom(8, 16, 20, 32)
const digest = digestLen.chain((n) => fc.uint8Array({ minLength: n, maxLength: n }))
const cid = fc.stringMatching(/^[0-9a-f]{8}$/)
const generation = fc.oneof(fc.constant(''), fc.stringMatching(/^[0-9a-f]{32}$/))
const code = fc.stringMatching(/^E_[A-Z0-9_]{1,20}$/)
const token = fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,10}$/)
const text = (max: number): fc.Arbitrary<string> => fc.string({ unit: 'grapheme', maxLength: max }).filter((s) => Buffer.byteLength(s) <= max * 4)
const digestAlg = fc.constantFrom('xxh64', 'sha256', 'sha1', 'md5' as const)
const lengths = { xxh64: 8, sha256: 32, sha1: 20, md5: 16 } as const
const digestFor = (alg: keyof typeof lengths): fc.Arbitrary<Uint8Array> => fc.uint8Array({ minLength: lengths[alg], maxLength: lengths[alg] })
const limits = fc.record({
  maxMessageBytes: fc.integer({ min: 4096, max: 64 * 1024 * 1024 + 65536 }),
  maxExtentBytes: fc.integer({ min: 1, max: 131072 }).map((x) => x * 512),
  windowBytes: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
})
const source = fc.record({
  layers: fc.array(fc.record({ file: name, cid, parentCid: cid }), { minLength: 1, maxLength: 4 }),
  successor: name,
})
const ddb = fc.dictionary(
  // a DDB key as the schema takes it: "__proto__" matches the pattern but is refused on purpose (src/schema.ts)
  fc.stringMatching(/^[A-Za-z0-9._:-]{1,20}$/).filter((k) => k !== '__proto__'),
  fc.string({ maxLength: 20 }).filter((s) => !/[\u0000-\u001f\u007f"]/.test(s)),
  { maxKeys: 4 },
)
const uniqueNames = fc.uniqueArray(name, { maxLength: 4 })

const extent = fc
  .record({ disk, seq: nat, offset: sectors(2 ** 40), k: fc.integer({ min: 1, max: 8 }), zero: fc.boolean(), c: fc.constantFrom('none', 'lz4', 'deflate' as const) })
  .chain(({ disk, seq, offset, k, zero, c }): fc.Arbitrary<ExtentMessage> => {
    const length = k * 512
    if (zero) return fc.constant({ kind: MessageKind.Extent, disk, seq, offset, length, zero, compression: 'none' as const, data: new Uint8Array(0), digest: new Uint8Array(0) })
    const data = c === 'none' ? fc.uint8Array({ minLength: length, maxLength: length }) : fc.uint8Array({ minLength: 1, maxLength: length })
    return fc.record({ data, digest }).map((x) => ({ kind: MessageKind.Extent, disk, seq, offset, length, zero, compression: c, ...x }))
  })

/** Any valid message. */
export const message: fc.Arbitrary<Message> = fc.oneof(
  fc.record({
    kind: fc.constant(MessageKind.Hello),
    versions: fc.array(fc.integer({ min: 1, max: 0xffff }), { minLength: 1, maxLength: 4 }),
    software: text(20),
    digests: fc.array(token, { minLength: 1, maxLength: 4 }),
    compressions: fc.array(token, { minLength: 1, maxLength: 4 }),
    limits,
  }),
  fc.record({
    kind: fc.constant(MessageKind.Welcome),
    version: fc.integer({ min: 1, max: 0xffff }),
    software: text(20),
    digest: digestAlg,
    compression: fc.constantFrom('none', 'lz4', 'deflate' as const),
    limits,
    session: text(10),
  }),
  fc.record({
    kind: fc.constant(MessageKind.VmOpen),
    vm: name,
    cycle,
    compat: fc.record({ hwVersion: fc.integer({ min: 0, max: 0xffff }), datastoreType: text(10), guestOS: text(20) }),
    files: uniqueNames.chain((ns) => fc.tuple(...ns.map((n) => fc.record({ name: fc.constant(n), data: fc.uint8Array({ maxLength: 64 }) })))),
    disks: uniqueNames,
  }),
  fc
    .record({
      kind: fc.constant(MessageKind.VmState),
      vm: name,
      exists: fc.boolean(),
      committedCycle: nat,
      inflightCycle: nat,
      compatible: fc.boolean(),
      generation,
      // version 8 and later (absent before): the committed cycle's identity, or ""
      committedCycleId: fc.option(fc.oneof(fc.constant(''), fc.stringMatching(/^[0-9a-f]{64}$/)), { nil: undefined }),
    })
    .map(({ committedCycleId, ...r }) => {
      const v = r.exists ? r : { ...r, committedCycle: 0, generation: '' }
      if (committedCycleId === undefined) return v
      return { ...v, committedCycleId: v.committedCycle === 0 ? '' : committedCycleId }
    }),
  fc
    .record({
      disk,
      name,
      capacity: sectors(2 ** 43).map((x) => x + 512),
      cycle: fc.integer({ min: 2, max: 1e9 }),
      mode: fc.constantFrom('seed' as const, 'incremental' as const, 'resync' as const),
      source,
      cycleId: fc.stringMatching(/^(?:[0-9a-f]{2}){8,64}$/),
      ddb,
      totalBytes: nat,
      totalExtents: nat,
      b: fc.integer({ min: 1, max: 1e9 }),
      g: generation.filter((g) => g !== ''),
      bs: fc.integer({ min: 12, max: 24 }),
    })
    .map(({ mode, b, g, bs, ...r }) => ({
      kind: MessageKind.DiskOpen,
      ...r,
      mode,
      baseCycle: mode === 'incremental' ? 1 + (b % (r.cycle - 1)) : 0,
      baseGeneration: mode === 'incremental' ? g : '',
      blockSize: mode === 'resync' ? 2 ** bs : 0,
    })),
  fc
    .record({
      disk,
      accepted: fc.boolean(),
      code,
      committedCycle: nat,
      committedSource: fc.option(source, { nil: null }),
      mirrorCid: fc.oneof(fc.constant(''), cid),
      modified: fc.boolean(),
      resumeSeq: nat,
      resumeBytes: nat,
    })
    .map(({ code, ...r }) => ({ kind: MessageKind.DiskState, ...r, reason: r.accepted ? '' : code })),
  fc
    .record({ disk, step: fc.stringMatching(/^[a-z][a-z0-9-]{0,31}$/), a: nat, b: nat })
    .map(({ a, b, ...r }) => ({ kind: MessageKind.DiskProgress, ...r, doneBytes: Math.min(a, b), totalBytes: Math.max(a, b) })),
  extent,
  fc.record({ kind: fc.constant(MessageKind.ExtentAck), disk, seq: nat }),
  fc.record({ kind: fc.constant(MessageKind.DiskEnd), disk, extents: nat, dataBytes: fc.integer({ min: 0, max: 2 ** 52 }), zeroBytes: fc.integer({ min: 0, max: 2 ** 52 }), digest }),
  fc.record({ kind: fc.constant(MessageKind.DiskEnded), disk }),
  fc
    .record({ disk, blockSize: fc.integer({ min: 12, max: 24 }), firsts: fc.uniqueArray(fc.integer({ min: 0, max: 2 ** 40 }), { minLength: 1, maxLength: 16 }), ok: fc.boolean() })
    .map(({ disk, blockSize, firsts, ok }) => {
      const sorted = [...firsts].sort((a, b) => a - b)
      const blocks = new Uint8Array(sorted.length * 8)
      for (const [i, x] of sorted.entries()) new DataView(blocks.buffer).setBigUint64(i * 8, BigInt(x), true)
      return [
        { kind: MessageKind.BlockCheck, disk, blockSize: 2 ** blockSize, blocks, digests: new Uint8Array(sorted.length * 8).fill(7) },
        { kind: MessageKind.BlockCheckResult, disk, ok, mismatched: ok ? new Uint8Array(0) : blocks.slice(0, 8) },
      ]
    })
    .chain((pair) => fc.constantFrom(...pair)),
  fc.record({ kind: fc.constant(MessageKind.BlockMapRequest), disk, first: fc.integer({ min: 0, max: 2 ** 40 }), count: fc.integer({ min: 1, max: 65536 }) }),
  fc
    .record({ disk, first: fc.integer({ min: 0, max: 2 ** 40 }), n: fc.integer({ min: 1, max: 64 }), seed: fc.integer({ min: 0, max: 255 }) })
    .map(({ n, seed, ...r }) => ({ kind: MessageKind.BlockMap, ...r, digests: Uint8Array.from({ length: n * 8 }, (_, i) => (i * 31 + seed) & 0xff) })),
  fc.record({ kind: fc.constant(MessageKind.Commit), vm: name, cycle, retention }),
  fc.record({
    kind: fc.constant(MessageKind.Committed),
    vm: name,
    cycle,
    generation: generation.filter((g) => g !== ''),
    disks: fc.uniqueArray(fc.record({ disk, mirrorCid: cid, size: nat }), { maxLength: 4, selector: (d) => d.disk }),
    retention,
  }),
  fc
    .record({ vm: name, step: fc.stringMatching(/^[a-z][a-z0-9-]{0,31}$/), a: nat, b: nat })
    .map(({ a, b, ...r }) => ({ kind: MessageKind.VmProgress, ...r, doneBytes: Math.min(a, b), totalBytes: Math.max(a, b) })),
  fc
    .record({ vm: name, cycle, step: fc.stringMatching(/^[a-z][a-z0-9-]{0,31}$/), a: nat, b: nat })
    .map(({ a, b, ...r }) => ({ kind: MessageKind.CommitProgress, ...r, doneBytes: Math.min(a, b), totalBytes: Math.max(a, b) })),
  fc
    .record({
      vm: name,
      a: fc.integer({ min: 0, max: 1 << 30 }),
      span: fc.integer({ min: 0, max: 1000 }),
      gap: fc.integer({ min: 1, max: 1000 }),
      f: fc.double({ min: 0, max: 1, noNaN: true }),
      broken: fc.boolean(),
      reason: text(200),
    })
    .map(({ a, span, gap, f, ...r }) => ({ kind: MessageKind.PointsDropped, ...r, cycle: a + span + gap, oldest: a, newest: a + span, count: 1 + Math.floor(f * span) })),
  fc
    .record({ alg: digestAlg, size: nat, p: fc.double({ min: 0, max: 1, noNaN: true }), disk })
    .chain(({ alg, size, p, disk }) => digestFor(alg).map((digest) => ({ kind: MessageKind.TrivialCheck, disk, prefixBytes: Math.floor(size * p), algorithm: alg, size, digest }))),
  fc.record({ kind: fc.constant(MessageKind.TrivialResult), disk, ok: fc.boolean(), size: nat, digest: fc.oneof(fc.constant(new Uint8Array(0)), digest) }),
  digestAlg.chain((alg) => fc.record({ kind: fc.constant(MessageKind.Certify), disk, algorithm: fc.constant(alg), digest: digestFor(alg) })),
  digestAlg.chain((alg) =>
    fc.record({ kind: fc.constant(MessageKind.CertifyResult), disk, ok: fc.boolean(), algorithm: fc.constant(alg), digest: fc.oneof(fc.constant(new Uint8Array(0)), digestFor(alg)), bytes: nat }),
  ),
  fc.record({ kind: fc.constant(MessageKind.Rollback), vm: name }),
  fc.record({ kind: fc.constant(MessageKind.RolledBack), vm: name, committedCycle: nat }),
  fc.record({ kind: fc.constant(MessageKind.Error), code, message: text(50), fatal: fc.boolean() }),
) as fc.Arbitrary<Message>
