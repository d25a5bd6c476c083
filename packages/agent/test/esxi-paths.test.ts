import t from 'tap'
import { execFileSync } from 'node:child_process'
import fc from 'fast-check'
import { DatastoreMap, parseDatastorePath, resolveVmFile } from '../src/esxi/datastore-path.ts'
import { shQuote, shJoin } from '../src/esxi/shell-quote.ts'
import { kindOfMode } from '../src/esxi/sftp-files.ts'
import { datastoreFileAccess } from '../src/esxi/datastore-files.ts'
import { realpathSync, rmSync, symlinkSync } from 'node:fs'
import { pinEsxiDatastores } from '../src/esxi/pin-datastores.ts'
import { readChainFiles } from '../src/esxi/chain-files.ts'
import path from 'node:path'
import { localFileAccess, type FileAccess } from '@grainline/vmdk'

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
  // a linked clone's base in another VM folder of the same datastore, an absolute name inside a mount
  t.equal(resolveVmFile(map, '/mnt/ds1/vm', '../base/base.vmdk'), '/mnt/ds1/base/base.vmdk')
  t.equal(resolveVmFile(map, '/mnt/ds1/vm', '/mnt/ds1/other/o.vmdk'), '/mnt/ds1/other/o.vmdk')
  // an absolute name off every datastore was kept as is (read from the proxy's disk): now refused
  t.throws(() => resolveVmFile(map, '/mnt/ds1/vm', '/srv/x.vmdk'), { code: 'E_DATASTORE', message: /"\/srv\/x\.vmdk".*outside every mapped datastore \(\/mnt\/ds1\)/ })
})

t.test('resolveVmFile refuses names that leave every datastore (absolute, "..") on local and SFTP datastores alike', async (t) => {
  const map = DatastoreMap.from({ ds1: '/mnt/ds1', ds2: { access: 'sftp' } })
  const sftpDir = map.resolve('[ds2] vm1')
  t.equal(sftpDir, '/vmfs/volumes/ds2/vm1')
  for (const dir of ['/mnt/ds1/vm1', sftpDir]) {
    for (const name of ['/etc/grainline/token', '../../../../root/.ssh/id_ed25519', '../../../etc/passwd', '/vmfs/volumes-x/a']) {
      t.throws(() => resolveVmFile(map, dir, name), { name: 'EsxiError', code: 'E_DATASTORE', message: /outside every mapped datastore.*map that datastore/ }, `${dir}: ${name}`)
    }
    t.equal(resolveVmFile(map, dir, 'disk-flat.vmdk'), `${dir}/disk-flat.vmdk`)
  }
  t.equal(map.isSftpPath(resolveVmFile(map, sftpDir, '../base/base.vmdk')), true, 'a linked clone on the SFTP datastore stays on it')
})

t.test('the driver file access reads nothing off its datastores: no local fallback for unmapped paths, no link out of a mount', async (t) => {
  const root = t.testdir({ ds1: { vm: { 'vm.vmx': 'config.version = "8"\n' } }, 'secret.txt': 'TOKEN=supersecret\n' })
  const ds1 = path.join(root, 'ds1')
  symlinkSync(path.join(root, 'secret.txt'), path.join(ds1, 'vm', 'vm.nvram'))
  symlinkSync(root, path.join(ds1, 'vm', 'up'))
  const asked: string[] = []
  // stands for the SFTP reader: records what is sent to the host
  const sftp: FileAccess = {
    stat: async (p) => {
      asked.push(p)
      return await localFileAccess.stat(p)
    },
    open: async (p, mode) => {
      asked.push(p)
      return await localFileAccess.open(p, mode)
    },
    realpath: async (p) => p,
  }
  for (const map of [DatastoreMap.from({ ds1 }), DatastoreMap.from({ ds1, ds2: { access: 'sftp' } })]) {
    const files = datastoreFileAccess(map, map.hasSftp ? sftp : undefined)
    t.equal((await files.stat(path.join(ds1, 'vm', 'vm.vmx'))).kind, 'file', 'a file of the mount is read')
    for (const p of [path.join(root, 'secret.txt'), '/etc/hostname', path.join(ds1, 'vm', 'vm.nvram'), path.join(ds1, 'vm', 'up', 'secret.txt')]) {
      await t.rejects(files.stat(p), { name: 'VmdkError', code: 'E_OUTSIDE_ROOT', file: p }, `stat ${p}`)
      await t.rejects(files.open(p, 'r'), { name: 'VmdkError', code: 'E_OUTSIDE_ROOT', file: p }, `open ${p}`)
    }
    await t.rejects(files.open('/etc/hostname', 'r'), { message: /on no mapped datastore.*neither over SFTP nor from the proxy's own disk/ })
    const linked = (await files.open(path.join(ds1, 'vm', 'vm.nvram'), 'r').then(
      () => undefined,
      (e: unknown) => e,
    )) as Error | undefined
    t.match(linked?.message, /resolves to .*secret\.txt \(through a symbolic link\)/)
    // the esxi driver's remedy: map the datastore (its settings), never the local driver's --datastore-root
    t.match(linked?.message, /is refused; fix the reference, or map the datastore the file is on \(esxi settings "datastores"\)/)
    t.notMatch(linked?.message, /--datastore-root|to the roots/)
    await t.rejects(files.open('/etc/hostname', 'r'), { message: /is refused; fix the reference, or map the datastore the file is on \(esxi settings "datastores"\)/ })
  }
  t.same(asked, [], 'nothing off the SFTP datastore was sent to the host either')
})

t.test('the chain walk says why an extent that exists is not read (a link out of its datastore), "missing" only when it is', async (t) => {
  const descriptor = (flat: string): string => `# Disk DescriptorFile\nversion=1\nCID=0a0b0c0d\nparentCID=ffffffff\ncreateType="vmfs"\nRW 2048 VMFS "${flat}"\n`
  const root = t.testdir({
    ds1: { vm: { 'linked.vmdk': descriptor('linked-flat.vmdk'), 'gone.vmdk': descriptor('gone-flat.vmdk') } },
    'secret-flat.vmdk': "not the datastore's",
  })
  const ds1 = path.join(root, 'ds1')
  // what an operator sees on the mount: the extent is there (ls shows it), a link to a file off the datastore
  symlinkSync(path.join(root, 'secret-flat.vmdk'), path.join(ds1, 'vm', 'linked-flat.vmdk'))
  const files = datastoreFileAccess(DatastoreMap.from({ ds1 }), undefined)
  const walk = async (d: string): Promise<unknown> => await readChainFiles(path.join(ds1, 'vm', d), (dir, name) => path.resolve(dir, name), { files })
  const linked = path.join(ds1, 'vm', 'linked-flat.vmdk')
  const err = (await walk('linked.vmdk').then(
    () => undefined,
    (e: unknown) => e,
  )) as (Error & { code?: string }) | undefined
  t.equal(err?.code, 'E_CHAIN')
  t.notMatch(err?.message, /is missing/, 'not called missing: the file is there')
  t.match(err?.message, `extent ${linked} of ${path.join(ds1, 'vm', 'linked.vmdk')} cannot be read: `)
  t.match(err?.message, /resolves to .*secret-flat\.vmdk \(through a symbolic link\), outside the folders/, 'where the link leads')
  t.match(err?.message, /fix the reference, or map the datastore the file is on \(esxi settings "datastores"\)/, 'what to do')
  await t.rejects(walk('gone.vmdk'), { code: 'E_CHAIN', message: `extent ${path.join(ds1, 'vm', 'gone-flat.vmdk')} of ${path.join(ds1, 'vm', 'gone.vmdk')} is missing` }, 'a missing extent is missing')
})

t.test('local mounts pinned (pinEsxiDatastores): a mount reached through a symbolic link re-pointed later moves nothing; a mount holding an agent file is refused', async (t) => {
  const root = t.testdir({ nfs1: { vm: { 'vm.vmx': 'config.version = "8"\n' } }, elsewhere: { vm: { 'vm.vmx': 'stolen = "1"\n' } }, agent: { 'agent.token': 'TOKEN\n' } })
  const mount = path.join(root, 'ds1')
  symlinkSync(path.join(root, 'nfs1'), mount)
  const vmx = path.join(mount, 'vm', 'vm.vmx')
  // pinned through a DatastoreMap and through a settings record alike
  const map = await pinEsxiDatastores(DatastoreMap.from({ ds1: { localPath: mount, uuid: 'u-1' }, ds2: { access: 'sftp' } }), [])
  t.same(map.localRealRoots(), [realpathSync(path.join(root, 'nfs1'))], 'the real path resolved once')
  t.equal(map.lookup('ds2')?.access, 'sftp', 'an SFTP datastore as it was')
  const record = await pinEsxiDatastores({ ds1: mount }, [])
  t.same(record, { ds1: { localPath: mount, realPath: realpathSync(path.join(root, 'nfs1')) } })
  t.equal(DatastoreMap.from({ ds1: mount }).localRealRoots(), undefined, 'unpinned: resolved when needed')
  const pinnedFiles = datastoreFileAccess(map, undefined)
  const recordFiles = datastoreFileAccess(DatastoreMap.from(record), undefined)
  t.equal((await pinnedFiles.stat(vmx)).kind, 'file', 'a file of the mount is read')
  // the link re-pointed during the run: a pinned mount still confines to the folder of then
  rmSync(mount)
  symlinkSync(path.join(root, 'elsewhere'), mount)
  for (const files of [pinnedFiles, recordFiles]) {
    await t.rejects(files.open(vmx, 'r'), { name: 'VmdkError', code: 'E_OUTSIDE_ROOT', message: /resolves to .*elsewhere.*\(through a symbolic link\)/ }, 'the re-pointed mount is not followed')
  }
  t.equal((await datastoreFileAccess(DatastoreMap.from({ ds1: mount }), undefined).stat(vmx)).kind, 'file', 'unpinned, the mount follows its link (what pinning prevents)')
  // an agent file in the mount, by name or through the link; / as a mount
  const token = path.join(root, 'agent', 'agent.token')
  symlinkSync(path.join(root, 'agent'), path.join(root, 'agent-link'))
  for (const m of [path.join(root, 'agent'), path.join(root, 'agent-link')]) {
    await t.rejects(
      pinEsxiDatastores(new DatastoreMap([{ name: 'ds 9', localPath: m }]), [token], (name) => `datastores[${JSON.stringify(name)}]`),
      { name: 'AgentError', code: 'E_CONFIG', message: `datastores["ds 9"]: ${m} contains the agent's own ${token} (its state, credentials or settings)` },
      `mount ${m}`,
    )
  }
  await t.rejects(pinEsxiDatastores({ ds1: '/' }, []), {
    code: 'E_CONFIG',
    message: /^esxi\.datastores\.ds1: "\/" is the whole filesystem .*: map the datastore to the folder it is mounted at on this proxy/,
  })
  await t.rejects(pinEsxiDatastores({ ds1: path.join(root, 'nope') }, []), { code: 'E_CONFIG', message: /^esxi\.datastores\.ds1: .*nope does not exist/ })
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
  // no SFTP datastore: the local reader, confined to the mounts (was localFileAccess as is, which read anything)
  await t.rejects(datastoreFileAccess(DatastoreMap.from({ nfs: '/mnt/nfs' }), undefined).stat('/etc/hostname'), { code: 'E_OUTSIDE_ROOT' })
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
