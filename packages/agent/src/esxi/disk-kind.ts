/**
 * What ESXi does with each kind of virtual disk when it takes a snapshot, and
 * so what the driver does with it — decided from the .vmx and the disk's
 * descriptors before the first snapshot (pure):
 *
 * | kind | how it is recognised | ESXi snapshot | grainline |
 * | --- | --- | --- | --- |
 * | `disk` | anything else | delta on top | replicated |
 * | `virtual-rdm` | base `createType="vmfsRawDeviceMap"` | delta on top | replicated (the mapping file reads as the LUN) |
 * | `independent` | `<node>.mode = "independent-persistent"` / `"independent-nonpersistent"` | no delta | skipped with a warning, or refused |
 * | `physical-rdm` | base `createType="vmfsPassthroughRawDeviceMap"` | no delta | skipped with a warning, or refused |
 * | `object` | an extent named `vsan://…` or `vvol://…` | (object storage) | refused: not a file the agent can read |
 */
import type { ChainFile } from './chain-files.ts'
import { OBJECT_EXTENT } from './chain-files.ts'

/** The kinds of disk (see the table above). */
export const DiskKinds = ['disk', 'virtual-rdm', 'independent', 'physical-rdm', 'object'] as const
export type DiskKind = (typeof DiskKinds)[number]

/** What to do with disks ESXi does not snapshot (independent disks, physical RDMs). */
export const IndependentPolicies = ['skip', 'refuse'] as const
export type IndependentPolicy = (typeof IndependentPolicies)[number]

/** The classification of one disk. */
export interface DiskClass {
  readonly kind: DiskKind
  /** true for the kinds ESXi snapshots (and grainline replicates) */
  readonly replicated: boolean
  /** why the disk is skipped or refused, for the report and the error */
  readonly reason?: string
}

const INDEPENDENT = /^independent-(persistent|nonpersistent)$/i

/**
 * Classify one disk from its `.vmx` mode (`<node>.mode`, may be undefined) and
 * its descriptor chain (top first).
 */
export function classifyDisk(mode: string | undefined, chain: readonly ChainFile[]): DiskClass {
  for (const layer of chain) {
    const obj = layer.extentNames.find((n) => OBJECT_EXTENT.test(n))
    if (obj !== undefined) {
      const what = /^vsan:/i.test(obj) ? 'a vSAN object' : 'a vVol'
      return {
        kind: 'object',
        replicated: false,
        reason: `its extent ${JSON.stringify(obj)} (in ${layer.path}) is ${what}, not a file on a datastore: grainline reads VMFS/NFS datastores only (Storage vMotion the disk to one)`,
      }
    }
  }
  if (mode !== undefined && INDEPENDENT.test(mode.trim())) {
    return { kind: 'independent', replicated: false, reason: `it is an independent disk (mode "${mode.trim()}"): ESXi takes no snapshot of it` }
  }
  const base = chain[chain.length - 1]
  const type = base?.createType.toLowerCase()
  if (type === 'vmfspassthroughrawdevicemap') {
    return { kind: 'physical-rdm', replicated: false, reason: 'it is a physical-compatibility RDM: ESXi takes no snapshot of it' }
  }
  if (type === 'vmfsrawdevicemap') return { kind: 'virtual-rdm', replicated: true }
  return { kind: 'disk', replicated: true }
}
