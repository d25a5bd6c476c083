/**
 * Offline seeding into a Ceph store: a VM seeded into a folder store next to
 * the proxy (README "Seeding offline"), carried to the DR site, becomes a
 * mirror in the pool with the same lineage — the committed cycle, each
 * disk's generation, source identity and cycle digest — so the agent's next
 * cycle to a receiver on the pool is an ordinary incremental
 * (`grainline mirror import --from DIR --store ceph:POOL --vm V`).
 *
 * Per disk: `rbd import` of the flat (runs of zeros are not written: the
 * image stays thin), grown to the capacity, the snapshot `c<cycle>-<gen>`
 * (the committed point), then the snapshot read back (`rbd export`) and its
 * sha256 compared with the flat's (`E_VERIFY` otherwise).
 *
 * Crash safety is a seed cycle's: under the VM's lease the state object first
 * records the import as a cycle in flight naming every image, before any is
 * created; the state naming the committed disks is written last (the commit
 * point). Killed in between, the VM has a cycle in flight that `grainline
 * mirror rollback` (or an agent's Rollback) removes with its images.
 * Restore points of the folder store are not imported (the mirror only).
 */
import { createHash, randomBytes } from 'node:crypto'
import type { FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { validateName } from '@grainline/protocol'
import { ReceiverError } from '../../errors.ts'
import { readVmState } from '../../state-file.ts'
import { CONFIG_FILE_MAX_BYTES, readStoreFile } from '../../store-fs.ts'
import { VmPaths } from '../../vm-paths.ts'
import { adminHolder, CEPH_ADMIN_LOCK_WAIT_MS } from './ceph-points.ts'
import { CephVmMirror, snapName } from './ceph-mirror.ts'
import { digestImage } from './ceph-read.ts'
import { markVmx } from '../../mirror-vmx.ts'
import type { CephDiskRecord, CephInflightDisk } from './ceph-state.ts'
import { closeImportFlats, openImportSource } from './import-source.ts'
import { PASSED_FD_PATH, runCeph, type CephTarget } from './rbd-cli.ts'

/** One imported disk. */
export interface CephImportedDisk {
  readonly name: string
  /** `POOL/IMAGE@SNAP` of the committed point */
  readonly snapshot: string
  readonly capacity: number
  /** sha256 of the disk (the flat, zero-padded to the capacity), equal to the snapshot's */
  readonly sha256: string
}

/** sha256 of the flat read through its checked handle (never by path), zero-padded to the capacity. */
async function sha256File(fh: FileHandle, capacity: number): Promise<string> {
  const h = createHash('sha256')
  let n = 0
  const buf = Buffer.alloc(1 << 20)
  while (n < capacity) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, capacity - n), n)
    if (bytesRead === 0) break
    h.update(buf.subarray(0, bytesRead))
    n += bytesRead
  }
  const zeros = Buffer.alloc(1 << 20)
  while (n < capacity) {
    const take = Math.min(zeros.length, capacity - n)
    h.update(take === zeros.length ? zeros : zeros.subarray(0, take))
    n += take
  }
  return h.digest('hex')
}

/**
 * Import VM `vm` of the folder store `storeDir` into the pool (see the
 * module comment). The folder store must not be written meanwhile (stop its
 * receiver, as for a copy of the store).
 * @throws ReceiverError E_NOT_FOUND (no committed mirror in the folder), E_BUSY (a cycle in flight in the folder, or the VM's lease held), E_CONFIG (the pool holds the VM already), E_HELD, E_MIRROR_MODIFIED, E_DIVERGED (the folder mirror is not its last commit's: resync it there first, import-source.ts), E_VERIFY, E_STATE, E_IO
 */
export async function cephImportVm(t: CephTarget, storeDir: string, vm: string, opts: { logger: Logger }): Promise<{ vm: string; cycle: number; disks: CephImportedDisk[] }> {
  validateName(vm, 'VM name')
  const paths = new VmPaths(storeDir, vm)
  const src = await readVmState(paths)
  if (src === undefined || src.committedCycle === 0) throw new ReceiverError('E_NOT_FOUND', `no committed mirror of VM ${vm} in ${storeDir}`)
  if (src.inflight !== null || src.pending !== null) {
    throw new ReceiverError('E_BUSY', `VM ${vm} in ${storeDir} has cycle ${src.inflight?.cycle ?? src.pending?.cycle} unfinished: let its receiver finish or roll it back first`)
  }
  // before anything is written: each mirror as its last commit wrote it, not held or diverged, its flat opened once (import-source.ts)
  for (const r of Object.values(src.disks)) validateName(r.name, 'disk name')
  const flats = await openImportSource(paths, src, storeDir)
  const m = await CephVmMirror.acquireWait(t, vm, opts.logger, adminHolder('mirror import'), CEPH_ADMIN_LOCK_WAIT_MS).catch(async (err: unknown) => {
    await closeImportFlats(flats)
    throw err
  })
  try {
    const s = m.state
    if (s.committedCycle !== 0 || s.inflight !== null || Object.keys(s.disks).length > 0) {
      throw new ReceiverError('E_CONFIG', `VM ${vm} has a mirror in Ceph pool ${t.pool} already (cycle ${s.inflight?.cycle ?? s.committedCycle}): import only a VM the pool does not hold`)
    }
    const cycle = src.committedCycle
    const records = flats.map((f) => f.record)
    const inflight: Record<string, CephInflightDisk> = {}
    for (const r of records) {
      inflight[r.name] = {
        name: r.name,
        cycleId: r.cycleId,
        mode: 'seed',
        capacity: r.capacity,
        algorithm: r.cycleDigest.algorithm,
        source: r.source,
        ddb: r.ddb,
        image: m.names.image(r.name, randomBytes(4).toString('hex')),
        baseSnap: null,
        log: m.names.log(r.name),
      }
    }
    // order: the state names every image before one is created (a crash leaves a cycle in flight, rolled back with its images)
    await m.write({ ...s, inflight: { cycle, startedAt: new Date().toISOString(), disks: inflight } })
    const disks: Record<string, CephDiskRecord> = {}
    const out: CephImportedDisk[] = []
    for (const { record: r, fh, size } of flats) {
      const info = inflight[r.name] as CephInflightDisk
      const img = `${t.pool}/${info.image}`
      m.checkLease()
      // the bytes go through `rbd import` (a new image the state names already: not fenced, docs/CEPH.md); the rest
      // through the session client, fenced with the lease. It reads the checked flat through our handle, never the
      // path (a link put there since would be followed)
      await runCeph(t, 'rbd', ['import', '--no-progress', PASSED_FD_PATH, img], undefined, { fd: fh.fd })
      if (size < r.capacity) await m.lock.growImage(info.image, r.capacity)
      const generation = r.generation ?? src.generation ?? ''
      const snap = snapName(cycle, generation)
      await m.lock.snap('create', info.image, snap)
      const want = await sha256File(fh, r.capacity)
      const got = Buffer.from((await digestImage(t, `${info.image}@${snap}`, 'sha256', r.capacity)).digest).toString('hex')
      if (got !== want)
        throw new ReceiverError('E_VERIFY', `disk ${r.name} of VM ${vm}: ${img}@${snap} reads sha256 ${got}, the flat ${want}: the import is left in flight, roll it back (grainline mirror rollback)`)
      disks[r.name] = {
        name: r.name,
        image: info.image,
        cycle: r.cycle,
        snap,
        generation,
        capacity: r.capacity,
        source: r.source,
        ddb: r.ddb,
        digest: r.cycleDigest.digest,
        committedAt: r.committedAt,
        ...(r.trivial === undefined ? {} : { trivial: { ok: r.trivial.ok, at: r.trivial.at } }),
        ...(r.certify === undefined ? {} : { certify: { ok: r.certify.ok, at: r.certify.at } }),
        ...(r.diverged === undefined ? {} : { diverged: r.diverged }),
      }
      out.push({ name: r.name, snapshot: `${img}@${snap}`, capacity: r.capacity, sha256: got })
      opts.logger.info({ vm, disk: r.name, snapshot: `${img}@${snap}`, bytes: r.capacity }, 'disk imported into Ceph')
    }
    const files: Record<string, string> = {}
    for (const [name, transform] of [
      [`${vm}.vmx`, (b: Buffer) => Buffer.from(markVmx(b.toString('utf8'), '', src.displaySuffix))],
      [`${vm}.nvram`, (b: Buffer) => b],
    ] as const) {
      const data = await readStoreFile(join(paths.dir, name), CONFIG_FILE_MAX_BYTES).catch((err: unknown) => {
        if ((err as { code?: unknown }).code === 'ENOENT') return undefined
        throw err
      })
      if (data !== undefined) files[name] = transform(data).toString('base64')
    }
    // the commit point: the state names the committed disks; the in-flight record goes
    await m.write({
      ...m.state,
      committedCycle: cycle,
      committedAt: src.committedAt,
      generation: src.generation ?? null,
      compat: src.compat,
      disks,
      inflight: null,
      points: [],
      files,
      pending: null,
    })
    opts.logger.info({ vm, cycle, disks: out.length }, 'VM imported into Ceph from a folder store')
    return { vm, cycle, disks: out }
  } finally {
    m.release()
    await closeImportFlats(flats)
  }
}
