import { createHash } from 'node:crypto'
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
