import type { ExtentLine } from './descriptor.ts'
import { type OpenChainOptions, openChain } from './chain.ts'
import { FlatExtent } from './extent.ts'

/** One extent of a layer, as `grainline info` prints it. */
export interface ExtentInfo extends ExtentLine {
  /** resolved local path of the extent file */
  path?: string
  /** flat | zero | hosted | cowd | sesparse */
  format: string
  /** size of the extent file in bytes */
  fileBytes?: number
  /** grain size in bytes (sparse extents) */
  grainSize?: number
}

/** One layer of a chain (json-able). */
export interface LayerInfo {
  depth: number
  path: string
  file: string
  createType: string
  version: number
  cid: string
  parentCid: string
  /** false when this layer's parentCID is `fffffffe` (the link to its parent proves nothing) */
  cidVerified: boolean
  parentFileNameHint?: string
  changeTrackPath?: string
  /** where the descriptor lives */
  descriptor: 'text' | 'embedded' | 'none'
  capacity: number
  sparse: boolean
  grainSize?: number
  extents: ExtentInfo[]
  ddb: Record<string, string>
  /** bytes of data this layer alone holds (grain tables; a flat layer: its flat extents) */
  allocatedBytes?: number
  /** bytes this layer holds as zero grains (or ZERO extents) */
  zeroBytes?: number
  /** number of coalesced ranges held */
  ranges?: number
}

/** What `grainline info` prints (json-able). */
export interface ChainInfo {
  path: string
  capacity: number
  /** false when some link of the chain could not be checked (see `LayerInfo.cidVerified`) */
  cidVerified: boolean
  layers: LayerInfo[]
}

/**
 * Describe a disk and its chain: createType, capacity, CIDs, extents, and per sparse
 * layer the grain size and how much it holds.
 */
export async function describeChain(path: string, opts: OpenChainOptions & { held?: boolean } = {}): Promise<ChainInfo> {
  const chain = await openChain(path, opts)
  try {
    const layers: LayerInfo[] = []
    for (let d = 0; d < chain.layers.length; d++) {
      const l = chain.layers[d]
      if (l === undefined) continue
      const lines = l.descriptor.extents
      const extents: ExtentInfo[] = l.extents.map((e, i) => {
        const line = lines[i] ?? { access: 'RW' as const, sectors: e.size / 512, type: e.format.toUpperCase() }
        const info: ExtentInfo = { ...line, format: e.format }
        if (e.file !== undefined) {
          info.path = e.file.path
          info.fileBytes = e.file.size
        }
        if (e.sparse) info.grainSize = e.grainSize
        return info
      })
      const info: LayerInfo = {
        depth: d,
        path: l.path,
        file: l.file,
        createType: l.createType,
        version: l.descriptor.version,
        cid: l.cid,
        parentCid: l.parentCid,
        cidVerified: l.cidVerified,
        descriptor: l.descriptorKind,
        capacity: l.capacity,
        sparse: l.sparse,
        extents,
        ddb: Object.fromEntries(l.descriptor.ddb),
      }
      const hint = l.parentFileNameHint
      if (hint !== undefined) info.parentFileNameHint = hint
      const ctk = l.descriptor.changeTrackPath
      if (ctk !== undefined) info.changeTrackPath = ctk
      const g = l.grainSize
      if (g !== undefined) info.grainSize = g
      if (opts.held !== false) {
        if (l.sparse) {
          let data = 0
          let zero = 0
          let ranges = 0
          for await (const r of chain.changedRanges(d)) {
            ranges++
            if (r.zero) zero += r.length
            else data += r.length
          }
          info.allocatedBytes = data
          info.zeroBytes = zero
          info.ranges = ranges
        } else {
          const data = l.extents.filter((e) => e instanceof FlatExtent).reduce((s, e) => s + e.size, 0)
          info.allocatedBytes = data
          info.zeroBytes = l.capacity - data
          info.ranges = l.extents.length
        }
      }
      layers.push(info)
    }
    return { path, capacity: chain.capacity, cidVerified: chain.cidVerified, layers }
  } finally {
    await chain.close()
  }
}
