import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { MessageKind, type Message } from '@grainline/protocol'
import { mirrorVmx } from '../src/mirror-vmx.ts'
import { storeStatus } from '../src/index.ts'
import { Agent, MiB, TOKEN, diskEnd, diskOpen, extentMessage, hello, makeEnv, pattern, seedPlan, startReceiver } from './helpers.ts'

/*
 * References out of the mirror: a shipped .vmx that points at another
 * tenant's disk, /etc/shadow or ../x was installed as it was, so booting the
 * mirror at the DR site would attach them. Only the mirrored disks and bare
 * names in the mirror folder are kept; the rest is dropped or neutralised,
 * logged and recorded.
 */

const HOSTILE = [
  '.encoding = "UTF-8"',
  'displayName = "web-x"',
  'scsi0:0.present = "TRUE"',
  'scsi0:0.fileName = "/vmfs/volumes/ds1/web-x/web-x-000002.vmdk"',
  'scsi0:2.present = "TRUE"',
  'scsi0:2.fileName = "../db01/db01.vmdk"',
  'scsi0:3.fileName = "/vmfs/volumes/ds9/tenant-b/secret.vmdk"',
  'scsi0:4.fileName = "not-mirrored.vmdk"',
  'ide1:0.present = "TRUE"',
  'ide1:0.deviceType = "cdrom-image"',
  'ide1:0.fileName = "/vmfs/volumes/iso/tools.iso"',
  'ide1:0.startConnected = "TRUE"',
  'nvram = "../x"',
  'serial0.present = "TRUE"',
  'serial0.fileType = "file"',
  'serial0.fileName = "/etc/shadow"',
  'serial1.fileType = "network"',
  'serial1.fileName = "telnet://evil.example:23"',
  'floppy0.fileName = "/dev/fd0"',
  'extendedConfigFile = "..|2F..|2Fetc|2Fpasswd"',
  'vmxstats.filename = ../stats',
  'sched.swap.derivedName = "/vmfs/volumes/ds1/web-x/web-x-1234.vswp"',
  'workingDir = "."',
  'serial2.fileName = "serial2.log"',
  '',
].join('\n')

t.test('two disks with one base name: each device attaches its own mirror disk (the later one prefixed with its node)', async (t) => {
  const src = [
    'displayName = "dup"',
    'scsi0:0.present = "TRUE"',
    'scsi0:0.fileName = "dup-000001.vmdk"',
    'scsi0:1.present = "TRUE"',
    'scsi0:1.fileName = "/vmfs/volumes/ds2/dup/dup-000001.vmdk"',
    'SATA0:2.present = "TRUE"',
    'SATA0:2.fileName = "../ds3/dup.vmdk"',
    'scsi0:3.present = "TRUE"',
    'scsi0:3.fileName = "other.vmdk"',
    '',
  ].join('\n')
  const diskMap = new Map([
    ['dup.vmdk', 'dup.vmdk'],
    ['scsi0-1_dup.vmdk', 'scsi0-1_dup.vmdk'],
    ['SATA0-2_dup.vmdk', 'SATA0-2_dup.vmdk'],
    ['other.vmdk', 'other.vmdk'],
  ])
  const { text, dropped } = mirrorVmx(src, { suffix: ' (DR)', diskMap })
  t.match(text, /^scsi0:0\.fileName = "dup\.vmdk"$/m, 'the first keeps the plain name')
  t.match(text, /^scsi0:1\.fileName = "scsi0-1_dup\.vmdk"$/m, 'the second attaches its own mirror, not the first disk')
  t.match(text, /^SATA0:2\.fileName = "SATA0-2_dup\.vmdk"$/m, 'the node as the .vmx spells it')
  t.match(text, /^scsi0:3\.fileName = "other\.vmdk"$/m, 'a disk with a name of its own is looked up by it')
  t.same(dropped, [])
  // the mirror's own .vmx rewritten again (a point's .vmx: mirror names map to themselves) keeps every device on its disk
  const again = mirrorVmx(text, { suffix: ' (DR)', diskMap: new Map([...diskMap.values()].map((v) => [v, v])) })
  t.equal(again.text, text, 'idempotent on the mirror .vmx')
  // the first dup.vmdk left the VM: the agent now carries the second under the plain name, the prefixed mirror is stale
  const shifted = mirrorVmx(['scsi0:1.present = "TRUE"', 'scsi0:1.fileName = "/vmfs/volumes/ds2/dup/dup-000002.vmdk"', ''].join('\n'), {
    suffix: '',
    diskMap,
    carried: new Set(['dup.vmdk']),
  })
  t.match(shifted.text, /^scsi0:1\.fileName = "dup\.vmdk"$/m, 'the name the cycle carried wins over a mirror no cycle writes')
  t.same(shifted.attached, ['dup.vmdk'])
  // one mirror disk is attached to one device at most: an independent disk sharing a replicated disk's name gets nothing
  const indep = mirrorVmx(
    [
      'scsi0:0.present = "TRUE"',
      'scsi0:0.mode = "independent-persistent"',
      'scsi0:0.fileName = "/vmfs/volumes/ds2/dup/dup.vmdk"',
      'scsi0:1.present = "TRUE"',
      'scsi0:1.fileName = "dup-000001.vmdk"',
      '',
    ].join('\n'),
    { suffix: '', diskMap: new Map([['dup.vmdk', 'dup.vmdk']]) },
  )
  t.match(indep.text, /^scsi0:1\.fileName = "dup\.vmdk"$/m, 'the replicated device attaches the mirror')
  t.notMatch(indep.text, /^scsi0:0\.fileName/m, 'the independent device does not attach it too (it listed first)')
  t.match(indep.text, /^scsi0:0\.present = "FALSE"$/m, 'its device is disabled')
  // the first of the two made independent: the second is mirrored under the plain name, the independent one gets nothing
  const madeIndep = mirrorVmx(['scsi0:0.mode = "independent-persistent"', 'scsi0:0.fileName = "dup.vmdk"', 'scsi0:1.fileName = "/vmfs/volumes/ds2/dup/dup-000001.vmdk"', ''].join('\n'), {
    suffix: '',
    diskMap,
    carried: new Set(['dup.vmdk']),
  })
  t.match(madeIndep.text, /^scsi0:1\.fileName = "dup\.vmdk"$/m)
  t.match(madeIndep.text, /^scsi0:0\.present = "FALSE"$/m)
  t.same(madeIndep.attached, ['dup.vmdk'])
  // a base disk whose own name ends in -NNNNNN (a clone of a delta) is found by its name as is
  const clone = mirrorVmx('scsi0:0.fileName = "app-000001.vmdk"\n', { suffix: '', diskMap: new Map([['app-000001.vmdk', 'app-000001.vmdk']]) })
  t.match(clone.text, /^scsi0:0\.fileName = "app-000001\.vmdk"$/m, 'attached, not disabled')
  t.same(clone.attached, ['app-000001.vmdk'])
})

t.test('mirrorVmx keeps only the mirrored disks and names in the mirror folder', async (t) => {
  const { text, dropped } = mirrorVmx(HOSTILE, { suffix: ' (DR)', diskMap: new Map([['web-x.vmdk', 'web-x.vmdk']]) })
  const lines = text.split('\n')
  t.ok(lines.includes('scsi0:0.fileName = "web-x.vmdk"'), 'the mirrored disk points at its mirror')
  for (const bad of ['db01', 'tenant-b', 'not-mirrored', 'tools.iso', '../x', '/etc/shadow', 'telnet:', '/dev/fd0', '|2F', '../stats', '.vswp']) {
    t.notOk(text.includes(bad), `no ${bad}`)
  }
  t.ok(lines.includes('scsi0:2.present = "FALSE"'), 'a disk out of the mirror: its device is disabled (the existing line replaced)')
  t.equal(lines.filter((l) => l.startsWith('scsi0:2.present')).length, 1)
  t.ok(lines.includes('scsi0:3.present = "FALSE"') && lines.includes('scsi0:4.present = "FALSE"'), 'added where the .vmx had none')
  t.ok(lines.includes('ide1:0.startConnected = "FALSE"') && lines.includes('ide1:0.present = "TRUE"'), 'a CD-ROM keeps its drive, without the image')
  t.ok(lines.includes('serial0.present = "FALSE"') && lines.includes('serial1.present = "FALSE"') && lines.includes('floppy0.present = "FALSE"'))
  t.ok(lines.includes('workingDir = "."') && lines.includes('serial2.fileName = "serial2.log"'), 'names in the mirror folder are kept')
  t.same(
    dropped.map((d) => [d.key, d.action]),
    [
      ['scsi0:2.fileName', 'device disabled'],
      ['scsi0:3.fileName', 'device disabled'],
      ['scsi0:4.fileName', 'device disabled'],
      ['ide1:0.fileName', 'disconnected'],
      ['nvram', 'removed'],
      ['serial0.fileName', 'device disabled'],
      ['serial1.fileName', 'device disabled'],
      ['floppy0.fileName', 'device disabled'],
      ['extendedConfigFile', 'removed'],
      ['vmxstats.filename', 'removed'],
      ['sched.swap.derivedName', 'removed'],
    ],
  )
  t.equal(dropped.find((d) => d.key === 'extendedConfigFile')?.value, '../../etc/passwd', 'escapes decoded before judging')
  t.same(mirrorVmx(text, { suffix: ' (DR)', diskMap: new Map([['web-x.vmdk', 'web-x.vmdk']]) }).dropped, [], 'the result is clean')
})

t.test('a shipped .vmx with references out of the mirror is installed neutralised, and status says so', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const d = seedPlan(0, 'web-x.vmdk', pattern(MiB, 1), '01'.repeat(8))
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  a.send(hello())
  await a.expect(MessageKind.Welcome)
  const open: Message = {
    kind: MessageKind.VmOpen,
    vm: 'web-x',
    cycle: 1,
    compat: { hwVersion: 14, datastoreType: 'local', guestOS: 'otherlinux-64' },
    files: [{ name: 'web-x.vmx', data: Buffer.from(HOSTILE) }],
    disks: ['web-x-000002.vmdk'],
  }
  a.send(open)
  await a.expect(MessageKind.VmState)
  a.send(diskOpen(d, 1, 'web-x'))
  await a.expect(MessageKind.DiskState)
  for (let seq = 0; seq < d.extents.length; seq++) a.send(extentMessage(d, seq, 'sha256'))
  a.send(diskEnd(d, 'sha256'))
  for (;;) {
    const m = await a.next()
    if (m?.kind === MessageKind.DiskEnded) break
    if (m?.kind !== MessageKind.ExtentAck) throw new Error(`unexpected ${String(m?.kind)}`)
  }
  a.send({ kind: MessageKind.Commit, vm: 'web-x', cycle: 1, retention: null })
  await a.expect(MessageKind.Committed)
  a.close()
  await a.whenClosed()
  const vmx = readFileSync(join(env.store, 'web-x', 'web-x.vmx'), 'utf8')
  for (const bad of ['db01', 'tenant-b', '/etc/shadow', '../x', 'tools.iso']) t.notOk(vmx.includes(bad), `installed .vmx has no ${bad}`)
  t.match(vmx, /scsi0:0.fileName = "web-x.vmdk"/)
  const st = (await storeStatus(env.store)).vms[0]
  t.equal(st?.vmxDropped.length, 11, 'status lists what was dropped')
  t.match(st?.vmxDropped, [{ key: 'scsi0:2.fileName', value: '../db01/db01.vmdk', action: 'device disabled' }])
  t.equal(logs.lines.filter((l) => l['msg'] === '.vmx reference out of the mirror dropped').length, 11, 'each one logged')
})
