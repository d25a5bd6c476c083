import { readdir, realpath, unlink } from 'node:fs/promises'
import { dirname, join, relative, resolve } from 'node:path'
import { VmdkError, isVmdkError } from './errors.ts'
import { formatCid, randomCid, sameCid } from './descriptor.ts'
import { openChain, type DiskChain } from './chain.ts'
import { type Layer, type PathMap, openLayer, resolveVmdkPath } from './layer.ts'
import { type DescriptorEncodingOption, openWriter, persistDescriptor } from './writer.ts'
import { syncDir } from './atomic-file.ts'

export interface ConsolidateOptions {
  pathMap?: PathMap
  signal?: AbortSignal
  /** how changed descriptors are written (see `OpenWriterOptions.descriptorEncoding`) @default 'utf-8' */
  descriptorEncoding?: DescriptorEncodingOption
  /**
   * Called synchronously after each step of the merge completes (steps 0, 2, 3
   * and 4 are durable by then; copied data is durable at `parent-flushed`).
   */
  onProgress?: (p: ConsolidateProgress) => void
}

/**
 * A step of {@link consolidate} that has just completed: `cid-recorded` (0),
 * `copied` (1, once per range or 8 MiB chunk; `bytes` so far, zero ranges
 * included at their length; `dataBytes` so far, the data read and written
 * only — what the merge's time goes into), `parent-flushed`
 * (end of 1), `repointed` (2, per descriptor; `path`), `parent-cid` (3), `removed` (4).
 */
export interface ConsolidateProgress {
  readonly step: 'cid-recorded' | 'copied' | 'parent-flushed' | 'repointed' | 'parent-cid' | 'removed'
  readonly bytes?: number
  /** `copied`, `parent-flushed`: the data bytes copied so far (zero ranges, written as zeroes, not counted) */
  readonly dataBytes?: number
  readonly path?: string
}

/** Bytes copied per step (bounded memory). */
const CHUNK = 8 * 1024 * 1024

/**
 * DDB key recording, in the child, the CID its parent will carry once the merge is
 * done, so that a rerun after a crash reuses it instead of picking another one.
 */
export const CONSOLIDATE_CID_KEY = 'ddb.grainline.consolidateCID'

/** Result of {@link consolidate}. */
export interface ConsolidateResult {
  parentPath: string
  /** the parent's new CID */
  cid: string
  /** descriptors re-pointed from the child to the parent */
  repointed: string[]
}

/** Persist a descriptor change of a layer opened read-only (reopens embedded ones writable). */
async function updateDescriptor(layer: Layer, fn: (l: Layer) => ReturnType<Layer['descriptor']['withDdb']>, pathMap: PathMap | undefined, enc: DescriptorEncodingOption): Promise<void> {
  if (layer.descriptorKind === 'text') {
    await persistDescriptor(layer, fn(layer), enc)
    return
  }
  const rw = await openLayer(layer.path, { ...(pathMap !== undefined ? { pathMap } : {}), writable: true })
  try {
    await persistDescriptor(rw, fn(rw), enc)
  } finally {
    await rw.close()
  }
}

function childFilesOf(child: Layer, pathMap?: PathMap): string[] {
  const files = [child.path]
  if (child.descriptorKind === 'text') {
    for (const e of child.extents) if (e.file !== undefined) files.push(e.file.path)
    const ctk = child.descriptor.changeTrackPath
    if (ctk !== undefined) files.push(resolveVmdkPath(child.path, ctk, pathMap))
  }
  return files
}

async function removeFiles(files: readonly string[]): Promise<void> {
  // descriptor first: a crash leaves orphaned extents, never a descriptor naming missing files
  for (const f of files)
    await unlink(f).catch((err: unknown) => {
      if ((err as { code?: string }).code !== 'ENOENT') throw err
    })
  if (files[0] !== undefined) await syncDir(dirname(resolve(files[0])))
}

/**
 * Merge the delta `childPath` into its parent, as deleting a snapshot does:
 *  0. record the parent's future CID in the child's DDB ({@link CONSOLIDATE_CID_KEY});
 *  1. copy every range the child holds into the parent (zero ranges as zeros), fsync;
 *  2. re-point every descriptor in the child's folder whose parent is the child at the
 *     parent (parentFileNameHint + the new CID), each replaced atomically;
 *  3. give the parent the new CID (atomic descriptor replace);
 *  4. delete the child's files.
 * Crash-reasonable: during 0–1 the chain through the child reads the same content (the
 * child still covers every range being copied); after a crash anywhere, rerunning
 * `consolidate(childPath)` finishes the job with the recorded CID (between 3 and 4 it
 * only re-points what is left and deletes the child).
 */
export async function consolidate(childPath: string, opts: ConsolidateOptions = {}): Promise<ConsolidateResult> {
  const pm = opts.pathMap !== undefined ? { pathMap: opts.pathMap } : {}
  const enc = opts.descriptorEncoding ?? 'utf-8'
  let chain: DiskChain
  try {
    chain = await openChain(childPath, pm)
  } catch (err) {
    if (isVmdkError(err) && err.code === 'E_CHAIN_CID') {
      const done = await finishInterrupted(childPath, opts.pathMap, enc)
      if (done !== undefined) return done
    }
    throw err
  }
  try {
    const child = chain.layers[0] as Layer
    const parent = chain.layers[1]
    if (parent === undefined) throw new VmdkError('E_CHAIN_MISSING', 'disk has no parent to consolidate into', childPath)
    const files = childFilesOf(child, opts.pathMap)
    let cid = child.descriptor.ddb.get(CONSOLIDATE_CID_KEY)
    if (cid === undefined || !/^[0-9a-f]{8}$/.test(cid) || sameCid(cid, parent.cid)) {
      cid = randomCid()
      const c = cid
      await updateDescriptor(child, (l) => l.descriptor.withDdb(CONSOLIDATE_CID_KEY, c), opts.pathMap, enc)
    }
    opts.onProgress?.({ step: 'cid-recorded' })
    const w = await openWriter(parent.path, { ...pm, newCid: 'close', descriptorEncoding: enc })
    let repointed: string[]
    try {
      let copied = 0
      let data = 0
      for await (const r of chain.changedRanges(0, opts.signal !== undefined ? { signal: opts.signal } : {})) {
        if (r.zero) {
          await w.writeZeroes(r.offset, r.length)
          copied += r.length
          opts.onProgress?.({ step: 'copied', bytes: copied, dataBytes: data })
          continue
        }
        for (let p = 0; p < r.length; p += CHUNK) {
          if (opts.signal?.aborted === true) throw new VmdkError('E_ABORTED', 'consolidate aborted', childPath)
          const n = Math.min(CHUNK, r.length - p)
          await w.write(r.offset + p, await chain.read(r.offset + p, n, { depth: 0 }))
          copied += n
          data += n
          opts.onProgress?.({ step: 'copied', bytes: copied, dataBytes: data })
        }
      }
      await w.renewCid(cid)
      await w.flush()
      opts.onProgress?.({ step: 'parent-flushed', bytes: copied, dataBytes: data })
      // grandchildren first, then the parent's CID (a rerun completes either half)
      repointed = await repointChildren(child.path, parent.path, cid, opts.pathMap, enc, opts.onProgress)
      await w.close()
      opts.onProgress?.({ step: 'parent-cid' })
    } catch (err) {
      await w.abandon().catch(() => {})
      throw err
    }
    await chain.close()
    await removeFiles(files)
    opts.onProgress?.({ step: 'removed' })
    return { parentPath: parent.path, cid, repointed }
  } finally {
    await chain.close()
  }
}

/** A rerun after a crash between steps 3 and 4: the parent already carries the recorded CID. */
async function finishInterrupted(childPath: string, pathMap: PathMap | undefined, enc: DescriptorEncodingOption): Promise<ConsolidateResult | undefined> {
  const pm = pathMap !== undefined ? { pathMap } : {}
  const child = await openLayer(childPath, pm)
  try {
    const cid = child.descriptor.ddb.get(CONSOLIDATE_CID_KEY)
    const hint = child.parentFileNameHint
    if (cid === undefined || hint === undefined) return undefined
    const parentPath = resolveVmdkPath(child.path, hint, pathMap)
    const parent = await openLayer(parentPath, pm)
    const parentCid = parent.cid
    await parent.close()
    if (!sameCid(parentCid, cid)) return undefined
    const repointed = await repointChildren(child.path, parentPath, cid, pathMap, enc)
    await child.close()
    await removeFiles(childFilesOf(child, pathMap))
    return { parentPath, cid: formatCid(cid), repointed }
  } finally {
    await child.close()
  }
}

/** Point every descriptor in `oldParent`'s folder whose parent is `oldParent` at `newParent`. */
async function repointChildren(
  oldParent: string,
  newParent: string,
  cid: string,
  pathMap: PathMap | undefined,
  enc: DescriptorEncodingOption,
  onProgress?: (p: ConsolidateProgress) => void,
): Promise<string[]> {
  const dir = dirname(resolve(oldParent))
  const target = await realpath(oldParent)
  const out: string[] = []
  for (const name of await readdir(dir)) {
    if (!/\.vmdk$/i.test(name)) continue
    const p = join(dir, name)
    let layer: Layer
    try {
      layer = await openLayer(p, { ...(pathMap !== undefined ? { pathMap } : {}), writable: true })
    } catch (err) {
      if (isVmdkError(err)) continue // an extent file or something that is not a disk
      throw err
    }
    try {
      const hint = layer.parentFileNameHint
      if (hint === undefined || layer.descriptorKind === 'none') continue
      const hp = resolveVmdkPath(p, hint, pathMap)
      let real: string
      try {
        real = await realpath(hp)
      } catch {
        continue
      }
      if (real !== target) continue
      await persistDescriptor(layer, layer.descriptor.withParent(relative(dirname(resolve(p)), resolve(newParent)), cid), enc)
      out.push(p)
      onProgress?.({ step: 'repointed', path: p })
    } finally {
      await layer.close()
    }
  }
  return out
}
