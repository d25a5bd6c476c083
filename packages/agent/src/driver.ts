/**
 * The hypervisor driver contract (this TSDoc and the README's
 * "HypervisorDriver" section are the contract). The cycle engine talks to a VM
 * only through this interface; the `local` driver (this package) and the
 * `esxi` driver (src/esxi/) implement it. Both share one snapshot model:
 * snapshot k's per-disk `fileName` is the disk that represents it (the parent
 * of the delta created when it was taken); every method also takes an
 * optional `{ signal }` last.
 */
import type { FileAccess } from '@grainline/vmdk'
import type { VmxConfig } from './vmx.ts'

/** One virtual disk as the .vmx names it. */
export interface VmDisk {
  /** device node, e.g. "scsi0:0", "sata0:1", "nvme0:0", "ide0:0" */
  readonly node: string
  /** the value of `<node>.fileName` as written in the .vmx (may be a datastore path) */
  readonly fileName: string
  /** the same file as an absolute path readable through `driver.files` (driver.resolvePath applied) */
  readonly path: string
}

/** A disk of the VM the driver does not replicate (ESXi takes no snapshot of it). */
export interface SkippedDisk {
  readonly node: string
  readonly fileName: string
  /** e.g. "independent", "physical-rdm" */
  readonly kind: string
  /** why, in words, for the report */
  readonly reason: string
}

/** A VM found by a driver. A handle is a snapshot of the config at `openVm` time. */
export interface VmHandle {
  /** what the user asked for (vmx path, VM name or id) */
  readonly ref: string
  /** driver-specific id (esxi: the vmid; local: the absolute .vmx path) */
  readonly id: string
  /** VM name (`displayName`, else the .vmx basename without extension) */
  readonly name: string
  /** absolute, locally readable path of the .vmx */
  readonly vmxPath: string
  /** folder holding the .vmx (locally readable) */
  readonly dir: string
  /** the parsed .vmx */
  readonly config: VmxConfig
  /** every present hard disk of the VM that is replicated, in .vmx order */
  readonly disks: readonly VmDisk[]
  /** present hard disks that are not replicated, with why (esxi: independent disks, physical RDMs) */
  readonly skippedDisks?: readonly SkippedDisk[]
  /** datastore type for the compatibility record, e.g. "vmfs6", "nfs", "local" */
  readonly datastoreType: string
  /**
   * Folders the VM's files (disk chains, nvram) may be read from; a file
   * outside them, or linked out of them, is refused (`E_OUTSIDE_ROOT`).
   * The local driver sets it; the esxi driver's `files` are confined to
   * its mapped datastores already.
   */
  readonly roots?: readonly string[]
  /**
   * The real paths of `roots`, resolved once when the driver pinned them (the
   * local driver: at job load, or at its first `openVm`): a file's real path
   * must lie below one of them; the roots are never resolved again, so a root
   * reached through a symbolic link re-pointed during the run moves nothing.
   * The paths the .vmx and descriptors name are not rewritten.
   * @default each root's real path, resolved at every confinement
   */
  readonly realRoots?: readonly string[]
  /**
   * What an `E_OUTSIDE_ROOT` outside `roots` tells the operator to do: how
   * this driver's roots are set (the local driver: `--datastore-root`).
   * @default vmdk's generic remedy
   */
  readonly rootsRemedy?: string
}

/** Per-disk record of a snapshot (.vmsd `snapshotK.diskD.*`). */
export interface SnapshotDisk {
  /** device node, e.g. "scsi0:0" */
  readonly node: string
  /** the disk that represents the snapshot: the parent of the delta created when it was taken */
  readonly fileName: string
}

/** One snapshot of a VM. */
export interface SnapshotRef {
  /** driver id (local: the .vmsd uid; esxi: the snapshot id) */
  readonly id: string
  /** display name; grainline's are `grainline-<cycle>` */
  readonly name: string
  /** true when grainline made it (name matches `grainline-<n>`) */
  readonly grainline: boolean
  /** the cycle number parsed from a grainline name, else 0 */
  readonly cycle: number
  /** per-disk records when the driver knows them (local: always) */
  readonly disks: readonly SnapshotDisk[]
}

/** What the agent needs from a hypervisor. */
export interface HypervisorDriver {
  readonly name: 'local' | 'esxi'
  /** the host the VM ids are unique on (esxi: the ESXi host); part of the key of the agent's state file */
  readonly host?: string
  /** find the VM; return its .vmx path readable locally and its config */
  openVm(ref: string, opts?: { signal?: AbortSignal }): Promise<VmHandle>
  /** take the grainline snapshot; returns when the new deltas exist */
  createSnapshot(vm: VmHandle, name: string, opts?: { signal?: AbortSignal }): Promise<SnapshotRef>
  /** list snapshots (oldest first) with which ones grainline made */
  listSnapshots(vm: VmHandle, opts?: { signal?: AbortSignal }): Promise<SnapshotRef[]>
  /** remove (consolidate) one snapshot */
  removeSnapshot(vm: VmHandle, snap: SnapshotRef, opts?: { signal?: AbortSignal }): Promise<void>
  /** map a datastore path to a local readable path */
  resolvePath(vm: VmHandle, path: string): string
  /** path map handed to `openChain` so parentFileNameHint datastore paths resolve (esxi) */
  readonly pathMap?: Readonly<Record<string, string>>
  /**
   * How the VM's files (.vmx, nvram, every disk file) are read: handed to
   * `openChain` and used for the config files. @default vmdk's `localFileAccess`
   * (esxi: local mounts and/or SFTP on the host)
   */
  readonly files?: FileAccess
  /** release connections (ssh); safe to call twice */
  close?(): Promise<void>
}

const GRAINLINE_NAME = /^grainline-(\d{1,15})$/

/**
 * The largest cycle a grainline snapshot name holds (15 digits, see
 * `GRAINLINE_NAME`): a snapshot of a later cycle would be foreign to the
 * parser. The agent refuses a receiver whose committed cycle leaves no room.
 */
export const MAX_GRAINLINE_CYCLE = 999_999_999_999_999

/** The snapshot name grainline uses for a cycle. */
export function grainlineSnapshotName(cycle: number): string {
  return `grainline-${cycle}`
}

/** The cycle of a grainline snapshot name, or 0 when the name is not grainline's. */
export function parseGrainlineSnapshotName(name: string): number {
  const m = GRAINLINE_NAME.exec(name)
  return m === null ? 0 : Number(m[1])
}
