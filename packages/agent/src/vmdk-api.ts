/**
 * The part of @grainline/vmdk the agent uses (docs/INTERNALS.md), loaded once.
 * Typed here from the contract so the agent builds while the reader grows.
 */
export interface VmdkLayer {
  readonly path: string
  readonly file: string
  readonly cid: string
  readonly parentCid: string
  readonly createType: string
  readonly capacity: number
  readonly sparse: boolean
  readonly descriptor: { readonly ddb: ReadonlyMap<string, string>, readonly parentFileNameHint?: string | undefined }
}

export interface VmdkChain {
  readonly capacity: number
  readonly layers: readonly VmdkLayer[]
  changedRanges(depth: number, opts?: { signal?: AbortSignal }): AsyncIterable<{ offset: number, length: number, zero: boolean }>
  read(offset: number, length: number, opts?: { depth?: number }): Promise<Buffer>
  map(opts?: { depth?: number }): AsyncIterable<{ start: number, length: number, depth: number, present: boolean, zero: boolean, data: boolean }>
  close(): Promise<void>
}

export interface VmdkWriter {
  write(offset: number, data: Uint8Array): Promise<void>
  writeZeroes(offset: number, length: number): Promise<void>
  close(): Promise<void>
}

export type DeltaFormat = 'sesparse' | 'vmfssparse' | 'hosted'

export interface VmdkApi {
  openChain(path: string, opts?: { pathMap?: Record<string, string>, maxDepth?: number }): Promise<VmdkChain>
  createFlatDisk(path: string, capacity: number, opts?: { createType?: 'vmfs' | 'monolithicFlat', ddb?: Record<string, string> }): Promise<void>
  createDelta(parentPath: string, childPath: string, opts: { format: DeltaFormat }): Promise<void>
  openWriter(path: string): Promise<VmdkWriter>
  consolidate(childPath: string, opts?: { pathMap?: Record<string, string> }): Promise<void>
}

let loaded: Promise<VmdkApi> | undefined

/** @grainline/vmdk, loaded on first use. */
export function vmdk (): Promise<VmdkApi> {
  loaded ??= import('@grainline/vmdk').then((m) => {
    const api = m as unknown as Partial<VmdkApi>
    for (const f of ['openChain', 'createFlatDisk', 'createDelta', 'openWriter', 'consolidate'] as const) {
      if (typeof api[f] !== 'function') throw new Error(`@grainline/vmdk does not export ${f}`)
    }
    return api as VmdkApi
  })
  return loaded
}
