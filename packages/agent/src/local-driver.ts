/**
 * The `local` driver (ARCHITECTURE §5): a VM folder on a local filesystem
 * whose snapshots grainline makes itself with @grainline/vmdk, leaving the
 * same files ESXi would — `<disk>-00000N.vmdk` deltas, the .vmx pointed at
 * the running delta, a `.vmsd` snapshot database — and consolidating a delta
 * into its parent on removal.
 */
import { readdir, realpath, stat } from 'node:fs/promises'
import { basename, dirname, isAbsolute, join, resolve } from 'node:path'
import type { HypervisorDriver, SnapshotRef, VmDisk } from './driver.ts'
import { parseGrainlineSnapshotName } from './driver.ts'
import { AgentError } from './errors.ts'
import { MAX_CONFIG_BYTES, readRegularFile, writeFileAtomic } from './fs-util.ts'
import { VmxConfig, vmxDisks } from './vmx.ts'
import { parseVmsd, serializeVmsd, type Vmsd } from './vmsd.ts'
import { confineFileAccess, consolidate, isInsideRoot, createDelta, isVmdkError, localFileAccess, openChain, type DeltaFormat } from '@grainline/vmdk'

/** Options of the local driver. */
export interface LocalDriverInit {
  /** format of the deltas a snapshot creates. @default 'sesparse' */
  readonly deltaFormat?: DeltaFormat
  /** datastore type reported in the compatibility record. @default 'local' */
  readonly datastoreType?: string
  /**
   * More folders a VM's files may be read from — the local stand-ins for
   * its other datastores (`/vmfs/volumes/ds2`, an NFS mount on a Linux
   * proxy): absolute paths of existing folders. The folder that holds the
   * VM's folder (its sibling VM folders, e.g. a linked clone's base, are
   * inside) is one of the roots, these add to it (the VM's own folder
   * instead when that folder holds a `protect`ed file). Disks, extent
   * files, parents and the nvram outside every root (by name or through a
   * symbolic link) are refused with `E_OUTSIDE_ROOT` (a disk named by the
   * .vmx: `E_VMX`), so a hostile .vmx or descriptor cannot make the agent
   * ship another file. Each root is pinned once: a {@link PinnedRoot}
   * (`pinLocalRoots`, which `loadJob` runs at job load) as given, a path at
   * the first `openVm`; so is the folder that holds the VM's folder. From
   * then on a file's real path must lie below a pinned real folder, while the
   * .vmx and descriptors keep naming their files through the names given: a
   * link re-pointed during the run moves no root (a file through it is then
   * refused). A relative root throws `E_CONFIG` at once, a missing one or a
   * file at the first `openVm`.
   * The job file's `datastoreRoots`, `grainline replicate --datastore-root`.
   * @default none: only the folder that holds the VM's folder
   */
  readonly roots?: readonly (string | PinnedRoot)[]
  /**
   * The agent's own files and folders (its state dir, CA, token, key, job
   * file: what `replicate()` protects). A root in `roots` that is one,
   * contains one or lies inside one is refused (`E_CONFIG`, as
   * {@link pinLocalRoots}). The folder that holds a VM's folder, which no
   * operator chose, is checked the same way, by name and by real path, when
   * it is pinned: one that holds an agent file (a state dir or job file kept
   * next to the VM folders) is not read, the VM's own folder is its root
   * instead (a sibling folder, a linked clone's base, is then refused with
   * `E_VMX`/`E_OUTSIDE_ROOT` saying why); a VM whose own folder holds an
   * agent file, is one or lies inside the state dir is refused with
   * `E_CONFIG` at `openVm`, before anything of it is read.
   * @default none
   */
  readonly protect?: readonly string[]
}

/** How an operator names the local driver's roots, for messages. */
export const LOCAL_ROOTS_SETTING = '--datastore-root DIR (job file: "datastoreRoots": ["DIR", …])'

/** What an `E_OUTSIDE_ROOT` of the local driver tells the operator to do (vmdk's default speaks of roots in general). */
export const LOCAL_OUTSIDE_ROOT_REMEDY = `fix the reference, or, when the file is on another datastore, add the folder it is mounted at with ${LOCAL_ROOTS_SETTING}`

function checkAbsoluteRoots(roots: readonly string[], setting: string, remedy: string = ROOT_REMEDY): void {
  for (const r of roots) {
    if (typeof r !== 'string' || !isAbsolute(r)) {
      throw new AgentError('E_CONFIG', `${setting}: ${JSON.stringify(r)} is not an absolute path: give the datastore folder the VMs' disks are on from / (e.g. /vmfs/volumes/ds2 or /mnt/nfs/ds2)`)
    }
    // where a root is written must not change what it means: `/mnt/ds2/..` is `/mnt` once normalised
    if (r.split('/').includes('..')) {
      throw new AgentError('E_CONFIG', `${setting}: ${JSON.stringify(r)} contains "..": give the datastore folder without ".." (e.g. /vmfs/volumes/ds2 or /mnt/nfs/ds2)`)
    }
    if (resolve(r) === '/') throw new AgentError('E_CONFIG', `${setting}: ${JSON.stringify(r)} is the whole filesystem (/), which would let a descriptor read any file of this machine: ${remedy}`)
  }
}

const ROOT_REMEDY = 'give the folder a datastore is mounted at (e.g. /vmfs/volumes/ds2 or /mnt/nfs/ds2)'

/** A local root pinned at start: the name given and the real folder it led to then. */
export interface PinnedRoot {
  /** the absolute, normalised path given (may pass through symbolic links) */
  readonly named: string
  /** its real path when it was pinned */
  readonly real: string
}

const nameOf = (r: string | PinnedRoot): string => (typeof r === 'string' ? r : r.named)

/**
 * Resolve the real path of each protected file or folder (the agent's state
 * dir, its token, CA, key, job file) that exists; a missing one is checked by
 * its name only.
 */
async function realPaths(paths: readonly string[]): Promise<string[]> {
  const out: string[] = []
  for (const p of paths) {
    const abs = resolve(p)
    out.push(abs)
    const rp = await realpath(abs).catch(() => undefined)
    if (rp !== undefined && rp !== abs) out.push(rp)
  }
  return out
}

/** How a folder meets one of the agent's own files or folders: is it, contains it, or lies inside it (the state dir). */
interface ProtectedHit {
  readonly how: 'is' | 'contains' | 'inside'
  /** the agent's file or folder (its name, or its real path) */
  readonly path: string
}

/**
 * Whether a folder (its name and its real path) is, contains or lies inside
 * one of `guarded` ({@link realPaths}: names and real paths), by name and by
 * real path alike; undefined when it touches none.
 */
function protectedHit(named: string, real: string, guarded: readonly string[]): ProtectedHit | undefined {
  const same = guarded.find((g) => g === named || g === real)
  if (same !== undefined) return { how: 'is', path: same }
  const own = guarded.find((g) => isInsideRoot(g, named) || isInsideRoot(g, real))
  if (own !== undefined) return { how: 'contains', path: own }
  // a folder inside the state dir: a .vmx or descriptor could name the agent's cycle records, snapshot lists and locks as disks
  const inside = guarded.find((g) => isInsideRoot(named, g) || isInsideRoot(real, g))
  if (inside !== undefined) return { how: 'inside', path: inside }
  return undefined
}

/**
 * The local driver's extra roots made ready: each must be an absolute path of
 * an existing folder; its symbolic links are resolved now, once (realpath),
 * and both the name given and the folder it leads to are kept (a .vmx names
 * its disks by the one, their real paths lie in the other).
 * @param setting how the roots were given, for messages (`--datastore-root`)
 * @throws AgentError `E_CONFIG` naming the root and what is wrong
 */
export async function resolveLocalRoots(roots: readonly string[] | undefined, setting = 'local driver roots', protect: readonly string[] = []): Promise<string[]> {
  return (await pinLocalRoots(roots, setting, protect)).flatMap((r) => (r.named === r.real ? [r.named] : [r.named, r.real])).filter((p, i, all) => all.indexOf(p) === i)
}

/**
 * {@link resolveLocalRoots}, keeping each root as the pair (name given, real
 * path now): the real path is what confines from then on. A root already
 * pinned is kept as it is (its real path not resolved again), checked against
 * `protect` and `/` only.
 * @param protect the agent's own files and folders (state dir, token, CA, key, job file): a root that is one, contains one or lies inside one (the state dir) is refused, by name and by real path
 * @param remedy what a refused root's message tells the operator to give instead (the esxi driver: a datastore mapped elsewhere)
 */
export async function pinLocalRoots(
  roots: readonly (string | PinnedRoot)[] | undefined,
  setting = 'local driver roots',
  protect: readonly string[] = [],
  remedy: string = ROOT_REMEDY,
): Promise<PinnedRoot[]> {
  if (roots === undefined) return []
  checkAbsoluteRoots(roots.map(nameOf), setting, remedy)
  const guarded = await realPaths(protect)
  const out: PinnedRoot[] = []
  for (const r of roots) {
    const named = resolve(nameOf(r))
    let real: string
    if (typeof r !== 'string') {
      real = resolve(r.real)
    } else {
      try {
        real = await realpath(named)
      } catch (err) {
        const code = (err as { code?: unknown }).code
        const why = code === 'ENOENT' ? 'does not exist' : code === 'ENOTDIR' ? 'lies below a file, not a folder' : `cannot be resolved (${String(code ?? (err as Error).message)})`
        throw new AgentError('E_CONFIG', `${setting}: ${named} ${why}: give the folder a datastore is mounted at (is it mounted?)`, { cause: err })
      }
      const st = await stat(real).catch((err: unknown) => {
        throw new AgentError('E_CONFIG', `${setting}: ${named}: ${(err as Error).message}`, { cause: err })
      })
      if (!st.isDirectory()) throw new AgentError('E_CONFIG', `${setting}: ${named} is not a folder: give the folder a datastore is mounted at, not a file in it`)
    }
    if (real === '/')
      throw new AgentError('E_CONFIG', `${setting}: ${named} leads to / (the whole filesystem, through a symbolic link), which would let a descriptor read any file of this machine: ${remedy}`)
    const hit = protectedHit(named, real, guarded)
    if (hit?.how === 'is') {
      throw new AgentError(
        'E_CONFIG',
        `${setting}: ${named} is the agent's own ${hit.path} (its state, credentials or settings), which a descriptor could then name and ship: ${remedy}, one that holds no agent file and lies outside the agent's state dir`,
      )
    }
    if (hit?.how === 'contains') {
      throw new AgentError(
        'E_CONFIG',
        `${setting}: ${named} contains the agent's own ${hit.path} (its state, credentials or settings), which a descriptor could then name and ship: ${remedy}, one that holds no agent file`,
      )
    }
    if (hit?.how === 'inside') {
      throw new AgentError(
        'E_CONFIG',
        `${setting}: ${named} lies inside the agent's own ${hit.path} (its state: cycle records, snapshot lists, locks), whose files a .vmx or descriptor could then name as disks and ship: ${remedy}, one outside the agent's state dir`,
      )
    }
    if (!out.some((o) => o.named === named && o.real === real)) out.push({ named, real })
  }
  return out
}

/**
 * A VM whose own folder is, holds or lies inside one of the agent's files or
 * folders: a .vmx or descriptor in it could name them as disks.
 */
function vmFolderRefused(vm: string, vmxPath: string, dir: string, hit: ProtectedHit): AgentError {
  const what =
    hit.how === 'contains'
      ? `contains the agent's own ${hit.path} (its state, credentials or settings), which a .vmx or descriptor could then name as a disk and ship`
      : `${hit.how === 'is' ? 'is' : 'lies inside'} the agent's own ${hit.path} (its state: cycle records, snapshot lists, locks), whose files a .vmx or descriptor could then name as disks and ship`
  const todo =
    hit.how === 'contains'
      ? `move ${hit.path} out of ${dir} (the state dir with --state-dir / "stateDir"; a token, key, CA or job file elsewhere)`
      : `keep the VM's folder out of the agent's state dir, or give the agent another one with --state-dir / "stateDir"`
  return new AgentError('E_CONFIG', `VM ${vm} (${vmxPath}): its folder ${dir} ${what}: nothing of the VM is read; ${todo}`)
}

function vmsdPath(vmxPath: string): string {
  return vmxPath.replace(/\.vmx$/i, '') + '.vmsd'
}

async function readVmsd(vmxPath: string): Promise<Vmsd> {
  let text = ''
  try {
    text = (await readRegularFile(vmsdPath(vmxPath), { maxBytes: MAX_CONFIG_BYTES, code: 'E_VMX', what: 'snapshot database' })).toString('utf8')
  } catch (err) {
    if ((err as { code?: string }).code !== 'ENOENT') throw err
  }
  return parseVmsd(text)
}

function toRef(s: Vmsd['snapshots'][number]): SnapshotRef {
  const cycle = parseGrainlineSnapshotName(s.displayName)
  return { id: String(s.uid), name: s.displayName, grainline: cycle > 0, cycle, disks: s.disks.map((d) => ({ node: d.node, fileName: d.fileName })) }
}

/** `web01_1-000003.vmdk` → `web01_1` */
function diskStem(fileName: string): string {
  return basename(fileName)
    .replace(/\.vmdk$/i, '')
    .replace(/-\d{6}$/, '')
}

/** Create the local driver. */
export function createLocalDriver(init: LocalDriverInit = {}): HypervisorDriver {
  const format = init.deltaFormat ?? 'sesparse'
  const datastoreType = init.datastoreType ?? 'local'
  checkAbsoluteRoots((init.roots ?? []).map(nameOf), 'local driver roots')
  // pinned once, at the first openVm (those given pinned as they are; a failure is not kept: the next openVm reports it again)
  let extraRoots: Promise<PinnedRoot[]> | undefined
  const rootsReady = async (): Promise<PinnedRoot[]> => {
    extraRoots ??= pinLocalRoots(init.roots, 'local driver roots', init.protect ?? [])
    try {
      return await extraRoots
    } catch (err) {
      extraRoots = undefined
      throw err
    }
  }
  // the folder that holds a VM's folder (or the VM's folder), pinned at the first openVm of a VM in it (a failure is
  // not kept), with whether it is, holds or lies inside one of the agent's own files or folders (by name and real path)
  const folderRoots = new Map<string, Promise<PinnedRoot & { hit?: ProtectedHit }>>()
  const folderRoot = async (folder: string): Promise<PinnedRoot & { hit?: ProtectedHit }> => {
    let p = folderRoots.get(folder)
    if (p === undefined) {
      p = (async () => {
        const real = await realpath(folder)
        const hit = protectedHit(folder, real, await realPaths(init.protect ?? []))
        return { named: folder, real, ...(hit === undefined ? {} : { hit }) }
      })()
      folderRoots.set(folder, p)
    }
    try {
      return await p
    } catch (err) {
      folderRoots.delete(folder)
      throw err
    }
  }
  // one snapshot operation at a time per VM folder within this process
  const locks = new Map<string, Promise<unknown>>()
  const locked = async <T>(key: string, fn: () => Promise<T>): Promise<T> => {
    const prev = locks.get(key) ?? Promise.resolve()
    const next = prev.catch(() => {}).then(fn)
    locks.set(key, next)
    try {
      return await next
    } finally {
      if (locks.get(key) === next) locks.delete(key)
    }
  }

  const driver: HypervisorDriver = {
    name: 'local',

    async openVm(ref) {
      const extra = await rootsReady()
      const vmxPath = resolve(ref)
      let text: string
      try {
        text = (await readRegularFile(vmxPath, { maxBytes: MAX_CONFIG_BYTES, code: 'E_VMX', what: 'VM config' })).toString('utf8')
      } catch (err) {
        if (err instanceof AgentError) throw err
        throw new AgentError('E_VM_NOT_FOUND', `cannot read ${vmxPath}: ${(err as Error).message}`, { cause: err })
      }
      const config = VmxConfig.parse(text, vmxPath)
      const dir = dirname(vmxPath)
      const vmName = basename(dir)
      // the folder that holds the VM's folder is a root: a VM's own files are always readable (the VM's folder itself
      // when it sits at the top, e.g. /vm: never / as a whole). No operator chose it: one that holds an agent file (a
      // state dir or job file next to the VM folders) is not read, the VM's own folder is the root instead
      const parent = dirname(dir)
      const up = parent === '/' ? undefined : await folderRoot(parent)
      const withheld = up?.hit === undefined ? undefined : { folder: parent, hit: up.hit }
      let own: PinnedRoot
      if (up !== undefined && up.hit === undefined) {
        own = up
      } else {
        const mine = await folderRoot(dir)
        if (mine.hit !== undefined) throw vmFolderRefused(vmName, vmxPath, dir, mine.hit)
        own = mine
      }
      const ownWhat =
        withheld === undefined ? "the folder that holds the VM's folder" : `the VM's own folder: the one that holds it, ${withheld.folder}, holds the agent's own ${withheld.hit.path} and is not read`
      const rootsRemedy =
        withheld === undefined
          ? LOCAL_OUTSIDE_ROOT_REMEDY
          : `${LOCAL_OUTSIDE_ROOT_REMEDY}. ${withheld.folder}, the folder that holds the VM's folder, is not read: it holds the agent's own ${withheld.hit.path}; move that out of it to read the VM's sibling folders (a linked clone's base)`
      // by name: the names given and the real folders (a .vmx may name its disks through either);
      // by real path: only the real folders pinned, never what a name leads to now
      const roots: string[] = []
      const realRoots: string[] = []
      for (const r of [own, ...extra]) {
        for (const n of [r.named, r.real]) if (!roots.includes(n)) roots.push(n)
        if (!realRoots.includes(r.real)) realRoots.push(r.real)
      }
      // no remedy in the vmdk message: the E_VMX below names the local driver's own
      const confined = confineFileAccess(localFileAccess, roots, { remedy: '', realRoots })
      const disks: VmDisk[] = vmxDisks(config).map((d) => ({ node: d.node, fileName: d.fileName, path: isAbsolute(d.fileName) ? d.fileName : join(dir, d.fileName) }))
      // a disk named off the roots is refused here: a snapshot would otherwise create its delta next to it
      for (const d of disks) {
        try {
          await confined.realpath?.(d.path)
        } catch (err) {
          // a missing disk is reported where it is read (the chain's own E_NOT_FOUND / E_CHAIN_MISSING), as before
          if ((err as { code?: unknown }).code === 'ENOENT') continue
          if (!isVmdkError(err) || err.code !== 'E_OUTSIDE_ROOT') throw err
          throw new AgentError(
            'E_VMX',
            `VM ${vmName}: disk ${d.node} (${JSON.stringify(d.fileName)} in ${vmxPath}): ${err.message}. The local driver reads a VM's files only below ${roots.join(', ')} (${ownWhat}, and the datastore roots given): when the disk is on another datastore, add the folder it is mounted at with ${LOCAL_ROOTS_SETTING}; otherwise fix the .vmx`,
            { cause: err },
          )
        }
      }
      return { ref, id: vmxPath, name: vmName, vmxPath, dir, config, disks, datastoreType, roots, realRoots, rootsRemedy }
    },

    async listSnapshots(vm) {
      const db = await readVmsd(vm.vmxPath)
      return db.snapshots.map(toRef)
    },

    async createSnapshot(vm, name) {
      return await locked(vm.vmxPath, async () => {
        const fresh = await driver.openVm(vm.vmxPath)
        if (fresh.disks.length === 0) throw new AgentError('E_VMX', `${vm.vmxPath}: no hard disk to snapshot`)
        const db = await readVmsd(fresh.vmxPath)
        // the files of each folder a delta is created in (a disk on another datastore has its own): a new name must be free there
        const folders = new Map<string, Set<string>>()
        const created: Array<{ node: string; parent: string; child: string }> = []
        for (const d of fresh.disks) {
          const folder = dirname(d.path)
          let existing = folders.get(folder)
          if (existing === undefined) {
            existing = new Set((await readdir(folder)).map((f) => f.toLowerCase()))
            folders.set(folder, existing)
          }
          const stem = diskStem(d.fileName)
          let n = 1
          let child = ''
          for (; n < 1_000_000; n++) {
            child = `${stem}-${String(n).padStart(6, '0')}`
            if (![`${child}.vmdk`, `${child}-sesparse.vmdk`, `${child}-delta.vmdk`].some((f) => existing.has(f.toLowerCase()))) break
          }
          const childFile = `${child}.vmdk`
          existing.add(childFile.toLowerCase())
          const childPath = join(folder, childFile)
          try {
            await createDelta(d.path, childPath, { format })
          } catch (err) {
            throw new AgentError('E_SNAPSHOT', `creating delta ${childFile} over ${d.fileName} failed: ${(err as Error).message}`, { cause: err })
          }
          created.push({ node: d.node, parent: d.fileName, child: isAbsolute(d.fileName) ? childPath : join(dirname(d.fileName), childFile).replace(/^\.\//, '') })
        }
        for (const c of created) fresh.config.set(`${c.node}.fileName`, c.child)
        const uid = Math.max(db.lastUID, ...db.snapshots.map((s) => s.uid)) + 1
        const stemVm = basename(fresh.vmxPath).replace(/\.vmx$/i, '')
        db.snapshots.push({
          uid,
          parent: db.current,
          displayName: name,
          filename: `${stemVm}-Snapshot${uid}.vmsn`,
          disks: created.map((c) => ({ node: c.node, fileName: c.parent })),
          extra: [
            ['createTimeHigh', String(Math.floor((Date.now() * 1000) / 2 ** 32))],
            ['createTimeLow', String((Date.now() * 1000) % 2 ** 32)],
          ],
        })
        db.lastUID = uid
        db.current = uid
        // .vmsd first: a crash in between leaves a recorded snapshot whose delta the .vmx does not run on yet
        await writeFileAtomic(vmsdPath(fresh.vmxPath), serializeVmsd(db))
        await writeFileAtomic(fresh.vmxPath, fresh.config.serialize())
        return toRef(db.snapshots[db.snapshots.length - 1] as Vmsd['snapshots'][number])
      })
    },

    async removeSnapshot(vm, snap) {
      await locked(vm.vmxPath, async () => {
        const fresh = await driver.openVm(vm.vmxPath)
        const db = await readVmsd(fresh.vmxPath)
        const idx = db.snapshots.findIndex((s) => String(s.uid) === snap.id)
        if (idx < 0) throw new AgentError('E_SNAPSHOT', `snapshot ${snap.name} (${snap.id}) not found in ${vmsdPath(fresh.vmxPath)}`)
        const rec = db.snapshots[idx] as Vmsd['snapshots'][number]
        for (const rd of rec.disks) {
          const disk = fresh.disks.find((d) => d.node.toLowerCase() === rd.node.toLowerCase())
          // the disk was removed from the VM since the snapshot (its lines gone from the .vmx): the VM no
          // longer runs on its chain, so nothing of it is merged; its files stay where they are
          if (disk === undefined) continue
          const chain = await openChain(
            disk.path,
            fresh.roots === undefined ? {} : { roots: fresh.roots, rootsRemedy: LOCAL_OUTSIDE_ROOT_REMEDY, ...(fresh.realRoots === undefined ? {} : { realRoots: fresh.realRoots }) },
          )
          let childPath: string
          let parentPath: string
          try {
            const parentAbs = isAbsolute(rd.fileName) ? rd.fileName : join(fresh.dir, rd.fileName)
            const k = chain.layers.findIndex((l) => resolve(l.path) === resolve(parentAbs))
            if (k < 0) throw new AgentError('E_SNAPSHOT', `snapshot ${rec.displayName}: ${rd.fileName} is not in the chain of ${disk.fileName}`)
            // k = 0: the .vmx never ran on this snapshot's delta (a crash between the .vmsd and
            // the .vmx update): nothing of this disk to merge
            if (k === 0) continue
            childPath = (chain.layers[k - 1] as { path: string }).path
            parentPath = (chain.layers[k] as { path: string }).path
          } finally {
            await chain.close()
          }
          try {
            await consolidate(childPath)
          } catch (err) {
            throw new AgentError('E_SNAPSHOT', `consolidating ${basename(childPath)} into ${basename(parentPath)} failed: ${(err as Error).message}`, { cause: err })
          }
          const childName = basename(childPath)
          // the running disk was the merged delta: the VM now runs on its parent
          if (resolve(disk.path) === resolve(childPath)) fresh.config.set(`${disk.node}.fileName`, rd.fileName)
          for (const other of db.snapshots) {
            for (const od of other.disks) {
              if (od.node.toLowerCase() === rd.node.toLowerCase() && basename(od.fileName) === childName) od.fileName = rd.fileName
            }
          }
        }
        db.snapshots.splice(idx, 1)
        for (const s of db.snapshots) if (s.parent === rec.uid) s.parent = rec.parent
        if (db.current === rec.uid) db.current = rec.parent
        await writeFileAtomic(fresh.vmxPath, fresh.config.serialize())
        await writeFileAtomic(vmsdPath(fresh.vmxPath), serializeVmsd(db))
      })
    },

    resolvePath(vm, path) {
      return isAbsolute(path) ? path : join(vm.dir, path)
    },
  }
  return driver
}
