/** Build ESXi-style VM folders (vmfs flat base disks) on the harness datastore. */
import { mkdir, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import path from 'node:path'

export interface BuiltVm {
  dir: string
  vmxPath: string
  /** base disk descriptors (local paths) in .vmx order */
  disks: string[]
}

function descriptor(flat: string, sectors: number, cid: string): string {
  return [
    '# Disk DescriptorFile',
    'version=1',
    'encoding="UTF-8"',
    `CID=${cid}`,
    'parentCID=ffffffff',
    'createType="vmfs"',
    '',
    '# Extent description',
    `RW ${sectors} VMFS "${flat}"`,
    '',
    '# The Disk Data Base',
    '#DDB',
    '',
    'ddb.adapterType = "lsilogic"',
    'ddb.geometry.cylinders = "8"',
    'ddb.geometry.heads = "64"',
    'ddb.geometry.sectors = "32"',
    `ddb.longContentID = "${randomBytes(16).toString('hex')}"`,
    'ddb.thinProvisioned = "1"',
    `ddb.uuid = "60 00 C2 9${randomBytes(1).toString('hex')[0] ?? '0'} 11 22 33 44-55 66 77 88 99 aa bb cc"`,
    'ddb.virtualHWVersion = "19"',
    '',
  ].join('\n')
}

/**
 * A VM folder `<datastore>/<folder>/` with `<stem>.vmx` and two disks: disk 0
 * named relatively, disk 1 by an absolute `/vmfs/volumes/<uuid>/...` path, as
 * ESXi writes a disk that was added from the datastore browser. Flat extents
 * are filled with random data.
 */
export async function buildVm(datastore: string, uuid: string, folder: string, stem: string, opts: { sizes?: number[] } = {}): Promise<BuiltVm> {
  const dir = path.join(datastore, folder)
  await mkdir(dir, { recursive: true })
  const sizes = opts.sizes ?? [2 * 1024 * 1024, 1024 * 1024]
  const names = [`${stem}.vmdk`, `${stem}_1.vmdk`]
  const disks: string[] = []
  for (let i = 0; i < sizes.length; i++) {
    const name = names[i] as string
    const flat = name.replace(/\.vmdk$/, '-flat.vmdk')
    await writeFile(path.join(dir, flat), randomBytes(sizes[i] as number))
    await writeFile(path.join(dir, name), descriptor(flat, (sizes[i] as number) / 512, randomBytes(4).toString('hex')))
    disks.push(path.join(dir, name))
  }
  const vmxPath = path.join(dir, `${stem}.vmx`)
  const lines = [
    '.encoding = "UTF-8"',
    'config.version = "8"',
    'virtualHW.version = "19"',
    `displayName = "${stem}"`,
    'guestOS = "otherlinux-64"',
    'scsi0.present = "TRUE"',
    'scsi0.virtualDev = "lsilogic"',
    'scsi0:0.present = "TRUE"',
    `scsi0:0.fileName = "${names[0] as string}"`,
    'scsi0:0.deviceType = "scsi-hardDisk"',
  ]
  if (sizes.length > 1) {
    lines.push('scsi0:1.present = "TRUE"', `scsi0:1.fileName = "/vmfs/volumes/${uuid}/${folder}/${names[1] as string}"`)
  }
  lines.push('ide1:0.present = "TRUE"', 'ide1:0.deviceType = "cdrom-image"', `ide1:0.fileName = "/vmfs/volumes/${uuid}/iso/boot.iso"`, '')
  await writeFile(vmxPath, lines.join('\n'))
  return { dir, vmxPath, disks }
}
