/**
 * What a token's accepted, not yet committed applies may still add to the
 * store (SPEC §7 E_QUOTA; folder store). A DiskOpen's quota rule counts it
 * beside the bytes the token's mirrors allocate now: without it each disk was
 * judged alone, and an agent could open many disks (in one session or in
 * parallel ones) before writing any, each within the quota, then fill them all.
 *
 * An apply is reserved for as long as its VM's state lists it in flight —
 * across sessions, a disconnect and a restart, since a resume is not charged
 * again (open-decision.ts) — and freed by its commit or rollback. What it may
 * still add is its capacity less what its target file (the `.seed` file, or
 * the flat written in place) allocates now: the file cannot grow beyond the
 * capacity (disk-apply.ts `accept`), and the bytes it holds already are in
 * the usage. So nothing is counted per extent: the apply path is untouched.
 */
import { lstat } from 'node:fs/promises'
import { forEachLimited } from '@grainline/vmdk'
import { listVmFolders } from './vm-folders.ts'
import { allocatedBytes } from './store-usage.ts'
import { readVmState } from './state-file.ts'
import { VmPaths } from './vm-paths.ts'
import { announcedBound } from './open-decision.ts'

/** The key of one disk of one VM (names never hold a NUL: receiver-rules.ts). */
export function diskKey(vm: string, disk: string): string {
  return `${vm}\0${disk}`
}

/** What the mirrors of a token's VMs take now, and what their in-flight applies may still add, by {@link diskKey}. */
export interface TokenRoom {
  readonly usedBytes: number
  readonly inflight: ReadonlyMap<string, number>
}

/** Bytes a file allocates, 0 when nothing (or a link) is there. */
async function fileAllocated(path: string): Promise<number> {
  const st = await lstat(path).catch(() => undefined)
  return st === undefined || !st.isFile() ? 0 : st.blocks * 512
}

/**
 * {@link TokenRoom} of the VMs `covers` accepts: their folders' allocated
 * bytes (store-usage.ts; the VM folders of vm-folders.ts: links, hidden
 * names — the tombstone of a removal is nobody's, though a `*` glob matches
 * it — and folders grainline did not make skipped) and, for each disk their state lists in flight, its
 * capacity less what its target allocates. A store or a state file that
 * cannot be read counts nothing, as the usage did: a failure here must not
 * fail (and roll back) the DiskOpen of a cycle in flight.
 */
export async function tokenRoom(storeDir: string, covers: (vm: string) => boolean): Promise<TokenRoom> {
  let usedBytes = 0
  const inflight = new Map<string, number>()
  const vms = (await listVmFolders(storeDir).catch(() => [] as string[])).filter(covers)
  // a few VMs at a time: a DiskOpen of a token with hundreds of VMs waited for each one's walk in turn
  await forEachLimited(vms, ROOM_VMS_IN_FLIGHT, async (vm) => {
    const paths = new VmPaths(storeDir, vm)
    // added after the await (VMs walked in parallel: `usedBytes += await …` would lose the others' sums)
    const bytes = await allocatedBytes(paths.dir)
    usedBytes += bytes
    const state = await readVmState(paths).catch(() => undefined)
    for (const d of Object.values(state?.inflight?.disks ?? {})) {
      const target = d.target === 'seed' ? paths.seed(d.stem) : paths.flat(d.stem)
      const now = await fileAllocated(target)
      const fill = Math.max(0, d.capacity - now)
      // an incremental is held to its announced totals: what they may allocate, less what it allocated since
      const a = d.announced
      inflight.set(diskKey(vm, d.name), a === undefined ? fill : Math.min(fill, Math.max(0, announcedBound(a) - Math.max(0, now - a.allocatedAtOpen))))
    }
  })
  return { usedBytes, inflight }
}

/** VMs {@link tokenRoom} walks at once. */
const ROOM_VMS_IN_FLIGHT = 4

/**
 * The DiskOpens of this receiver being decided: each holds what it may add
 * from before the token's room is measured until its in-flight record is
 * written (or it is refused), so that two sessions of a token deciding at
 * the same moment see each other — whichever measures later counts the
 * other — and never both take the same room. One per receiver (server.ts).
 */
export class PendingOpens {
  readonly #opens = new Map<string, { readonly vm: string; readonly bytes: number }>()

  /** Hold `bytes` for disk `disk` of `vm`; the returned function lets go (idempotent). */
  hold(vm: string, disk: string, bytes: number): () => void {
    const key = diskKey(vm, disk)
    const entry = { vm, bytes }
    this.#opens.set(key, entry)
    return () => {
      if (this.#opens.get(key) === entry) this.#opens.delete(key)
    }
  }

  /** Bytes held for the VMs `covers` accepts, except the disks in `skip` (counted already, or the one deciding). */
  bytes(covers: (vm: string) => boolean, skip: (key: string) => boolean): number {
    let n = 0
    for (const [key, o] of this.#opens) if (covers(o.vm) && !skip(key)) n += o.bytes
    return n
  }
}
