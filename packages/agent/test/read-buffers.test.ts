/**
 * Extents are read into buffers kept for the process (extent-source.ts
 * ReadBuffers, issue #17): a buffer is read into again only once nothing
 * reads it — a compressed extent's at once, an uncompressed one's once the
 * socket wrote it. The whole-cycle test scribbles over every buffer the
 * moment it is given back: the mirror is still exactly the frozen view, so
 * no buffer came back while its bytes were still to go on the wire.
 */
import t from 'tap'
import { join } from 'node:path'
import { openChain } from '@grainline/vmdk'
import { replicate, type ReplicateInit } from '../src/replicate.ts'
import { createSampleVm, simulateGuestWrites } from '../src/sample-vm.ts'
import { READ_BUFFERS, ReadBuffers, readPlannedExtents } from '../src/extent-source.ts'
import { initDigests } from '@grainline/protocol'
import type { VmHandle } from '../src/driver.ts'
import { arraySource, buildPlan } from '../src/extent-plan.ts'
import { firstDifference, haveReceiver, memoryLogger, MiB, qemuRaw, scratch, startReceiver, TOKEN } from './helpers.ts'

t.test('ReadBuffers: a buffer given back is handed out again for its length, within the bound', async (t) => {
  const rb = new ReadBuffers(3 * 64 * 1024)
  const a = rb.take(64 * 1024)
  const b = rb.take(64 * 1024)
  t.not(a, b)
  t.equal(rb.reused, 0)
  rb.give(a)
  rb.give(a)
  t.equal(rb.freeBytes, 64 * 1024, 'given twice, kept once')
  t.equal(rb.take(4096).length, 4096, 'another length: a new buffer')
  t.equal(rb.take(64 * 1024), a, 'the same length: the kept one')
  t.equal(rb.reused, 1)
  rb.give(a)
  rb.give(b)
  rb.give(rb.take(128 * 1024))
  t.equal(rb.freeBytes, 2 * 64 * 1024, 'beyond the bound a buffer is let go')
})

t.test('readPlannedExtents reads into the given buffers, and never hands out one still held', async (t) => {
  await initDigests()
  const dir = scratch(t)
  const vm = await createSampleVm(dir, { name: 'rb', disks: [{ sizeBytes: 8 * MiB, fill: 'random' }], seed: 3 })
  const chain = await openChain(vm.disks[0] as string)
  t.teardown(() => chain.close())
  const plan = await buildPlan(arraySource([{ offset: 0, length: 8 * MiB, zero: false }]), { chunkBytes: 256 * 1024 })
  const rb = new ReadBuffers(16 * MiB)
  const held = new Set<Buffer>()
  let n = 0
  for await (const e of readPlannedExtents(chain, plan, { depth: 0, digest: 'xxh64', compression: 'none', buffers: rb, readAhead: 4 })) {
    const raw = e.raw as Buffer
    t.notOk(held.has(raw), `extent ${e.seq}: its buffer is not one still held`)
    t.same(raw, await chain.read(e.offset, e.length), `extent ${e.seq}: the bytes of the view`)
    held.add(raw)
    // every other extent is held to the end, the others are given back at once
    if (n++ % 2 === 1) {
      held.delete(raw)
      e.release?.()
      e.release?.()
    }
  }
  t.ok(rb.reused > 0, `buffers read into again (${rb.reused})`)
})

t.test('a whole cycle with every buffer scribbled over as it comes back: the mirror is the frozen view', { skip: haveReceiver ? false : 'receiver not built' }, async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'scrib', disks: [{ sizeBytes: 64 * MiB, fill: 'random' }], seed: 5 })
  const give = READ_BUFFERS.give.bind(READ_BUFFERS)
  let given = 0
  READ_BUFFERS.give = (b: Buffer): void => {
    given++
    b.fill(0xee)
    give(b)
  }
  t.teardown(() => {
    READ_BUFFERS.give = give
  })
  const reused0 = READ_BUFFERS.reused
  const { logger } = memoryLogger()
  for (let cycle = 1; cycle <= 2; cycle++) {
    const raw = join(dir, `frozen-${cycle}.raw`)
    const init: ReplicateInit = {
      vm: vm.vmxPath,
      to: rx.url,
      token: TOKEN,
      ca: rx.ca,
      stateDir: join(dir, 'agent-state'),
      progress: 'none',
      // small extents, a big window: many extents queued on the socket at once
      maxExtentBytes: 64 * 1024,
      // half of the guest writes compress (text), half do not
      compress: 'lz4',
      afterSnapshot: async (h: VmHandle) => {
        // the frozen view: the layer below the new running delta
        const chain = await openChain(h.disks[0]?.path as string)
        const frozen = chain.layers[1]?.path as string
        await chain.close()
        await qemuRaw(frozen, raw)
        await simulateGuestWrites(h.vmxPath, { bytes: 8 * MiB, seed: cycle, zeroFraction: 0.1 })
      },
    }
    const report = await replicate({ logger }, init)
    t.ok(report.ok, `cycle ${cycle}: ${JSON.stringify(report.vms[0]?.error)}`)
    t.equal(await firstDifference(join(rx.store, 'scrib', 'scrib-flat.vmdk'), raw), -1, `cycle ${cycle}: mirror == frozen view`)
  }
  t.ok(given > 0, `buffers given back (${given})`)
  t.ok(READ_BUFFERS.reused > reused0, `buffers read into again (${READ_BUFFERS.reused - reused0})`)
})
