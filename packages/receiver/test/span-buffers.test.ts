/**
 * The receiver's kept read buffers (span-buffers.ts): a trivial check or
 * certify (digest-file.ts) and the BlockChecks after it read through the same
 * few buffers instead of faulting fresh ones in each time; at most
 * SPARE_SPANS_MAX are kept, larger ones never.
 */
import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { scratchDir } from '@grainline/test-utils'
import { digestFile } from '../src/digest-file.ts'
import { giveSpans, SPAN_BYTES, SPARE_SPANS_MAX, spareSpans, takeSpans } from '../src/span-buffers.ts'

const MiB = 1024 * 1024

/** Empty the kept buffers (the suite's earlier readers may have left some). */
function drain(): void {
  takeSpans(spareSpans(), SPAN_BYTES)
}

t.test('buffers given back are taken again, at most SPARE_SPANS_MAX kept, larger ones never', async (t) => {
  drain()
  const first = takeSpans(3, 64 * 1024)
  t.ok(
    first.every((b) => b.length === SPAN_BYTES),
    'a short read still gets a span buffer (keepable)',
  )
  giveSpans(first)
  t.equal(spareSpans(), 3)
  const again = takeSpans(3, SPAN_BYTES)
  t.same(
    again.map((b) => first.includes(b)),
    [true, true, true],
    'the same buffers again',
  )
  giveSpans([...again, ...takeSpans(SPARE_SPANS_MAX, SPAN_BYTES)])
  t.equal(spareSpans(), SPARE_SPANS_MAX, 'bounded')
  giveSpans(again)
  t.equal(spareSpans(), SPARE_SPANS_MAX, 'a buffer already kept is not kept twice')
  drain()
  const big = takeSpans(1, SPAN_BYTES + 1)
  t.equal(big[0]?.length, SPAN_BYTES + 1, 'a larger read gets its own size')
  giveSpans(big)
  t.equal(spareSpans(), 0, 'and it is not kept')
})

t.test('digestFile reads through the kept buffers and gives them back', async (t) => {
  const dir = scratchDir(t)
  const path = join(dir, 'mirror-flat.vmdk')
  const data = Buffer.alloc(10 * MiB + 123)
  for (let i = 0; i < data.length; i += 4096) data[i] = (i / 4096) & 0xff
  writeFileSync(path, data)
  drain()
  const kept = takeSpans(3, SPAN_BYTES)
  giveSpans(kept)
  const seen = new Set<ArrayBufferLike>()
  const h = createHash('sha256')
  const fed = await digestFile(path, data.length, (b) => {
    seen.add(b.buffer)
    h.update(b)
  })
  t.equal(fed, data.length)
  t.equal(h.digest('hex'), createHash('sha256').update(data).digest('hex'), 'the same digest')
  t.ok(
    [...seen].every((ab) => kept.some((k) => k.buffer === ab)),
    'every chunk was read into a kept buffer (none faulted in fresh)',
  )
  t.equal(spareSpans(), 3, 'given back for the next reader')
})
