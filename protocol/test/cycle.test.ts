import { createHash, randomBytes } from 'node:crypto'
import t from 'tap'
import { CycleDigest } from '../src/cycle-digest.ts'
import { committedCycleIdentity, cycleIdentity, type CycleIdentityFields } from '../src/cycle-identity.ts'
import { digestOf, initDigests } from '../src/digest.ts'
import { DigestAlgorithms } from '../src/messages.ts'

t.test('cycle digest follows SPEC §5.4 byte for byte', async (t) => {
  await initDigests()
  const extents = [
    { offset: 0, length: 65536, zero: false, data: randomBytes(65536) },
    { offset: 65536, length: 1 << 30, zero: true, data: new Uint8Array(0) },
    { offset: 2 ** 40, length: 512, zero: false, data: randomBytes(512) },
  ]
  for (const alg of DigestAlgorithms) {
    const cd = new CycleDigest(alg)
    const parts: Buffer[] = []
    for (const e of extents) {
      const digest = e.zero ? new Uint8Array(0) : digestOf(alg, e.data)
      cd.add({ offset: e.offset, length: e.length, zero: e.zero, digest })
      const head = Buffer.alloc(17)
      head.writeBigUInt64LE(BigInt(e.offset), 0)
      head.writeBigUInt64LE(BigInt(e.length), 8)
      head[16] = e.zero ? 1 : 0
      parts.push(head, Buffer.from(digest))
    }
    t.equal(cd.count, 3)
    const expected = digestOf(alg, Buffer.concat(parts))
    t.equal(Buffer.from(cd.digest()).toString('hex'), Buffer.from(expected).toString('hex'), alg)
  }
})

t.test('cycle digest depends on order, zero flag and digests', async (t) => {
  await initDigests()
  const a = { offset: 0, length: 512, zero: false, digest: Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8) }
  const b = { offset: 512, length: 512, zero: true, digest: new Uint8Array(0) }
  const h = (...xs: (typeof a)[]): string => {
    const cd = new CycleDigest('xxh64')
    for (const x of xs) cd.add(x)
    return Buffer.from(cd.digest()).toString('hex')
  }
  t.not(h(a, b), h(b, a))
  t.not(h(a, b), h(a, { ...b, zero: false }))
  t.not(h(a), h({ ...a, digest: Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 9) }))
  t.equal(h(a, b), h(a, b))
  t.equal(h(), Buffer.from(digestOf('xxh64', new Uint8Array(0))).toString('hex'), 'empty cycle = H(empty)')
})

const base: CycleIdentityFields = {
  vm: 'web01',
  name: 'web01.vmdk',
  cycle: 7,
  mode: 'incremental',
  baseCycle: 6,
  baseGeneration: '00112233445566778899aabbccddeeff',
  source: {
    layers: [{ file: 'web01-000002.vmdk', cid: '0a1b2c3d', parentCid: 'fffffffe' }],
    successor: 'web01-000003.vmdk',
  },
}

t.test('cycle identity is SHA-256 over the SPEC §5.2 encoding', async (t) => {
  const id = cycleIdentity(base)
  t.match(id, /^[0-9a-f]{64}$/)
  const str = (s: string): Buffer => {
    const b = Buffer.from(s)
    const l = Buffer.alloc(4)
    l.writeUInt32LE(b.length)
    return Buffer.concat([l, b])
  }
  const u64 = (n: number): Buffer => {
    const b = Buffer.alloc(8)
    b.writeBigUInt64LE(BigInt(n))
    return b
  }
  const manual = createHash('sha256')
    .update(
      Buffer.concat([
        str('grainline.cycle-identity.v2'),
        str('web01'),
        str('web01.vmdk'),
        u64(7),
        str('incremental'),
        u64(6),
        str('00112233445566778899aabbccddeeff'),
        Buffer.of(1, 0, 0, 0),
        str('web01-000002.vmdk'),
        str('0a1b2c3d'),
        str('fffffffe'),
        str('web01-000003.vmdk'),
      ]),
    )
    .digest('hex')
  t.equal(id, manual)
})

t.test('cycle identity changes with every field', async (t) => {
  const id = cycleIdentity(base)
  const layer = base.source.layers[0]!
  const variants: CycleIdentityFields[] = [
    { ...base, vm: 'web02' },
    { ...base, name: 'web01_1.vmdk' },
    { ...base, cycle: 8 },
    { ...base, mode: 'seed' },
    { ...base, mode: 'resync', baseCycle: 0, baseGeneration: '', blockSize: 1 << 20 },
    { ...base, mode: 'resync', baseCycle: 0, baseGeneration: '', blockSize: 1 << 16 },
    { ...base, baseCycle: 5 },
    { ...base, baseGeneration: '00112233445566778899aabbccddeef0' },
    { ...base, baseGeneration: '' },
    { ...base, source: { ...base.source, successor: 'web01-000004.vmdk' } },
    { ...base, source: { ...base.source, layers: [{ ...layer, file: 'x.vmdk' }] } },
    { ...base, source: { ...base.source, layers: [{ ...layer, cid: '0a1b2c3e' }] } },
    { ...base, source: { ...base.source, layers: [{ ...layer, parentCid: 'ffffffff' }] } },
    { ...base, source: { ...base.source, layers: [layer, layer] } },
    { ...base, source: { ...base.source, layers: [] } },
    // field boundaries are length-prefixed: moving bytes between fields changes the id
    { ...base, vm: 'web01w', name: 'eb01.vmdk' },
  ]
  const seen = new Set([id])
  for (const v of variants) {
    const x = cycleIdentity(v)
    t.notOk(seen.has(x), JSON.stringify(v))
    seen.add(x)
  }
  t.equal(cycleIdentity({ ...base }), id, 'deterministic')
})

t.test('committed cycle identity is SHA-256 over the SPEC §5.10 encoding, in disk-name byte order', async (t) => {
  const str = (s: string): Buffer => {
    const b = Buffer.from(s)
    const l = Buffer.alloc(4)
    l.writeUInt32LE(b.length)
    return Buffer.concat([l, b])
  }
  const a = { name: 'web01.vmdk', cycleId: 'aa'.repeat(32) }
  // 'é' (0xc3 0xa9) sorts after 'z' by bytes, before it by nothing else
  const b = { name: 'web01_é.vmdk', cycleId: 'bb'.repeat(32) }
  const c = { name: 'web01_z.vmdk', cycleId: 'cc'.repeat(32) }
  const id = committedCycleIdentity([b, c, a])
  t.match(id, /^[0-9a-f]{64}$/)
  const manual = createHash('sha256')
    .update(Buffer.concat([str('grainline.committed-cycle.v1'), Buffer.of(3, 0, 0, 0), str(a.name), str(a.cycleId), str(c.name), str(c.cycleId), str(b.name), str(b.cycleId)]))
    .digest('hex')
  t.equal(id, manual)
  t.equal(committedCycleIdentity([a, b, c]), id, 'the order given does not matter')
  // another writer's cycle of the same number differs in a disk's identity, a disk more or less
  t.not(committedCycleIdentity([a, b, { ...c, cycleId: 'cd'.repeat(32) }]), id)
  t.not(committedCycleIdentity([a, b]), id)
  t.not(committedCycleIdentity([a, b, c, { name: 'x.vmdk', cycleId: 'dd'.repeat(32) }]), id)
  // a name and an identity cannot trade bytes (each is length-prefixed)
  t.not(committedCycleIdentity([{ name: 'ab', cycleId: 'c' }]), committedCycleIdentity([{ name: 'a', cycleId: 'bc' }]))
  t.equal(
    committedCycleIdentity([]),
    createHash('sha256')
      .update(Buffer.concat([str('grainline.committed-cycle.v1'), Buffer.of(0, 0, 0, 0)]))
      .digest('hex'),
  )
  t.throws(() => committedCycleIdentity([a, { ...a, cycleId: 'ee'.repeat(32) }]), { name: 'ProtocolError', code: 'E_SCHEMA', message: /web01\.vmdk is named twice/ })
})
