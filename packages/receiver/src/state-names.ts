/**
 * The names a VM's `state.json` holds that become paths: its VM, the stems of
 * its disks and of its cycle in flight, and the seed renames, journals and
 * removed disks of a pending commit or prune. A store can be carried in (an
 * offline seed) or edited by hand, and a pending commit is finished by
 * whoever takes the VM next (recovery, a VmOpen, `points prune`, a restore):
 * a `../` there would rename or delete files outside the VM folder. So each
 * name is checked when the state is read to be exactly the form the receiver
 * itself writes (commit.ts commitState, vm-mirror.ts reclaim), before any of
 * it is touched — the point files a pending commit links, merges and
 * removes too (as increment.ts pointPath checks each where it becomes a path).
 */
import { basename } from 'node:path'
import { validateName } from '@grainline/protocol'
import { ReceiverError } from './errors.ts'
import { checkDiskNameForm, receiverOwnedName } from './receiver-rules.ts'
import { isPointFileName } from './increment.ts'
import { diskStem, type VmPaths } from './vm-paths.ts'
import { committedIdentityProblem } from './committed-identity.ts'

/**
 * Check the names of a state file just parsed (its `format`, `vm` and
 * `disks` already known to be of the right types).
 * @throws ReceiverError E_STATE naming the VM, the field and what to do
 */
export function checkStateNames(paths: VmPaths, s: Record<string, unknown>): void {
  const vm = basename(paths.dir)
  const bad = (field: string, value: unknown, why: string): ReceiverError =>
    new ReceiverError(
      'E_STATE',
      `VM ${vm}: ${paths.state} has ${field} = ${String(JSON.stringify(value)).slice(0, 300)}, ${why}: the state file was edited or is corrupt, so nothing was renamed, removed or written. Put back .grainline/state.json from a backup of this store, or move the folder ${paths.dir} out of the store and seed the VM again`,
    )
  if (s['vm'] !== vm) throw bad('vm', s['vm'], `which is not the name of its folder ${JSON.stringify(vm)}`)
  checkDiskRecords('disks', s['disks'], bad)
  // reported to agents as VmState.committedCycleId (SPEC §5.10): an agent takes a commit for its own by it
  const identity = committedIdentityProblem(s['committedIdentity'])
  if (identity !== undefined) throw bad('committedIdentity', s['committedIdentity'], identity)
  const inflight = s['inflight'] as Record<string, unknown> | null | undefined
  if (inflight !== null && inflight !== undefined) {
    if (typeof inflight !== 'object') throw bad('inflight', inflight, 'which is not a cycle in flight')
    // the cycle names files too (a seed's journal set aside as <disk>.journal.set-aside-cycle-<cycle>: journal-head.ts)
    const cycle = inflight['cycle']
    if (typeof cycle !== 'number' || !Number.isSafeInteger(cycle) || cycle < 1) throw bad('inflight.cycle', cycle, 'which is not a cycle number')
    checkDiskRecords('inflight.disks', inflight['disks'], bad)
    checkAnnounced(inflight['disks'], bad)
  }
  // the installed configuration files: the next commit removes those its cycle no longer carries (commit.ts configChange)
  listOf('configFiles', s['configFiles'] ?? [], bad).forEach((f, i) => {
    if (!isConfigFileName(f)) throw bad(`configFiles[${i}]`, f, CONFIG_FILE_WHY)
  })
  const pending = s['pending'] as Record<string, unknown> | null | undefined
  if (pending === null || pending === undefined) return
  if (typeof pending !== 'object') throw bad('pending', pending, 'which is not a pending commit')
  // a commit renames each seed over its own flat, nothing else (commitState)
  listOf('pending.renames', pending['renames'], bad).forEach((r, i) => {
    const { from, to } = (r ?? {}) as { from?: unknown; to?: unknown }
    const stem = typeof from === 'string' && from.endsWith(SEED_SUFFIX) ? from.slice(0, -SEED_SUFFIX.length) : undefined
    if (stem === undefined || !isPlainStem(stem) || to !== `${stem}${FLAT_SUFFIX}`)
      throw bad(`pending.renames[${i}]`, r, `which is not a seed renamed over its flat (<disk>${SEED_SUFFIX} → <disk>${FLAT_SUFFIX})`)
  })
  listOf('pending.journals', pending['journals'], bad).forEach((j, i) => {
    if (typeof j !== 'string' || !j.endsWith(JOURNAL_SUFFIX) || !isPlainStem(j.slice(0, -JOURNAL_SUFFIX.length)))
      throw bad(`pending.journals[${i}]`, j, `which is not a disk's journal (<disk>${JOURNAL_SUFFIX})`)
  })
  listOf('pending.retire', pending['retire'] ?? [], bad).forEach((r, i) => {
    const { stem, file } = (r ?? {}) as { stem?: unknown; file?: unknown }
    if (!isPlainStem(stem) || !isPointFileName(file)) throw bad(`pending.retire[${i}]`, r, 'which is not a disk and its base point')
  })
  // point files: all checked before any roll-forward step runs (pointPath checks each again where it becomes a path)
  listOf('pending.links', pending['links'] ?? [], bad).forEach((l, i) => {
    const { file, parent } = (l ?? {}) as { file?: unknown; parent?: unknown }
    if (!isPointFileName(file) || (parent !== null && !isPointFileName(parent))) throw bad(`pending.links[${i}]`, l, 'which is not a link between point files')
  })
  listOf('pending.merges', pending['merges'] ?? [], bad).forEach((m, i) => {
    const { child, parent } = (m ?? {}) as { child?: unknown; parent?: unknown }
    if (!isPointFileName(child) || !isPointFileName(parent)) throw bad(`pending.merges[${i}]`, m, 'which is not a merge of point files')
  })
  listOf('pending.removePoints', pending['removePoints'] ?? [], bad).forEach((f, i) => {
    if (!isPointFileName(f)) throw bad(`pending.removePoints[${i}]`, f, 'which is not a point file of .grainline/points')
  })
  listOf('pending.removeFiles', pending['removeFiles'] ?? [], bad).forEach((f, i) => {
    if (!isConfigFileName(f)) throw bad(`pending.removeFiles[${i}]`, f, CONFIG_FILE_WHY)
  })
  // a removed disk's files are deleted: never those of a disk the state still holds (reclaim drops its record in the same write)
  const live = new Set([...stemsOf(s['disks']), ...stemsOf(inflight?.['disks'])].map((x) => x.toLowerCase()))
  listOf('pending.removeDisks', pending['removeDisks'] ?? [], bad).forEach((stem, i) => {
    if (!isPlainStem(stem)) throw bad(`pending.removeDisks[${i}]`, stem, 'which is not the name of a disk')
    if (live.has(stem.toLowerCase())) throw bad(`pending.removeDisks[${i}]`, stem, 'which is a disk the VM still has')
  })
}

const SEED_SUFFIX = '-flat.vmdk.seed'
const FLAT_SUFFIX = '-flat.vmdk'
const JOURNAL_SUFFIX = '.journal'

/** Each record of `disks` (committed or in flight) is keyed by its disk's name, a name a DiskOpen may carry, and its stem is that name's (open-decision.ts). */
function checkDiskRecords(field: string, disks: unknown, bad: (field: string, value: unknown, why: string) => ReceiverError): void {
  if (typeof disks !== 'object' || disks === null) throw bad(field, disks, 'which is not a record of disks')
  for (const [name, rec] of Object.entries(disks)) {
    try {
      validateName(name, 'disk name')
      checkDiskNameForm(name)
    } catch {
      throw bad(`${field} key`, name, 'which is not a disk name the receiver accepts')
    }
    const r = (rec ?? {}) as { name?: unknown; stem?: unknown }
    if (r.name !== name) throw bad(`${field}[${JSON.stringify(name)}].name`, r.name, 'which is not the name it is recorded under')
    if (r.stem !== diskStem(name)) throw bad(`${field}[${JSON.stringify(name)}].stem`, r.stem, `which is not the disk's file stem ${JSON.stringify(diskStem(name))}`)
  }
}

/** A disk's file stem as the receiver makes one: a plain, visible name (no separator, `..` or control character). */
/**
 * An in-flight incremental's announced totals (state-file.ts `announced`) bound what the token's quota reserves for it
 * and what its apply accepts: anything but non-negative integers would compare as NaN and reserve nothing.
 */
function checkAnnounced(disks: unknown, bad: (field: string, value: unknown, why: string) => ReceiverError): void {
  for (const [name, rec] of Object.entries((disks ?? {}) as Record<string, unknown>)) {
    const a = (rec as { announced?: unknown } | null)?.announced
    if (a === undefined) continue
    const o = a as Record<string, unknown> | null
    const ok = o !== null && typeof o === 'object' && ['bytes', 'extents', 'allocatedAtOpen'].every((k) => Number.isSafeInteger(o[k]) && (o[k] as number) >= 0)
    if (!ok) throw bad(`inflight.disks[${JSON.stringify(name)}].announced`, a, 'which is not the totals the receiver records (non-negative integers bytes, extents, allocatedAtOpen)')
  }
}

const CONFIG_FILE_WHY = "which is not the name of a configuration file the receiver installs in the VM folder (a plain name, none of the receiver's own files there)"

/** A configuration file's name as the receiver installs one in the VM folder (commit.ts installedName): plain, visible, none of its own names. */
function isConfigFileName(name: unknown): name is string {
  return isPlainStem(name) && receiverOwnedName(name) === undefined
}

function isPlainStem(stem: unknown): stem is string {
  try {
    validateName(stem, 'stem')
  } catch {
    return false
  }
  return !stem.startsWith('.')
}

function listOf(field: string, list: unknown, bad: (field: string, value: unknown, why: string) => ReceiverError): unknown[] {
  if (!Array.isArray(list)) throw bad(field, list, 'which is not a list')
  return list
}

function stemsOf(disks: unknown): string[] {
  if (typeof disks !== 'object' || disks === null) return []
  return Object.values(disks).flatMap((r) => (typeof (r as { stem?: unknown } | null)?.stem === 'string' ? [(r as { stem: string }).stem] : []))
}
