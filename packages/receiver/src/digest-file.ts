import { readFullyInto } from './fs-util.ts'
import { giveSpans, SPAN_BYTES, takeSpans } from './span-buffers.ts'
import { openStoreFile } from './store-fs.ts'

/** Bytes read per step when digesting a mirror file (the receiver's kept read buffers: span-buffers.ts). */
const CHUNK = SPAN_BYTES

/**
 * Reads in flight ahead of the chunk digested: the next chunk is read while
 * this one is digested, so a certify costs max(read, digest), not their sum.
 * @default 2
 */
const READS_AHEAD = 2

/**
 * Feed the first `bytes` of a file to `update`, 4 MiB at a time (bytes past
 * its end read as zero). Checks `signal` between chunks. Returns the bytes fed.
 *
 * The chunks are read into a small pool of reused buffers (READS_AHEAD + 1),
 * the receiver's kept ones (span-buffers.ts), given back at the end: `update`
 * must consume its argument before it returns (a digest's update does) and
 * never keep it. Fresh 4 MiB buffers per chunk cost a page fault per 4 KiB on
 * this kind of VM: the digest ran at ~300 MiB/s from fresh memory against
 * >1 GiB/s from reused buffers (2026-12-01, quiet machine); fresh buffers per
 * call made the 16 MiB of a trivial check fault in 12 MiB each time.
 */
export async function digestFile(path: string, bytes: number, update: (b: Uint8Array) => void, opts: { signal?: AbortSignal } = {}): Promise<number> {
  const fh = await openStoreFile(path, 'read')
  const pool = takeSpans(READS_AHEAD + 1, Math.min(CHUNK, Math.max(bytes, 1)))
  const reads: Array<{ buf: Buffer; length: number; done: Promise<unknown> }> = []
  let next = 0
  let turn = 0
  const issue = (): void => {
    while (next < bytes && reads.length < READS_AHEAD) {
      const length = Math.min(CHUNK, bytes - next)
      const buf = pool[turn++ % pool.length] as Buffer
      const done = readFullyInto(fh, buf, next, length)
      // handled when its turn comes; not an unhandled rejection meanwhile
      done.catch(() => {})
      reads.push({ buf, length, done })
      next += length
    }
  }
  let fed = 0
  try {
    issue()
    while (reads.length > 0) {
      opts.signal?.throwIfAborted()
      const r = reads.shift() as (typeof reads)[number]
      await r.done
      // the next reads go into the other buffers while this one is digested
      issue()
      update(r.buf.subarray(0, r.length))
      fed += r.length
    }
    return fed
  } finally {
    // reads still in flight settle before the file is closed
    for (const r of reads) await r.done.catch(() => {})
    await fh.close()
    giveSpans(pool)
  }
}
