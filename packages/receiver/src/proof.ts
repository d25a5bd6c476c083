/**
 * When a disk was last fully proven (issue #13, `grainline status`): a
 * certify that matched, a resync that compared every block read from the
 * mirror (kept-map-update.ts), or a scrub rotation — clean BlockChecks whose
 * blocks, taken in order, cover the disk from block 0 to its last block
 * (SPEC §5.6; the agent's `--scrub N` checks 1/N of the disk per cycle in
 * that order). The receiver sees BlockChecks only, not why they were sent:
 * a check that does not continue the rotation (a `--verify changed` of
 * scattered blocks) leaves it as it is; one starting at block 0 restarts
 * it. So a rotation is never claimed that did not happen; one may be
 * noticed a rotation late. Pure.
 */
import { blockCount } from '@grainline/protocol'
import type { ProvenRecord, ScrubRun } from './state-file.ts'

/** The blocks of a BlockCheck (u64le, ascending) as a run `[from, to)`, or undefined when they are not consecutive. */
export function blockRun(blocks: Uint8Array): { from: number; to: number } | undefined {
  const n = blocks.length / 8
  if (n < 1) return undefined
  const v = new DataView(blocks.buffer, blocks.byteOffset, blocks.byteLength)
  const from = Number(v.getBigUint64(0, true))
  for (let i = 1; i < n; i++) if (Number(v.getBigUint64(i * 8, true)) !== from + i) return undefined
  return { from, to: from + n }
}

/**
 * The scrub rotation and proof after a BlockCheck of `run` (undefined: not
 * consecutive) with verdict `ok` on a disk of `capacity` at `cycle`.
 */
export function scrubStep(
  prev: { readonly scrubRun?: ScrubRun; readonly proven?: ProvenRecord },
  check: { readonly run: { from: number; to: number } | undefined; readonly blockSize: number; readonly ok: boolean; readonly at: string },
  capacity: number,
  cycle: number,
): { scrubRun: ScrubRun | undefined; proven: ProvenRecord | undefined } {
  const { run, blockSize, ok, at } = check
  if (!ok) return { scrubRun: undefined, proven: prev.proven }
  const cur = prev.scrubRun
  let next: ScrubRun | undefined = cur
  if (run !== undefined) {
    if (cur !== undefined && cur.blockSize === blockSize && run.from === cur.next) next = { ...cur, next: run.to }
    else if (run.from === 0) next = { blockSize, next: run.to, since: at }
  }
  if (next !== undefined && next.next >= blockCount(capacity, next.blockSize)) return { scrubRun: undefined, proven: { kind: 'scrub', at, cycle } }
  return { scrubRun: next, proven: prev.proven }
}
