/**
 * A seed reads only what may hold data (data-window.ts, extent-source.ts
 * `skipHoles`, issue #17): a thin flat base with holes (written by qemu-io)
 * under an SEsparse delta. Reading around the holes must give exactly the
 * extents a full read gives — the same seq, range, zero flag, digest and
 * bytes — while reading less; without SEEK_DATA (no helper) every byte is
 * read as before; a failed question fails the pass instead of inventing
 * zeros. DataWindow asks one question a window, in disk order.
 */
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import t from 'tap'
import { initDigests } from '@grainline/protocol'
import { createDelta, createFlatDisk, type FileAccess, localFileAccess, openChain, openWriter, seekHelper } from '@grainline/vmdk'
import { bytesToRead, clip, DataWindow } from '../src/data-window.ts'
import { seedRanges } from '../src/disk-work.ts'
import { arraySource, buildPlan, planExtents, type PlanRange } from '../src/extent-plan.ts'
import { type ChainView, type HoleStats, readPlannedExtents } from '../src/extent-source.ts'
import { MiB, scratch } from './helpers.ts'

t.test('clip: the ranges meeting a span, cut to it', async (t) => {
  const r: Array<[number, number]> = [
    [0, 10],
    [20, 30],
    [40, 50],
  ]
  t.same(clip(r, 0, 100), r)
  t.same(clip(r, 5, 25), [
    [5, 10],
    [20, 25],
  ])
  t.same(clip(r, 10, 20), [], 'a gap between ranges')
  t.same(clip(r, 45, 46), [[45, 46]])
  t.same(clip(r, 50, 60), [], 'past the last')
  t.same(clip([], 0, 10), [])
})

t.test('DataWindow: one question a window in disk order; a new window where an extent leaves it', async (t) => {
  const asked: Array<[number, number]> = []
  const w = new DataWindow(
    async (offset, length) => {
      asked.push([offset, length])
      return { ranges: [[offset + 100, offset + 200]], unknownBytes: 0 }
    },
    10_000,
    1000,
  )
  t.same(await w.dataIn(0, 100), [], 'a hole')
  t.same(await w.dataIn(100, 100), [[100, 200]])
  t.same(await w.dataIn(150, 850), [[150, 200]])
  t.same(asked, [[0, 1000]], 'one question for the window')
  t.same(await w.dataIn(900, 200), [[1000, 1100]], 'an extent across the end starts a window at its offset')
  t.same(asked[1], [900, 1000])
  t.same(await w.dataIn(9500, 500), [[9600, 9700]], 'the last window ends at the capacity')
  t.same(asked[2], [9500, 500])
  t.same(await w.dataIn(0, 100), [], 'an extent before the window asks again')
  t.equal(w.questions, 4)
  const failing = new DataWindow(async () => await Promise.reject(new Error('EIO from the helper')), 1000)
  await t.rejects(failing.dataIn(0, 10), /EIO from the helper/, 'a failed question fails the read')
  t.throws(() => new DataWindow(async () => ({ ranges: [], unknownBytes: 0 }), 10, 0), RangeError)
})

/**
 * A 64 MiB chain: a thin flat base (the rest holes) — a whole 1 MiB extent
 * of data, 8 KiB inside another, six 4 KiB pieces inside a third (read whole:
 * more than four pieces), allocated zeros, data across an extent boundary,
 * the disk's last page — under an SEsparse delta with a data grain run over
 * a hole and zero grains over data.
 */
async function thinChain(dir: string): Promise<string> {
  const base = join(dir, 'base.vmdk')
  const top = join(dir, 'top.vmdk')
  await createFlatDisk(base, 64 * MiB)
  const cmds = ['write -P 0x11 3M 1M', `write -P 0x22 ${5 * MiB + 100 * 1024} 8k`]
  for (let k = 0; k < 6; k++) cmds.push(`write -P 0x3${k} ${7 * MiB + k * 100 * 1024} 4k`)
  cmds.push('write -z 9M 64k', `write -P 0x55 ${11 * MiB - 4096} 8k`, `write -P 0x66 ${64 * MiB - 4096} 4k`)
  // qemu-io's `write -z` may punch a hole: allocate the zeros by writing a pattern of zero bytes
  cmds.push(`write -P 0x00 ${13 * MiB} 256k`)
  execFileSync('qemu-io', ['-f', 'vmdk', ...cmds.flatMap((c) => ['-c', c]), base], { stdio: 'ignore' })
  await createDelta(base, top, { format: 'sesparse' })
  const wr = await openWriter(top)
  await wr.write(20 * MiB + 64 * 1024, Buffer.alloc(128 * 1024, 0x77))
  await wr.writeZeroes(3 * MiB, 512 * 1024)
  await wr.close()
  return top
}

interface Seen {
  seq: number
  offset: number
  length: number
  zero: boolean
  digest: string
  bytes: string
}

async function pass(chain: ChainView, ranges: PlanRange[], skipHoles: boolean, stats?: HoleStats): Promise<Seen[]> {
  const plan = await buildPlan(arraySource(ranges), { chunkBytes: MiB })
  const out: Seen[] = []
  for await (const e of readPlannedExtents(chain, plan, { depth: 0, digest: 'xxh64', compression: 'none', skipHoles, ...(stats === undefined ? {} : { holeStats: stats }) })) {
    out.push({
      seq: e.seq,
      offset: e.offset,
      length: e.length,
      zero: e.zero,
      digest: Buffer.from(e.digest).toString('hex'),
      bytes: e.raw === undefined ? '' : createHash('sha256').update(e.raw).digest('hex'),
    })
    e.release?.()
  }
  return out
}

t.test('a seed read around the holes ships the extents a full read ships, reading only the data', async (t) => {
  await initDigests()
  const chain = await openChain(await thinChain(scratch(t)))
  t.teardown(() => chain.close())
  // a seed's plan: the whole view as data ranges (a flat base is present everywhere)
  const whole: PlanRange[] = [{ offset: 0, length: chain.capacity, zero: false }]
  const full = await pass(chain, whole, false)
  const stats: HoleStats = { skippedBytes: 0, holeExtents: 0, questions: 0, unknownBytes: 0 }
  const around = await pass(chain, whole, true, stats)
  t.same(around, full, 'the same 64 extents: seq, range, zero flag, digest and bytes')
  t.equal(full.length, 64)
  const data = full.filter((e) => !e.zero).map((e) => e.offset / MiB)
  t.same(data, [3, 5, 7, 10, 11, 20, 63], 'data where it was written; the zeros (written, allocated or zero grains) are zero extents')
  t.equal(stats.questions, 1, 'one question for the 64 MiB view')
  // holes entirely: 64 extents less the seven with data and those whose allocated bytes are zeros
  // (13 MiB; 9 MiB unless qemu-io punched a hole for its zeros)
  t.ok(stats.holeExtents >= 64 - 7 - 2 && stats.holeExtents <= 64 - 7 - 1, `extents not read at all: ${stats.holeExtents}`)
  t.ok(stats.skippedBytes > 55 * MiB, `bytes not read: ${stats.skippedBytes}`)
  t.equal(stats.unknownBytes, 0, 'every hole could be asked for')

  // a plan in pieces (as a resumed pass starts mid-disk) agrees too
  const pieces: PlanRange[] = [
    { offset: 0, length: 5 * MiB + 512, zero: false },
    { offset: 5 * MiB + 512, length: 3 * MiB - 512, zero: true },
    { offset: 8 * MiB, length: 56 * MiB, zero: false },
  ]
  t.same(await pass(chain, pieces, true), await pass(chain, pieces, false), 'extents not aligned to 1 MiB')
})

t.test('a flat base whose file reports no allocated blocks (st_blocks 0: FUSE/NAS mounts) is read by a seed, not shipped as zeros', async (t) => {
  await initDigests()
  const dir = scratch(t)
  const base = join(dir, 'base.vmdk')
  await createFlatDisk(base, 8 * MiB)
  execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x11 2M 1M', base], { stdio: 'ignore' })
  // the same files through a mount whose status says nothing is allocated
  const noBlocks: FileAccess = {
    stat: async (p) => ({ ...(await localFileAccess.stat(p)), allocatedBytes: 0 }),
    open: async (p, m) => {
      const f = await localFileAccess.open(p, m)
      return { stat: { ...f.stat, allocatedBytes: 0 }, read: f.read.bind(f), dataRanges: f.dataRanges?.bind(f), close: f.close.bind(f) }
    },
  }
  const chain = await openChain(base, { files: noBlocks })
  t.teardown(() => chain.close())
  const plan = await buildPlan(seedRanges(chain, 0), { chunkBytes: MiB })
  const seen: Array<{ offset: number; zero: boolean; first: number | undefined }> = []
  for await (const e of readPlannedExtents(chain, plan, { depth: 0, digest: 'xxh64', compression: 'none', skipHoles: true })) {
    seen.push({ offset: e.offset / MiB, zero: e.zero, first: e.raw?.[0] })
    e.release?.()
  }
  t.same(
    seen.filter((e) => !e.zero),
    [{ offset: 2, zero: false, first: 0x11 }],
    'the data is read and shipped; the holes (SEEK_DATA) are zero extents',
  )
  t.equal(seen.length, 8)
})

t.test('without SEEK_DATA (no helper) every byte is read, the same extents', async (t) => {
  await initDigests()
  const chain = await openChain(await thinChain(scratch(t)))
  t.teardown(() => chain.close())
  const whole: PlanRange[] = [{ offset: 0, length: chain.capacity, zero: false }]
  const full = await pass(chain, whole, false)
  const saved = { ...seekHelper }
  seekHelper.command = join(scratch(t), 'no-python3-here')
  t.teardown(() => Object.assign(seekHelper, saved))
  const stats: HoleStats = { skippedBytes: 0, holeExtents: 0, questions: 0, unknownBytes: 0 }
  t.same(await pass(chain, whole, true, stats), full)
  // the flat base cannot be asked (listed as data): every extent is read, only the delta's zero grains
  // (known from its grain table) are not
  t.equal(stats.holeExtents, 0, 'no extent taken for a hole')
  t.equal(stats.skippedBytes, 512 * 1024, 'only the zero grains skipped')
  t.ok(stats.unknownBytes > 60 * MiB, `the base's bytes counted as unknown (${stats.unknownBytes}): the seed logs it`)
})

t.test('a failed question fails the pass: no extent invented as zeros', async (t) => {
  await initDigests()
  const chain = await openChain(await thinChain(scratch(t)))
  t.teardown(() => chain.close())
  const view: ChainView = {
    capacity: chain.capacity,
    read: (o, l, opts) => chain.read(o, l, opts),
    readInto: (b, bo, o, l, opts) => chain.readInto(b, bo, o, l, opts),
    dataRanges: async () => await Promise.reject(Object.assign(new Error('helper lost'), { code: 'EIO' })),
  }
  await t.rejects(pass(view, [{ offset: 0, length: chain.capacity, zero: false }], true), /helper lost/)
  // a read error in one piece fails it the same way
  const broken: ChainView = {
    capacity: chain.capacity,
    read: (o, l, opts) => chain.read(o, l, opts),
    readInto: async (b, bo, o, l, opts) => {
      if (o === 7 * MiB + 200 * 1024) throw new Error('EIO reading a piece')
      await chain.readInto(b, bo, o, l, opts)
    },
    dataRanges: (o, l, opts) => chain.dataRanges(o, l, opts),
  }
  const pieces: PlanRange[] = [{ offset: 7 * MiB + 200 * 1024, length: 512 * 1024, zero: false }]
  await t.rejects(pass(broken, pieces, true), /EIO reading a piece/)
})

t.test("the ETA's count (bytesToRead) is what the pass reads", async (t) => {
  await initDigests()
  const chain = await openChain(await thinChain(scratch(t)))
  t.teardown(() => chain.close())
  const plan = await buildPlan(arraySource([{ offset: 0, length: chain.capacity, zero: false }]), { chunkBytes: MiB })
  const readBy = async (skipHoles: boolean): Promise<number> => {
    let n = 0
    for await (const e of readPlannedExtents(chain, plan, { depth: 0, digest: 'xxh64', compression: 'none', skipHoles })) {
      n += e.readBytes
      e.release?.()
    }
    return n
  }
  const counted = await bytesToRead(planExtents(plan, 0), new DataWindow((o, l) => chain.dataRanges(o, l, { depth: 0 }), chain.capacity))
  const read = await readBy(true)
  t.equal(counted, read, `counted ${counted} bytes, read ${read}`)
  t.ok(read < 8 * MiB, 'far less than the disk')
  t.equal(await readBy(false), chain.capacity, 'without skipping, every planned byte is read')
  // from a resume point on: the rest of the same count
  const win = (): DataWindow => new DataWindow((o, l) => chain.dataRanges(o, l, { depth: 0 }), chain.capacity)
  async function* firstTen() {
    for await (const e of planExtents(plan, 0)) {
      if (e.seq >= 10) return
      yield e
    }
  }
  t.equal(await bytesToRead(planExtents(plan, 10), win()), counted - (await bytesToRead(firstTen(), win())), 'from seq 10: the count less the first ten')
})
