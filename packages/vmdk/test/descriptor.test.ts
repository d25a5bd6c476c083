import t from 'tap'
import { readFileSync } from 'node:fs'
import { parseDescriptor, serializeDescriptor, buildDescriptor, sameCid } from '../src/index.ts'
import { fixture } from './helpers.ts'

const esxiSnap = readFileSync(fixture('vmdk-rs/esxi-vmfs-thick/vmfs_thick-000001.vmdk'), 'utf8')
const esxiBase = readFileSync(fixture('vmdk-rs/esxi-vmfs-thick/vmfs_thick.vmdk'), 'utf8')

t.test('real ESXi descriptors round-trip byte for byte', async (t) => {
  for (const text of [esxiSnap, esxiBase, esxiBase.replace(/\n/g, '\r\n')]) {
    t.equal(serializeDescriptor(parseDescriptor(text)), text)
  }
  const d = parseDescriptor(esxiSnap)
  t.equal(d.cid, '8f67ca74')
  t.equal(d.parentCid, '0172e8a4')
  t.equal(d.createType, 'vmfsSparse')
  t.equal(d.parentFileNameHint, 'vmfs_thick.vmdk')
  t.same(d.extents, [{ access: 'RW', sectors: 4096, type: 'VMFSSPARSE', file: 'vmfs_thick-000001-delta.vmdk' }])
  t.equal(d.ddb.get('ddb.longContentID'), '4b98b55ba6a6bc2e8fd6eb368f67ca74')
  const b = parseDescriptor(esxiBase)
  t.equal(b.ddb.get('ddb.uuid'), '60 00 C2 98 5d 08 de f2-a0 14 2e 05 94 9d d8 38')
  t.equal(b.capacity, 4096 * 512)
})

const rich = [
  '# Disk DescriptorFile',
  '# a comment of our own',
  'version=3',
  'encoding="UTF-8"',
  'CID=d1df049',
  'parentCID=ffffffff',
  'isNativeSnapshot="no"',
  'createType="twoGbMaxExtentFlat"',
  'someFutureKey="kept as is"',
  '',
  '# Extent description',
  'RW 4194304 FLAT "My Disk-f001.vmdk" 0',
  'RDONLY 4194304 FLAT "My Disk-f002.vmdk" 2048',
  'NOACCESS 100 ZERO',
  'RW 8 VMFS "/vmfs/volumes/ds 1/vm/x-flat.vmdk"',
  'RW 8 VMFSSPARSE "x-delta.vmdk"',
  'RW 8 SESPARSE "x-sesparse.vmdk"',
  'RW 8 SPARSE "x-s001.vmdk"',
  'RW 8 VMFSRDM "x-rdm.vmdk"',
  '',
  '# Change Tracking File',
  'changeTrackPath="My Disk-ctk.vmdk"',
  '',
  '# The Disk Data Base ',
  '#DDB',
  '',
  'ddb.adapterType = "lsilogic"',
  'ddb.unknownThing = "x y z"',
  'ddb.deletable = "true"',
  '',
].join('\n')

t.test('all extent types, quoted names with spaces, CBT, unknown keys', async (t) => {
  const d = parseDescriptor(rich)
  t.equal(d.toString(), rich)
  t.equal(d.version, 3)
  t.equal(d.cid, 'd1df049')
  t.ok(sameCid(d.cid, '0d1df049'))
  t.equal(d.get('someFutureKey'), 'kept as is')
  t.equal(d.changeTrackPath, 'My Disk-ctk.vmdk')
  t.same(
    d.extents.map((e) => e.type),
    ['FLAT', 'FLAT', 'ZERO', 'VMFS', 'VMFSSPARSE', 'SESPARSE', 'SPARSE', 'VMFSRDM'],
  )
  t.same(d.extents[1], { access: 'RDONLY', sectors: 4194304, type: 'FLAT', file: 'My Disk-f002.vmdk', offset: 2048 })
  t.same(d.extents[2], { access: 'NOACCESS', sectors: 100, type: 'ZERO' })
  t.equal(d.extents[3]?.file, '/vmfs/volumes/ds 1/vm/x-flat.vmdk')
  t.equal(d.ddb.get('ddb.unknownThing'), 'x y z')
})

t.test('with… setters change only what they touch', async (t) => {
  const d = parseDescriptor(rich)
  const e = d.withCid('abc').withParent('base.vmdk', '1234abcd').withDdb('ddb.deletable', 'false').withDdb('longContentID', 'ff')
  t.equal(e.cid, '00000abc')
  t.equal(e.parentCid, '1234abcd')
  t.equal(e.parentFileNameHint, 'base.vmdk')
  t.equal(e.ddb.get('ddb.deletable'), 'false')
  t.equal(e.ddb.get('ddb.longContentID'), 'ff')
  t.equal(d.cid, 'd1df049', 'original unchanged')
  const back = parseDescriptor(e.toString())
  t.equal(back.get('someFutureKey'), 'kept as is')
  t.match(e.toString(), /# a comment of our own\n/)
  t.match(e.toString(), /parentFileNameHint="base\.vmdk"\n\n# Extent description/)
  const f = e.withParent(undefined, 'ffffffff')
  t.equal(f.parentFileNameHint, undefined)
  const g = d.withExtents([{ access: 'RW', sectors: 16, type: 'VMFS', file: 'a b.vmdk' }])
  t.same(g.extents, [{ access: 'RW', sectors: 16, type: 'VMFS', file: 'a b.vmdk' }])
  t.match(g.toString(), /# Extent description\nRW 16 VMFS "a b\.vmdk"\n\n# Change Tracking/)
  const crlf = parseDescriptor(rich.replace(/\n/g, '\r\n')).withCid('1')
  t.notMatch(crlf.toString().replace(/\r\n/g, ''), /\n/, 'CRLF kept on changed lines')
})

t.test('buildDescriptor makes what parseDescriptor reads', async (t) => {
  const d = buildDescriptor({
    cid: '1',
    parentCid: '2',
    createType: 'seSparse',
    parentFileNameHint: 'p q.vmdk',
    extents: [{ access: 'RW', sectors: 8, type: 'SESPARSE', file: 'c-sesparse.vmdk' }],
    ddb: [['grain', '8']],
  })
  const p = parseDescriptor(d.toString())
  t.equal(p.cid, '00000001')
  t.equal(p.parentFileNameHint, 'p q.vmdk')
  t.equal(p.ddb.get('ddb.grain'), '8')
  t.equal(p.get('isNativeSnapshot'), 'no')
})

t.test('garbage is E_DESCRIPTOR', async (t) => {
  for (const bad of ['hello world', 'version=1\nCID=xyz\n', 'version=1\nRW abc FLAT "x"\n', 'version=1\n\0', 'just=1\n', 'RW 99999999999999999999 FLAT "x" 0\nversion=1']) {
    t.throws(() => parseDescriptor(bad), { name: 'VmdkError', code: 'E_DESCRIPTOR' }, JSON.stringify(bad))
  }
  t.throws(() => parseDescriptor(rich).with('createType', 'a"b'), { code: 'E_DESCRIPTOR' })
})

t.test('pathological text parses in linear time', async (t) => {
  const cases = [
    '\n'.repeat(900000) + 'x',
    'version=1\na= ' + ' '.repeat(500000) + 'x\n',
    'version=1\nRW 1 FLAT "' + ' '.repeat(400000) + '" 0 ' + ' '.repeat(400000) + 'x\n',
    'version=1\nddb.a = "' + '" '.repeat(300000) + 'x\n',
    'version=1\n' + '# c\r\n'.repeat(150000),
  ]
  for (const text of cases) {
    // CPU time of this process, not wall time: other jobs on a loaded machine stretch
    // the wall clock but not our CPU time; a quadratic parse of ~1M chars needs minutes
    const c0 = process.cpuUsage()
    try {
      parseDescriptor(text)
    } catch (err) {
      t.match(err, { code: 'E_DESCRIPTOR' })
    }
    const cpu = process.cpuUsage(c0)
    t.ok((cpu.user + cpu.system) / 1000 < 2000, `parsed ${text.length} chars in ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms of CPU`)
  }
  t.throws(() => parseDescriptor('version=1\n' + 'x'.repeat(1024 * 1024 + 1)), { code: 'E_DESCRIPTOR' })
})
