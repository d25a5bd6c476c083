/**
 * Reading images and snapshots back: `rbd export POOL/IMG@SNAP -` streamed
 * (never the whole image in memory), digested or copied to a file.
 */
import { createWriteStream } from 'node:fs'
import { pipeline } from 'node:stream/promises'
import { createDigest, type DigestAlgorithm } from '@grainline/protocol'
import { streamCeph, type CephTarget } from './rbd-cli.ts'

/** Digest the first `limit` bytes of `image` (`IMG` or `IMG@SNAP`). */
export async function digestImage(t: CephTarget, image: string, algorithm: DigestAlgorithm, limit: number, signal?: AbortSignal): Promise<{ digest: Uint8Array; bytes: number }> {
  const h = createDigest(algorithm)
  let bytes = 0
  if (limit > 0) {
    const p = streamCeph(t, 'rbd', ['export', '--no-progress', `${t.pool}/${image}`, '-'])
    const onAbort = (): void => p.stop()
    signal?.addEventListener('abort', onAbort, { once: true })
    try {
      for await (const chunk of p.stdout as AsyncIterable<Buffer>) {
        const take = Math.min(chunk.length, limit - bytes)
        h.update(take === chunk.length ? chunk : chunk.subarray(0, take))
        bytes += take
        if (bytes >= limit) {
          p.stop()
          break
        }
      }
      await p.done
    } finally {
      signal?.removeEventListener('abort', onAbort)
    }
    signal?.throwIfAborted()
  }
  return { digest: h.digest(), bytes }
}

/** Copy `image` (`IMG` or `IMG@SNAP`) into a raw file. */
export async function exportImage(t: CephTarget, image: string, out: string): Promise<void> {
  const p = streamCeph(t, 'rbd', ['export', '--no-progress', `${t.pool}/${image}`, '-'])
  await Promise.all([pipeline(p.stdout, createWriteStream(out)), p.done])
}
