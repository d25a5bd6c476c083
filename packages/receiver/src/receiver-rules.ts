/**
 * The receiver's own rules, beyond what SPEC §6 and the decoder already
 * guarantee (SPEC §1.3: "a receiver MAY apply stricter local limits"; §4.1:
 * "a receiver MAY refuse further names that would collide with its own
 * files", or whose files' names would not fit), and the cycle identity it recomputes rather than trusts (§5.2).
 * Everything else about a message is checked by `decodeMessage` and
 * `ConversationState`; nothing here repeats those checks.
 */
import { cycleIdentity, DigestLengths, type DiskOpenMessage, type Negotiated } from '@grainline/protocol'
import { ReceiverError } from './errors.ts'
import { isTempName, longestTempName } from './fs-util.ts'
import { derivedNames, diskStem } from './vm-paths.ts'

/** Largest disk capacity accepted: 64 TiB, above VMDK's 62 TB cap. */
export const MAX_CAPACITY = 64 * 1024 ** 4

/**
 * Whether a store entry's name can be a VM's: no hidden name — the store's own
 * files start with "." (`.failover`, the tombstone of a removal), and a glob
 * such as `*` would match them. Listings, counts and usage skip the others.
 */
export function isVmName(name: string): boolean {
  return !name.startsWith('.')
}

/** A VM name is a folder of the store: no hidden name ({@link isVmName}). */
export function checkVmName(vm: string): void {
  if (!isVmName(vm)) throw new ReceiverError('E_BAD_NAME', 'a VM name may not start with "."')
}

/** Longest file name of the store's file systems, bytes (NAME_MAX of ext4, XFS, Btrfs, ZFS). */
const NAME_MAX = 255

/** A name as an error shows it: JSON, its first 48 characters when longer. */
const shown = (name: string): string => JSON.stringify(name.length > 48 ? `${name.slice(0, 48)}…` : name)

/**
 * Every file name the receiver derives from a VM name, each at its longest:
 * the mirror folder `<vm>`, the mirror's `<vm>.vmx` (installed at commit,
 * commit.ts installFiles) and the temporary name it is written under,
 * `<vm>.vmx.tmp-<pid>-<8 hex>` (fs-util.ts writeFileAtomic), and the
 * `<vm>.nvram` of an opened or restored point (holds.ts).
 */
export function vmDerivedNames(vm: string): string[] {
  return [vm, `${vm}.vmx`, `${vm}.nvram`, longestTempName(`${vm}.vmx`)]
}

/** The most bytes a VM name may have: a file name less the most {@link vmDerivedNames} adds (227). */
export const MAX_VM_NAME_BYTES = NAME_MAX - Math.max(...vmDerivedNames('').map((n) => Buffer.byteLength(n)))

/**
 * A VM name from which the receiver derives a file name that does not fit
 * (its `.vmx` replaced at commit, {@link vmDerivedNames}) is refused at
 * VmOpen, before anything is written (SPEC §4.1 lets a receiver refuse such
 * names): before, the VM's folder and state were made and every commit failed
 * on the .vmx's temporary name.
 * @throws ReceiverError E_BAD_NAME
 */
export function checkVmNameFits(vm: string): void {
  const bytes = Buffer.byteLength(vm)
  if (bytes > MAX_VM_NAME_BYTES)
    throw new ReceiverError(
      'E_BAD_NAME',
      `VM name ${shown(vm)} is ${bytes} bytes: the receiver's file names for it are up to ${NAME_MAX - MAX_VM_NAME_BYTES} bytes longer (its mirror's .vmx, written at commit as "<name>.vmx.tmp-<pid>-<8 hex>"), above the ${NAME_MAX} bytes of a file name: rename the VM on the source to at most ${MAX_VM_NAME_BYTES} bytes (UTF-8); nothing was written`,
    )
}

/** The most bytes a configuration file's name may have: it is staged and installed under its temporary name `<name>.tmp-<pid>-<8 hex>` (231). */
export const MAX_FILE_NAME_BYTES = NAME_MAX - Buffer.byteLength(longestTempName(''))

/**
 * Why configuration file `name` would be installed over a file the receiver
 * itself makes in the VM's mirror folder, or undefined when it would not
 * (ignoring case: a store on a case-insensitive file system). The receiver's
 * own names there: `.grainline` (hidden names), each disk's descriptor, flat
 * and seed (`.vmdk`, `.seed`), a seed's journal set aside by a rollback
 * (`<disk>.journal.set-aside-cycle-<N>[-<n>]`, journal-head.ts
 * setAsideJournalPath), and the temporary name of every file it writes by
 * replacement (`<name>.tmp-<pid>-<8 hex>`, fs-util.ts: the mirror's
 * `<vm>.vmx`, the descriptors, the installed files), which start-up recovery
 * deletes. The mirror's `<vm>.vmx` is the installed form of the cycle's .vmx
 * (commit.ts installFiles); restore points and opened points live in
 * `.grainline/points` and outside the mirror folder.
 */
export function receiverOwnedName(name: string): string | undefined {
  if (name.startsWith('.')) return "a hidden name (the mirror's .grainline state folder is one)"
  if (/\.(vmdk|seed)$/i.test(name)) return "the name of a disk file (the mirror's descriptors, flats and seed files end in .vmdk and .seed)"
  if (/\.journal\.set-aside-cycle-/i.test(name)) return "the name a rollback gives a seed's journal it sets aside in the mirror folder (<disk>.journal.set-aside-cycle-<cycle>)"
  if (isTempName(name.toLowerCase())) return 'the temporary name the receiver writes a file under before renaming it into place (<name>.tmp-<pid>-<8 hex>), which it deletes at start-up'
  return undefined
}

/**
 * A configuration file is installed beside the mirror disks: none of the
 * receiver's own names in the mirror folder ({@link receiverOwnedName}), and
 * a name whose temporary name fits in a file name ({@link MAX_FILE_NAME_BYTES}:
 * staged and installed by replacement).
 * @throws ReceiverError E_BAD_NAME
 */
export function checkFileName(name: string, vm?: string): void {
  const owned = receiverOwnedName(name)
  if (owned !== undefined)
    throw new ReceiverError(
      'E_BAD_NAME',
      `configuration file ${shown(name)}${vm === undefined ? '' : ` of VM ${shown(vm)}`} is not allowed: it is ${owned}, and installing it at commit would write over the receiver's own file in the VM's mirror folder. Nothing was staged; rename the file on the source (or the entry of the .vmx naming it)`,
    )
  const bytes = Buffer.byteLength(name)
  if (bytes > MAX_FILE_NAME_BYTES)
    throw new ReceiverError(
      'E_BAD_NAME',
      `file ${shown(name)}${vm === undefined ? '' : ` of VM ${shown(vm)}`} is ${bytes} bytes: it is staged and installed as "<name>.tmp-<pid>-<8 hex>", ${NAME_MAX - MAX_FILE_NAME_BYTES} bytes more, above the ${NAME_MAX} bytes of a file name: rename it on the source to at most ${MAX_FILE_NAME_BYTES} bytes (UTF-8); nothing was written`,
    )
}

/**
 * A VmOpen's configuration files: each name allowed ({@link checkFileName}), and no two names equal ignoring case
 * (`web.vmx` and `WEB.VMX`, or one name twice). On a case-sensitive store both would be staged and installed, but a
 * folder a restore or failover writes to on a case-insensitive file system (CIFS, NFS of a Windows or macOS server),
 * or a copy of the mirror folder to one, holds one of them, whichever is written last: the VM boots from a
 * configuration nobody chose. Two `.vmx` names are also both installed as `<vm>.vmx`.
 * @throws ReceiverError E_BAD_NAME
 */
export function checkFileNames(names: Iterable<string>, vm: string): void {
  const seen = new Map<string, string>()
  for (const name of names) {
    checkFileName(name, vm)
    const key = name.toLowerCase()
    const other = seen.get(key)
    if (other !== undefined)
      throw new ReceiverError(
        'E_BAD_NAME',
        `configuration files ${shown(other)} and ${shown(name)} of VM ${shown(vm)} ${other === name ? 'are one name sent twice' : 'differ only in case'}: a folder on a case-insensitive file system (a restore's or failover's destination, a copy of the mirror) holds only one of them, and the VM would boot from whichever was written last. Nothing was staged; keep one of them on the source (rename or remove the other, and the entry of the .vmx naming it)`,
      )
    seen.set(key, name)
  }
}

/**
 * The form of a disk name the store may hold: no hidden name, nor one of the
 * receiver's own files (a flat, a .vmx, a journal…). A state file's disk
 * names are checked with this alone (state-names.ts): a mirror committed
 * before the length rule of {@link checkDiskName} stays readable.
 * @throws ReceiverError E_BAD_NAME
 */
export function checkDiskNameForm(name: string): void {
  if (name.startsWith('.') || /-flat\.vmdk$/i.test(name) || /\.(vmx|nvram|vmsd|vmxf|journal|seed)$/i.test(name)) {
    throw new ReceiverError('E_BAD_NAME', `disk name ${JSON.stringify(name)} is not allowed`)
  }
}

/**
 * A disk name becomes `<stem>.vmdk`, `<stem>-flat.vmdk`, journals, point
 * files…: none of them may be hidden or another disk's file, and the longest
 * of them (vm-paths.ts derivedNames) must fit in a file name — checked
 * before anything is written: a seed file whose name does not fit, found
 * only once the journal and the state name the disk, left the VM in flight
 * with no way forward (SPEC §4.1 lets a receiver refuse such names).
 * @throws ReceiverError E_BAD_NAME
 */
export function checkDiskName(name: string, vm: string): void {
  checkDiskNameForm(name)
  const stem = diskStem(name)
  const longest = derivedNames(stem).reduce((a, b) => (Buffer.byteLength(b) > Buffer.byteLength(a) ? b : a))
  if (Buffer.byteLength(longest) > NAME_MAX) {
    const extra = Buffer.byteLength(longest) - Buffer.byteLength(stem)
    throw new ReceiverError(
      'E_BAD_NAME',
      `disk ${JSON.stringify(name)} of VM ${vm}: the receiver's file names for it reach ${Buffer.byteLength(longest)} bytes (the ${Buffer.byteLength(stem)} bytes of its name without ".vmdk" and up to ${extra} more), above the ${NAME_MAX} bytes of a file name: rename the disk on the source to at most ${NAME_MAX - extra} bytes before ".vmdk"; nothing was written`,
    )
  }
}

/** @throws ReceiverError E_RANGE above {@link MAX_CAPACITY} */
export function checkCapacity(capacity: number): void {
  if (capacity > MAX_CAPACITY) throw new ReceiverError('E_RANGE', `capacity ${capacity} above the receiver's limit of 64 TiB`)
}

/**
 * The DiskOpen's `cycleId` must be the cycle identity of its own fields and
 * the session's VM: recomputed, not trusted, so that a resume never mixes
 * two frozen sources (SPEC §5.2).
 * @throws ReceiverError E_SCHEMA
 */
export function checkCycleIdentity(vm: string, msg: DiskOpenMessage): void {
  const want = cycleIdentity({ vm, name: msg.name, cycle: msg.cycle, mode: msg.mode, baseCycle: msg.baseCycle, baseGeneration: msg.baseGeneration, source: msg.source, blockSize: msg.blockSize })
  if (msg.cycleId !== want) throw new ReceiverError('E_SCHEMA', 'cycleId is not the cycle identity of the DiskOpen fields (SPEC §5.2)')
}

/** @throws ReceiverError E_RANGE when a trivial check asks for more than the configured prefix */
export function checkTrivialPrefix(prefixBytes: number, maxBytes: number): void {
  if (prefixBytes > maxBytes) throw new ReceiverError('E_RANGE', `trivial check prefix above ${maxBytes} bytes`)
}

/**
 * SPEC §5.9: a BlockMap must fit in one frame of the negotiated size.
 * @throws ReceiverError E_RANGE
 */
export function checkMapRequest(count: number, neg: Pick<Negotiated, 'digest' | 'limits'>): void {
  const bytes = count * DigestLengths[neg.digest] + 256
  if (bytes > neg.limits.maxMessageBytes) throw new ReceiverError('E_RANGE', `a block map of ${count} blocks (${bytes} bytes) exceeds maxMessageBytes ${neg.limits.maxMessageBytes}`)
}
