import t from 'tap'
import { readFileSync } from 'node:fs'
import fc from 'fast-check'
import { parseGetAllVms, parseSnapshotTree, parseFault, isVmNotFound, decodeVmName, checkSnapshotOpOutput, parseConsolidationNeeded } from '../src/esxi/vim-cmd-output.ts'
import { EsxiError } from '../src/esxi/errors.ts'

const fixture = (name: string): string => readFileSync(new URL(`../../test/fixtures/esxi/${name}`, import.meta.url), 'utf8')

t.test('getallvms, ESXi 8 and 7', async (t) => {
  const v8 = parseGetAllVms(fixture('getallvms-esxi8.txt'))
  t.same(v8, [{ id: '1', name: 'a8', datastore: 'ssd-esx', relativePath: 'a8/a8.vmx', vmxPath: '[ssd-esx] a8/a8.vmx', guestOs: 'centos9_64Guest', version: 'vmx-20', annotation: '' }])
  t.same(parseGetAllVms(fixture('getallvms-esxi8-empty.txt')), [])
  const v7 = parseGetAllVms(fixture('getallvms-esxi7.txt'))
  t.equal(v7[0]?.guestOs, 'solaris10Guest')
  t.equal(v7[0]?.version, 'vmx-19')
})

t.test('getallvms, ESXi 6.5 layout with a wide header', async (t) => {
  const vms = parseGetAllVms(fixture('getallvms-esxi65.txt'))
  t.same(
    vms.map((v) => [v.id, v.name, v.vmxPath, v.version]),
    [
      ['10', 'mail-00', '[vs-00-das] mail-00/mail-00.vmx', 'vmx-13'],
      ['21', 'repo-01', '[vs-00-das] repo-01/repo-01.vmx', 'vmx-11'],
      ['6', 'gw-00', '[vs-00-das] gw-00/gw-00.vmx', 'vmx-13'],
    ],
  )
})

t.test('getallvms: spaces in names and datastores, multi-line annotations', async (t) => {
  const vms = parseGetAllVms(fixture('getallvms-spaces-annotations.txt'))
  t.equal(vms.length, 4)
  t.same(vms[1], {
    id: '12',
    name: 'my vm',
    datastore: 'datastore 2',
    relativePath: 'my vm/my vm.vmx',
    vmxPath: '[datastore 2] my vm/my vm.vmx',
    guestOs: 'otherGuest64',
    version: 'vmx-13',
    annotation: 'Built by CI',
  })
  t.equal(vms[2]?.name, 'db (prod) %2f 2')
  t.equal(decodeVmName(vms[2]?.name ?? ''), 'db (prod) / 2')
  t.equal(vms[2]?.datastore, 'nfs-datastore')
  t.equal(vms[2]?.annotation, 'Owner: ops\nsecond line of the note\n\nthird line after a blank one')
  t.same([vms[3]?.id, vms[3]?.name, vms[3]?.relativePath, vms[3]?.annotation], ['14', 'web 01', 'web 01/web 01.vmx', ''])
})

t.test('getallvms: "Skipping invalid VM" lines are ignored', async (t) => {
  const vms = parseGetAllVms(fixture('getallvms-skipping-invalid.txt'))
  t.same(
    vms.map((v) => v.id),
    ['3'],
  )
})

t.test("getallvms: a name or annotation that looks like another VM's file marks the row ambiguous, never redirects it", async (t) => {
  const out = [
    'Vmid            Name                       File                      Guest OS      Version   Annotation',
    '1      victim                    [ds1] victim/victim.vmx       centos64Guest   vmx-19',
    '5      evil [ds1] victim/victim.vmx g vmx-1    [ds1] evil/evil.vmx   otherGuest   vmx-19',
    '7      note-vm     [ds1] n/n.vmx    otherGuest   vmx-19   hello',
    '1      victim   [ds1] attacker/x.vmx   otherGuest vmx-19',
    '9      plain    [ds1] plain/plain.vmx   otherGuest   vmx-19   see [ds1] victim/victim.vmx',
    '',
  ].join('\n')
  const vms = parseGetAllVms(out)
  const byLine = vms.map((v) => [v.id, v.ambiguous === undefined ? 'ok' : v.ambiguous])
  t.match(byLine, [
    ['1', /Vmid 1 is listed 2 times/],
    ['5', /its line holds 2 "\[datastore\] ….vmx" paths/],
    ['7', 'ok'],
    ['1', /Vmid 1 is listed 2 times/],
    ['9', /its line holds 2 /],
  ])
  t.equal(vms[2]?.vmxPath, '[ds1] n/n.vmx')
  // the ESXi layouts seen in the field hold one path a row: nothing ambiguous
  for (const f of ['getallvms-esxi8.txt', 'getallvms-esxi7.txt', 'getallvms-esxi65.txt', 'getallvms-spaces-annotations.txt', 'getallvms-skipping-invalid.txt'])
    t.same(
      parseGetAllVms(fixture(f)).filter((v) => v.ambiguous !== undefined),
      [],
      f,
    )
})

t.test('getallvms: garbage is a typed error', async (t) => {
  t.throws(() => parseGetAllVms(''), { code: 'E_PARSE' })
  t.throws(() => parseGetAllVms('sh: vim-cmd: not found\n'), { code: 'E_PARSE' })
  t.throws(() => parseGetAllVms(fixture('fault-notfound-newer.txt')), { code: 'E_PARSE' })
})

t.test('snapshot.get: none, one, child with empty description', async (t) => {
  const none = parseSnapshotTree(fixture('snapshot-get-none.txt'))
  t.same(none.roots, [])
  t.equal(none.title, 'Get Snapshot')
  const one = parseSnapshotTree(fixture('snapshot-get-esxi8-one.txt'))
  t.same(
    one.all.map((n) => [n.id, n.name, n.description, n.createdOn, n.state, n.depth]),
    [['1', 'nightly', 'before patching #1', '3/14/2026 18:59:44', 'powered off', 0]],
  )
  const two = parseSnapshotTree(fixture('snapshot-get-esxi7-child.txt'))
  t.equal(two.roots.length, 1)
  const child = two.roots[0]?.children[0]
  t.same([child?.id, child?.name, child?.description, child?.state, child?.depth, child?.parentId], ['2', 'app running', '', 'powered on', 1, '1'])
})

t.test('snapshot.get: nested three levels, multi-line description', async (t) => {
  const tree = parseSnapshotTree(fixture('snapshot-get-nested-multiline.txt'))
  t.same(
    tree.all.map((n) => [n.id, n.depth, n.parentId ?? null]),
    [
      ['1', 0, null],
      ['2', 1, '1'],
      ['3', 2, '2'],
    ],
  )
  t.equal(tree.all[2]?.description, 'prepared for install\ntmp and all traces removed')
  t.equal(tree.all[2]?.createdOn, '2/23/2015 18:13:32')
})

t.test('snapshot.get: siblings printed at the same depth', async (t) => {
  const text =
    'Get Snapshot:\n|-ROOT\n--Snapshot Name        : a\n--Snapshot Id        : 4\n--Snapshot Desciption  :\n--Snapshot Created On  : 1/1/2026 1:0:0\n--Snapshot State       : powered off\n' +
    '--|-CHILD\n----Snapshot Name        : b\n----Snapshot Id        : 5\n----Snapshot Desciption  :\n----Snapshot Created On  : 1/1/2026 1:0:1\n----Snapshot State       : powered on\n' +
    '----Snapshot Name        : c\n----Snapshot Id        : 6\n----Snapshot Desciption  :\n----Snapshot Created On  : 1/1/2026 1:0:2\n----Snapshot State       : powered on\n'
  const tree = parseSnapshotTree(text)
  t.same(
    tree.roots[0]?.children.map((c) => c.id),
    ['5', '6'],
  )
  t.same(
    tree.all.map((n) => n.parentId ?? null),
    [null, '4', '4'],
  )
})

t.test('snapshot.get: malformed trees are typed errors', async (t) => {
  const bad = [
    '',
    'Get Snapshots\n',
    'Get Snapshot:\n|-ROOT\n',
    'Get Snapshot:\n|-ROOT\n--Snapshot Name        : a\n', // no id
    'Get Snapshot:\n|-ROOT\n--Snapshot Name        : a\n--Snapshot Id        : x\n',
    'Get Snapshot:\n|-ROOT\n----Snapshot Name        : a\n----Snapshot Id        : 1\n', // marker depth 0, field depth 1
    'Get Snapshot:\n----|-CHILD\n------Snapshot Id        : 1\n',
    'Get Snapshot:\ngarbage\n',
    'Get Snapshot:\n|-ROOT\n---Snapshot Id        : 1\n',
  ]
  for (const text of bad) t.throws(() => parseSnapshotTree(text), { code: 'E_PARSE' }, JSON.stringify(text))
})

t.test('faults: NotFound (old and new layouts), InvalidState', async (t) => {
  const old = parseFault(fixture('fault-notfound-esxi5.txt'))
  t.same([old?.type, old?.name, old?.msg], ['vim.fault.NotFound', 'NotFound', 'Unable to find a VM corresponding to "16"'])
  t.ok(old !== undefined && isVmNotFound(old))
  const newer = parseFault(fixture('fault-notfound-newer.txt'))
  t.equal(newer?.msg, 'Unable to find a VM corresponding to "2"')
  const inv = parseFault(fixture('fault-invalidstate.txt'))
  t.same([inv?.name, inv?.msg], ['InvalidState', 'The operation is not allowed in the current state.'])
  t.ok(inv !== undefined && !isVmNotFound(inv))
  t.equal(parseFault("(vmodl.fault.ManagedObjectNotFound) {\n   msg = 'gone'\n}\n")?.type, 'vmodl.fault.ManagedObjectNotFound')
  // no fault: ordinary output, or a fault type only mentioned inside other text
  t.equal(parseFault(fixture('snapshot-get-esxi8-one.txt')), undefined)
  t.equal(parseFault('   x = (vim.fault.NotFound) null,\n'), undefined)
  t.equal(parseFault(''), undefined)
})

t.test('snapshot.create / snapshot.remove outputs', async (t) => {
  t.doesNotThrow(() => checkSnapshotOpOutput('Create', fixture('snapshot-create.txt')))
  t.doesNotThrow(() => checkSnapshotOpOutput('Remove', fixture('snapshot-remove.txt')))
  t.doesNotThrow(() => checkSnapshotOpOutput('Remove', fixture('snapshot-remove-esxi6.txt')))
  t.throws(() => checkSnapshotOpOutput('Create', fixture('fault-invalidstate.txt')), { code: 'E_PARSE' })
  t.throws(() => checkSnapshotOpOutput('Create', ''), { code: 'E_PARSE' })
  t.throws(() => checkSnapshotOpOutput('Remove', 'Remove Snapshot:\nnonsense\n'), { code: 'E_PARSE' })
})

t.test('get.runtime consolidationNeeded', async (t) => {
  t.equal(parseConsolidationNeeded('(vim.vm.RuntimeInfo) {\n   consolidationNeeded = true,\n}\n'), true)
  t.equal(parseConsolidationNeeded('   consolidationNeeded = false,\n'), false)
  t.equal(parseConsolidationNeeded('   consolidationNeeded = <unset>,\n'), undefined)
  t.equal(parseConsolidationNeeded('nothing'), undefined)
})

t.test('parsers throw only EsxiError on arbitrary input', async (_t) => {
  const line = fc.oneof(
    fc.string(),
    fc.constantFrom(
      '|-ROOT',
      '--|-CHILD',
      '--Snapshot Name        : x',
      '--Snapshot Id        : 1',
      '----Snapshot Id        : 2',
      'Get Snapshot:',
      'Vmid   Name   File',
      '1  a  [d] a/a.vmx  g  vmx-1',
      '(vim.fault.NotFound) {',
      '}',
    ),
  )
  fc.assert(
    fc.property(fc.array(line, { maxLength: 30 }), (lines) => {
      const text = lines.join('\n')
      for (const f of [parseGetAllVms, parseSnapshotTree, parseFault, (s: string) => checkSnapshotOpOutput('Remove', s)]) {
        try {
          f(text)
        } catch (err) {
          if (!(err instanceof EsxiError) || err.code !== 'E_PARSE') throw err
        }
      }
    }),
    { numRuns: 2000 },
  )
})
