/**
 * Overlay the runs of a chain's layers into `qemu-img map`-style entries (pure).
 * Per window, each layer's runs cover the window in order; where a layer holds
 * nothing (`None`) the next layer shows through. Cursors only move forward, and
 * entries that continue the previous one are merged in place, so an object is
 * only created per entry emitted.
 */
import { type Run, RunState, FlatExtent } from './extent.ts'
import type { Layer, LayerRun } from './layer.ts'
import type { MapEntry } from './chain.ts'

export class MapMerger {
  readonly #layers: readonly Layer[]
  // the entry still open (may grow into the next window); pLen 0 = none
  #pStart = 0
  #pLen = 0
  #pDepth = 0
  #pPresent = false
  #pZero = false
  #pData = false
  /** file offset, -1 = none */
  #pOff = -1
  /** which layer+extent the offset belongs to (offsets of different files never merge) */
  #pKey = -1
  #out: MapEntry[] = []
  #runs: ReadonlyArray<readonly LayerRun[]> = []
  readonly #cur: number[]

  /** `layers[0]` is the layer the map is taken at (depths are relative to it). */
  constructor(layers: readonly Layer[]) {
    this.#layers = layers
    this.#cur = new Array<number>(layers.length).fill(0)
  }

  /** Entries completed by the window [start, start+length) given each layer's runs over it. */
  window(runs: ReadonlyArray<readonly LayerRun[]>, start: number, length: number): MapEntry[] {
    this.#runs = runs
    this.#cur.fill(0)
    this.#out = []
    this.#fill(0, start, start + length)
    return this.#out
  }

  /** The last entry, once every window is done. */
  finish(): MapEntry | undefined {
    if (this.#pLen === 0) return undefined
    const e = this.#entry()
    this.#pLen = 0
    return e
  }

  #fill(d: number, start: number, end: number): void {
    const runs = this.#runs[d] as readonly LayerRun[]
    let k = this.#cur[d] as number
    while (k < runs.length && (runs[k] as Run).start + (runs[k] as Run).length <= start) k++
    let pos = start
    while (pos < end) {
      const r = runs[k]
      if (r === undefined) throw new Error(`internal: layer ${d} runs do not cover ${pos}`)
      const rEnd = r.start + r.length
      const e = Math.min(end, rEnd)
      if (r.state === RunState.None) {
        if (d + 1 < this.#layers.length) this.#fill(d + 1, pos, e)
        else this.#emit(pos, e - pos, d, false, true, false, -1, -1)
      } else if (r.state === RunState.Zero) {
        this.#emit(pos, e - pos, d, true, true, false, -1, -1)
      } else {
        const ext = this.#layers[d]?.extents[r.ext]
        // QEMU asks the protocol layer too: a hole in a flat file is data+zero
        const hole = ext instanceof FlatExtent && ext.allHole
        this.#emit(pos, e - pos, d, true, hole, true, r.off >= 0 ? r.off + (pos - r.start) : -1, d * 65536 + r.ext)
      }
      pos = e
      if (e === rEnd) k++
    }
    this.#cur[d] = k
  }

  #emit(start: number, length: number, depth: number, present: boolean, zero: boolean, data: boolean, off: number, key: number): void {
    if (
      this.#pLen > 0 &&
      this.#pDepth === depth &&
      this.#pPresent === present &&
      this.#pZero === zero &&
      this.#pData === data &&
      this.#pStart + this.#pLen === start &&
      this.#pOff < 0 === off < 0 &&
      (off < 0 || (this.#pKey === key && this.#pOff + this.#pLen === off))
    ) {
      this.#pLen += length
      return
    }
    if (this.#pLen > 0) this.#out.push(this.#entry())
    this.#pStart = start
    this.#pLen = length
    this.#pDepth = depth
    this.#pPresent = present
    this.#pZero = zero
    this.#pData = data
    this.#pOff = off
    this.#pKey = key
  }

  #entry(): MapEntry {
    const e: MapEntry = { start: this.#pStart, length: this.#pLen, depth: this.#pDepth, present: this.#pPresent, zero: this.#pZero, data: this.#pData }
    if (this.#pOff >= 0) e.offset = this.#pOff
    return e
  }
}
