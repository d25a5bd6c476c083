/**
 * The snapshots of an RBD image as the store looks at them: one bounded
 * `rbd snap ls --format json` ({@link snapSizes}) and what is wrong with a
 * snapshot the store names ({@link snapshotProblem}: missing, its image
 * missing, smaller than the disk). Shared by the overview (ceph-overview.ts
 * cephStoreDamage: `damagedPoints`, `damagedMirror`) and a DiskOpen of an
 * incremental or a resync (ceph-mirror.ts), which refuses a damaged
 * committed snapshot instead of failing on it at the first batch.
 */
import { ReceiverError } from '../../errors.ts'
import { CephCommandError, runCeph, type CephTarget } from './rbd-cli.ts'

/**
 * The most bytes `rbd snap ls --format json` of one image may write (about
 * 150 per snapshot: some 25,000 snapshots, far more than a retention keeps);
 * past it the command is killed (rbd-cli.ts `CephOutputTooLarge`) and the
 * VM's status is an error, CRITICAL.
 */
export const SNAP_LIST_MAX_BYTES = 4 * 1024 * 1024

/** The snapshots of `image` by name with their sizes; undefined when the image does not exist. */
export async function snapSizes(t: CephTarget, image: string): Promise<Map<string, number> | undefined> {
  let out: Buffer
  try {
    out = await runCeph(t, 'rbd', ['snap', 'ls', '--format', 'json', `${t.pool}/${image}`], undefined, { maxBytes: SNAP_LIST_MAX_BYTES })
  } catch (err) {
    if (err instanceof CephCommandError && err.notFound) return undefined
    throw err
  }
  let list: unknown
  try {
    list = JSON.parse(out.toString('utf8'))
  } catch {
    throw new ReceiverError('E_IO', `rbd snap ls of ${t.pool}/${image} did not answer JSON: ${out.toString('utf8').slice(0, 200)}`)
  }
  const sizes = new Map<string, number>()
  for (const x of Array.isArray(list) ? (list as Array<{ name?: unknown; size?: unknown }>) : []) {
    if (typeof x?.name === 'string') sizes.set(x.name, typeof x.size === 'number' ? x.size : Number(x.size))
  }
  return sizes
}

/** What is wrong with snapshot `snap` of `image` that must hold `capacity` bytes, given the image's listing `sizes`; undefined when it is whole. Pure. */
export function snapshotProblem(pool: string, image: string, snap: string, capacity: number, sizes: Map<string, number> | undefined): string | undefined {
  if (sizes === undefined) return `is missing: its image ${pool}/${image} does not exist (removed behind the store)`
  const size = sizes.get(snap)
  if (size === undefined) return 'is missing (rbd snap ls does not list it: removed behind the store)'
  if (!(size >= capacity)) return `is ${size} bytes, smaller than the disk's capacity ${capacity} (the image was shrunk)`
  return undefined
}
