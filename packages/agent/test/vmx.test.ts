import t from 'tap'
import { VmxConfig, vmxDisks, vmxHardwareVersion } from '../src/vmx.ts'
import { parseVmsd, serializeVmsd } from '../src/vmsd.ts'

const VMX = `.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "web |22front|22 01"
# a comment line
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "web 01.vmdk"
scsi0:1.present = "FALSE"
scsi0:1.fileName = "gone.vmdk"
sata0.present = "TRUE"
sata0:0.present = "TRUE"
sata0:0.deviceType = "cdrom-image"
sata0:0.fileName = "/vmfs/volumes/ds1/iso/install.iso"
sata0:1.present = "TRUE"
sata0:1.fileName = "web 01_1.vmdk"
nvme0.present = "TRUE"
nvme0:0.present = "TRUE"
nvme0:0.fileName = "/vmfs/volumes/ds2/web 01/web 01_2-000001.vmdk"
ide1:0.present = "TRUE"
ide1:0.deviceType = "disk"
ide1:0.fileName = "web 01_3.vmdk"
ide0:0.present = "TRUE"
ide0:0.deviceType = "atapi-cdrom"
ide0:0.fileName = "auto detect"
SCSI1.present = "FALSE"
scsi1:0.present = "TRUE"
scsi1:0.fileName = "disabled-controller.vmdk"
unknown.vendor.key = "keep me"
`

t.test('parses every present hard disk on every bus, names with spaces', async (t) => {
  const cfg = VmxConfig.parse(VMX)
  t.same(vmxDisks(cfg), [
    { node: 'scsi0:0', fileName: 'web 01.vmdk' },
    { node: 'sata0:1', fileName: 'web 01_1.vmdk' },
    { node: 'nvme0:0', fileName: '/vmfs/volumes/ds2/web 01/web 01_2-000001.vmdk' },
    { node: 'ide1:0', fileName: 'web 01_3.vmdk' },
  ])
  t.equal(cfg.get('displayName'), 'web "front" 01', '|22 escapes decode')
  t.equal(cfg.get('DISPLAYNAME'), 'web "front" 01', 'keys are case-insensitive')
  t.equal(vmxHardwareVersion(cfg), 19)
})

t.test('rewrite keeps unknown keys, comments and order; set replaces in place', async (t) => {
  const cfg = VmxConfig.parse(VMX)
  t.equal(cfg.serialize(), VMX, 'unchanged round trip is byte-exact')
  cfg.set('scsi0:0.fileName', 'web 01-000001.vmdk')
  cfg.set('new.key', 'a "quoted" | value')
  const text = cfg.serialize()
  t.match(text, /# a comment line/)
  t.match(text, /unknown\.vendor\.key = "keep me"/)
  t.ok(text.indexOf('scsi0:0.fileName = "web 01-000001.vmdk"') < text.indexOf('scsi0:1.present'), 'replaced in place')
  const again = VmxConfig.parse(text)
  t.equal(again.get('new.key'), 'a "quoted" | value', 'escaped value round-trips')
  t.equal(vmxDisks(again)[0]?.fileName, 'web 01-000001.vmdk')
})

t.test('bad input gets a typed error', async (t) => {
  t.throws(() => VmxConfig.parse('a = "b"\0'), { code: 'E_VMX' })
  t.same(vmxDisks(VmxConfig.parse('garbage\n=\n"')), [])
})

t.test('.vmsd round trip like ESXi writes it', async (t) => {
  const text = `.encoding = "UTF-8"
snapshot.lastUID = "3"
snapshot.current = "3"
snapshot0.uid = "1"
snapshot0.filename = "web-Snapshot1.vmsn"
snapshot0.displayName = "before upgrade"
snapshot0.createTimeHigh = "397621"
snapshot0.numDisks = "1"
snapshot0.disk0.fileName = "web.vmdk"
snapshot0.disk0.node = "scsi0:0"
snapshot1.uid = "3"
snapshot1.parent = "1"
snapshot1.filename = "web-Snapshot3.vmsn"
snapshot1.displayName = "grainline-7"
snapshot1.numDisks = "1"
snapshot1.disk0.fileName = "web-000001.vmdk"
snapshot1.disk0.node = "scsi0:0"
snapshot.numSnapshots = "2"
`
  const db = parseVmsd(text)
  t.equal(db.snapshots.length, 2)
  t.equal(db.current, 3)
  t.equal(db.snapshots[1]?.parent, 1)
  t.same(db.snapshots[1]?.disks, [{ node: 'scsi0:0', fileName: 'web-000001.vmdk' }])
  t.same(db.snapshots[0]?.extra, [['createTimeHigh', '397621']])
  const again = parseVmsd(serializeVmsd(db))
  t.same(again, db)
  t.same(parseVmsd('').snapshots, [])
  t.throws(() => parseVmsd('snapshot.numSnapshots = "2"\nsnapshot0.uid = "1"\n'), { code: 'E_VMX' })
  t.throws(() => parseVmsd('snapshot.numSnapshots = "x"\n'), { code: 'E_VMX' })
})
