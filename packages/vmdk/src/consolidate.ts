import { readdir, realpath, unlink } from 'node:fs/promises'
import { dirname, join, relative, resolve } from 'node:path'
import { VmdkError, isVmdkError } from './errors.ts'
import { openChain } from './chain.ts'
import { type Layer, type PathMap, openLayer, resolveVmdkPath } from './layer.ts'
import { openWriter, persistDescriptor } from './writer.ts'
import { syncDir } from './atomic-file.ts'

export interface ConsolidateOptions {
  pathMap?: PathMap
  signal?: AbortSignal
}

/** Bytes copied per step (bounded memory). */
const CHUNK = 8 * 1024 * 1024

/**
 * Merge the delta `childPath` into its parent, as deleting a snapshot does:
 *  1. copy every range the child holds into the parent (zero ranges as zeros), fsync;
 *  2. re-point every descriptor in the child's folder whose parent is the child at the
 *     parent (parentFileNameHint + the parent's new CID), each replaced atomically;
 *  3. give the parent that new CID (atomic descriptor replace);
 *  4. delete the child's files.
 * A crash during 1 leaves the chain readable with the same content (the child still
 * covers every range written); a crash between 2 and 3 is reported by openChain as
 * E_CHAIN_CID on the grandchild and is repaired by rerunning the same steps by hand.
 */
export async function consolidate (childPath: string, opts: ConsolidateOptions = {}): Promise<{ parentPath: string, cid: string, repointed: string[] }> {
  const pm = opts.pathMap !== undefined ? { pathMap: opts.pathMap } : {}
  const chain = await openChain(childPath, pm)
  let child: Layer | undefined
  let parentPath: string
  const childFiles: string[] = []
  try {
    child = chain.layers[0] as Layer
    const parent = chain.layers[1]
    if (parent === undefined) throw new VmdkError('E_CHAIN_MISSING', 'disk has no parent to consolidate into', childPath)
    parentPath = parent.path
    childFiles.push(child.path)
    if (child.descriptorKind === 'text') {
      for (const e of child.extents) if (e.file !== undefined) childFiles.push(e.file.path)
      const ctk = child.descriptor.changeTrackPath
      if (ctk !== undefined) childFiles.push(resolveVmdkPath(child.path, ctk, opts.pathMap))
    }
    const w = await openWriter(parent.path, { ...pm, newCid: 'close' })
    let cid: string
    try {
      for await (const r of chain.changedRanges(0, opts.signal !== undefined ? { signal: opts.signal } : {})) {
        if (r.zero) { await w.writeZeroes(r.offset, r.length); continue }
        for (let p = 0; p < r.length; p += CHUNK) {
          if (opts.signal?.aborted === true) throw new VmdkError('E_ABORTED', 'consolidate aborted', childPath)
          const n = Math.min(CHUNK, r.length - p)
          await w.write(r.offset + p, await chain.read(r.offset + p, n, { depth: 0 }))
        }
      }
      cid = await w.renewCid()
      await w.flush()
      // re-point grandchildren before the parent's CID changes (see above)
      const repointed = await repointChildren(child.path, parent.path, cid, opts.pathMap)
      await w.close()
      await chain.close()
      for (const f of childFiles) await unlink(f).catch((err: unknown) => { if ((err as { code?: string }).code !== 'ENOENT') throw err })
      await syncDir(dirname(resolve(child.path)))
      return { parentPath, cid, repointed }
    } catch (err) {
      await w.close().catch(() => {})
      throw err
    }
  } finally {
    await chain.close()
  }
}

/** Point every descriptor in `oldParent`'s folder whose parent is `oldParent` at `newParent`. */
async function repointChildren (oldParent: string, newParent: string, cid: string, pathMap?: PathMap): Promise<string[]> {
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
      try { real = await realpath(hp) } catch { continue }
      if (real !== target) continue
      await persistDescriptor(layer, layer.descriptor.withParent(relative(dirname(resolve(p)), resolve(newParent)), cid))
      out.push(p)
    } finally {
      await layer.close()
    }
  }
  return out
}
