import { readFully } from './fs-util.ts'
import { openStoreFile } from './store-fs.ts'

/** Bytes read per step when digesting a mirror file. */
const CHUNK = 4 * 1024 * 1024

/**
 * Feed the first `bytes` of a file to `update`, 4 MiB at a time (bytes past
 * its end read as zero). Checks `signal` between chunks. Returns the bytes fed.
 */
export async function digestFile(path: string, bytes: number, update: (b: Uint8Array) => void, opts: { signal?: AbortSignal } = {}): Promise<number> {
  const fh = await openStoreFile(path, 'read')
  try {
    let done = 0
    while (done < bytes) {
      opts.signal?.throwIfAborted()
      const n = Math.min(CHUNK, bytes - done)
      update(await readFully(fh, done, n))
      done += n
    }
    return done
  } finally {
    await fh.close()
  }
}
