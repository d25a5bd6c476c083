/**
 * ViewDigester.finishFrom (the trivial check's prefix and certify, read from
 * the frozen view while an incremental ships): its step follows the span, so
 * that a 16 MiB prefix is not read into 12 MiB of fresh buffers (issue #17).
 */
import t from 'tap'
import { openChain } from '@grainline/vmdk'
import { digestOf, initDigests } from '@grainline/protocol'
import { createSampleVm } from '../src/sample-vm.ts'
import { type ChainView, ViewDigester, viewStep } from '../src/extent-source.ts'
import { MiB, scratch } from './helpers.ts'

t.test('viewStep: a sixteenth of the span, between 256 KiB and 4 MiB', async (t) => {
  t.equal(viewStep(16 * MiB), 1 * MiB, 'the default trivial prefix')
  t.equal(viewStep(64 * MiB), 4 * MiB)
  t.equal(viewStep(16 * 1024 * MiB), 4 * MiB, 'a certify of a large disk')
  t.equal(viewStep(1 * MiB), 256 * 1024)
  t.equal(viewStep(20 * MiB), 1 * MiB)
})

t.test("the prefix and certify digests read in the span's steps equal the digests of the view", async (t) => {
  await initDigests()
  const dir = scratch(t)
  const vm = await createSampleVm(dir, { name: 'vd', disks: [{ sizeBytes: 80 * MiB, fill: 'realistic' }], seed: 11 })
  const chain = await openChain(vm.disks[0] as string)
  t.teardown(() => chain.close())
  const reads: number[] = []
  // the real chain, its read lengths recorded
  const view: ChainView = {
    capacity: chain.capacity,
    read: async (offset, length, opts) => {
      reads.push(length)
      return await chain.read(offset, length, opts)
    },
    readInto: async (buf, bufOffset, offset, length, opts) => {
      reads.push(length)
      await chain.readInto(buf, bufOffset, offset, length, opts)
    },
  }
  const whole = await chain.read(0, chain.capacity)

  const prefix = new ViewDigester(chain.capacity, 'xxh64', 16 * MiB, undefined)
  await prefix.finishFrom(view, 0)
  t.same(prefix.prefixDigest, digestOf('xxh64', whole.subarray(0, 16 * MiB)))
  t.same(
    reads,
    Array.from({ length: 16 }, () => 1 * MiB),
    'the 16 MiB prefix in 1 MiB reads',
  )

  reads.length = 0
  const certify = new ViewDigester(chain.capacity, 'xxh64', 16 * MiB, 'sha256')
  await certify.finishFrom(view, 0)
  t.same(certify.prefixDigest, prefix.prefixDigest)
  t.same(certify.fullDigest, digestOf('sha256', whole))
  t.same(
    reads,
    Array.from({ length: 20 }, () => 4 * MiB),
    'a certify of 80 MiB in 4 MiB reads',
  )
})
