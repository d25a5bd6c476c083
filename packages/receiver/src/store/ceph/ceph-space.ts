/**
 * Room and usage on the Ceph store: the room rule of a DiskOpen (SPEC §7
 * `E_NO_SPACE`, `E_QUOTA` — the folder store's rule, open-decision.ts
 * `roomFailure`), the bytes a token's mirrors take, and the bytes of each
 * restore point (retention's `maxBytes`, `points`, `status`).
 *
 * - **Free space** is the pool's MAX AVAIL (`ceph df detail`): what the
 *   fullest OSD under the pool's CRUSH rule takes before the full ratio,
 *   divided by the pool's replication — and, when the pool has a byte quota
 *   (`ceph osd pool set-quota`), at most that quota minus what the pool
 *   stores (MAX AVAIL does not count a quota; the OSDs refuse writes past it).
 * - **Used bytes** are `rbd du`'s used bytes of images and snapshots: the
 *   allocated figure (what the folder store counts of its files), per RADOS
 *   object (4 MiB by default) where the image has fast-diff (the default
 *   features), exact extents otherwise. Provisioned sizes are not counted: a
 *   thin image of 1 TiB holding 10 GiB takes 10 GiB.
 * - **A point's bytes** are the used bytes of the snapshot that follows the
 *   point's own in its image: `rbd du` measures a snapshot against the one
 *   before it, so that figure is what the cycle after the point wrote — the
 *   objects whose old contents only the point's snapshot keeps (the twin of
 *   a folder store's reverse increment). For the oldest point it is exactly
 *   what dropping it frees; retention drops oldest first.
 */
import type { Logger } from 'pino'
import { ReceiverError } from '../../errors.ts'
import { mayAdd, roomFailure, type DiskOpenRequest } from '../../open-decision.ts'
import type { RetainedPoint } from '../../retention.ts'
import { CephNames, readCephState, type CephPoint } from './ceph-state.ts'
import { CephCommandError, runCeph, type CephTarget } from './rbd-cli.ts'

/** What `ceph df detail` says of one pool. */
export interface CephPoolDf {
  /** MAX AVAIL, bytes */
  readonly maxAvail: number
  /** bytes stored (before replication) */
  readonly stored: number
  /** the pool's byte quota, 0: none */
  readonly quotaBytes: number
}

const count = (v: unknown, what: string): number => {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new ReceiverError('E_IO', `Ceph reported ${what} as ${JSON.stringify(v)}, not a byte count`)
  return Math.min(v, Number.MAX_SAFE_INTEGER)
}

/**
 * Parse `ceph df detail --format json` for `pool` (pure). Undefined when the
 * document has no figures for it: the managers report `ceph df` (without a
 * running ceph-mgr, or before its first report after a restart, the
 * cluster's totals are 0 and the pools absent) — free space unknown, not 0.
 * @throws ReceiverError E_IO (not the expected document)
 */
export function parseCephDf(json: string, pool: string): CephPoolDf | undefined {
  let doc: { pools?: unknown; stats?: { total_bytes?: unknown } }
  try {
    doc = JSON.parse(json) as { pools?: unknown; stats?: { total_bytes?: unknown } }
  } catch (err) {
    throw new ReceiverError('E_IO', `ceph df did not print JSON: ${(err as Error).message}`)
  }
  if (!Array.isArray(doc?.pools)) throw new ReceiverError('E_IO', 'ceph df printed no pools')
  const p = (doc.pools as Array<{ name?: unknown; stats?: Record<string, unknown> }>).find((x) => x?.name === pool)
  if (p?.stats === undefined || doc.stats?.total_bytes === 0) return undefined
  return {
    maxAvail: count(p.stats['max_avail'], `MAX AVAIL of pool ${pool}`),
    stored: count(p.stats['stored'] ?? p.stats['bytes_used'] ?? 0, `the bytes stored in pool ${pool}`),
    quotaBytes: count(p.stats['quota_bytes'] ?? 0, `the byte quota of pool ${pool}`),
  }
}

/** Free bytes of a pool: MAX AVAIL, within its byte quota when it has one (pure). */
export function poolFreeBytes(df: CephPoolDf): number {
  return df.quotaBytes > 0 ? Math.max(0, Math.min(df.maxAvail, df.quotaBytes - df.stored)) : df.maxAvail
}

/** The free bytes of the store's pool (`ceph df detail`); undefined when no manager reports them. */
export async function cephFreeBytes(t: CephTarget): Promise<number | undefined> {
  const df = parseCephDf((await runCeph(t, 'ceph', ['df', 'detail', '--format', 'json'])).toString('utf8'), t.pool)
  return df === undefined ? undefined : poolFreeBytes(df)
}

/**
 * Whether a pool is full (pure): `ceph osd pool ls detail --format json`
 * flags it `full_quota` once its quota is reached and `full` once its OSDs
 * are; Ceph then pauses every write to it (they neither fail nor finish).
 * @throws ReceiverError E_IO (not a pool listing)
 */
export function parsePoolFull(json: string, pool: string): boolean {
  let doc: unknown
  try {
    doc = JSON.parse(json)
  } catch {
    throw new ReceiverError('E_IO', 'ceph osd pool ls detail printed no JSON')
  }
  if (!Array.isArray(doc)) throw new ReceiverError('E_IO', 'ceph osd pool ls detail printed no list of pools')
  const p = (doc as Array<{ pool_name?: unknown; flags_names?: unknown }>).find((x) => x?.pool_name === pool)
  const flags = typeof p?.flags_names === 'string' ? p.flags_names.split(',') : []
  return flags.includes('full') || flags.includes('full_quota')
}

/** Whether the store's pool is full now (one `ceph osd pool ls detail`: the monitors answer, no manager needed). */
export async function cephPoolFull(t: CephTarget): Promise<boolean> {
  return parsePoolFull((await runCeph(t, 'ceph', ['osd', 'pool', 'ls', 'detail', '--format', 'json'])).toString('utf8'), t.pool)
}

/** The E_NO_SPACE of a full pool, naming what to do. */
export function poolFullError(t: CephTarget, what: string): ReceiverError {
  return new ReceiverError(
    'E_NO_SPACE',
    `Ceph pool ${t.pool} is full (its quota reached, or its OSDs full) while ${what}: free space in the pool or raise its quota (ceph osd pool set-quota); the cycle then resumes from its last durable batch`,
  )
}

/** An operation that writes to the pool and has waited this long makes its caller read the pool's flags (a full pool pauses writes). */
export const STALL_MS = 5000

/**
 * Wait for `op`, a write to the pool (a batch, a flush, opening an image for
 * writing, taking a lease): Ceph pauses writes to a full pool — they neither
 * fail nor finish — so once `op` has waited {@link STALL_MS}, the pool's
 * flags are read every STALL_MS, and a full pool rejects with E_NO_SPACE
 * (`onFull` is told first: it kills what waits in the cluster).
 */
export async function unlessPoolFull<T>(t: CephTarget, op: Promise<T>, what: string, onFull?: (err: ReceiverError) => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  let done = false
  const full = new Promise<never>((_resolve, reject) => {
    const tick = async (): Promise<void> => {
      if (done) return
      if (await cephPoolFull(t).catch(() => false)) {
        const err = poolFullError(t, what)
        if (!done) onFull?.(err)
        reject(err)
        return
      }
      if (!done) timer = setTimeout(() => void tick(), STALL_MS)
    }
    timer = setTimeout(() => void tick(), STALL_MS)
  })
  full.catch(() => {})
  try {
    return await Promise.race([op, full])
  } finally {
    done = true
    if (timer !== undefined) clearTimeout(timer)
  }
}

/** One line of `rbd du`: an image's head (`snapshot` null) or one of its snapshots. */
export interface RbdUsage {
  readonly image: string
  readonly snapshot: string | null
  /** the snapshot's id (creation order); -1 for the head */
  readonly snapshotId: number
  /** bytes used: a snapshot's against the snapshot before it, the head's against the last snapshot */
  readonly used: number
}

/**
 * Parse `rbd du --format json` (pure).
 * @throws ReceiverError E_IO (not the expected document)
 */
export function parseRbdDu(json: string): RbdUsage[] {
  let doc: { images?: unknown }
  try {
    doc = JSON.parse(json) as { images?: unknown }
  } catch (err) {
    throw new ReceiverError('E_IO', `rbd du did not print JSON: ${(err as Error).message}`)
  }
  if (!Array.isArray(doc?.images)) throw new ReceiverError('E_IO', 'rbd du printed no images')
  return (doc.images as Array<Record<string, unknown>>).map((e) => {
    if (typeof e?.['name'] !== 'string') throw new ReceiverError('E_IO', 'rbd du printed an image without a name')
    const snap = typeof e['snapshot'] === 'string' ? e['snapshot'] : null
    return { image: e['name'], snapshot: snap, snapshotId: snap === null ? -1 : count(e['snapshot_id'], 'a snapshot id'), used: count(e['used_size'], `the used size of ${e['name']}`) }
  })
}

/** `rbd du` of the pool, or of the named images (an image gone meanwhile counts nothing). Retried once: a snapshot removed while it ran fails it. */
export async function rbdDu(t: CephTarget, images?: readonly string[]): Promise<RbdUsage[]> {
  const one = async (spec: string[]): Promise<RbdUsage[]> => {
    for (let attempt = 0; ; attempt++) {
      try {
        return parseRbdDu((await runCeph(t, 'rbd', ['du', '--format', 'json', ...spec])).toString('utf8'))
      } catch (err) {
        if (err instanceof CephCommandError && err.notFound && spec.length === 1 && spec[0]?.includes('/') === true) return []
        if (!(err instanceof CephCommandError) || attempt > 0) throw err
      }
    }
  }
  if (images === undefined) return await one(['-p', t.pool])
  const out: RbdUsage[] = []
  for (const img of new Set(images)) out.push(...(await one([`${t.pool}/${img}`])))
  return out
}

/**
 * The bytes of each point's disks (cycle → disk → bytes): the used bytes of
 * the snapshot that follows the point's in its image, or of the head when
 * none does; 0 when the snapshot is not in `usage` (pure). An image that is
 * no disk's head any more (`heads`: the images the VM's disks are written
 * in; a re-seed replaced the old one) lives on for its points alone: its
 * newest point counts the rest of the image (every snapshot's bytes and the
 * head's, less what its older points count), as the folder store's base
 * point counts its whole flat: the points of the image sum to the image,
 * and once it is the last of them, dropping it frees what it counts.
 */
export function pointBytes(points: readonly CephPoint[], usage: readonly RbdUsage[], heads?: ReadonlySet<string>): Map<number, Record<string, number>> {
  const byImage = new Map<string, RbdUsage[]>()
  for (const u of usage) byImage.set(u.image, [...(byImage.get(u.image) ?? []), u])
  for (const list of byImage.values()) list.sort((a, b) => (a.snapshot === null ? 1 : b.snapshot === null ? -1 : a.snapshotId - b.snapshotId))
  const out = new Map<number, Record<string, number>>()
  for (const p of points) {
    const disks: Record<string, number> = {}
    for (const [name, d] of Object.entries(p.disks)) {
      const list = byImage.get(d.image) ?? []
      const i = list.findIndex((u) => u.snapshot === d.snap)
      const newest = i >= 0 && list.slice(i + 1).every((u) => u.snapshot === null)
      if (i >= 0 && newest && heads !== undefined && !heads.has(d.image)) {
        // the whole image, less what its other points count already (what the cycle after each wrote): the points' sum is the image
        const others = new Set(points.flatMap((q) => Object.values(q.disks).flatMap((x) => (x.image === d.image && x.snap !== d.snap ? [x.snap] : []))))
        let counted = 0
        for (const s of others) {
          const j = list.findIndex((u) => u.snapshot === s)
          if (j >= 0) counted += list[j + 1]?.used ?? 0
        }
        disks[name] = Math.max(0, list.reduce((n, u) => n + u.used, 0) - counted)
      } else disks[name] = i < 0 ? 0 : (list[i + 1]?.used ?? 0)
    }
    out.set(p.cycle, disks)
  }
  return out
}

const sum = (r: Readonly<Record<string, number>> | undefined): number => Object.values(r ?? {}).reduce((n, b) => n + b, 0)

/** The points as retention sees them; their bytes measured (`rbd du` of their images) only when `measure` (a `maxBytes` rule); `heads` as {@link pointBytes}. */
export async function retainedPoints(t: CephTarget, points: readonly CephPoint[], measure: boolean, heads?: ReadonlySet<string>): Promise<RetainedPoint[]> {
  const bytes = measure
    ? pointBytes(
        points,
        await rbdDu(
          t,
          points.flatMap((p) => Object.values(p.disks).map((d) => d.image)),
        ),
        heads,
      )
    : new Map<number, Record<string, number>>()
  return points.map((p) => ({ cycle: p.cycle, committedAt: p.committedAt, bytes: sum(bytes.get(p.cycle)) }))
}

/** The VM key of a store image (`gl.<vmkey>.…` mirrors, `glo.<vmkey>.…` clones of `points open`), undefined for any other image. */
export function imageVmKey(image: string): string | undefined {
  return /^glo?\.([0-9a-f]{24})\./.exec(image)?.[1]
}

/**
 * VM names by state object (`conf`, pool, object → VM): a state object's
 * name is a hash of its VM's, so once read (and checked to be that VM's)
 * the name never changes; kept so that a quota's usage reads each VM's
 * state once per process, not at every DiskOpen.
 */
const vmNames = new Map<string, { vm: string; seenAt: number }>()
const VM_NAMES_MAX = 100_000

/** How long a state object read or checked is taken to exist without asking again (ceph-vm-count.ts at its limit). Tests shorten it. */
export const vmSeen = {
  /** @default 1 min */
  ms: 60_000,
}

const vmNameId = (t: CephTarget, key: string): string => `${t.conf ?? ''}\u0000${t.pool}\u0000grainline.vm.${key}`

/** The VM whose state object is `grainline.vm.<key>` (remembered once read), undefined when there is none or it is not that VM's. */
export async function vmOfKey(t: CephTarget, key: string): Promise<string | undefined> {
  const object = `grainline.vm.${key}`
  const id = vmNameId(t, key)
  const known = vmNames.get(id)
  if (known !== undefined) return known.vm
  // a state object that is unreadable or not its VM's: its images belong to no VM a token covers
  const s = await readCephState(t, object).catch(() => undefined)
  if (s === undefined || new CephNames(s.vm).state !== object) return undefined
  if (vmNames.size >= VM_NAMES_MAX) vmNames.clear()
  vmNames.set(id, { vm: s.vm, seenAt: Date.now() })
  return s.vm
}

/** Whether `grainline.vm.<key>` was last read or checked more than `vmSeen.ms` ago (so may be gone since); false when not remembered. */
export function vmKeyStale(t: CephTarget, key: string, now = Date.now()): boolean {
  const known = vmNames.get(vmNameId(t, key))
  return known !== undefined && now - known.seenAt >= vmSeen.ms
}

/** Record that `grainline.vm.<key>` was found to exist just now. */
export function vmKeySeen(t: CephTarget, key: string, now = Date.now()): void {
  const known = vmNames.get(vmNameId(t, key))
  if (known !== undefined) known.seenAt = now
}

/** Forget the name remembered for a state object found gone (ceph-vm-count.ts). */
export function forgetVmKey(t: CephTarget, key: string): void {
  vmNames.delete(vmNameId(t, key))
}

/**
 * Bytes used in the pool by the VMs `covers` accepts: `rbd du` used bytes of
 * their images and snapshots (and of their `points open` clones). Images
 * whose VM has no state object are nobody's and not counted.
 */
export async function cephMirrorsUsage(t: CephTarget, covers: (vm: string) => boolean): Promise<number> {
  const usage = await rbdDu(t)
  const keys = new Map<string, boolean>()
  for (const k of new Set(usage.map((u) => imageVmKey(u.image)))) {
    if (k === undefined) continue
    const vm = await vmOfKey(t, k)
    keys.set(k, vm !== undefined && covers(vm))
  }
  return usage.reduce((n, u) => n + (keys.get(imageVmKey(u.image) ?? '') === true ? u.used : 0), 0)
}

/** A token's quota: bytes, and which VMs' mirrors count towards it. */
export interface CephQuota {
  readonly bytes: number
  readonly covers: (vm: string) => boolean
}

/**
 * The room rule of a fresh DiskOpen on Ceph, as on the folder store: a
 * capacity increase must fit in the pool's free space (measured only then),
 * and the token's mirrors plus what this apply may add (a seed: its
 * capacity; an incremental or resync: its growth) must stay within its
 * quota (measured only when the token has one). When no manager reports the
 * pool's free space the free-space rule is skipped, with a warning in `log`.
 * A pool flagged full (`full_quota`, `full`) refuses every fresh DiskOpen.
 * @throws ReceiverError E_NO_SPACE, E_QUOTA (both end the session, SPEC §7), E_IO
 */
export async function checkCephRoom(
  t: CephTarget,
  vm: string,
  req: Pick<DiskOpenRequest, 'name' | 'mode' | 'capacity'>,
  committedCapacity: number,
  quota: CephQuota | undefined,
  log?: Logger,
): Promise<void> {
  // a full pool pauses writes: the state object naming this disk could not even be written
  if (await cephPoolFull(t)) throw poolFullError(t, `opening disk ${req.name} of VM ${vm}`)
  const growth = req.capacity - committedCapacity
  if (growth <= 0 && quota === undefined) return
  // the rule reads the free space only for a capacity increase
  const free = growth > 0 ? await cephFreeBytes(t) : undefined
  if (growth > 0 && free === undefined) log?.warn({ vm, disk: req.name, pool: t.pool }, 'free space of the pool unknown (no Ceph manager reports ceph df): not checked before this disk grows')
  const space = {
    freeBytes: free ?? Number.MAX_SAFE_INTEGER,
    quotaBytes: quota?.bytes,
    usedBytes: quota === undefined ? 0 : await cephMirrorsUsage(t, quota.covers),
    // the other open applies of the token are not counted on Ceph (docs/CEPH.md "A token's quota")
    reservedBytes: 0,
  }
  // an image is taken as allocated up to its committed capacity: only the growth counts — not bounded by the
  // totals an incremental announces, which only the folder store holds an apply to (disk-apply.ts accept)
  const adds = mayAdd({ mode: req.mode, capacity: req.capacity }, { flatAllocated: committedCapacity })
  const fail = roomFailure(vm, req, committedCapacity, adds, space, { store: `Ceph pool ${t.pool}`, remedy: 'free space in the pool (or raise its quota)' })
  if (fail !== undefined) throw new ReceiverError(fail.code, fail.message)
}
