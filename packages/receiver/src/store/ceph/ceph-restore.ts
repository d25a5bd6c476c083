/**
 * `grainline restore --store ceph:POOL`: a point (an RBD snapshot of every
 * disk) as a standalone VM folder, like the folder store's restore: per disk
 * a `createType="vmfs"` descriptor and a thin flat (`rbd export` of the
 * snapshot to the file: zero runs stay holes), the VM's .vmx rewritten so it
 * boots from these files only (mirror-vmx.ts, display name marked with the
 * point) and its other configuration files (.nvram …) from the state object.
 *
 * Verification: the Ceph store records no whole-disk digest of a point, so
 * each flat written is digested and compared with the snapshot read again
 * through `rbd export` (`verified: 'snapshot'`): the folder equals the point
 * as the cluster holds it, or the restore fails with E_VERIFY. Snapshots are
 * immutable, so no lock is taken; a point removed by retention meanwhile
 * fails the restore with a typed error naming it.
 *
 * The state object comes from the pool: every name it gives is checked
 * before it becomes a path (a hostile pool cannot write outside `toDir`).
 */
import { cephPointFiles } from './ceph-point-config.ts'
import { createReadStream } from 'node:fs'
import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { createDigest, initDigests, validateName } from '@grainline/protocol'
import { ReceiverError } from '../../errors.ts'
import { fsyncFile, mkdirDurable, writeFileAtomic, writeNewFileDurable } from '../../fs-util.ts'
import { mirrorDescriptor, newCid } from '../../mirror-descriptor.ts'
import { DEFAULT_DISPLAY_SUFFIX, markVmx, mirrorVmx, type DroppedReference } from '../../mirror-vmx.ts'
import { diskStem, generatedNames } from '../../vm-paths.ts'
import { prepareVmx, type VmxPrepare } from '../../holds.ts'
import { digestImage } from './ceph-read.ts'
import { CephNames, heldDisks, readCephState, type CephVmState } from './ceph-state.ts'
import { runCeph, type CephTarget } from './rbd-cli.ts'

/** One restored disk of a Ceph point. */
export interface CephRestoredDisk {
  readonly name: string
  readonly descriptor: string
  readonly flat: string
  readonly capacity: number
  /** `POOL/IMAGE@SNAP` it was read from */
  readonly snapshot: string
  /** the flat was compared with the snapshot read again (the Ceph store keeps no whole-disk digest of a point) */
  readonly verified: 'snapshot'
}

/** Progress of a Ceph restore: disks done of the total, bytes of their capacities. */
export interface CephRestoreProgress {
  readonly disk: string
  readonly bytes: number
  readonly total: number
  readonly elapsedMs: number
  readonly etaMs: number | undefined
}

/** The digest used to compare a flat with its snapshot (fast, not a security boundary: both sides are ours). */
const CHECK_ALGORITHM = 'xxh64'

async function digestFile(path: string): Promise<string> {
  const h = createDigest(CHECK_ALGORITHM)
  for await (const chunk of createReadStream(path, { highWaterMark: 8 * 1024 * 1024 })) h.update(chunk as Buffer)
  return Buffer.from(h.digest()).toString('hex')
}

/**
 * The .vmx a Ceph restore writes from point `cycle`'s source .vmx: its disks pointed at the restored descriptors
 * (`diskMap`), and its display name marked as a folder store's restore marks it — the source's name (without a mark
 * grainline recorded in it: a VM restored before and replicated since), the mirror's suffix and the point's mark
 * (mirror-vmx.ts markVmx). A failover (`run`): the source's name and the failover's mark alone (prepareVmx).
 */
export function restoredVmx(source: string, diskMap: ReadonlyMap<string, string>, cycle: number, run?: VmxPrepare): { text: string; dropped: DroppedReference[] } {
  const r = mirrorVmx(source, { suffix: '', diskMap })
  return { text: run === undefined ? markVmx(r.text, `${DEFAULT_DISPLAY_SUFFIX} (point ${cycle})`) : prepareVmx(r.text, run), dropped: r.dropped }
}

/**
 * Restore point `cycle` (the committed cycle restores the mirror itself) of
 * `vm` from the pool into `toDir` (created; must be empty).
 * @throws ReceiverError E_NOT_FOUND (no such VM or point), E_CONFIG (`toDir` not empty), E_STATE (a name in the state object is not a safe file name), E_VERIFY, E_IO
 */
export async function cephRestoreVm(
  t: CephTarget,
  vm: string,
  cycle: number,
  toDir: string,
  opts: {
    onProgress?: (p: CephRestoreProgress) => void
    /** prepare the .vmx to run beside the source VM (a failover: ceph-holds.ts): new uuid.bios, NICs, networks, this display suffix @default a plain restore */
    run?: VmxPrepare
  } = {},
): Promise<{ vm: string; cycle: number; to: string; disks: CephRestoredDisk[]; vmxDropped: DroppedReference[] | undefined }> {
  validateName(vm, 'VM name')
  const s = await readCephState(t, new CephNames(vm).state, vm)
  if (s === undefined) throw new ReceiverError('E_NOT_FOUND', `no mirror of VM ${vm} in Ceph pool ${t.pool}`)
  const disks = pointSnapshots(t, s, cycle)
  const taken = new Set(disks.flatMap(([name]) => generatedNames(diskStem(name)).mirror.map((f) => f.toLowerCase())))
  // the last commit's files, the point's own .vmx in place of its .vmx (ceph-point-config.ts)
  const files = Object.entries(cephPointFiles(s, cycle))
  for (const [file] of files) {
    try {
      validateName(file, 'file name')
    } catch {
      throw new ReceiverError('E_STATE', `the state of VM ${vm} in pool ${t.pool} names a configuration file ${JSON.stringify(file)} that is not a safe file name`)
    }
  }
  // durable: the folder (its parents fsynced), every file (fsynced, then the folder): a crash after the restore
  // returned never leaves a missing or empty flat, descriptor, .vmx or .nvram
  await mkdirDurable(toDir, 'destination')
  if ((await readdir(toDir)).length > 0) throw new ReceiverError('E_CONFIG', `${toDir} is not empty: restore into a new folder`)
  await initDigests()
  const total = disks.reduce((n, [, d]) => n + d.capacity, 0)
  const t0 = performance.now()
  let done = 0
  const out: CephRestoredDisk[] = []
  for (const [name, d] of disks) {
    const stem = diskStem(name)
    const flatName = `${stem}-flat.vmdk`
    const flat = join(toDir, flatName)
    const snapshot = `${t.pool}/${d.image}@${d.snap}`
    try {
      // to a file, rbd export writes only the non-zero runs (a thin flat, like the mirror)
      await runCeph(t, 'rbd', ['export', '--no-progress', snapshot, flat])
    } catch (err) {
      throw new ReceiverError(
        'E_IO',
        `disk ${name} of VM ${vm}: reading point ${cycle} (${snapshot}) failed: ${(err as Error).message}; if retention removed the point meanwhile, pick another (grainline points list)`,
        { cause: err },
      )
    }
    // rbd export leaves what it wrote in the page cache: fsynced here, then the folder (the flat's name)
    await fsyncFile(flat, 'destination')
    const capacity = (await stat(flat)).size
    const [written, held] = await Promise.all([digestFile(flat), digestImage(t, `${d.image}@${d.snap}`, CHECK_ALGORITHM, Number.MAX_SAFE_INTEGER)])
    const heldHex = Buffer.from(held.digest).toString('hex')
    if (written !== heldHex || capacity !== held.bytes) {
      throw new ReceiverError(
        'E_VERIFY',
        `restored disk ${name} of point ${cycle} differs from ${snapshot} read again (${CHECK_ALGORITHM} ${written} vs ${heldHex}, ${capacity} vs ${held.bytes} bytes); ${toDir} is left for inspection`,
      )
    }
    const descriptor = join(toDir, `${stem}.vmdk`)
    await writeFileAtomic(descriptor, mirrorDescriptor({ cid: newCid(), capacity, flatFile: flatName, ddb: s.disks[name]?.ddb ?? {} }), 'destination')
    out.push({ name, descriptor, flat, capacity, snapshot, verified: 'snapshot' })
    done += d.capacity
    const elapsedMs = performance.now() - t0
    opts.onProgress?.({ disk: name, bytes: done, total, elapsedMs, etaMs: done === 0 ? undefined : (elapsedMs * (total - done)) / done })
  }
  // configuration files: the .vmx rewritten to these disks, others copied (never a disk or lock file)
  const diskMap = new Map(disks.map(([name]) => [name, `${diskStem(name)}.vmdk`]))
  let vmxDropped: DroppedReference[] | undefined
  for (const [file, b64] of files) {
    if (typeof b64 !== 'string') continue
    const data = Buffer.from(b64, 'base64')
    if (/\.vmx$/i.test(file)) {
      const r = restoredVmx(data.toString('utf8'), diskMap, cycle, opts.run)
      await writeNewFileDurable(join(toDir, `${vm}.vmx`), r.text, 'destination')
      vmxDropped = r.dropped
    } else if (!/\.(vmsd|vmdk|lck|log)$/i.test(file) && !taken.has(file.toLowerCase())) {
      await writeNewFileDurable(join(toDir, file), data, 'destination')
    }
  }
  return { vm, cycle, to: toDir, disks: out, vmxDropped }
}

/** RBD image and snapshot names: what the store creates (a hostile state's names are refused before they become an argument). */
export const RBD_NAME = /^[A-Za-z0-9_.-]{1,200}$/

/**
 * The snapshot of every disk of point `cycle` of state `s` (the committed
 * cycle: the mirror), sorted by disk name, each name checked before it
 * becomes a path or an argument (pure).
 * @throws ReceiverError E_NOT_FOUND (no such point), E_STATE (a disk name that is not a safe file name, two disks on one file, an image or snapshot that is not an RBD name)
 */
export function pointSnapshots(t: CephTarget, s: CephVmState, cycle: number): Array<[string, { readonly image: string; readonly snap: string; readonly capacity: number }]> {
  const vm = s.vm
  const snaps =
    cycle === s.committedCycle && cycle > 0
      ? Object.fromEntries(heldDisks(s).map((d) => [d.name, { image: d.image, snap: d.snap, capacity: d.capacity }]))
      : s.points.find((p) => p.cycle === cycle)?.disks
  if (snaps === undefined) {
    throw new ReceiverError('E_NOT_FOUND', `VM ${vm} has no point ${cycle} in Ceph pool ${t.pool} (points: ${[...s.points.map((p) => p.cycle), s.committedCycle].join(', ')})`)
  }
  const disks = Object.entries(snaps).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  // every name from the pool becomes a path only after this check; no two disks may share a file
  const taken = new Set<string>()
  for (const [name, d] of disks) {
    try {
      validateName(name, 'disk name')
    } catch {
      throw new ReceiverError('E_STATE', `the state of VM ${vm} in pool ${t.pool} names a disk ${JSON.stringify(name)} that is not a safe file name`)
    }
    if (typeof d?.image !== 'string' || typeof d.snap !== 'string' || !RBD_NAME.test(d.image) || !RBD_NAME.test(d.snap)) {
      throw new ReceiverError('E_STATE', `the state of VM ${vm} in pool ${t.pool} names an image or snapshot that is not an RBD name: ${String(JSON.stringify(d)).slice(0, 300)}`)
    }
    for (const f of generatedNames(diskStem(name)).mirror) {
      if (taken.has(f.toLowerCase())) throw new ReceiverError('E_STATE', `disks of VM ${vm} collide on the file name ${f}`)
      taken.add(f.toLowerCase())
    }
  }
  return disks
}
