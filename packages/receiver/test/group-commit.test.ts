/**
 * Group commit on the folder store's apply path: a batch whose writes
 * completed before an earlier batch's fdatasync started is made durable by
 * that fdatasync (no second one), a batch written after that fdatasync
 * started gets its own, and the resume point and the mirror are exact either
 * way.
 */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { CycleDigest, createDigest, initDigests } from '@grainline/protocol'
import { VmMirror } from '../src/vm-mirror.ts'
import type { ApplyExtent, DiskApply } from '../src/disk-apply.ts'
import { openSeed, pattern, TEST_COMPAT, TEST_SOURCE } from './helpers.ts'

const CAP = 256 * 1024
const log = pino({ level: 'silent' })
const compat = TEST_COMPAT
const _src = TEST_SOURCE

function ext(seq: number, offset: number, length: number): ApplyExtent {
  const data = pattern(length, seq + 1)
  return { seq, offset, length, zero: false, data, digest: createDigest('sha256').update(data).digest() }
}

const seed = (store: string): Promise<{ m: VmMirror; a: DiskApply }> => openSeed(store, CAP, log)

async function finish(m: VmMirror, a: DiskApply, extents: readonly ApplyExtent[]): Promise<Buffer> {
  const cd = new CycleDigest('sha256')
  for (const e of extents) cd.add(e)
  await a.end({ extents: extents.length, dataBytes: extents.reduce((s, e) => s + e.length, 0), zeroBytes: 0, digest: cd.digest() })
  await m.commit(1, [a], '', compat)
  m.release()
  const want = Buffer.alloc(CAP)
  for (const e of extents) Buffer.from(e.data as Uint8Array).copy(want, e.offset)
  return want
}

t.before(async () => {
  await initDigests()
})

t.test('a batch written before the previous fdatasync started shares it', async (t) => {
  const store = join(t.testdir(), 's')
  const { m, a } = await seed(store)
  const b1 = [ext(0, 0, 64 * 1024), ext(1, 64 * 1024, 64 * 1024)]
  const b2 = [ext(2, 128 * 1024, 64 * 1024)]
  for (const e of [...b1, ...b2]) a.accept(e)
  await a.prepareBatch(b1)
  await a.writeBatchData(b1)
  await a.prepareBatch(b2)
  await a.writeBatchData(b2)
  await a.syncBatch(b1)
  t.equal(a.appliedSeq, 1, 'the first batch is durable')
  await a.syncBatch(b2)
  t.equal(a.appliedSeq, 2, 'the second batch is durable')
  t.equal(a.syncs, 1, 'one fdatasync for both batches')
  t.equal(a.coveredBatches, 1, 'the second batch was covered by the first fdatasync')
  t.equal(a.batches, 2)
  const want = await finish(m, a, [...b1, ...b2])
  t.ok(readFileSync(join(store, 'vm', 'd-flat.vmdk')).equals(want), 'the mirror is exact')
})

t.test('a batch written after the fdatasync started gets its own', async (t) => {
  const store = join(t.testdir(), 's')
  const { m, a } = await seed(store)
  const b1 = [ext(0, 0, 64 * 1024)]
  const b2 = [ext(1, 64 * 1024, 64 * 1024)]
  for (const e of [...b1, ...b2]) a.accept(e)
  await a.prepareBatch(b1)
  await a.writeBatchData(b1)
  // the first fdatasync starts (synchronously, before its first await) before the second batch's writes complete
  const s1 = a.syncBatch(b1)
  await a.prepareBatch(b2)
  await a.writeBatchData(b2)
  await s1
  await a.syncBatch(b2)
  t.equal(a.syncs, 2, 'two fdatasyncs')
  t.equal(a.coveredBatches, 0, 'nothing covered by an fdatasync that began before its writes ended')
  t.equal(a.appliedSeq, 1)
  const want = await finish(m, a, [...b1, ...b2])
  t.ok(readFileSync(join(store, 'vm', 'd-flat.vmdk')).equals(want), 'the mirror is exact')
})

t.test('scattered and overlapping in-place batches land exactly', async (t) => {
  const store = join(t.testdir(), 's')
  const { m, a } = await seed(store)
  const base = [ext(0, 0, CAP)]
  for (const e of base) a.accept(e)
  await a.prepareBatch(base)
  await a.writeBatch(base)
  const want = await finish(m, a, base)
  const generation = m.state.generation as string
  const m2 = await VmMirror.acquire(store, 'vm', log)
  const r = await m2.openDisk(
    {
      name: 'd.vmdk',
      capacity: CAP,
      cycle: 2,
      mode: 'incremental',
      baseCycle: 1,
      baseGeneration: generation,
      source: { layers: [{ file: 'd-000001.vmdk', cid: '00000002', parentCid: '00000001' }], successor: 'd-000002.vmdk' },
      cycleId: '2'.repeat(16),
      ddb: {},
      algorithm: 'sha256',
    },
    { compat },
  )
  const b = r.apply
  if (b === undefined) throw new Error(`refused ${r.reason}`)
  // batch 1: 40 scattered 512-byte extents plus a back-to-back pair (written concurrently, runs as one write)
  const scattered = Array.from({ length: 40 }, (_, i) => ext(i, i * 4096 + 512, 512))
  scattered.push(ext(40, 200_000, 512), ext(41, 200_512, 512))
  // batch 2: out of order and overlapping (written in order)
  const overlapping = [ext(42, 8192, 4096), ext(43, 10_240, 4096), ext(44, 0, 1024)]
  const all = [...scattered, ...overlapping]
  for (const e of all) b.accept(e)
  for (const batch of [scattered, overlapping]) {
    await b.prepareBatch(batch)
    await b.writeBatch(batch)
  }
  const cd = new CycleDigest('sha256')
  for (const e of all) cd.add(e)
  await b.end({ extents: all.length, dataBytes: all.reduce((s, e) => s + e.length, 0), zeroBytes: 0, digest: cd.digest() })
  await m2.commit(2, [b], '', compat)
  m2.release()
  for (const e of all) Buffer.from(e.data as Uint8Array).copy(want, e.offset)
  t.ok(readFileSync(join(store, 'vm', 'd-flat.vmdk')).equals(want), 'the mirror is exact')
})
