/**
 * The block digests of a frozen view computed ahead of the comparison
 * (view-block-digests.ts), on a real VMDK chain: every digest equals the
 * digest of the block read alone (zero blocks included, a short last
 * block included), whatever the span and blocks per span; the view
 * digester is fed the whole view; the reading stops at `aheadBlocks`
 * until blocks are taken; an abort and an early close end it cleanly.
 */
import t from 'tap'
import { blockCount, digestOf, initDigests } from '@grainline/protocol'
import { join } from 'node:path'
import { openChain, seekHelper } from '@grainline/vmdk'
import { type ChainView, ViewDigester } from '../src/extent-source.ts'
import { createSampleVm } from '../src/sample-vm.ts'
import { ViewBlockDigests } from '../src/view-block-digests.ts'
import { pollUntil } from '@grainline/test-utils'
import { MiB, scratch } from './helpers.ts'

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')

t.test('digests equal the blocks read one by one; the view digests are complete', async (t) => {
  await initDigests()
  const dir = scratch(t)
  // 5 MiB + 512 bytes: the last 64 KiB block is short; realistic fill has zero and data blocks
  const vm = await createSampleVm(dir, { name: 'v', disks: [{ sizeBytes: 5 * MiB + 512, fill: 'realistic' }], seed: 3 })
  const chain = await openChain(vm.disks[0] as string)
  t.teardown(() => chain.close())
  const whole = await chain.read(0, chain.capacity)
  for (const [blockSize, spanBytes, inFlight] of [
    [64 * 1024, 200 * 1024, 3],
    [64 * 1024, 1, 1],
    [MiB, 2 * MiB, 4],
    [4 * MiB, 2 * MiB, 2],
  ] as const) {
    const view = new ViewDigester(chain.capacity, 'xxh64', 1000, 'sha256')
    const src = new ViewBlockDigests({ chain, depth: 0, blockSize, algorithm: 'xxh64', view, spanBytes, inFlight, aheadBlocks: 3 })
    src.start()
    const n = blockCount(chain.capacity, blockSize)
    let zeros = 0
    for (let b = 0; b < n; b++) {
      const block = whole.subarray(b * blockSize, Math.min((b + 1) * blockSize, whole.length))
      if (block.every((x) => x === 0)) zeros++
      t.equal(hex(await src.next()), hex(digestOf('xxh64', block)), `block ${b} of ${blockSize}`)
    }
    // asking past the end is an internal error, not a hang
    await t.rejects(src.next(), { code: 'E_PROTOCOL' }, `past the last block (${blockSize})`)
    await src.close()
    t.ok(view.complete, `view digests complete (${blockSize})`)
    t.equal(hex(view.fullDigest as Uint8Array), hex(digestOf('sha256', whole)), `certify digest (${blockSize})`)
    t.equal(hex(view.prefixDigest as Uint8Array), hex(digestOf('xxh64', whole.subarray(0, 1000))), `trivial prefix digest (${blockSize})`)
    if (blockSize === 64 * 1024) t.ok(zeros > 0 && zeros < n, `both zero and data blocks (${zeros} of ${n} zero)`)
  }
})

t.test('the reading waits at aheadBlocks; close ends it; an abort rejects next()', async (t) => {
  await initDigests()
  const dir = scratch(t)
  const vm = await createSampleVm(dir, { name: 'w', disks: [{ sizeBytes: 4 * MiB }], seed: 5 })
  const chain = await openChain(vm.disks[0] as string)
  t.teardown(() => chain.close())
  // a view counting the bytes fed: how far the reading has gone
  const view = new ViewDigester(chain.capacity, 'xxh64', 0, 'xxh64')
  const src = new ViewBlockDigests({ chain, depth: 0, blockSize: 64 * 1024, algorithm: 'xxh64', view, spanBytes: 64 * 1024, inFlight: 2, aheadBlocks: 4 })
  src.start()
  await src.next()
  // the producer stops on its own at the bound (polled on its state, no timing)
  await pollUntil(() => (src.waiting ? true : undefined), { intervalMs: 1 })
  t.ok(src.ahead > 4 && src.ahead <= 4 + 1, `read ahead bounded: ${src.ahead} blocks digested and not taken`)
  t.equal(view.position, (1 + src.ahead) * 64 * 1024, 'the view was fed exactly the blocks digested')
  await src.next()
  t.equal(src.ahead, 4, 'one block taken')
  await pollUntil(() => (src.waiting ? true : undefined), { intervalMs: 1 })
  t.equal(src.ahead, 5, 'one more span read when room was made')
  t.ok(view.position < chain.capacity, 'not the whole view')
  await src.close()
  t.notOk(view.complete, 'closed early: the view is not complete')

  const ac = new AbortController()
  const view2 = new ViewDigester(chain.capacity, 'xxh64', 0, undefined)
  const aborted = new ViewBlockDigests({ chain, depth: 0, blockSize: 64 * 1024, algorithm: 'xxh64', view: view2, spanBytes: 64 * 1024, inFlight: 2, aheadBlocks: 1, signal: ac.signal })
  ac.abort(new Error('stop now'))
  aborted.start()
  await t.rejects(aborted.next(), { message: 'stop now' })
  await aborted.close()
})

t.test('holes of a sparse flat base are not read, and the digests are those of a full read; without SEEK_DATA every byte is read', async (t) => {
  await initDigests()
  const dir = scratch(t)
  const vm = await createSampleVm(dir, { name: 'h', disks: [{ sizeBytes: 64 * MiB, fill: 'sparse' }], seed: 11 })
  const chain = await openChain(vm.disks[0] as string)
  t.teardown(() => chain.close())
  const whole = await chain.read(0, chain.capacity)
  const run = async (view: ChainView, unknown: number[]): Promise<{ digests: string[]; full: string; holeBytes: number }> => {
    const digester = new ViewDigester(chain.capacity, 'xxh64', 1000, 'sha256')
    const src = new ViewBlockDigests({ chain: view, depth: 0, blockSize: MiB, algorithm: 'xxh64', view: digester, spanBytes: 2 * MiB, aheadBlocks: 8, onUnknownHoles: (b) => unknown.push(b) })
    src.start()
    const digests: string[] = []
    for (let b = 0; b < 64; b++) digests.push(hex(await src.next()))
    await src.close()
    return { digests, full: hex(digester.fullDigest as Uint8Array), holeBytes: src.holeBytes }
  }
  // the oracle: every block read and digested alone
  const expected = Array.from({ length: 64 }, (_, b) => hex(digestOf('xxh64', whole.subarray(b * MiB, (b + 1) * MiB))))
  const unknown: number[] = []
  const sparse = await run(chain, unknown)
  t.same(sparse.digests, expected, 'holes skipped: the same map as a full read')
  t.equal(sparse.full, hex(digestOf('sha256', whole)), 'certify digest of the whole view')
  t.ok(sparse.holeBytes >= 32 * MiB && sparse.holeBytes % (2 * MiB) === 0, `most of the sparse disk not read (${sparse.holeBytes / MiB} MiB)`)
  t.same(unknown, [], 'SEEK_DATA answered: nothing logged')
  // a view without dataRanges (as before): every byte read, the same digests
  const blind = await run({ capacity: chain.capacity, read: chain.read.bind(chain), readInto: chain.readInto.bind(chain) }, unknown)
  t.same(blind.digests, expected)
  t.equal(blind.holeBytes, 0)
  // no SEEK_DATA here (the helper cannot start): told once, every byte read, the same digests
  const saved = seekHelper.command
  seekHelper.command = join(dir, 'no-python3-here')
  t.teardown(() => {
    seekHelper.command = saved
    seekHelper.missing = false
  })
  const fallback = await run(chain, unknown)
  t.same(fallback.digests, expected, 'fallback: the same map')
  t.equal(fallback.holeBytes, 0, 'fallback: every byte read')
  t.same(unknown, [64 * MiB], 'fallback: told once, with the bytes concerned')
})

t.test('a slice of the view (--scrub): the digests of blocks fromBlock…toBlock only, holes not read, nothing asked beyond the slice, no view digester', async (t) => {
  await initDigests()
  const dir = scratch(t)
  const vm = await createSampleVm(dir, { name: 's', disks: [{ sizeBytes: 64 * MiB + 4096, fill: 'sparse' }], seed: 13 })
  const chain = await openChain(vm.disks[0] as string)
  t.teardown(() => chain.close())
  const whole = await chain.read(0, chain.capacity)
  const asked: Array<[number, number]> = []
  const view: ChainView = {
    capacity: chain.capacity,
    read: chain.read.bind(chain),
    readInto: chain.readInto.bind(chain),
    dataRanges: (offset, length, o) => {
      asked.push([offset, offset + length])
      return chain.dataRanges(offset, length, o)
    },
  }
  const n = blockCount(chain.capacity, MiB)
  for (const [from, to] of [
    [3, 11],
    [60, n],
    [5, 6],
    [7, 7],
  ] as const) {
    asked.length = 0
    const src = new ViewBlockDigests({ chain: view, depth: 0, blockSize: MiB, algorithm: 'xxh64', fromBlock: from, toBlock: to, spanBytes: 2 * MiB, aheadBlocks: 2 })
    src.start()
    for (let b = from; b < to; b++) t.equal(hex(await src.next()), hex(digestOf('xxh64', whole.subarray(b * MiB, Math.min((b + 1) * MiB, whole.length)))), `block ${b} of the slice ${from}–${to}`)
    await t.rejects(src.next(), { code: 'E_PROTOCOL' }, `past the slice ${from}–${to}`)
    await src.close()
    t.ok(
      asked.every(([a, e]) => a >= from * MiB && e <= Math.min(to * MiB, chain.capacity)),
      `data ranges asked within the slice ${from}–${to}: ${JSON.stringify(asked)}`,
    )
    if (to - from >= 8) t.ok(src.holeBytes > 0, `holes of the slice ${from}–${to} not read (${src.holeBytes / MiB} MiB)`)
  }
})
