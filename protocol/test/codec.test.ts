import { Packr } from 'msgpackr'
import t from 'tap'
import { decodeMessage, encodeMessage } from '../src/codec.ts'
import { refusalDetail } from '../src/error-message.ts'
import { MessageKind, type CommitMessage, type DiskOpenMessage, type ExtentMessage, type Message, type RetentionSpec } from '../src/messages.ts'
import { canonical } from './json.ts'
import { samples } from './samples.ts'

const oracle = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' })
const frame = (kind: number, body: unknown): Uint8Array => {
  const b = oracle.pack(body)
  const f = new Uint8Array(b.length + 1)
  f[0] = kind
  f.set(b, 1)
  return f
}
const fieldsOf = (m: Message): Record<string, unknown> => {
  const { kind, ...fields } = m
  void kind
  return fields
}
const sample = (name: string): Message => {
  const s = samples.find((x) => x.name === name)
  if (s === undefined) throw new Error(name)
  return s.message
}
const extent = sample('extent data, uncompressed, xxh64') as ExtentMessage

t.test('every sample round-trips', async (t) => {
  const kinds = new Set<number>()
  for (const { name, message } of samples) {
    const f = encodeMessage(message)
    t.equal(f[0], message.kind, `${name}: kind byte`)
    t.equal(canonical(decodeMessage(f, { maxExtentBytes: 64 << 20 })), canonical(message), name)
    kinds.add(message.kind)
  }
  t.equal(kinds.size, Object.keys(MessageKind).length, 'samples cover every kind')
})

t.test('msgpackr (records off) is an independent oracle in both directions', async (t) => {
  for (const { name, message } of samples) {
    const ours = encodeMessage(message)
    t.equal(canonical(oracle.unpack(ours.subarray(1))), canonical(fieldsOf(message)), `${name}: msgpackr reads ours`)
    // msgpackr writes integers ≥ 2^32 as float64 and may choose other widths: we still accept it
    const theirs = frame(message.kind, fieldsOf(message))
    t.equal(canonical(decodeMessage(theirs)), canonical(message), `${name}: we read msgpackr's`)
  }
})

t.test('binary fields are views into the frame, not copies', async (t) => {
  const f = encodeMessage(extent)
  const m = decodeMessage(f) as ExtentMessage
  t.equal(m.data.buffer, f.buffer)
  t.equal(m.data.byteOffset + 512 + 7 + 10, f.byteOffset + f.length, 'data sits just before the digest key and value')
  const u = new Uint8Array(f) // not a Buffer: views stay Uint8Array
  const m2 = decodeMessage(u) as ExtentMessage
  t.equal(m2.data.buffer, u.buffer)
})

t.test('encoding is canonical: key order and widths do not depend on the object', async (t) => {
  const { kind, seq, ...rest } = extent
  const shuffled = { ...rest, seq, kind } as ExtentMessage
  t.same(Buffer.from(encodeMessage(shuffled)), Buffer.from(encodeMessage(extent)))
  const ints = [0, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, Number.MAX_SAFE_INTEGER]
  const widths = [1, 1, 2, 2, 3, 3, 5, 5, 9, 9]
  for (const [i, seq] of ints.entries()) {
    const f = encodeMessage({ kind: MessageKind.ExtentAck, disk: 0, seq })
    t.equal(f.length, 1 + 1 + 5 + 1 + 4 + widths[i]!, `seq ${seq}`)
    t.equal((decodeMessage(f) as { seq: number }).seq, seq)
  }
})

const MiB = 1 << 20
const bad: Array<[string, Record<string, unknown>, string, string?]> = [
  // [name, message, code, field]
  ['negative seq', { ...extent, seq: -1 }, 'E_SCHEMA', 'seq'],
  ['fractional offset', { ...extent, offset: 1.5 }, 'E_SCHEMA', 'offset'],
  ['offset not sector aligned', { ...extent, offset: 100 }, 'E_SCHEMA', 'offset'],
  ['length not sector aligned', { ...extent, length: 513, data: new Uint8Array(513) }, 'E_SCHEMA', 'length'],
  ['length 0', { ...extent, length: 0, data: new Uint8Array(0) }, 'E_SCHEMA', 'length'],
  ['offset + length beyond 2^53', { ...extent, offset: 2 ** 53 - 512, length: 1024, data: new Uint8Array(1024) }, 'E_SCHEMA', 'length'],
  ['data length differs from length', { ...extent, data: new Uint8Array(1024) }, 'E_SCHEMA', 'data'],
  ['compressed larger than length', { ...extent, compression: 'lz4', data: new Uint8Array(600) }, 'E_SCHEMA', 'data'],
  ['compressed empty', { ...extent, compression: 'deflate', data: new Uint8Array(0) }, 'E_SCHEMA', 'data'],
  ['unknown compression', { ...extent, compression: 'zstd' }, 'E_SCHEMA', 'compression'],
  ['digest of no known length', { ...extent, digest: new Uint8Array(7) }, 'E_SCHEMA', 'digest'],
  ['zero extent with data', { ...extent, zero: true, data: new Uint8Array(512) }, 'E_SCHEMA', 'data'],
  ['zero extent with digest', { ...extent, zero: true, data: new Uint8Array(0) }, 'E_SCHEMA', 'digest'],
  ['zero extent compressed', { ...extent, zero: true, compression: 'lz4', data: new Uint8Array(0), digest: new Uint8Array(0) }, 'E_SCHEMA', 'compression'],
  ['extent above maxExtentBytes', { ...extent, length: 32 * MiB, data: new Uint8Array(32 * MiB) }, 'E_FRAME_TOO_LARGE', 'length'],
  ['disk handle 256', { ...extent, disk: 256 }, 'E_SCHEMA', 'disk'],
  ['missing field', { kind: MessageKind.ExtentAck, disk: 0 }, 'E_SCHEMA', 'seq'],
  ['extra field', { kind: MessageKind.ExtentAck, disk: 0, seq: 1, extra: 1 }, 'E_SCHEMA', 'extra'],
  ['string for a number', { kind: MessageKind.ExtentAck, disk: 0, seq: '1' }, 'E_SCHEMA', 'seq'],
  ['bool for bin', { ...extent, data: true }, 'E_SCHEMA', 'data'],
  ['vm name with a slash', { kind: MessageKind.Commit, vm: '../x', cycle: 1, retention: null }, 'E_BAD_NAME', 'vm'],
  ['vm name ..', { kind: MessageKind.Rollback, vm: '..' }, 'E_BAD_NAME', 'vm'],
  ['cycle 0', { kind: MessageKind.Commit, vm: 'a', cycle: 0, retention: null }, 'E_SCHEMA', 'cycle'],
  ['file name with NUL', { ...sample('vm-open'), files: [{ name: 'a\u0000', data: new Uint8Array(0) }] }, 'E_BAD_NAME', 'files[0].name'],
  [
    'duplicate file names',
    {
      ...sample('vm-open'),
      files: [
        { name: 'a', data: new Uint8Array(0) },
        { name: 'a', data: new Uint8Array(0) },
      ],
    },
    'E_SCHEMA',
    'files[1]',
  ],
  ['65 files', { ...sample('vm-open'), files: Array.from({ length: 65 }, (_, i) => ({ name: `f${i}`, data: new Uint8Array(0) })) }, 'E_SCHEMA', 'files'],
  ['file above 16 MiB', { ...sample('vm-open'), files: [{ name: 'a', data: new Uint8Array(16 * MiB + 1) }] }, 'E_SCHEMA', 'files[0].data'],
  ['upper-case CID', { ...sample('disk-open incremental'), source: { layers: [{ file: 'a.vmdk', cid: 'ABCDEF01', parentCid: 'ffffffff' }], successor: 'b.vmdk' } }, 'E_SCHEMA', 'source.layers[0].cid'],
  ['no layers', { ...sample('disk-open incremental'), source: { layers: [], successor: 'b.vmdk' } }, 'E_SCHEMA', 'source.layers'],
  [
    '65 layers',
    { ...sample('disk-open incremental'), source: { layers: Array.from({ length: 65 }, () => ({ file: 'a.vmdk', cid: '00000000', parentCid: 'ffffffff' })), successor: 'b.vmdk' } },
    'E_SCHEMA',
    'source.layers',
  ],
  ['capacity not sector aligned', { ...sample('disk-open incremental'), capacity: 1000 }, 'E_SCHEMA', 'capacity'],
  ['seed with a base cycle', { ...sample('disk-open seed of a 4 PiB disk'), baseCycle: 1 }, 'E_SCHEMA', 'baseCycle'],
  ['incremental on itself', { ...sample('disk-open incremental'), baseCycle: 3 }, 'E_SCHEMA', 'baseCycle'],
  ['seed with a base generation', { ...sample('disk-open seed of a 4 PiB disk'), baseGeneration: '9f1c3b5e7a2d4f6081a3c5e7092b4d6f' }, 'E_SCHEMA', 'baseGeneration'],
  ['incremental without a base generation', { ...sample('disk-open incremental'), baseGeneration: '' }, 'E_SCHEMA', 'baseGeneration'],
  ['base generation not 32 hex digits', { ...sample('disk-open incremental'), baseGeneration: '9F1C3B5E7A2D4F6081A3C5E7092B4D6F' }, 'E_SCHEMA', 'baseGeneration'],
  ['committed without a generation', { ...sample('committed'), generation: '' }, 'E_SCHEMA', 'generation'],
  ['vm-state: no mirror but a generation', { ...sample('vm-state of a VM with no mirror'), generation: '9f1c3b5e7a2d4f6081a3c5e7092b4d6f' }, 'E_SCHEMA', 'exists'],
  ['vm-state: no committed cycle but a committed cycle identity', { ...sample('vm-state of a VM with no mirror'), committedCycleId: 'ab'.repeat(32) }, 'E_SCHEMA', 'committedCycleId'],
  [
    'vm-state: a committed cycle identity in capitals',
    { ...sample('vm-state of version 8, with the identity of the committed cycle'), committedCycleId: 'AB'.repeat(32) },
    'E_SCHEMA',
    'committedCycleId',
  ],
  [
    'vm-state: a committed cycle identity of 62 digits',
    { ...sample('vm-state of version 8, with the identity of the committed cycle'), committedCycleId: 'ab'.repeat(31) },
    'E_SCHEMA',
    'committedCycleId',
  ],
  [
    'vm-state: a committed cycle identity of 66 digits',
    { ...sample('vm-state of version 8, with the identity of the committed cycle'), committedCycleId: 'ab'.repeat(33) },
    'E_SCHEMA',
    'committedCycleId',
  ],
  [
    'vm-state: a committed cycle identity that is not a string',
    { ...sample('vm-state of version 8, with the identity of the committed cycle'), committedCycleId: null },
    'E_SCHEMA',
    'committedCycleId',
  ],
  ['unknown mode', { ...sample('disk-open incremental'), mode: 'full' }, 'E_SCHEMA', 'mode'],
  ['resync with a base cycle', { ...sample('disk-open resync'), baseCycle: 3 }, 'E_SCHEMA', 'baseCycle'],
  ['resync with a base generation', { ...sample('disk-open resync'), baseGeneration: '9f1c3b5e7a2d4f6081a3c5e7092b4d6f' }, 'E_SCHEMA', 'baseGeneration'],
  ['resync without a block size', { ...sample('disk-open resync'), blockSize: 0 }, 'E_SCHEMA', 'blockSize'],
  ['resync block size not a power of two', { ...sample('disk-open resync'), blockSize: 3 * 65536 }, 'E_SCHEMA', 'blockSize'],
  ['resync block size below 4 KiB', { ...sample('disk-open resync'), blockSize: 2048 }, 'E_SCHEMA', 'blockSize'],
  ['resync block size above maxExtentBytes', { ...sample('disk-open resync'), blockSize: 32 * MiB }, 'E_SCHEMA', 'blockSize'],
  ['resync block size above 64 MiB', { ...sample('disk-open resync'), blockSize: 128 * MiB }, 'E_SCHEMA', 'blockSize'],
  ['incremental with a block size', { ...sample('disk-open incremental'), blockSize: MiB }, 'E_SCHEMA', 'blockSize'],
  ['block map request of no block', { ...sample('block-map-request'), count: 0 }, 'E_SCHEMA', 'count'],
  ['block map request of 65537 blocks', { ...sample('block-map-request'), count: 65537 }, 'E_SCHEMA', 'count'],
  ['block map request beyond 2^53', { ...sample('block-map-request'), first: 2 ** 53 - 2, count: 4 }, 'E_SCHEMA', 'count'],
  ['block check of no block', { ...sample('block-check'), blocks: new Uint8Array(0), digests: new Uint8Array(0) }, 'E_SCHEMA', 'blocks'],
  ['block check, a torn index', { ...sample('block-check'), blocks: new Uint8Array(12) }, 'E_SCHEMA', 'blocks'],
  ['block check, indexes not ascending', { ...sample('block-check'), blocks: new Uint8Array(16) }, 'E_SCHEMA', 'blocks'],
  ['block check, digests for another count', { ...sample('block-check'), digests: new Uint8Array(24) }, 'E_SCHEMA', 'digests'],
  ['block check, block size not a power of two', { ...sample('block-check'), blockSize: 3 * MiB }, 'E_SCHEMA', 'blockSize'],
  ['block check, block size above maxExtentBytes', { ...sample('block-check'), blockSize: 32 * MiB }, 'E_SCHEMA', 'blockSize'],
  ['block check result ok with mismatches', { ...sample('block-check-result'), ok: true }, 'E_SCHEMA', 'mismatched'],
  ['block check result not ok without mismatches', { ...sample('block-check-result ok'), ok: false }, 'E_SCHEMA', 'mismatched'],
  ['empty block map', { ...sample('block-map'), digests: new Uint8Array(0) }, 'E_SCHEMA', 'digests'],
  ['block map above 4 MiB', { ...sample('block-map'), digests: new Uint8Array(4 * MiB + 8) }, 'E_SCHEMA', 'digests'],
  ['cycleId not hex', { ...sample('disk-open incremental'), cycleId: 'xyz' }, 'E_SCHEMA', 'cycleId'],
  ['ddb value with a newline', { ...sample('disk-open incremental'), ddb: { 'ddb.x': 'a\nb' } }, 'E_SCHEMA', 'ddb["ddb.x"]'],
  ['ddb value with a quote', { ...sample('disk-open incremental'), ddb: { 'ddb.x': 'a"b' } }, 'E_SCHEMA', 'ddb["ddb.x"]'],
  ['accepted with a reason', { ...sample('disk-state accepted, resuming'), reason: 'E_BUSY' }, 'E_SCHEMA', 'reason'],
  ['refused without a reason', { ...sample('disk-state refused, no mirror yet'), reason: '' }, 'E_SCHEMA', 'reason'],
  // SPEC §5.1 (v9): the explanation of a refusal, never of an acceptance; a string of at most 2048 UTF-8 bytes
  ['accepted with a detail', { ...sample('disk-state accepted, resuming'), detail: 'why' }, 'E_SCHEMA', 'detail'],
  ['accepted with an empty detail', { ...sample('disk-state accepted, resuming'), detail: '' }, 'E_SCHEMA', 'detail'],
  ['refused with a detail of 2049 bytes', { ...sample("disk-state of version 9 refused, with the receiver's detail"), detail: 'x'.repeat(2049) }, 'E_SCHEMA', 'detail'],
  ['refused with a detail of 1025 two-byte characters', { ...sample("disk-state of version 9 refused, with the receiver's detail"), detail: 'é'.repeat(1025) }, 'E_SCHEMA', 'detail'],
  ['refused with a detail that is not a string', { ...sample("disk-state of version 9 refused, with the receiver's detail"), detail: 42 }, 'E_SCHEMA', 'detail'],
  ['refused with a detail of nil', { ...sample("disk-state of version 9 refused, with the receiver's detail"), detail: null }, 'E_SCHEMA', 'detail'],
  ['progress beyond its total', { ...sample('disk-progress of a base copy'), doneBytes: 201 * 1024 ** 3 }, 'E_SCHEMA', 'doneBytes'],
  ['progress step with a capital', { ...sample('disk-progress of a base copy'), step: 'Base-copy' }, 'E_SCHEMA', 'step'],
  ['vm progress beyond its total', { ...sample('vm-progress of an undo'), doneBytes: 641 * MiB }, 'E_SCHEMA', 'doneBytes'],
  ['vm progress with a bad VM name', { ...sample('vm-progress of an undo'), vm: '' }, 'E_BAD_NAME'],
  ['vm progress with an empty step', { ...sample('vm-progress of an undo'), step: '' }, 'E_SCHEMA', 'step'],
  ['commit progress beyond its total', { ...sample('commit-progress of point merges'), doneBytes: 13 * 1024 * MiB }, 'E_SCHEMA', 'doneBytes'],
  ['commit progress with a negative cycle', { ...sample('commit-progress of point merges'), cycle: -1 }, 'E_SCHEMA', 'cycle'],
  ['points dropped: none', { ...sample('points-dropped by a re-seed of a changed mirror'), count: 0 }, 'E_SCHEMA', 'count'],
  ['points dropped: more than fit between oldest and newest', { ...sample('points-dropped by a re-seed of a changed mirror'), count: 5 }, 'E_SCHEMA', 'count'],
  ['points dropped: oldest after newest', { ...sample('points-dropped by a re-seed of a changed mirror'), oldest: 9 }, 'E_SCHEMA', 'oldest'],
  ['points dropped: a point not older than the cycle', { ...sample('points-dropped by a re-seed of a changed mirror'), newest: 9 }, 'E_SCHEMA', 'newest'],
  ['points dropped: a reason past 1024 bytes', { ...sample('points-dropped by a re-seed of a changed mirror'), reason: 'é'.repeat(513) }, 'E_SCHEMA', 'reason'],
  ['points dropped: broken not a boolean', { ...sample('points-dropped by a re-seed of a changed mirror'), broken: 1 }, 'E_SCHEMA', 'broken'],
  ['trivial prefix above size', { ...sample('trivial-check'), prefixBytes: 17 * 1024 * MiB }, 'E_SCHEMA', 'prefixBytes'],
  ['trivial digest of the wrong length', { ...sample('trivial-check'), digest: new Uint8Array(32) }, 'E_SCHEMA', 'digest'],
  ['certify with an unknown algorithm', { ...sample('certify'), algorithm: 'crc32' }, 'E_SCHEMA', 'algorithm'],
  ['welcome with an unknown digest', { ...sample('welcome'), digest: 'blake3' }, 'E_SCHEMA', 'digest'],
  ['hello without versions', { ...sample('hello'), versions: [] }, 'E_SCHEMA', 'versions'],
  ['hello version 0', { ...sample('hello'), versions: [0] }, 'E_SCHEMA', 'versions'],
  ['hello extent limit not sector aligned', { ...sample('hello'), limits: { maxMessageBytes: 65536, maxExtentBytes: 1000, windowBytes: 1 } }, 'E_SCHEMA', 'limits.maxExtentBytes'],
  ['hello algorithm token with spaces', { ...sample('hello'), digests: ['x y'] }, 'E_SCHEMA', 'digests[0]'],
  ['error code not E_', { kind: MessageKind.Error, code: 'oops', message: '', fatal: true }, 'E_SCHEMA', 'code'],
  [
    'committed duplicate disks',
    {
      ...sample('committed'),
      disks: [
        { disk: 0, mirrorCid: '00000000', size: 0 },
        { disk: 0, mirrorCid: '00000000', size: 0 },
      ],
    },
    'E_SCHEMA',
    'disks[1]',
  ],
  // each branch of checkMessage by hand: the property test draws invalid values only by chance, so coverage must not depend on its seed
  ['welcome version 0', { ...sample('welcome'), version: 0 }, 'E_SCHEMA', 'version'],
  ['welcome with an unknown compression', { ...sample('welcome'), compression: 'zstd' }, 'E_SCHEMA', 'compression'],
  ['welcome window 0', { ...sample('welcome'), limits: { maxMessageBytes: 65536, maxExtentBytes: 512, windowBytes: 0 } }, 'E_SCHEMA', 'limits.windowBytes'],
  ['hello message limit below 4096', { ...sample('hello'), limits: { maxMessageBytes: 4095, maxExtentBytes: 512, windowBytes: 1 } }, 'E_SCHEMA', 'limits.maxMessageBytes'],
  ['hello extent limit 0', { ...sample('hello'), limits: { maxMessageBytes: 65536, maxExtentBytes: 0, windowBytes: 1 } }, 'E_SCHEMA', 'limits.maxExtentBytes'],
  ['vm-open cycle 0', { ...sample('vm-open'), cycle: 0 }, 'E_SCHEMA', 'cycle'],
  ['disk-open capacity 0', { ...sample('disk-open incremental'), capacity: 0 }, 'E_SCHEMA', 'capacity'],
  ['disk-open cycle 0', { ...sample('disk-open seed of a 4 PiB disk'), cycle: 0 }, 'E_SCHEMA', 'cycle'],
  ['incremental on cycle 0', { ...sample('disk-open incremental'), baseCycle: 0 }, 'E_SCHEMA', 'baseCycle'],
  ['disk-end beyond 2^53', { ...sample('disk-end'), dataBytes: 2 ** 52, zeroBytes: 2 ** 52 + 512 }, 'E_SCHEMA', 'zeroBytes'],
  ['disk-end digest of no known length', { ...sample('disk-end'), digest: new Uint8Array(7) }, 'E_SCHEMA', 'digest'],
  ['committed cycle 0', { ...sample('committed'), cycle: 0 }, 'E_SCHEMA', 'cycle'],
  ['trivial-result digest of no known length', { ...sample('trivial-result'), digest: new Uint8Array(7) }, 'E_SCHEMA', 'digest'],
  ['certify digest of the wrong length', { ...sample('certify'), digest: new Uint8Array(20) }, 'E_SCHEMA', 'digest'],
  ['certify-result digest of the wrong length', { ...sample('certify-result'), digest: new Uint8Array(8) }, 'E_SCHEMA', 'digest'],
  ['lone surrogate', { kind: MessageKind.Error, code: 'E_IO', message: '\ud800', fatal: true }, 'E_SCHEMA', 'message'],
  ['error message above 4096 bytes', { kind: MessageKind.Error, code: 'E_IO', message: 'é'.repeat(2049), fatal: true }, 'E_SCHEMA', 'message'],
]

t.test('invalid messages are refused by the encoder and, sent anyway, by the decoder', async (t) => {
  const limits = { maxExtentBytes: 16 * MiB, maxMessageBytes: 64 * MiB }
  for (const [name, m, code, field] of bad) {
    t.throws(() => encodeMessage(m as never, limits), { name: 'ProtocolError', code, ...(field === undefined ? {} : { field }) }, `encode: ${name}`)
    // what a buggy or hostile peer might put on the wire (msgpackr does not validate)
    const { kind, ...fields } = m
    if (name === 'lone surrogate') continue // msgpackr writes U+FFFD-free WTF-8 that is not UTF-8: covered below
    t.throws(() => decodeMessage(frame(kind as number, fields), limits), { name: 'ProtocolError', code, ...(field === undefined ? {} : { field }) }, `decode: ${name}`)
  }
})

t.test('structural errors', async (t) => {
  const ok = encodeMessage(extent)
  const cases: Array<[string, Uint8Array, string]> = [
    ['empty frame', new Uint8Array(0), 'E_MALFORMED'],
    ['kind only', Uint8Array.of(0x21), 'E_MALFORMED'],
    ['unknown kind', Uint8Array.of(0x03, 0x80), 'E_UNKNOWN_KIND'],
    ['unknown kind 0xff', Uint8Array.of(0xff, 0x80), 'E_UNKNOWN_KIND'],
    ['truncated', ok.subarray(0, ok.length - 1), 'E_MALFORMED'],
    ['trailing byte', Buffer.concat([ok, Uint8Array.of(0xc0)]), 'E_MALFORMED'],
    ['body is an array', Uint8Array.of(0x21, 0x92, 0x00, 0x00), 'E_SCHEMA'],
    ['body is nil', Uint8Array.of(0x21, 0xc0), 'E_SCHEMA'],
    ['timestamp extension', frame(0x7f, { code: 'E_IO', message: new Date(0), fatal: true }), 'E_MALFORMED'],
    ['reserved 0xc1', Uint8Array.of(0x21, 0x82, 0xa4, 0x64, 0x69, 0x73, 0x6b, 0xc1), 'E_MALFORMED'],
    ['ext8', Uint8Array.of(0x21, 0xc7, 0x00, 0x01), 'E_MALFORMED'],
    ['map claiming 2^32-1 entries', Uint8Array.of(0x21, 0xdf, 0xff, 0xff, 0xff, 0xff), 'E_MALFORMED'],
    ['array claiming 2^32-1 items', Buffer.concat([Buffer.from(encodeMessage(sample('vm-open'))).subarray(0, 8), Uint8Array.of(0xdd, 0xff, 0xff, 0xff, 0xff)]), 'E_SCHEMA'],
    ['str claiming 4 GiB', Uint8Array.of(0x23, 0x81, 0xdb, 0xff, 0xff, 0xff, 0xff), 'E_SCHEMA'],
    ['bin claiming 4 GiB', Uint8Array.of(0x7f, 0x81, 0xa4, 0x63, 0x6f, 0x64, 0x65, 0xc6, 0xff, 0xff, 0xff, 0xff), 'E_SCHEMA'],
    ['invalid UTF-8 key', Uint8Array.of(0x23, 0x81, 0xa1, 0xff, 0x00), 'E_SCHEMA'],
    ['uint64 above 2^53', Uint8Array.of(0x21, 0x82, 0xa4, 0x64, 0x69, 0x73, 0x6b, 0x00, 0xa3, 0x73, 0x65, 0x71, 0xcf, 0x00, 0x20, 0, 0, 0, 0, 0, 0), 'E_SCHEMA'],
    ['negative fixint', Uint8Array.of(0x21, 0x82, 0xa4, 0x64, 0x69, 0x73, 0x6b, 0x00, 0xa3, 0x73, 0x65, 0x71, 0xff), 'E_SCHEMA'],
    ['float seq', frame(0x21, { disk: 0, seq: 1.5 }), 'E_SCHEMA'],
    ['duplicate key', Uint8Array.of(0x21, 0x82, 0xa4, 0x64, 0x69, 0x73, 0x6b, 0x00, 0xa4, 0x64, 0x69, 0x73, 0x6b, 0x00), 'E_SCHEMA'],
  ]
  for (const [name, f, code] of cases) {
    t.throws(() => decodeMessage(f), { name: 'ProtocolError', code }, name)
    // the decoder keeps no state: the next good frame decodes
    t.equal(canonical(decodeMessage(ok)), canonical(extent), `usable after: ${name}`)
  }
})

t.test('frame size limit is checked before parsing', async (t) => {
  const big = encodeMessage({ ...extent, length: 2 * MiB, data: new Uint8Array(2 * MiB) })
  t.throws(() => decodeMessage(big, { maxMessageBytes: MiB }), { code: 'E_FRAME_TOO_LARGE', closeCode: 1009 })
  t.throws(() => decodeMessage(big, { maxExtentBytes: MiB }), { code: 'E_FRAME_TOO_LARGE', field: 'length' })
  t.throws(() => encodeMessage({ ...extent, length: 2 * MiB, data: new Uint8Array(2 * MiB) }, { maxMessageBytes: MiB }), { code: 'E_FRAME_TOO_LARGE' })
  t.ok(decodeMessage(big, { maxExtentBytes: 2 * MiB }))
  t.throws(() => decodeMessage('x' as never), { code: 'E_MALFORMED' })
})

t.test('negotiated digest length is enforced when given', async (t) => {
  const f = encodeMessage(extent) // 8-byte digest
  t.ok(decodeMessage(f, { digest: 'xxh64' }))
  t.throws(() => decodeMessage(f, { digest: 'sha256' }), { code: 'E_SCHEMA', field: 'digest' })
  const lz = encodeMessage(sample('extent data, lz4, sha256, far offset'))
  t.ok(decodeMessage(lz, { compression: 'lz4' }))
  t.throws(() => decodeMessage(lz, { compression: 'deflate' }), { code: 'E_SCHEMA', field: 'compression' })
  t.ok(decodeMessage(f, { compression: 'deflate' }), '"none" is always allowed')
  const end = encodeMessage(sample('disk-end'))
  t.throws(() => decodeMessage(end, { digest: 'md5' }), { code: 'E_SCHEMA', field: 'digest' })
  // block maps and block checks carry many digests: each must have the negotiated length
  const map = encodeMessage(sample('block-map')) // three 8-byte digests
  t.ok(decodeMessage(map, { digest: 'xxh64' }))
  t.throws(() => decodeMessage(map, { digest: 'md5' }), { code: 'E_SCHEMA', field: 'digests' })
  const check = encodeMessage(sample('block-check')) // four 8-byte digests
  t.ok(decodeMessage(check, { digest: 'xxh64' }))
  t.throws(() => decodeMessage(check, { digest: 'sha1' }), { code: 'E_SCHEMA', field: 'digests' })
})

t.test('encode refuses unknown kinds and non-objects', async (t) => {
  t.throws(() => encodeMessage({ kind: 0x03 } as never), { code: 'E_UNKNOWN_KIND' })
  t.throws(() => encodeMessage(null as never), { code: 'E_UNKNOWN_KIND' })
  t.throws(() => encodeMessage({ kind: MessageKind.Commit, vm: 'a', cycle: 1, retention: null, extra: 2 } as never), { code: 'E_SCHEMA', field: 'extra' })
  t.throws(() => encodeMessage({ ...sample('committed'), disks: [[]] } as never), { code: 'E_SCHEMA', field: 'disks[0]' })
})

t.test('a 1 MiB extent is encoded with one copy and decoded with none', async (t) => {
  const data = new Uint8Array(MiB).fill(0x5a)
  const m: ExtentMessage = { ...extent, length: MiB, data }
  const f = encodeMessage(m)
  t.equal(f.length, 1 + MiB + 200 - 200 + (f.length - 1 - MiB), 'sanity')
  t.ok(f.length - MiB < 128, `header overhead ${f.length - MiB} bytes`)
  const d = decodeMessage(f) as ExtentMessage
  t.equal(d.data.buffer, f.buffer)
  t.equal(d.data.length, MiB)
  t.equal(d.data[MiB - 1], 0x5a)
})

t.test('encodeMessageParts: same bytes, large binaries by reference', async (t) => {
  const { encodeMessageParts } = await import('../src/codec.ts')
  const data = new Uint8Array(MiB).fill(0x33)
  const m: ExtentMessage = { ...extent, length: MiB, data }
  const parts = encodeMessageParts(m)
  t.equal(parts.length, 3)
  t.equal(parts[1], data, 'the payload itself, not a copy')
  t.same(Buffer.concat(parts), Buffer.from(encodeMessage(m)))
  t.ok(parts[0]!.length + parts[2]!.length < 128)
  for (const { name, message } of samples) {
    const p = encodeMessageParts(message)
    t.same(Buffer.concat(p), Buffer.from(encodeMessage(message)), name)
    t.ok(p.length >= 1)
  }
  t.throws(() => encodeMessageParts({ ...m, seq: -1 }), { code: 'E_SCHEMA' })
})

t.test('every msgpack integer width is read; negative and fractional values are refused', async (t) => {
  const { kindName } = await import('../src/codec.ts')
  t.equal(kindName(0x20), 'Extent')
  t.equal(kindName(0x03), undefined)
  // ExtentAck {disk: 0, seq: <v>}
  const ack = (seqBytes: number[]): Uint8Array => Uint8Array.of(0x21, 0x82, 0xa4, 0x64, 0x69, 0x73, 0x6b, 0x00, 0xa3, 0x73, 0x65, 0x71, ...seqBytes)
  const ok: Array<[number[], number]> = [
    [[0xd0, 0x05], 5],
    [[0xd1, 0x01, 0x00], 256],
    [[0xd2, 0x00, 0x01, 0x00, 0x00], 65536],
    [[0xd3, 0, 0, 0, 1, 0, 0, 0, 0], 2 ** 32],
    [[0xca, 0x47, 0x80, 0x00, 0x00], 65536],
    [[0xcd, 0x01, 0x00], 256],
    [[0xce, 0xff, 0xff, 0xff, 0xff], 2 ** 32 - 1],
    [[0xcf, 0x00, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], Number.MAX_SAFE_INTEGER],
  ]
  for (const [b, v] of ok) t.equal((decodeMessage(ack(b)) as { seq: number }).seq, v, b.map((x) => x.toString(16)).join(' '))
  const no: number[][] = [
    [0xd0, 0xff],
    [0xd1, 0xff, 0xff],
    [0xd2, 0x80, 0, 0, 0],
    [0xd3, 0xff, 0, 0, 0, 0, 0, 0, 0],
    [0xca, 0x3f, 0xc0, 0, 0],
    [0xcb, 0xbf, 0xf0, 0, 0, 0, 0, 0, 0],
    [0xc3],
    [0xa1, 0x31],
    [0xc4, 0x00],
    [0x90],
    [0x80],
    [0xc0],
  ]
  for (const b of no) t.throws(() => decodeMessage(ack(b)), { code: 'E_SCHEMA', field: 'seq' }, b.map((x) => x.toString(16)).join(' '))
})

t.test('long strings, binaries and collections use the 16/32-bit forms', async (t) => {
  const msg = { kind: MessageKind.Error, code: 'E_IO', message: 'x'.repeat(4000), fatal: true } as const
  const f = encodeMessage(msg)
  t.equal(f.indexOf(0xda), 1 + 1 + 5 + 5 + 8, 'str16 header')
  t.equal(canonical(decodeMessage(f)), canonical(msg))
  const vm = { ...sample('vm-open'), files: Array.from({ length: 20 }, (_, i) => ({ name: `f${i}`, data: new Uint8Array(i === 0 ? 70000 : 300) })) }
  const g = encodeMessage(vm)
  t.equal(canonical(decodeMessage(g)), canonical(vm), 'array16 + bin16 + bin32')
  const big = encodeMessage({ ...extent, length: 65536 * 2, data: new Uint8Array(65536 * 2) })
  t.equal((decodeMessage(big) as ExtentMessage).data.length, 131072)
})

t.test('frames are sized for themselves: a 1 MiB extent does not sit in a grown msgpackr buffer', async (t) => {
  const data = new Uint8Array(MiB).fill(0x11)
  const f = encodeMessage({ ...extent, length: MiB, data })
  // msgpackr left to itself grows its buffer to ~4x and re-copies what it wrote; ours is exact plus ~2 KiB slack
  t.ok(f.buffer.byteLength < MiB + 8192, `backing store ${f.buffer.byteLength} bytes for a ${f.length}-byte frame`)
  t.equal(f.byteOffset, 0)
  // small frames share a slab but never overlap
  const a = encodeMessage({ kind: MessageKind.ExtentAck, disk: 0, seq: 1 })
  const b = encodeMessage({ kind: MessageKind.ExtentAck, disk: 0, seq: 2 })
  const aHex = Buffer.from(a).toString('hex')
  t.ok(a.buffer !== b.buffer || a.byteOffset + a.length <= b.byteOffset, 'disjoint')
  t.equal((decodeMessage(a) as { seq: number }).seq, 1)
  t.equal(Buffer.from(a).toString('hex'), aHex)
})

t.test('other msgpackr users in the process neither write into our frames nor get overwritten by them', async (t) => {
  const { pack, unpack } = await import('msgpackr')
  const ours = encodeMessage({ kind: MessageKind.ExtentAck, disk: 0, seq: 7 })
  const oursHex = Buffer.from(ours).toString('hex')
  const theirs = pack({ hello: 'x'.repeat(100) })
  const theirsHex = Buffer.from(theirs).toString('hex')
  const more = Array.from({ length: 50 }, (_, i) => encodeMessage({ kind: MessageKind.ExtentAck, disk: 0, seq: i }))
  t.equal(Buffer.from(ours).toString('hex'), oursHex, 'our frame intact')
  t.equal(Buffer.from(theirs).toString('hex'), theirsHex, 'their buffer intact')
  t.same(unpack(theirs), { hello: 'x'.repeat(100) })
  t.same(
    more.map((f) => (decodeMessage(f) as { seq: number }).seq),
    Array.from({ length: 50 }, (_, i) => i),
  )
})

t.test('the pre-scan stops what msgpackr would accept', async (t) => {
  const { Unpackr } = await import('msgpackr')
  const lax = new Unpackr({ useRecords: false, mapsAsObjects: true })
  const key = (s: string): number[] => [0xa0 | s.length, ...Buffer.from(s)]
  // DiskEnded {disk: 0} with the value replaced
  const ended = (value: number[]): Uint8Array => Uint8Array.of(0x23, 0x81, ...key('disk'), ...value)
  const cases: Array<[string, Uint8Array, string]> = [
    // msgpackr turns the timestamp ext into a Date
    ['timestamp ext as a value', ended([0xd6, 0xff, 0, 0, 0, 0]), 'E_MALFORMED'],
    // msgpackr keeps the last of duplicate keys
    ['duplicate key', Uint8Array.of(0x23, 0x82, ...key('disk'), 0x00, ...key('disk'), 0x01), 'E_SCHEMA'],
    // msgpackr replaces invalid UTF-8
    ['invalid UTF-8 key', Uint8Array.of(0x23, 0x81, 0xa4, 0x64, 0x69, 0xff, 0x6b, 0x00), 'E_SCHEMA'],
    // msgpackr returns the C1 marker object
    ['reserved 0xc1 as a value', ended([0xc1]), 'E_MALFORMED'],
  ]
  for (const [name, f, code] of cases) {
    t.doesNotThrow(() => lax.unpack(f.subarray(1)), `msgpackr alone accepts: ${name}`)
    t.throws(() => decodeMessage(f), { name: 'ProtocolError', code }, name)
  }
})

t.test('DDB maps: duplicate keys and "__proto__" are refused in both directions', async (t) => {
  const m = sample('disk-open incremental') as DiskOpenMessage
  const withProto = { ...m, ddb: JSON.parse('{"__proto__": "x"}') as Record<string, string> }
  t.throws(() => encodeMessage(withProto), { code: 'E_SCHEMA' })
  // hand-build the frame: re-encode with a placeholder key of the same length and patch it
  const good = Buffer.from(encodeMessage({ ...m, ddb: { 'ddb.aaaaa': 'x', 'ddb.bbbbb': 'y' } }))
  const proto = Buffer.from(good)
  proto.write('__proto__', proto.indexOf('ddb.aaaaa'), 'latin1')
  t.throws(() => decodeMessage(proto), { code: 'E_SCHEMA', field: 'ddb(key)' })
  const dup = Buffer.from(good)
  dup.write('ddb.aaaaa', dup.indexOf('ddb.bbbbb'), 'latin1')
  t.throws(() => decodeMessage(dup), { code: 'E_SCHEMA', field: 'ddb["ddb.aaaaa"]' })
  t.same((decodeMessage(good) as typeof m).ddb, { 'ddb.aaaaa': 'x', 'ddb.bbbbb': 'y' })
})

t.test('a retention request is a struct of seven bounded rules, or nil (SPEC §5.5)', async (t) => {
  const req = sample('commit with a retention request') as CommitMessage
  const back = decodeMessage(encodeMessage(req)) as CommitMessage
  t.same(back.retention, req.retention)
  t.equal((decodeMessage(encodeMessage(sample('commit'))) as CommitMessage).retention, null)
  const spec = req.retention as RetentionSpec
  t.throws(() => encodeMessage({ ...req, retention: { ...spec, keep: 1_000_001 } }), { code: 'E_SCHEMA', field: 'retention.keep' })
  t.throws(() => encodeMessage({ ...req, retention: { ...spec, daily: -1 } }), { code: 'E_SCHEMA', field: 'retention.daily' })
  const { weekly: _w, ...missing } = spec
  t.throws(() => encodeMessage({ ...req, retention: missing } as never), { code: 'E_SCHEMA', field: 'retention.weekly' })
  t.throws(() => encodeMessage({ ...req, retention: { ...spec, extra: 1 } } as never), { code: 'E_SCHEMA', field: 'retention.extra' })
})

t.test('the Extent encoder writes the bytes of the generic encoder (msgpackr), whole and in parts', async (t) => {
  const { encodeGeneric, encodeMessageParts, extentEncoderStats } = await import('../src/codec.ts')
  const limits = { maxMessageBytes: 64 * MiB + 65536, maxExtentBytes: 64 * MiB }
  const ints = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0xffffffff, 0x100000000, 2 ** 40 + 3, Number.MAX_SAFE_INTEGER]
  const sectors = ints.map((v) => Math.floor(v / 512) * 512).filter((v) => v + 512 <= Number.MAX_SAFE_INTEGER)
  const sizes = [0, 1, 255, 256, 4095, 4096, 65535, 65536, 70000]
  const cases: ExtentMessage[] = []
  for (const disk of [0, 0x7f, 0x80, 255]) cases.push({ ...extent, disk })
  for (const seq of ints) cases.push({ ...extent, seq })
  for (const offset of sectors) cases.push({ ...extent, offset, length: 512 })
  for (const length of [512, 0x10000, 0xfe00, 0x100000, 64 * MiB]) cases.push({ ...extent, length, compression: 'lz4', data: new Uint8Array(Math.min(length, 300)).fill(9) })
  for (const n of sizes) if (n > 0) cases.push({ ...extent, length: Math.ceil(n / 512) * 512, compression: n % 512 === 0 ? 'none' : 'deflate', data: new Uint8Array(n).fill(n & 0xff) })
  for (const d of [8, 16, 20, 32]) cases.push({ ...extent, digest: new Uint8Array(d).fill(d) })
  cases.push({ ...extent, zero: true, compression: 'none', data: new Uint8Array(0), digest: new Uint8Array(0), length: 1 << 30 })
  for (const m of cases) {
    const name = `disk ${m.disk} seq ${m.seq} offset ${m.offset} length ${m.length} data ${m.data.length} digest ${m.digest.length} ${m.compression}${m.zero ? ' zero' : ''}`
    const before = extentEncoderStats.fast
    const whole = encodeMessage(m, limits)
    const parts = encodeMessageParts(m, limits)
    t.equal(extentEncoderStats.fast, before + 2, `${name}: the hand-written encoder`)
    const generic = Buffer.concat(encodeGeneric(m, limits, undefined))
    t.equal(Buffer.from(whole).toString('hex'), generic.toString('hex'), name)
    t.equal(Buffer.concat(parts).toString('hex'), generic.toString('hex'), `${name} (parts)`)
    const genericParts = encodeGeneric(m, limits, [])
    t.same(
      parts.map((p) => p.length),
      genericParts.map((p) => p.length),
      `${name}: the same parts`,
    )
    if (m.data.length >= 4096) t.equal(parts[1], m.data, `${name}: the payload by reference`)
    t.same(decodeMessage(whole, limits), { ...m, data: Buffer.from(m.data), digest: Buffer.from(m.digest) }, `${name} decodes`)
  }
  // the golden vectors' Extents (vectors.test.ts compares every vector's bytes too)
  for (const { name, message } of samples) {
    if (message.kind !== MessageKind.Extent) continue
    t.equal(
      Buffer.from(encodeMessage(message)).toString('hex'),
      Buffer.concat(encodeGeneric(message, { maxMessageBytes: 64 * MiB + 65536, maxExtentBytes: 64 * MiB }, undefined)).toString('hex'),
      name,
    )
  }
})

t.test('the Extent encoder refuses what the generic encoder refuses, with the same errors', async (t) => {
  const { encodeGeneric, extentEncoderStats } = await import('../src/codec.ts')
  const limits = { maxMessageBytes: 4096, maxExtentBytes: 65536, digest: 'xxh64' as const, compression: 'lz4' as const }
  const bad: Array<[string, unknown]> = [
    ['disk', { ...extent, disk: 256 }],
    ['disk', { ...extent, disk: '0' }],
    ['seq', { ...extent, seq: -1 }],
    ['seq', { ...extent, seq: 1.5 }],
    ['offset', { ...extent, offset: 2 ** 53 }],
    ['offset', { ...extent, offset: 100 }],
    ['length', { ...extent, length: 'x' }],
    ['zero', { ...extent, zero: 1 }],
    ['data', { ...extent, data: [1, 2] }],
    ['digest', { ...extent, digest: 'aa' }],
    ['digest', { ...extent, digest: new Uint8Array(65) }],
    ['digest', { ...extent, digest: new Uint8Array(32) }],
    ['compression', { ...extent, compression: 'zstd' }],
    ['compression', { ...extent, compression: 7 }],
    ['compression', { ...extent, compression: 'deflate' }],
    ['extra', { ...extent, extra: 1 }],
    ['length', { ...extent, length: 131072, compression: 'lz4' }],
    ['size', { ...extent, length: 8192, data: new Uint8Array(8192) }],
  ]
  for (const [name, m] of bad) {
    let generic: unknown
    try {
      encodeGeneric(m as Message, limits, undefined)
    } catch (err) {
      generic = err
    }
    t.ok(generic instanceof Error, `${name}: the generic encoder refuses it`)
    const g = generic as { code: string; message: string }
    t.throws(() => encodeMessage(m as Message, limits), { code: g.code, message: g.message }, `${name}: ${g.message}`)
  }
  // a field set to undefined is no field, as for the generic encoder
  const before = extentEncoderStats.fast
  t.same(encodeMessage({ ...extent, extra: undefined } as unknown as Message), encodeMessage(extent))
  t.equal(extentEncoderStats.fast, before + 2)
})

t.test('an optional field (VmState.committedCycleId, SPEC §2.1) may be absent; every other field is still required, and nothing unknown passes', async (t) => {
  const v8 = sample('vm-state of version 8, with the identity of the committed cycle') as unknown as Record<string, unknown>
  const { kind: _k, ...fields } = v8
  const { committedCycleId: _c, ...v7 } = fields
  // absent: the version 7 VmState, byte for byte what it was
  t.same(decodeMessage(frame(MessageKind.VmState, v7)), { kind: MessageKind.VmState, ...v7 })
  const written = Buffer.from(encodeMessage({ kind: MessageKind.VmState, ...v7 } as never))
  t.equal(written[1], 0x86, 'absent: a map of the six other fields')
  t.notOk(written.includes('committedCycleId'), 'absent: not written')
  t.equal(Buffer.from(encodeMessage(v8 as never))[1], 0x87, 'present: seven')
  t.same(decodeMessage(frame(MessageKind.VmState, fields)), v8)
  // a required field missing beside the optional one, before or after it in the map
  const { generation: _g, ...noGeneration } = fields
  t.throws(() => decodeMessage(frame(MessageKind.VmState, noGeneration)), { code: 'E_SCHEMA', message: /generation: missing field/ })
  t.throws(() => encodeMessage({ kind: MessageKind.VmState, ...noGeneration } as never), { code: 'E_SCHEMA', field: 'generation' })
  const { vm: _v, ...noVm } = fields
  t.throws(() => decodeMessage(frame(MessageKind.VmState, noVm)), { code: 'E_SCHEMA', message: /vm: missing field/ })
  // twice, or beside an unknown field
  t.throws(() => decodeMessage(frame(MessageKind.VmState, { ...fields, committedCycleID: '' })), { code: 'E_SCHEMA', message: /unknown field/ })
  // the canonical frame (fixmap of 7) with an eighth entry: committedCycleId again
  const once = Buffer.from(encodeMessage(v8 as never))
  const twice = Buffer.concat([once.subarray(0, 1), Buffer.from([0x88]), once.subarray(2), Buffer.from([0xb0]), Buffer.from('committedCycleId', 'ascii'), Buffer.from([0xa0])])
  t.throws(() => decodeMessage(twice), { code: 'E_SCHEMA', message: /duplicate field/ })
})

t.test('DiskState.detail (SPEC §5.1, version 9): optional, round-trips up to 2048 UTF-8 bytes, absent is the version 8 DiskState byte for byte', async (t) => {
  const v9 = sample("disk-state of version 9 refused, with the receiver's detail") as unknown as Record<string, unknown>
  const { kind: _k, ...fields } = v9
  const { detail: _d, ...v8 } = fields
  t.same(decodeMessage(encodeMessage(v9 as never)), v9, 'present: round trip')
  t.equal(Buffer.from(encodeMessage(v9 as never))[1], 0x8a, 'present: a map of ten')
  const written = Buffer.from(encodeMessage({ kind: MessageKind.DiskState, ...v8 } as never))
  t.equal(written[1], 0x89, 'absent: the nine fields of version 8')
  t.notOk(written.includes('detail'), 'absent: not written')
  t.same(decodeMessage(frame(MessageKind.DiskState, v8)), { kind: MessageKind.DiskState, ...v8 })
  for (const detail of ['', 'x'.repeat(2048), 'é'.repeat(1024), `${'é'.repeat(1022)}…`]) {
    const m = { ...v9, detail } as never
    t.same(decodeMessage(encodeMessage(m)), m, `${Buffer.byteLength(detail)} bytes`)
  }
  t.throws(() => decodeMessage(frame(MessageKind.DiskState, { ...fields, Detail: '' })), { code: 'E_SCHEMA', message: /unknown field/ })
})

t.test('refusalDetail: a text whole when it fits in 2048 UTF-8 bytes, else cut on a character boundary and ended with "…"', async (t) => {
  t.equal(refusalDetail('capacity shrank from 2 to 1'), 'capacity shrank from 2 to 1')
  t.equal(refusalDetail('x'.repeat(2048)), 'x'.repeat(2048))
  const cut = refusalDetail('x'.repeat(2049))
  t.equal(cut, `${'x'.repeat(2045)}…`)
  t.equal(Buffer.byteLength(cut), 2048)
  const wide = refusalDetail('€'.repeat(1000))
  t.ok(wide.endsWith('…') && Buffer.byteLength(wide) <= 2048, `${Buffer.byteLength(wide)} bytes`)
  t.equal(wide, `${'€'.repeat(681)}…`)
  const m = { ...sample("disk-state of version 9 refused, with the receiver's detail"), detail: refusalDetail('😀'.repeat(2000)) } as never
  t.same(decodeMessage(encodeMessage(m)), m, 'always encodable')
})
