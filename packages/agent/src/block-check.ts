/**
 * `--verify changed` (SPEC §5.6 BlockCheck): after the commit, the digests of
 * every block the cycle wrote — read from the frozen source view — are
 * compared with the same blocks read back from the mirror. Cost O(blocks
 * written), not O(disk). A mismatch is recorded in the disk's report
 * (`E_CHECK`, `blockCheck.ok = false`); the cycle then marks the disk
 * diverged and the next cycle resyncs exactly the differing blocks.
 */
import { createDigest, DEFAULT_BLOCK_SIZE, DEFAULT_LIMITS, DigestLengths, MAX_MAP_BLOCKS, blockCount } from '@grainline/protocol'
import type { DiskWork } from './disk-work.ts'
import { AgentError } from './errors.ts'
import { planExtents } from './extent-plan.ts'
import { refusalError } from './receiver-client.ts'
import type { VerifyOptions } from './verification.ts'

/** The blocks the cycle wrote, ascending: a resync's differing blocks, else every block an extent of the plan covers. */
async function* writtenBlocks(w: DiskWork, blockSize: number): AsyncGenerator<number> {
  if (w.mode === 'resync') {
    const bits = w.touched
    if (bits === undefined) return
    const n = blockCount(w.chain.capacity, w.blockSize)
    // a resync's map blocks are the blocks checked (its block size may differ from the option's)
    for (let b = 0; b < n; b++) if (((bits[b >> 3] as number) & (1 << (b & 7))) !== 0) yield b
    return
  }
  let last = -1
  for await (const e of planExtents(w.plan, 0)) {
    const first = Math.floor(e.offset / blockSize)
    const end = Math.floor((e.offset + e.length - 1) / blockSize)
    for (let b = Math.max(first, last + 1); b <= end; b++) yield b
    last = Math.max(last, end)
  }
}

/** Compare the blocks `w`'s cycle wrote with the mirror; record the outcome in its report. */
export async function checkChangedBlocks(w: DiskWork, opts: VerifyOptions): Promise<void> {
  const blockSize = w.mode === 'resync' ? w.blockSize : (opts.blockSize ?? DEFAULT_BLOCK_SIZE)
  const capacity = w.chain.capacity
  const len = DigestLengths[opts.digest]
  const per = Math.max(1, Math.min(MAX_MAP_BLOCKS, Math.floor(((opts.maxMessageBytes ?? DEFAULT_LIMITS.maxMessageBytes) - 256) / (8 + len))))
  let blocks = 0
  let mismatched = 0
  const first: number[] = []
  const flush = async (batch: number[]): Promise<void> => {
    const index = new Uint8Array(batch.length * 8)
    const iv = new DataView(index.buffer)
    const digests = new Uint8Array(batch.length * len)
    for (const [i, b] of batch.entries()) {
      opts.signal?.throwIfAborted()
      iv.setBigUint64(i * 8, BigInt(b), true)
      const offset = b * blockSize
      const data = await w.chain.read(offset, Math.min(blockSize, capacity - offset), { depth: w.depth })
      digests.set(createDigest(opts.digest).update(data).digest(), i * len)
    }
    const r = await opts.client.blockCheck({ disk: w.handle, blockSize, blocks: index, digests })
    if (!r.ok) throw refusalError(`block check of ${w.name}`, r.refusal)
    const listed = new Set(batch)
    const mv = new DataView(r.value.mismatched.buffer, r.value.mismatched.byteOffset, r.value.mismatched.byteLength)
    for (let i = 0; i < r.value.mismatched.length; i += 8) {
      const b = Number(mv.getBigUint64(i, true))
      if (!listed.has(b)) throw new AgentError('E_PROTOCOL', `BlockCheckResult of ${w.name} names block ${b}, which was not checked`)
      if (first.length < 8) first.push(b)
      mismatched++
    }
    blocks += batch.length
  }
  let batch: number[] = []
  for await (const b of writtenBlocks(w, blockSize)) {
    batch.push(b)
    if (batch.length === per) {
      await flush(batch)
      batch = []
    }
  }
  if (batch.length > 0) await flush(batch)
  w.report.blockCheck = { ok: mismatched === 0, blockSize, blocks, mismatched }
  if (mismatched > 0) {
    w.report.error = {
      code: 'E_CHECK',
      message: `block check failed on ${w.name}: ${mismatched} of the ${blocks} blocks the cycle wrote differ in the mirror (blocks ${first.join(', ')}${mismatched > first.length ? ', …' : ''} of ${blockSize} bytes)`,
    }
    opts.log.error({ disk: w.name, blocks, mismatched, first }, 'block check failed')
  } else {
    opts.log.info({ disk: w.name, blocks, blockSize }, 'block check ok')
  }
}
