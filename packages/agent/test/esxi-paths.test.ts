import t from 'tap'
import { execFileSync } from 'node:child_process'
import fc from 'fast-check'
import { DatastoreMap, parseDatastorePath, resolveVmFile } from '../src/esxi/datastore-path.ts'
import { shQuote, shJoin } from '../src/esxi/shell-quote.ts'
import { kindOfMode } from '../src/esxi/sftp-files.ts'
import { datastoreFileAccess } from '../src/esxi/datastore-files.ts'
import { localFileAccess } from '@grainline/vmdk'

t.test('parseDatastorePath', async (t) => {
  t.same(parseDatastorePath('[datastore 2] my vm/my vm.vmx'), { datastore: 'datastore 2', relative: 'my vm/my vm.vmx' })
  t.same(parseDatastorePath('[ds1]a.vmdk'), { datastore: 'ds1', relative: 'a.vmdk' })
  t.same(parseDatastorePath('/vmfs/volumes/5358fbe3-d72d929e-7e65-f8bc124414ce/vm/vm.vmx'), { datastore: '5358fbe3-d72d929e-7e65-f8bc124414ce', relative: 'vm/vm.vmx' })
  t.same(parseDatastorePath('/vmfs/volumes/ds1'), { datastore: 'ds1', relative: '' })
  t.equal(parseDatastorePath('vm.vmdk'), undefined)
  t.equal(parseDatastorePath('/srv/vm.vmdk'), undefined)
})

t.test('DatastoreMap resolves names and UUIDs, refuses the rest', async (t) => {
  const map = new DatastoreMap([
    { name: 'datastore 2', localPath: '/mnt/ds2' },
    { name: 'nfs1', uuid: '95e378c2-863dd2b4', localPath: '/mnt/nfs1/' },
  ])
  t.equal(map.resolve('[datastore 2] my vm/my vm.vmx'), '/mnt/ds2/my vm/my vm.vmx')
  t.equal(map.resolve('/vmfs/volumes/95e378c2-863dd2b4/a/b.vmdk'), '/mnt/nfs1/a/b.vmdk')
  t.equal(map.resolve('/vmfs/volumes/nfs1/a/./c/../b.vmdk'), '/mnt/nfs1/a/b.vmdk')
  t.equal(map.resolve('[nfs1] '), '/mnt/nfs1')
  t.throws(() => map.resolve('[datastore1] vm/vm.vmx'), { code: 'E_DATASTORE', message: /"datastore1".*not in the datastore map.*"datastore 2"/ })
  t.throws(() => map.resolve('/vmfs/volumes/4bcf0efe-c426acc4/x.vmx'), { code: 'E_DATASTORE' })
  t.throws(() => map.resolve('[nfs1] ../etc/passwd'), { code: 'E_DATASTORE', message: /leaves its datastore/ })
  t.throws(() => map.resolve('/vmfs/volumes/nfs1/a/../../x'), { code: 'E_DATASTORE' })
  t.throws(() => map.resolve('relative.vmdk'), { code: 'E_DATASTORE' })
  t.same(map.pathMap(), {
    '/vmfs/volumes/datastore 2': '/mnt/ds2',
    '/vmfs/volumes/nfs1': '/mnt/nfs1',
    '/vmfs/volumes/95e378c2-863dd2b4': '/mnt/nfs1',
  })
  t.equal(map.lookup('95e378c2-863dd2b4')?.name, 'nfs1')
})

t.test('DatastoreMap configuration errors', async (t) => {
  t.throws(() => DatastoreMap.from({ ds: 'relative/path' }), { code: 'E_CONFIG' })
  t.throws(() => DatastoreMap.from({ '': '/x' }), { code: 'E_CONFIG' })
  t.throws(
    () =>
      new DatastoreMap([
        { name: 'a', localPath: '/x' },
        { name: 'a', localPath: '/y' },
      ]),
    { code: 'E_CONFIG' },
  )
  t.equal(DatastoreMap.from({ a: { localPath: '/x', uuid: 'u-1' } }).resolve('/vmfs/volumes/u-1/f'), '/x/f')
})

t.test('resolveVmFile: datastore, absolute and relative names', async (t) => {
  const map = DatastoreMap.from({ ds1: '/mnt/ds1' })
  t.equal(resolveVmFile(map, '/mnt/ds1/vm', 'vm-000001.vmdk'), '/mnt/ds1/vm/vm-000001.vmdk')
  t.equal(resolveVmFile(map, '/mnt/ds1/vm', '/vmfs/volumes/ds1/other/o.vmdk'), '/mnt/ds1/other/o.vmdk')
  t.equal(resolveVmFile(map, '/mnt/ds1/vm', '[ds1] other/o.vmdk'), '/mnt/ds1/other/o.vmdk')
  t.equal(resolveVmFile(map, '/mnt/ds1/vm', '/srv/x.vmdk'), '/srv/x.vmdk')
})

t.test('shQuote passes any string through a real POSIX shell unchanged', async (t) => {
  t.equal(shQuote('vmsvc/getallvms'), 'vmsvc/getallvms')
  t.equal(shQuote(''), "''")
  t.equal(shQuote("it's"), `'it'\\''s'`)
  t.throws(() => shQuote('a\0b'))
  const samples = ['grainline-1', 'a b', '$(rm -rf /)', '`id`', 'x\'y"z', 'tab\there', 'new\nline', '*', '~root', '-n', '\\', 'ünïcødé 🚀', '%2f;|&<>']
  const out = execFileSync('/bin/sh', ['-c', `for a in ${samples.map(shQuote).join(' ')}; do printf '%s\\0' "$a"; done`])
  t.same(out.toString('utf8').split('\0').slice(0, -1), samples)
  fc.assert(
    fc.property(
      fc.array(
        fc.string({ unit: 'grapheme', minLength: 0, maxLength: 12 }).filter((s) => !s.includes('\0')),
        { maxLength: 6 },
      ),
      (args) => {
        const res = execFileSync('/bin/sh', ['-c', `${shJoin(['printf', '%s\\0', ...args])}`])
        const got = res.toString('utf8').split('\0').slice(0, -1)
        if (args.length === 0) return got.length <= 1
        return JSON.stringify(got) === JSON.stringify(args)
      },
    ),
    { numRuns: 60 },
  )
})

t.test('SFTP datastores: host paths, routing, overlap with a local mount refused', async (t) => {
  const m = DatastoreMap.from({ nfs: '/mnt/nfs', vmfs1: { access: 'sftp', uuid: 'u-1' }, vmfs2: { access: 'sftp', hostPath: '/vmfs/volumes/other-name/' } })
  t.equal(m.hasSftp, true)
  t.equal(m.resolve('[vmfs1] vm/vm.vmx'), '/vmfs/volumes/vmfs1/vm/vm.vmx')
  t.equal(m.resolve('/vmfs/volumes/u-1/vm/a b.vmdk'), '/vmfs/volumes/vmfs1/vm/a b.vmdk')
  t.equal(m.resolve('[vmfs2] x.vmdk'), '/vmfs/volumes/other-name/x.vmdk')
  t.equal(m.resolve('[nfs] x.vmdk'), '/mnt/nfs/x.vmdk')
  t.equal(m.isSftpPath('/vmfs/volumes/vmfs1/vm/vm.vmx'), true)
  t.equal(m.isSftpPath('/vmfs/volumes/vmfs10/x'), false, 'a prefix of a name is not the datastore')
  t.equal(m.isSftpPath('/mnt/nfs/x.vmdk'), false)
  t.same(m.pathMap()['/vmfs/volumes/u-1'], '/vmfs/volumes/vmfs1')
  t.throws(() => m.resolve('[vmfs1] ../../etc/shadow'), { code: 'E_DATASTORE' })
  t.throws(() => DatastoreMap.from({ a: '/vmfs/volumes/a', b: { access: 'sftp', hostPath: '/vmfs/volumes/a/sub' } }), { code: 'E_CONFIG', message: /overlaps the local mount/ })
  t.throws(() => DatastoreMap.from({ a: { access: 'sftp', hostPath: 'relative' } }), { code: 'E_CONFIG' })
  t.throws(
    () =>
      new DatastoreMap([
        { name: 'a', access: 'sftp', localPath: '/x' },
        { name: 'b', uuid: 'a', access: 'sftp', localPath: '/y' },
      ]),
    { code: 'E_CONFIG', message: /mapped twice/ },
  )
  t.equal(DatastoreMap.from({ nfs: '/mnt/nfs' }).hasSftp, false)
  t.equal(datastoreFileAccess(DatastoreMap.from({ nfs: '/mnt/nfs' }), undefined), localFileAccess, 'no SFTP datastore: the local reader as is')
})

t.test('SFTP file modes map to file kinds', async (t) => {
  const cases: Array<[number, string]> = [
    [0o100644, 'file'],
    [0o040755, 'directory'],
    [0o120777, 'symlink'],
    [0o010644, 'fifo'],
    [0o140755, 'socket'],
    [0o060660, 'block-device'],
    [0o020620, 'character-device'],
    [0o000000, 'other'],
  ]
  for (const [mode, kind] of cases) t.equal(kindOfMode(mode), kind, mode.toString(8))
})
