import t from 'tap'
import fc from 'fast-check'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { CycleDigest, createDigest, initDigests } from '@grainline/protocol'
import { VmMirror } from '../src/vm-mirror.ts'
import type { ApplyExtent, DiskApply } from '../src/disk-apply.ts'
import { pattern } from './helpers.ts'

/*
 * Property: for random (possibly overlapping) extents in random batches, an
 * in-place apply interrupted after any number of batches, then resumed once
 * or more, or rolled back, leaves the flat exactly at the new image or exactly
 * at the committed one.
 */
const CAP = 64 * 1024
const log = pino({ level: 'silent' })
const compat = { hwVersion: 14, datastoreType: 'local', guestOS: 'otherlinux-64' }
const src = { layers: [{ file: 'd.vmdk', cid: '00000001', parentCid: 'ffffffff' }], successor: 'd-000001.vmdk' }

function ext(seq: number, offset: number, length: number, zero: boolean, fill: number): ApplyExtent {
  const data = zero ? undefined : pattern(length, fill)
  return {
    seq,
    offset,
    length,
    zero,
    data,
    digest: zero
      ? new Uint8Array(0)
      : createDigest('sha256')
          .update(data as Buffer)
          .digest(),
  }
}

/** What a session does with a batch: accept each extent, journal the batch, write it. */
async function applyBatch(a: DiskApply, batch: readonly ApplyExtent[]): Promise<void> {
  for (const e of batch) a.accept(e)
  await a.prepareBatch(batch)
  await a.writeBatch(batch)
}

/** DiskEnd with the counts and cycle digest of all the cycle's extents. */
async function end(a: DiskApply, extents: readonly ApplyExtent[]): Promise<void> {
  const cd = new CycleDigest('sha256')
  for (const e of extents) cd.add(e)
  const dataBytes = extents.filter((e) => !e.zero).reduce((s, e) => s + e.length, 0)
  const zeroBytes = extents.filter((e) => e.zero).reduce((s, e) => s + e.length, 0)
  await a.end({ extents: extents.length, dataBytes, zeroBytes, digest: cd.digest() })
}

t.test('interrupted, resumed or rolled-back in-place applies are exact', async (t) => {
  await initDigests()
  let run = 0
  const extentArb = fc.record({ sector: fc.integer({ min: 0, max: CAP / 512 - 1 }), sectors: fc.integer({ min: 1, max: 24 }), zero: fc.boolean(), fill: fc.integer({ min: 1, max: 1e6 }) })
  await fc.assert(
    fc.asyncProperty(
      fc.array(extentArb, { minLength: 1, maxLength: 20 }),
      fc.integer({ min: 1, max: 5 }),
      fc.array(fc.integer({ min: 0, max: 20 }), { minLength: 1, maxLength: 3 }),
      fc.boolean(),
      fc.boolean(),
      async (raw, batchSize, stops, rollback, dropQueued) => {
        const store = join(t.testdir(), `s${run++}`)
        const base = pattern(CAP, run)
        // every other run, a quarter of the committed image is zeros: their old contents are journaled by length alone (journal.ts)
        if (run % 2 === 0) base.fill(0, CAP / 4, CAP / 2)
        // commit a seed of `base`
        let m = await VmMirror.acquire(store, 'vm', log)
        const s = await m.openDisk(
          { name: 'd.vmdk', capacity: CAP, cycle: 1, mode: 'seed', baseCycle: 0, baseGeneration: '', source: src, cycleId: '1'.repeat(16), ddb: {}, algorithm: 'sha256' },
          { compat },
        )
        const sa = s.apply
        if (sa === undefined) throw new Error('seed refused')
        const seedExtents = [ext(0, 0, CAP, false, run)].map((e) => ({ ...e, data: base, digest: createDigest('sha256').update(base).digest() }))
        await applyBatch(sa, seedExtents)
        await end(sa, seedExtents)
        await m.commit(1, [sa], '', compat)
        const generation = m.state.generation as string
        m.release()
        // the cycle's extents and the image they make
        const extents = raw.map((r, seq) => {
          const offset = r.sector * 512
          const length = Math.min(r.sectors * 512, CAP - offset)
          return ext(seq, offset, length, r.zero, r.fill)
        })
        const expected = Buffer.from(base)
        for (const e of extents) {
          if (e.zero) expected.fill(0, e.offset, e.offset + e.length)
          else (e.data as Buffer).copy(expected, e.offset)
        }
        const open = async () => {
          m = await VmMirror.acquire(store, 'vm', log)
          const r = await m.openDisk(
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
          if (r.apply === undefined) throw new Error(`refused ${r.reason}`)
          return r.apply
        }
        // apply in batches, "crashing" (dropping everything) after each stop
        for (const stop of stops) {
          const a = await open()
          let seq = a.nextSeq
          let applied = 0
          while (seq < extents.length && applied < stop) {
            const batch = extents.slice(seq, seq + batchSize)
            await applyBatch(a, batch)
            seq += batch.length
            applied++
          }
          // a kill -9 loses the journal records still queued in memory (the last resume marker)
          await a.close({ flush: !dropQueued })
          m.release()
        }
        if (rollback) {
          m = await VmMirror.acquire(store, 'vm', log)
          await m.rollback()
          m.release()
          return readFileSync(join(store, 'vm', 'd-flat.vmdk')).equals(base)
        }
        const a = await open()
        for (let seq = a.nextSeq; seq < extents.length; seq += batchSize) await applyBatch(a, extents.slice(seq, seq + batchSize))
        await end(a, extents)
        await m.commit(2, [a], '', compat)
        m.release()
        return readFileSync(join(store, 'vm', 'd-flat.vmdk')).equals(expected)
      },
    ),
    { numRuns: 100, seed: 4242 },
  )
  t.pass('100 random interrupted applies')
})
