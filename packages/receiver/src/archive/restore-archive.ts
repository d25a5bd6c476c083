/**
 * Restore an archived point from the bucket alone (`grainline restore
 * --from s3://…`, docs/ARCHIVE.md): a standalone VM folder (`.vmx`, a
 * `createType="vmfs"` descriptor and a thin flat per disk), every chunk
 * checked against its sha256 as it arrives and every disk against the
 * whole-disk sha256 the archive recorded. Nothing in the manifest is trusted
 * (parseManifest): names are plain file names, sizes are bounded.
 */
import { createHash } from 'node:crypto'
import { open, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { ReceiverError } from '../errors.ts'
import { mkdirDurable, writeFileAtomic, writeFully, writeNewFileDurable } from '../fs-util.ts'
import { mirrorDescriptor, newCid } from '../mirror-descriptor.ts'
import { chunkKey, manifestKey, manifestPrefix, MAX_MANIFEST_BYTES, parseManifest, type ArchiveManifest } from './archive-manifest.ts'
import type { S3Bucket } from './s3-bucket.ts'

/** Progress of a restore from an archive. */
export interface ArchiveRestoreProgress {
  readonly disk: string
  readonly bytes: number
  readonly total: number
  readonly elapsedMs: number
  readonly etaMs: number | undefined
}

/** The archived points of a VM, by cycle (from the manifest keys). */
export async function listArchivedPoints(bucket: S3Bucket, prefix: string, vm: string): Promise<number[]> {
  const keys = await bucket.list(manifestPrefix(prefix, vm))
  return keys
    .map((k) => /\/(\d{12})\.json$/.exec(k)?.[1])
    .filter((c): c is string => c !== undefined)
    .map(Number)
    .sort((a, b) => a - b)
}

/** Read and check the manifest of point `cycle` of `vm`. @throws ReceiverError E_ARCHIVE */
export async function readManifest(bucket: S3Bucket, prefix: string, vm: string, cycle: number): Promise<ArchiveManifest> {
  const key = manifestKey(prefix, vm, cycle)
  const m = parseManifest(await bucket.get(key, MAX_MANIFEST_BYTES), `s3://${bucket.bucket}/${key}`)
  if (m.vm !== vm || m.cycle !== cycle) throw new ReceiverError('E_ARCHIVE', `archive manifest s3://${bucket.bucket}/${key} describes VM ${m.vm} cycle ${m.cycle}, not ${vm} cycle ${cycle}`)
  return m
}

/** Restore point `cycle` of `vm` from the archive into the new folder `toDir`. @throws ReceiverError E_ARCHIVE, E_VERIFY, E_CONFIG */
export async function restoreFromArchive(
  bucket: S3Bucket,
  prefix: string,
  vm: string,
  cycle: number,
  toDir: string,
  opts: { logger: Logger; onProgress?: (p: ArchiveRestoreProgress) => void; signal?: AbortSignal; concurrency?: number },
): Promise<{ vm: string; cycle: number; to: string; disks: { name: string; descriptor: string; flat: string; capacity: number; sha256: string }[] }> {
  const m = await readManifest(bucket, prefix, vm, cycle)
  // durable: the folder (its parents fsynced), every file (fsynced, then the folder): a crash after the restore
  // returned never leaves a missing or empty descriptor or configuration file (the flats are datasynced as they are written)
  await mkdirDurable(toDir, 'destination')
  if ((await readdir(toDir)).length > 0) throw new ReceiverError('E_CONFIG', `${toDir} is not empty: restore into a new folder`)
  const total = m.disks.reduce((n, d) => n + d.capacity, 0)
  const t0 = performance.now()
  let done = 0
  const disks = []
  for (const d of m.disks) {
    const flatName = `${d.stem}-flat.vmdk`
    const flat = join(toDir, flatName)
    const fh = await open(flat, 'wx')
    const whole = createHash('sha256')
    try {
      await fh.truncate(d.capacity)
      // chunks are fetched `concurrency` at a time and hashed in order
      const width = Math.max(1, opts.concurrency ?? 4)
      const zero = Buffer.alloc(m.chunkBytes)
      for (let i = 0; i < d.chunks.length; i += width) {
        opts.signal?.throwIfAborted()
        const batch = d.chunks.slice(i, i + width)
        const datas = await Promise.all(
          batch.map(async (h, j) => {
            const len = Math.min(m.chunkBytes, d.capacity - (i + j) * m.chunkBytes)
            if (h === null) return zero.subarray(0, len)
            const data = await bucket.get(chunkKey(prefix, h), len)
            if (data.length !== len || createHash('sha256').update(data).digest('hex') !== h) {
              throw new ReceiverError(
                'E_VERIFY',
                `archive chunk ${h} (disk ${d.name}, offset ${(i + j) * m.chunkBytes}) does not match its digest: the archive is damaged; ${toDir} is left for inspection`,
              )
            }
            return data
          }),
        )
        for (const [j, data] of datas.entries()) {
          whole.update(data)
          if (batch[j] !== null) await writeFully(fh, data, (i + j) * m.chunkBytes)
          done += data.length
        }
        const elapsedMs = performance.now() - t0
        opts.onProgress?.({ disk: d.name, bytes: done, total, elapsedMs, etaMs: (elapsedMs * (total - done)) / Math.max(done, 1) })
      }
      await fh.datasync()
    } finally {
      await fh.close()
    }
    const got = whole.digest('hex')
    if (got !== d.sha256)
      throw new ReceiverError('E_VERIFY', `restored disk ${d.name} of point ${cycle} has sha256 ${got}, the archive recorded ${d.sha256}: the archive is damaged; ${toDir} is left for inspection`)
    const descriptor = join(toDir, `${d.stem}.vmdk`)
    // atomic and durable (fs-util.ts writeFileAtomic): its folder's fsync makes the flat's name durable too
    await writeFileAtomic(descriptor, mirrorDescriptor({ cid: newCid(), capacity: d.capacity, flatFile: flatName, ddb: d.ddb }), 'destination')
    disks.push({ name: d.name, descriptor, flat, capacity: d.capacity, sha256: got })
  }
  for (const f of m.files) {
    const data = await bucket.get(chunkKey(prefix, f.sha256), f.bytes)
    if (createHash('sha256').update(data).digest('hex') !== f.sha256) throw new ReceiverError('E_VERIFY', `archived file ${f.name} does not match its digest`)
    const text = f.name.endsWith('.vmx')
      ? Buffer.from(data.toString('utf8').replace(/^(displayName\s*=\s*")(.*)"\s*$/m, (_m, a: string, name: string) => `${a}${name} (archived point ${cycle})"`))
      : data
    await writeNewFileDurable(join(toDir, f.name), text, 'destination')
  }
  opts.logger.info({ vm, cycle, to: toDir, disks: disks.length }, 'point restored from the archive')
  return { vm, cycle, to: toDir, disks }
}
