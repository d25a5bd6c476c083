/**
 * Golden vectors (vectors/README.md): built from `samples.ts` with the
 * current encoder. `npm run vectors` writes them; vectors.test.ts checks that
 * the committed files equal a fresh build and decode/encode both ways.
 */
import { decodeMessage, encodeMessage } from '../src/codec.ts'
import { compress } from '../src/compression.ts'
import { CycleDigest } from '../src/cycle-digest.ts'
import { committedCycleIdentity, cycleIdentity, type CommittedDiskIdentity, type CycleIdentityFields } from '../src/cycle-identity.ts'
import { digestOf, initDigests } from '../src/digest.ts'
import { CompressionAlgorithms, DigestAlgorithms } from '../src/messages.ts'
import { ProtocolError } from '../src/errors.ts'
import { MessageKind } from '../src/messages.ts'
import { toJson } from './json.ts'
import { samples } from './samples.ts'

export interface ValidVector {
  readonly name: string
  readonly message: unknown
  readonly hex: string
}
export interface InvalidVector {
  readonly name: string
  readonly hex: string
  readonly error: string
}

const kebab = (s: string): string => s.replace(/[A-Z]/g, (c, i: number) => (i > 0 ? '-' : '') + c.toLowerCase())

/** Decode limits the vectors are checked with (the defaults, with extents up to 64 MiB). */
export const VECTOR_LIMITS = { maxExtentBytes: 64 * 1024 * 1024 }

function errorCode(hex: string): string {
  try {
    decodeMessage(Buffer.from(hex, 'hex'), VECTOR_LIMITS)
  } catch (err) {
    if (err instanceof ProtocolError) return err.code
    throw err
  }
  throw new Error(`invalid vector decodes: ${hex}`)
}

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex')

/** Known answers for digests, cycle identity, cycle digest and decompression (derived.json). */
function derived(): unknown {
  const abc = new TextEncoder().encode('abc')
  const pattern = Uint8Array.from({ length: 4096 }, (_, i) => (i * 31) & 0xff)
  const digests = DigestAlgorithms.flatMap((algorithm) => [
    { algorithm, input: '', digest: hex(digestOf(algorithm, new Uint8Array(0))) },
    { algorithm, input: hex(abc), digest: hex(digestOf(algorithm, abc)) },
  ])
  const fields: CycleIdentityFields = {
    vm: 'web01',
    name: 'web01.vmdk',
    cycle: 7,
    mode: 'incremental',
    baseCycle: 6,
    baseGeneration: '9f1c3b5e7a2d4f6081a3c5e7092b4d6f',
    source: {
      layers: [
        { file: 'web01-000001.vmdk', cid: '0a1b2c3d', parentCid: '3f2e1d0c' },
        { file: 'web01-000002.vmdk', cid: '11223344', parentCid: '0a1b2c3d' },
      ],
      successor: 'web01-000003.vmdk',
    },
  }
  const seed: CycleIdentityFields = {
    vm: 'vm é',
    name: 'disk.vmdk',
    cycle: 1,
    mode: 'seed',
    baseCycle: 0,
    baseGeneration: '',
    source: { layers: [{ file: 'disk.vmdk', cid: '00000001', parentCid: 'ffffffff' }], successor: 'disk-000001.vmdk' },
  }
  const resync: CycleIdentityFields = { ...seed, cycle: 5, mode: 'resync', blockSize: 1024 * 1024 }
  const identities = [fields, seed, resync].map((f) => ({ fields: f, cycleId: cycleIdentity(f) }))
  const cycleDigests = DigestAlgorithms.map((algorithm) => {
    const extents = [
      { offset: 0, length: 4096, zero: false, digest: hex(digestOf(algorithm, pattern)) },
      { offset: 4096, length: 2 ** 30, zero: true, digest: '' },
      { offset: 2 ** 40, length: 512, zero: false, digest: hex(digestOf(algorithm, pattern.subarray(0, 512))) },
    ]
    const cd = new CycleDigest(algorithm)
    for (const e of extents) cd.add({ ...e, digest: Buffer.from(e.digest, 'hex') })
    return { algorithm, extents, cycleDigest: hex(cd.digest()) }
  })
  const decompression = CompressionAlgorithms.map((algorithm) => ({ algorithm, plain: hex(pattern.subarray(0, 1024)), compressed: hex(compress(algorithm, pattern.subarray(0, 1024))) }))
  // SPEC §5.10: the committed cycle of the two disks above (in disk-name order whatever the order given), and of none
  const committedDisks: CommittedDiskIdentity[][] = [
    [
      { name: 'web01_1.vmdk', cycleId: cycleIdentity({ ...fields, name: 'web01_1.vmdk' }) },
      { name: 'web01.vmdk', cycleId: identities[0]?.cycleId as string },
    ],
    [{ name: 'disk.vmdk', cycleId: identities[1]?.cycleId as string }],
    [],
  ]
  const committedCycle = committedDisks.map((disks) => ({ disks, committedCycleId: committedCycleIdentity(disks) }))
  return { digests, cycleIdentity: identities, committedCycleIdentity: committedCycle, cycleDigest: cycleDigests, decompression }
}

/** file name → file contents */
export async function buildVectors(): Promise<Map<string, string>> {
  await initDigests()
  const files = new Map<string, string>()
  const invalid: InvalidVector[] = []
  for (const [key, kind] of Object.entries(MessageKind)) {
    const entries: ValidVector[] = []
    for (const s of samples.filter((x) => x.message.kind === kind)) {
      const hex = Buffer.from(encodeMessage(s.message)).toString('hex')
      entries.push({ name: s.name, message: toJson(s.message), hex })
      // truncated frames must fail: one byte short, half, and the kind byte alone
      const bytes = hex.length / 2
      for (const cut of [...new Set([bytes - 1, Math.floor(bytes / 2), 1])]) {
        const t = hex.slice(0, cut * 2)
        invalid.push({ name: `${s.name}, truncated to ${cut} of ${bytes} bytes`, hex: t, error: errorCode(t) })
      }
    }
    files.set(`${kebab(key)}.json`, JSON.stringify(entries, null, 2) + '\n')
  }
  const more: Array<[string, string]> = [
    ['empty frame', ''],
    ['unknown kind 0x00', '0080'],
    ['unknown kind 0x03', '0380'],
    ['unknown kind 0x7e', '7e80'],
    ['extent-ack with a trailing nil', '2182a46469736b00a373657101c0'],
    ['extent-ack missing seq', '2181a46469736b00'],
    ['extent-ack with an unknown field', '2183a46469736b00a373657101a178c0'],
    ['extent-ack with a duplicate field', '2183a46469736b00a373657101a373657102'],
    ['extent-ack with a negative seq', '2182a46469736b00a3736571ff'],
    ['extent-ack with seq 2^53 as uint64', '2182a46469736b00a3736571cf0020000000000000'],
    ['extent-ack with a fractional float seq', '2182a46469736b00a3736571cb3ff8000000000000'],
    ['extent-ack body is an array', '21920000'],
    ['extent-ack body is a timestamp extension', '21d6ff00000000'],
    ['extent-ack with the reserved byte 0xc1', '2182a46469736b00a3736571c1'],
    ['disk-ended with a map claiming 2^32-1 entries', '23dfffffffff'],
    ['rollback with a vm name of ".."', '5081a2766da22e2e'],
    ['rollback with a vm name containing "/"', '5081a2766da3612f62'],
    ['rollback with invalid UTF-8', '5081a2766da2c328'],
  ]
  for (const [name, hex] of more) invalid.push({ name, hex, error: errorCode(hex) })
  files.set('invalid.json', JSON.stringify(invalid, null, 2) + '\n')
  files.set('derived.json', JSON.stringify(derived(), null, 2) + '\n')
  return files
}
