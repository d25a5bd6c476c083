/**
 * The batch pipeline's view for a session whose inbox ran dry: `settled()`
 * resolves once every flushed batch is durable (each acked through
 * `onDurable` before it resolves), rejects with a failed batch's error
 * without consuming it (`drain`/`idle` still rethrow it), and the trace
 * tells each batch's way in order (flushed, written, durable). Real folder
 * store, real seed file.
 */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { CycleDigest, createDigest, initDigests } from '@grainline/protocol'
import { scratchDir } from '@grainline/test-utils'
import { ApplyPipeline, type PipelineDisk } from '../src/apply-pipeline.ts'
import type { VmMirror } from '../src/vm-mirror.ts'
import type { ApplyExtent, DiskApply } from '../src/disk-apply.ts'
import { openSeed, pattern, TEST_COMPAT } from './helpers.ts'

const KiB = 1024
const CAP = 512 * KiB
const log = pino({ level: 'silent' })
const compat = TEST_COMPAT

function ext(seq: number): ApplyExtent {
  const data = pattern(64 * KiB, seq + 1)
  return { seq, offset: seq * 64 * KiB, length: 64 * KiB, zero: false, data, digest: createDigest('sha256').update(data).digest() }
}

const seed = (store: string): Promise<{ m: VmMirror; a: DiskApply }> => openSeed(store, CAP, log)

t.before(async () => {
  await initDigests()
})

t.test('settled() resolves once every flushed batch is durable and acked; the trace follows each batch', async (t) => {
  const store = join(scratchDir(t), 's')
  const { m, a } = await seed(store)
  const acks: number[] = []
  const steps: string[] = []
  const p = new ApplyPipeline(
    () => 128 * KiB,
    (_d, seq) => acks.push(seq),
    undefined,
    { trace: (step, b) => steps.push(`${step} ${b.first}-${b.last} ${b.bytes}`) },
  )
  const d: PipelineDisk = { handle: 0, name: 'd.vmdk', apply: a }
  const extents = [0, 1, 2, 3, 4].map(ext)
  // two full batches flush themselves; the fifth extent waits, partial
  for (const e of extents) await p.add(d, a.accept(e))
  t.equal(p.partial, true, 'the fifth extent is a partial batch')
  // what a session does when its inbox runs dry: flush, then wait for the batches in flight
  await p.flush()
  t.equal(p.partial, false)
  await p.settled()
  t.same(acks, [1, 3, 4], 'every batch acked, in order, before settled() resolved')
  t.equal(a.appliedSeq, 4, 'the last batch is durable')
  // a batch's written/durable may come after the next batch is flushed: compare per batch (a stable sort)
  const byBatch = [...steps].sort((x, y) => Number(x.split(' ')[1]?.split('-')[0]) - Number(y.split(' ')[1]?.split('-')[0]))
  t.same(
    byBatch,
    ['flushed 0-1 131072', 'written 0-1 131072', 'durable 0-1 131072', 'flushed 2-3 131072', 'written 2-3 131072', 'durable 2-3 131072', 'flushed 4-4 65536', 'written 4-4 65536', 'durable 4-4 65536'],
    'flushed, written, durable for each batch',
  )
  await p.idle()
  await p.settled()
  const cd = new CycleDigest('sha256')
  for (const e of extents) cd.add(e)
  await a.end({ extents: 5, dataBytes: 5 * 64 * KiB, zeroBytes: 0, digest: cd.digest() })
  await m.commit(1, [a], '', compat)
  m.release()
  const want = Buffer.alloc(CAP)
  for (const e of extents) Buffer.from(e.data as Uint8Array).copy(want, e.offset)
  t.ok(readFileSync(join(store, 'vm', 'd-flat.vmdk')).equals(want), 'the mirror is exact')
})

t.test('a failed batch rejects settled() and is still rethrown by idle()', async (t) => {
  const store = join(scratchDir(t), 's')
  const { m, a } = await seed(store)
  t.teardown(async () => {
    await a.close()
    m.release()
  })
  const acks: number[] = []
  const p = new ApplyPipeline(
    () => 1024 * KiB,
    (_d, seq) => acks.push(seq),
  )
  const d: PipelineDisk = { handle: 0, name: 'd.vmdk', apply: a }
  await p.add(d, a.accept(ext(0)))
  // a data extent without its bytes: journaled (stage 1), its write (stage 2) fails
  await p.add(d, a.accept({ ...ext(1), data: undefined }))
  await p.flush()
  const failure = await p.settled().then(
    () => undefined,
    (err: unknown) => err,
  )
  t.ok(failure instanceof Error, 'settled() rejects with the batch error')
  const again = await p.idle().then(
    () => undefined,
    (err: unknown) => err,
  )
  t.equal(again, failure, 'idle() still rethrows it (the session ends with it)')
  t.same(acks, [], 'nothing acked')
  t.equal(a.appliedSeq, -1, 'nothing durable')
})
