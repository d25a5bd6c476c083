/**
 * What VmOpen carries about a VM besides its cycle: the config files shipped
 * with the mirror (.vmx, nvram) and the mirror's name of every disk.
 */
import { basename, dirname, join } from 'node:path'
import type { VmFile } from '@grainline/protocol'
import { confineFileAccess, isVmdkError, localFileAccess, openChain, VmdkError, type FileAccess } from '@grainline/vmdk'
import type { HypervisorDriver, VmHandle } from './driver.ts'
import { baseLayer } from './disk-work.ts'
import { MAX_CONFIG_BYTES, readRegularFileVia } from './fs-util.ts'

/** Largest nvram file shipped with the mirror. */
const MAX_NVRAM_BYTES = 4 * 1024 * 1024

/**
 * The .vmx and (when present) the nvram file of a VM. Both must be regular
 * files (a FIFO or device is refused with `E_VMX` instead of hanging); a
 * missing nvram is skipped, one above 4 MiB too (the mirror then boots
 * with a fresh nvram).
 */
export async function vmFiles(vm: VmHandle, driver: HypervisorDriver): Promise<VmFile[]> {
  const files =
    vm.roots === undefined
      ? (driver.files ?? localFileAccess)
      : confineFileAccess(driver.files ?? localFileAccess, vm.roots, {
          ...(vm.rootsRemedy === undefined ? {} : { remedy: vm.rootsRemedy }),
          ...(vm.realRoots === undefined ? {} : { realRoots: vm.realRoots }),
        })
  const out: VmFile[] = [{ name: basename(vm.vmxPath), data: await readRegularFileVia(files, vm.vmxPath, { maxBytes: MAX_CONFIG_BYTES, code: 'E_VMX', what: 'VM config' }) }]
  const stem = basename(vm.vmxPath).replace(/\.vmx$/i, '')
  const nvram = vm.config.get('nvram') ?? `${stem}.nvram`
  const p = join(dirname(vm.vmxPath), basename(nvram))
  let data: Buffer | undefined
  try {
    data = await readRegularFileVia(files, p, { maxBytes: MAX_NVRAM_BYTES, code: 'E_VMX', what: 'nvram file', tooLarge: 'skip' })
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'ENOENT') throw err
  }
  if (data !== undefined) out.push({ name: basename(p), data })
  return out
}

/** vmdk codes of a disk whose format grainline does not read (as opposed to a file it cannot reach or a chain that does not link). */
const FORMAT_CODES: ReadonlySet<string> = new Set(['E_FORMAT', 'E_UNSUPPORTED', 'E_VERSION', 'E_DESCRIPTOR', 'E_ENCODING'])

/**
 * What to do about a disk that does not open, by vmdk code: a format
 * grainline does not read is converted; a file of a format it reads but
 * shorter than its own tables (damaged, or still being copied) or one whose
 * journal the host has not replayed is no format problem: converting it
 * would not help.
 */
function diskOpenRemedy(code: string): string {
  if (code === 'E_TRUNCATED')
    return 'the file is shorter than its own tables say (damaged, or copied or written incompletely): check it on the host (vmkfstools -x check DISK.vmdk) or restore it from a backup'
  if (code === 'E_DIRTY') return 'let ESXi open the disk first (power the VM on, or consolidate its snapshots), then run again'
  if (FORMAT_CODES.has(code))
    return "grainline cannot read this disk's format: convert it to one it reads (a flat VMFS disk, thin or thick: vmkfstools -i SOURCE.vmdk -d thin COPY.vmdk, then attach the copy)"
  return 'fix the disk, or the reference to it'
}

/**
 * A disk's chain that does not open, named as the operator finds it: the VM,
 * the disk's node and file, and what to do (vmdk's own message names only the
 * file it read, `SPARSE extent is neither KDMV nor COWD (…-flat.vmdk)`). The
 * vmdk code is kept (`E_FORMAT`, `E_OUTSIDE_ROOT`, …); a stop passes as it is.
 */
function diskOpenError(err: unknown, vm: VmHandle, d: VmHandle['disks'][number]): unknown {
  if (!isVmdkError(err) || err.code === 'E_ABORTED') return err
  const what = diskOpenRemedy(err.code)
  // the file vmdk names stays the error's `file` (and the end of its message, where VmdkError puts it)
  const suffix = err.file === '' ? '' : ` (${err.file})`
  const own = suffix !== '' && err.message.endsWith(suffix) ? err.message.slice(0, -suffix.length) : err.message
  return new VmdkError(err.code, `VM ${vm.name}, disk ${d.node} (${d.fileName}) not replicated, no snapshot taken: ${own}; ${what}`, err.file, { cause: err })
}

/**
 * The mirror's name of every disk: the base file name of its chain. Two disks
 * on different datastores may share a base name; the mirror needs distinct
 * names, so a repeated one is prefixed with its device node (`scsi0-1_x.vmdk`).
 * A chain that does not open fails the VM here, before its snapshot, naming the disk ({@link diskOpenError}).
 */
export async function mirrorDiskNames(vm: VmHandle, driver: HypervisorDriver): Promise<string[]> {
  const names = await Promise.all(
    vm.disks.map(async (d) => {
      const c = await openChain(d.path, chainOptions(driver, vm)).catch((err: unknown) => {
        throw diskOpenError(err, vm, d)
      })
      try {
        return baseLayer(c).file
      } finally {
        await c.close()
      }
    }),
  )
  return names.map((n, i) => (names.indexOf(n) === i ? n : `${(vm.disks[i] as VmHandle['disks'][number]).node.replace(/:/g, '-')}_${n}`))
}

/** The `openChain` options of a VM's disks: the driver's path map and file access, the VM's roots (their pinned real paths, and the driver's remedy when a file is outside them). */
export function chainOptions(
  driver: HypervisorDriver,
  vm: VmHandle,
): { pathMap?: Record<string, string>; files?: FileAccess; roots?: readonly string[]; rootsRemedy?: string; realRoots?: readonly string[] } {
  return {
    ...(driver.pathMap === undefined ? {} : { pathMap: { ...driver.pathMap } }),
    ...(driver.files === undefined ? {} : { files: driver.files }),
    ...(vm.roots === undefined ? {} : { roots: vm.roots }),
    ...(vm.roots === undefined || vm.rootsRemedy === undefined ? {} : { rootsRemedy: vm.rootsRemedy }),
    ...(vm.roots === undefined || vm.realRoots === undefined ? {} : { realRoots: vm.realRoots }),
  }
}
