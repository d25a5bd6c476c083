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

/** A configuration file is installed beside the mirror disks: no hidden name, no disk or seed file. */
export function checkFileName(name: string): void {
  if (name.startsWith('.') || /\.(vmdk|seed)$/i.test(name)) throw new ReceiverError('E_BAD_NAME', `file name ${JSON.stringify(name)} is not allowed`)
}

/** Longest file name of the store's file systems, bytes (NAME_MAX of ext4, XFS, Btrfs, ZFS). */
const NAME_MAX = 255

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
