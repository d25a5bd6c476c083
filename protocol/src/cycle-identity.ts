import { createHash } from 'node:crypto'
import { ProtocolError } from './errors.ts'
import type { DiskOpenMessage } from './messages.ts'

/** The fields that identify one cycle of one disk (SPEC §5.2). */
export interface CycleIdentityFields {
  /** VM name (VmOpen.vm) */
  readonly vm: string
  /** disk name (DiskOpen.name) */
  readonly name: string
  readonly cycle: number
  readonly mode: DiskOpenMessage['mode']
  readonly baseCycle: number
  /** DiskOpen.baseGeneration ("" for a seed) */
  readonly baseGeneration: string
  readonly source: DiskOpenMessage['source']
  /** DiskOpen.blockSize: part of the identity of a resync only (SPEC §5.2) */
  readonly blockSize?: number
}

const DOMAIN = 'grainline.cycle-identity.v2'

/**
 * The cycle identity (SPEC §5.2): lowercase hex SHA-256 (64 characters) over
 *
 *   str("grainline.cycle-identity.v2") • str(vm) • str(name) • u64le(cycle) •
 *   str(mode) • u64le(baseCycle) • str(baseGeneration) • u32le(layers.length) •
 *   for each layer, bottom first: str(file) • str(cid) • str(parentCid) •
 *   str(successor) [• u64le(blockSize) for a resync]
 *
 * with str(s) := u32le(UTF-8 byte length) • UTF-8 bytes. Always SHA-256, not
 * the negotiated digest, so the value does not depend on the connection.
 */
export function cycleIdentity(fields: CycleIdentityFields): string {
  const h = createHash('sha256')
  const u32 = Buffer.alloc(4)
  const u64 = Buffer.alloc(8)
  const str = (s: string): void => {
    const b = Buffer.from(s, 'utf8')
    u32.writeUInt32LE(b.length, 0)
    h.update(u32)
    h.update(b)
  }
  const num = (n: number): void => {
    u64.writeBigUInt64LE(BigInt(n), 0)
    h.update(u64)
  }
  str(DOMAIN)
  str(fields.vm)
  str(fields.name)
  num(fields.cycle)
  str(fields.mode)
  num(fields.baseCycle)
  str(fields.baseGeneration)
  u32.writeUInt32LE(fields.source.layers.length, 0)
  h.update(u32)
  for (const layer of fields.source.layers) {
    str(layer.file)
    str(layer.cid)
    str(layer.parentCid)
  }
  str(fields.source.successor)
  // a resync's extent sequence depends on its block size; seed and incremental identities are unchanged
  if (fields.mode === 'resync') num(fields.blockSize ?? 0)
  return h.digest('hex')
}

/** One disk of a committed cycle: its name (DiskOpen.name) and its cycle identity (DiskOpen.cycleId). */
export interface CommittedDiskIdentity {
  readonly name: string
  readonly cycleId: string
}

const COMMITTED_DOMAIN = 'grainline.committed-cycle.v1'

/**
 * The identity of a committed cycle (SPEC §5.10): lowercase hex SHA-256 (64
 * characters) over
 *
 *   str("grainline.committed-cycle.v1") • u32le(disks.length) •
 *   for each disk in the byte order of its UTF-8 name: str(name) • str(cycleId)
 *
 * with str(s) as in {@link cycleIdentity}. The disks are every disk the cycle
 * committed (every DiskOpen of the cycle); each cycleId already names the VM,
 * the cycle, its mode, base and source layers, so two writers' cycles of one
 * number differ. The receiver records it at commit and reports it in VmState
 * (version 8); the agent computes it from the DiskOpens it sent.
 * @throws ProtocolError E_SCHEMA for two disks of one name (a cycle commits each disk once)
 */
export function committedCycleIdentity(disks: readonly CommittedDiskIdentity[]): string {
  const sorted = disks.map((d) => ({ name: Buffer.from(d.name, 'utf8'), cycleId: Buffer.from(d.cycleId, 'utf8') })).sort((a, b) => Buffer.compare(a.name, b.name))
  for (let i = 1; i < sorted.length; i++) {
    const name = (sorted[i] as { name: Buffer }).name
    if (Buffer.compare((sorted[i - 1] as { name: Buffer }).name, name) === 0)
      throw new ProtocolError('E_SCHEMA', `disk ${name.toString('utf8')} is named twice in one committed cycle`, { field: 'name' })
  }
  const h = createHash('sha256')
  const u32 = Buffer.alloc(4)
  const bytes = (b: Buffer): void => {
    u32.writeUInt32LE(b.length, 0)
    h.update(u32)
    h.update(b)
  }
  bytes(Buffer.from(COMMITTED_DOMAIN, 'utf8'))
  u32.writeUInt32LE(sorted.length, 0)
  h.update(u32)
  for (const d of sorted) {
    bytes(d.name)
    bytes(d.cycleId)
  }
  return h.digest('hex')
}
