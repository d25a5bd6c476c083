/**
 * The part of @grainline/vmdk the agent uses (docs/INTERNALS.md), typed from
 * the contract.
 */
import { consolidate, createDelta, createFlatDisk, openChain, openWriter } from '@grainline/vmdk'

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
  consolidate(childPath: string, opts?: { pathMap?: Record<string, string> }): Promise<unknown>
}

const api: VmdkApi = { openChain, createFlatDisk, createDelta, openWriter, consolidate }

/**
 * @grainline/vmdk seen through the contract above. Assigning the real
 * functions to `VmdkApi` makes the compiler check the contract.
 */
export function vmdk (): Promise<VmdkApi> {
  return Promise.resolve(api)
}
