/**
 * Verification of a Ceph mirror's committed snapshots (split from
 * ceph-mirror.ts along the seam between a cycle's writes and the checks
 * that read back what a cycle committed): the block map of a resync
 * (SPEC §5.9), block checks (SPEC §5.6 `--verify changed`, `--scrub`),
 * trivial checks and certifies. Each records its verdict in the state
 * object through the mirror (under its lease, through its session client);
 * a failed check marks the disk diverged and drops its kept block map.
 */
import type { Logger } from 'pino'
import type { DigestAlgorithm } from '@grainline/protocol'
import { ReceiverError } from '../../errors.ts'
import type { CephLock } from './ceph-lock.ts'
import type { CephDiskRecord, CephNames, CephVmState } from './ceph-state.ts'
import type { CephTarget } from './rbd-cli.ts'
import { digestImage } from './ceph-read.ts'
import { CephBlockMap, checkSnapshotBlocks, type CephBlockCheck } from './ceph-blocks.ts'
import { dropCephKeptMap } from './ceph-kept-map.ts'

/** What the checks need of a locked mirror (CephVmMirror). */
export interface CephCheckedMirror {
  readonly vm: string
  readonly names: CephNames
  readonly target: CephTarget
  readonly lock: CephLock
  readonly log: Logger
  readonly state: CephVmState
  /** write the next state object (the lease checked first) */
  write(next: CephVmState): Promise<void>
}

/** A trivial check's or certify's request (SPEC §5.6). */
export interface CephVerifyRequest {
  kind: 'trivial' | 'certify'
  algorithm: DigestAlgorithm
  digest: Uint8Array
  prefixBytes?: number
  size?: number
}

/**
 * The block map of a resync disk in flight (SPEC §5.9): digests of its
 * base snapshot (the committed cycle), which the cycle never writes.
 * @throws ReceiverError E_INTERNAL (not a resync in flight), E_IO
 */
export async function openCephBlockMap(m: CephCheckedMirror, name: string, blockSize: number): Promise<CephBlockMap> {
  const inf = m.state.inflight?.disks[name]
  if (inf === undefined || inf.mode !== 'resync' || inf.baseSnap === null) throw new ReceiverError('E_INTERNAL', `disk ${name} of VM ${m.vm} has no resync in flight`)
  const rec = m.state.disks[name]
  const kept =
    rec?.kept !== undefined && rec.image === inf.image && rec.snap === inf.baseSnap ? { object: m.names.keptMap(name), rec, blockSize: rec.kept.blockSize, algorithm: rec.kept.algorithm } : undefined
  return await CephBlockMap.open(m.target, inf.image, inf.baseSnap, inf.capacity, blockSize, inf.algorithm, kept, (why) =>
    m.log.info({ vm: m.vm, disk: name, why }, 'no kept block map: the resync reads the whole snapshot'),
  )
}

/** A disk record without its kept block map (a failed check: the map is dropped with it; ceph-kept-map.ts). */
function withoutKept(m: CephCheckedMirror, rec: CephDiskRecord): CephDiskRecord {
  if (rec.kept === undefined) return rec
  const { kept: _dropped, ...rest } = rec
  dropCephKeptMap(m.target, m.names.keptMap(rec.name), m.lock).catch(() => {})
  return rest
}

/**
 * SPEC §5.6 BlockCheck (`--verify changed`, `--scrub`): read the listed
 * blocks of the committed snapshot back through librbd, answer the ones
 * whose digests differ and record the verdict (a mismatch marks the disk
 * diverged: the next cycle must resync or seed it).
 * @throws ReceiverError E_RANGE (a block beyond the disk), E_IO
 */
export async function checkCephBlocks(m: CephCheckedMirror, name: string, req: CephBlockCheck, signal?: AbortSignal): Promise<{ ok: boolean; mismatched: Uint8Array; bytes: number }> {
  const rec = m.state.disks[name]
  if (rec === undefined) throw new ReceiverError('E_INTERNAL', `disk ${name} has no committed record`)
  const r = await checkSnapshotBlocks(m.target, rec.image, rec.snap, rec.capacity, req, signal)
  const at = new Date().toISOString()
  const next: CephDiskRecord = {
    ...(r.ok ? rec : withoutKept(m, rec)),
    blocks: { ok: r.ok, at },
    ...(r.ok ? {} : { diverged: { reason: `block check of cycle ${rec.cycle} found ${r.mismatched.length / 8} differing blocks`, at } }),
  }
  if (!r.ok) m.log.warn({ vm: m.vm, disk: name, cycle: rec.cycle, blocks: r.mismatched.length / 8 }, 'mirror blocks differ from the source: marked diverged, the next cycle must resync it')
  await m.write({ ...m.state, disks: { ...m.state.disks, [name]: next } })
  return r
}

/**
 * SPEC §5.6 on an image: digest the committed snapshot (`rbd export`,
 * streamed) — a prefix for a trivial check, all of it for a certify — and
 * record the verdict (a failure marks the disk diverged).
 */
export async function verifyCephDisk(m: CephCheckedMirror, name: string, req: CephVerifyRequest, signal?: AbortSignal): Promise<{ ok: boolean; size: number; digest: Uint8Array; bytes: number }> {
  const rec = m.state.disks[name]
  if (rec === undefined) throw new ReceiverError('E_INTERNAL', `disk ${name} has no committed record`)
  const limit = req.kind === 'trivial' ? Math.min(req.prefixBytes ?? 0, rec.capacity) : rec.capacity
  const d = await digestImage(m.target, `${rec.image}@${rec.snap}`, req.algorithm, limit, signal)
  const same = d.digest.length === req.digest.length && Buffer.from(d.digest).equals(Buffer.from(req.digest))
  const ok = req.kind === 'trivial' ? rec.capacity === req.size && (req.prefixBytes ?? 0) <= rec.capacity && same : same
  const at = new Date().toISOString()
  const check = { ok, at, algorithm: req.algorithm, digest: Buffer.from(d.digest).toString('hex'), bytes: d.bytes }
  const next: CephDiskRecord = { ...(ok ? rec : withoutKept(m, rec)), [req.kind]: check, ...(ok ? {} : { diverged: { reason: `${req.kind} of cycle ${rec.cycle} failed`, at } }) }
  if (!ok) m.log.warn({ vm: m.vm, disk: name, cycle: rec.cycle, check: req.kind }, 'mirror differs from its source: marked diverged, the next cycle must resync or seed it')
  await m.write({ ...m.state, disks: { ...m.state.disks, [name]: next } })
  return { ok, size: rec.capacity, digest: d.digest, bytes: d.bytes }
}
