import t from 'tap'
import { ARCHIVE_CHUNK_BYTES, ARCHIVE_FORMAT, chunkKey, encodeManifest, manifestKey, parseManifest, type ArchiveManifest } from '../src/archive/archive-manifest.ts'
import { parseArchiveUrl } from '../src/archive/s3-bucket.ts'

const H = 'ab'.repeat(32)
const good: ArchiveManifest = {
  format: ARCHIVE_FORMAT,
  vm: 'web 01',
  cycle: 7,
  committedAt: '2026-11-30T10:00:00.000Z',
  generation: '0be5a2c47d1e9f3a6b8c0d2e4f617283',
  archivedAt: '2026-11-30T11:00:00.000Z',
  retainUntil: null,
  chunkBytes: ARCHIVE_CHUNK_BYTES,
  disks: [{ name: 'web01.vmdk', stem: 'web01', capacity: ARCHIVE_CHUNK_BYTES * 2 + 512, sha256: H, chunks: [H, null, H], ddb: { 'ddb.adapterType': 'lsilogic' } }],
  files: [{ name: 'web01.vmx', sha256: H, bytes: 100 }],
}

t.test('a manifest round-trips; keys sort by cycle and keep VM names inside their folder', async (t) => {
  t.same(parseManifest(encodeManifest(good), 'm'), good)
  const checked: ArchiveManifest = { ...good, disks: good.disks.map((d) => ({ ...d, verified: 'certify' as const })) }
  t.same(parseManifest(encodeManifest(checked), 'm'), checked, 'the check a disk matched at archiving round-trips')
  const repaired: ArchiveManifest = { ...good, disks: good.disks.map((d) => ({ ...d, verified: 'trivial' as const, divergedResync: { cycle: 4, reason: 'certify (sha256) of cycle 3 failed' } })) }
  t.same(parseManifest(encodeManifest(repaired), 'm'), repaired, 'a point older than a resync of a damaged mirror says so in its manifest')
  t.equal(manifestKey('dr/', 'web 01/../x', 7), 'dr/vms/web%2001%2F..%2Fx/points/000000000007.json')
  t.equal(chunkKey('', H), `chunks/ab/${H}`)
})

t.test('hostile manifests get E_ARCHIVE naming the field', async (t) => {
  const disk = good.disks[0] as ArchiveManifest['disks'][number]
  const cases: Array<[string, unknown, RegExp]> = [
    ['not JSON', '{', /not JSON/],
    ['another format', { ...good, format: 'x' }, /format/],
    ['a path as a disk stem', { ...good, disks: [{ ...disk, stem: '../../etc/cron.d/x' }] }, /disks\[0\]\.stem/],
    ['a hidden stem', { ...good, disks: [{ ...disk, stem: '.grainline' }] }, /stem/],
    ['two disks with one stem', { ...good, disks: [disk, { ...disk, name: 'b.vmdk' }] }, /disks\[1\]\.stem/],
    ['a path as a file name', { ...good, files: [{ name: '/etc/passwd', sha256: H, bytes: 1 }] }, /files\[0\]/],
    ['chunks short of the capacity', { ...good, disks: [{ ...disk, chunks: [H] }] }, /chunks: 1 for a capacity/],
    ['a chunk that is not a digest', { ...good, disks: [{ ...disk, chunks: [H, null, '../x'] }] }, /chunks/],
    ['a capacity not in sectors', { ...good, disks: [{ ...disk, capacity: 1000 }] }, /capacity/],
    ['another chunk size', { ...good, chunkBytes: 1 }, /chunkBytes/],
    ['a huge file', { ...good, files: [{ name: 'a.vmx', sha256: H, bytes: 2 ** 40 }] }, /files\[0\]/],
    ['no disks', { ...good, disks: [] }, /disks/],
    ['an unknown verification', { ...good, disks: [{ ...disk, verified: 'yes' }] }, /disks\[0\]\.verified/],
    ['a resync that is not a record', { ...good, disks: [{ ...disk, divergedResync: 4 }] }, /disks\[0\]\.divergedResync/],
    ['a resync at cycle 0', { ...good, disks: [{ ...disk, divergedResync: { cycle: 0, reason: 'x' } }] }, /disks\[0\]\.divergedResync/],
    ['a resync reason of 1 MB', { ...good, disks: [{ ...disk, divergedResync: { cycle: 2, reason: 'x'.repeat(2 ** 20) } }] }, /disks\[0\]\.divergedResync/],
  ]
  for (const [what, v, re] of cases) {
    const bytes = Buffer.from(typeof v === 'string' ? v : JSON.stringify(v))
    t.throws(() => parseManifest(bytes, 's3://b/k'), { code: 'E_ARCHIVE', message: re }, what)
  }
})

t.test('a manifest whose disks or files would be written over each other, or whose DDB would add descriptor lines: E_ARCHIVE naming the manifest and the stems', async (t) => {
  const disk = good.disks[0] as ArchiveManifest['disks'][number]
  const two = (a: string, b: string): unknown => ({
    ...good,
    files: [],
    disks: [
      { ...disk, name: `${a}.vmdk`, stem: a },
      { ...disk, name: `${b}.vmdk`, stem: b },
    ],
  })
  const cases: Array<[string, unknown, RegExp]> = [
    [
      'a and a-flat (a’s flat is a-flat’s descriptor)',
      two('a', 'a-flat'),
      /s3:\/\/b\/k: the flat of disks\[0\]\.stem "a" and the descriptor of disks\[1\]\.stem "a-flat" are both the file "a-flat\.vmdk": a restore would write one over the other/,
    ],
    ['a-flat and a, the other way round', two('a-flat', 'a'), /the descriptor of disks\[0\]\.stem "a-flat" and the flat of disks\[1\]\.stem "a" are both the file "a-flat\.vmdk"/],
    ['two stems differing in case', two('Data', 'data'), /disks\[0\]\.stem "Data" and the descriptor of disks\[1\]\.stem "data" are both the file "data\.vmdk"/],
    [
      'a configuration file named as a disk’s flat',
      { ...good, files: [{ name: 'web01-flat.vmdk', sha256: H, bytes: 1 }] },
      /the flat of disks\[0\]\.stem "web01" and files\[0\] are both the file "web01-flat\.vmdk"/,
    ],
    ['a configuration file named as a disk’s descriptor', { ...good, files: [{ name: 'WEB01.vmdk', sha256: H, bytes: 1 }] }, /the descriptor of disks\[0\]\.stem "web01" and files\[0\] are both/],
    ['two configuration files of one name', { ...good, files: [good.files[0], good.files[0]] }, /files\[0\] and files\[1\] are both the file "web01\.vmx"/],
    ['a stem with a quote (the descriptor’s extent line)', { ...good, disks: [{ ...disk, stem: 'a" 0\nRW 8 VMFS "x' }] }, /disks\[0\]\.stem/],
    ['a stem with a control character', { ...good, disks: [{ ...disk, stem: 'a\u001bb' }] }, /disks\[0\]\.stem/],
    ['a stem that is ..', { ...good, disks: [{ ...disk, stem: '..' }] }, /disks\[0\]\.stem/],
    ['a stem with a backslash', { ...good, disks: [{ ...disk, stem: '..\\x' }] }, /disks\[0\]\.stem/],
    [
      'a DDB value that ends its line and adds an extent',
      { ...good, disks: [{ ...disk, ddb: { 'ddb.uuid': 'x"\nRW 8 VMFS "/vmfs/volumes/ds/other/other-flat.vmdk' } }] },
      /disks\[0\]\.ddb: the value of ddb\.uuid .*a quote, a control character/,
    ],
    ['a DDB key with a space and an equals sign', { ...good, disks: [{ ...disk, ddb: { 'ddb.a = "b"\nx': 'c' } }] }, /disks\[0\]\.ddb: the key/],
    ['a DDB of 257 entries', { ...good, disks: [{ ...disk, ddb: Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`ddb.k${i}`, 'v'])) }] }, /disks\[0\]\.ddb: 257 entries, over 256/],
    ['a DDB value over 4096 bytes', { ...good, disks: [{ ...disk, ddb: { 'ddb.x': 'é'.repeat(2049) } }] }, /disks\[0\]\.ddb: the value of ddb\.x/],
  ]
  for (const [what, v, re] of cases) t.throws(() => parseManifest(Buffer.from(JSON.stringify(v)), 's3://b/k'), { code: 'E_ARCHIVE', message: re }, what)
  // what the store writes stays readable: disks whose names only share a prefix, a .vmx named as the VM's first disk, a DDB as the protocol allows
  const fine = {
    ...good,
    disks: [
      { ...disk, name: 'web01.vmdk', stem: 'web01', ddb: { 'ddb.adapterType': 'lsilogic', 'ddb.uuid': '60 00 C2 9a', 'ddb.toolsVersion': '12352' } },
      { ...disk, name: 'web01_1.vmdk', stem: 'web01_1', ddb: {} },
      { ...disk, name: 'web01-flat2.vmdk', stem: 'web01-flat2', ddb: {} },
    ],
    files: [
      { name: 'web01.vmx', sha256: H, bytes: 100 },
      { name: 'web01.nvram', sha256: H, bytes: 100 },
    ],
  }
  t.same(parseManifest(Buffer.from(JSON.stringify(fine)), 's3://b/k'), fine, 'names that do not collide, a DDB the protocol accepts: read as they are')
})

t.test('parseArchiveUrl', async (t) => {
  t.same(parseArchiveUrl('s3://dr-archive'), { bucket: 'dr-archive', prefix: '' })
  t.same(parseArchiveUrl('s3://dr-archive/site-a/'), { bucket: 'dr-archive', prefix: 'site-a/' })
  t.same(parseArchiveUrl('s3://dr.archive/a/b'), { bucket: 'dr.archive', prefix: 'a/b/' })
  for (const bad of ['http://x/y', 's3://A/b', 's3://ab', 's3://dr/../x', 's3://dr//x']) t.throws(() => parseArchiveUrl(bad), { code: 'E_CONFIG' }, bad)
})
