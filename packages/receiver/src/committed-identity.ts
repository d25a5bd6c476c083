/**
 * The identity of a VM's last committed cycle (SPEC §5.10): recorded in the
 * VM's state at every commit (both stores), reported as
 * `VmState.committedCycleId` on protocol version 8, so that an agent whose
 * Committed was lost tells its own commit of a cycle from another writer's.
 *
 * The record names the commit it belongs to (its cycle and generation): a
 * state written later by an older receiver, which carries unknown fields
 * over, keeps a record of an older commit, and that one is not reported
 * ("", unknown) rather than taken for the newer commit's.
 */
import { committedCycleIdentity } from '@grainline/protocol'

/** `committedIdentity` of a VM's state (state.json, the Ceph state object). */
export interface CommittedIdentityRecord {
  /** the committed cycle it names */
  readonly cycle: number
  /** the generation of that commit (SPEC §5.8) */
  readonly generation: string
  /** committedCycleIdentity() of the cycle's disks: 64 lowercase hex digits */
  readonly id: string
}

/** The record of a commit of `cycle` under `generation` of `disks` (every disk the commit sealed, by its DiskOpen's name and cycleId). */
export function committedIdentityRecord(cycle: number, generation: string, disks: ReadonlyArray<{ readonly name: string; readonly cycleId: string }>): CommittedIdentityRecord {
  return { cycle, generation, id: committedCycleIdentity(disks.map((d) => ({ name: d.name, cycleId: d.cycleId }))) }
}

/**
 * `VmState.committedCycleId` of a state (already checked by {@link committedIdentityProblem}): the recorded identity
 * when it names the state's last commit, else "" (nothing committed, a commit of a receiver older than version 8).
 */
export function reportedCommittedCycleId(s: { readonly committedCycle: number; readonly generation?: string | null; readonly committedIdentity?: CommittedIdentityRecord }): string {
  const r = s.committedIdentity
  if (r === undefined || s.committedCycle === 0) return ''
  return r.cycle === s.committedCycle && r.generation === (s.generation ?? '') ? r.id : ''
}

/**
 * Why a state's `committedIdentity` (hostile input: a store carried in or edited) is not a record the receiver writes,
 * or undefined when it is one or absent.
 */
export function committedIdentityProblem(value: unknown): string | undefined {
  if (value === undefined) return undefined
  const o = value as Record<string, unknown> | null
  if (o === null || typeof o !== 'object' || Array.isArray(o)) return 'which is not a record of a committed cycle'
  // fields beside these three are a later receiver's (a downgrade keeps its state readable): ignored, never reported
  if (!['cycle', 'generation', 'id'].every((k) => Object.hasOwn(o, k))) return 'which lacks one of cycle, generation and id'
  if (!Number.isSafeInteger(o['cycle']) || (o['cycle'] as number) < 1) return 'whose cycle is not a positive integer'
  if (typeof o['generation'] !== 'string' || !/^[0-9a-f]{32}$/.test(o['generation'])) return 'whose generation is not 32 lowercase hex digits'
  if (typeof o['id'] !== 'string' || !/^[0-9a-f]{64}$/.test(o['id'])) return 'whose id is not 64 lowercase hex digits (SPEC §5.10)'
  return undefined
}
