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
  ]
  for (const [what, v, re] of cases) {
    const bytes = Buffer.from(typeof v === 'string' ? v : JSON.stringify(v))
    t.throws(() => parseManifest(bytes, 's3://b/k'), { code: 'E_ARCHIVE', message: re }, what)
  }
})

t.test('parseArchiveUrl', async (t) => {
  t.same(parseArchiveUrl('s3://dr-archive'), { bucket: 'dr-archive', prefix: '' })
  t.same(parseArchiveUrl('s3://dr-archive/site-a/'), { bucket: 'dr-archive', prefix: 'site-a/' })
  t.same(parseArchiveUrl('s3://dr.archive/a/b'), { bucket: 'dr.archive', prefix: 'a/b/' })
  for (const bad of ['http://x/y', 's3://A/b', 's3://ab', 's3://dr/../x', 's3://dr//x']) t.throws(() => parseArchiveUrl(bad), { code: 'E_CONFIG' }, bad)
})
