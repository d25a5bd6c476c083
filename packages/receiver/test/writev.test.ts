/**
 * writevFully (the apply path's vectored write of a run of extents): every
 * byte lands at its place in a real file, across short writes (the kernel may
 * write less than asked; here the real FileHandle's writev is held to a few
 * KiB per call), empty buffers, and more buffers than one pwritev takes.
 * writeInPieces (issue #17, perf15): the apply path's data goes to the file in
 * system calls of at most 1 MiB of the file, none crossing a multiple of
 * 1 MiB — larger writes get 2 MiB page-cache folios, several times as costly
 * on the development VM — also from a real seed's DiskApply.
 */
import t from 'tap'
import { open, type FileHandle } from 'node:fs/promises'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { createDigest, initDigests } from '@grainline/protocol'
import { scratchDir } from '@grainline/test-utils'
import { PIECES_IN_FLIGHT, WRITE_PIECE, writeInPieces, writevFully } from '../src/fs-util.ts'
import type { ApplyExtent } from '../src/disk-apply.ts'
import { openSeed, pattern } from './helpers.ts'

const MiB = 1024 * 1024

/**
 * The real handle, recording the file range ([position, bytes]) of every write and writev issued through it, and
 * in `busy.max` the most of them running at once; a write at `failAt` fails with EIO instead.
 */
function recording(fh: FileHandle, ranges: Array<[number, number]>, busy = { now: 0, max: 0 }, failAt = -1): FileHandle {
  const run = async <T>(pos: number, n: number, write: () => Promise<T>): Promise<T> => {
    ranges.push([pos, n])
    busy.max = Math.max(busy.max, ++busy.now)
    try {
      if (pos === failAt) throw Object.assign(new Error('injected'), { code: 'EIO' })
      return await write()
    } finally {
      busy.now--
    }
  }
  return new Proxy(fh, {
    get(target, prop, receiver) {
      if (prop === 'writev')
        return (bufs: NodeJS.ArrayBufferView[], pos: number) =>
          run(
            pos,
            bufs.reduce((n, b) => n + b.byteLength, 0),
            () => target.writev(bufs, pos),
          )
      if (prop === 'write') return (b: Uint8Array, off: number, len: number, pos: number) => run(pos, len, () => target.write(b, off, len, pos))
      return Reflect.get(target, prop, receiver)
    },
  })
}

/** Whether every range covers at most `piece` bytes and none crosses a multiple of `piece`. */
function withinPieces(ranges: ReadonlyArray<[number, number]>, piece: number): boolean {
  return ranges.every(([pos, n]) => n > 0 && n <= piece && Math.floor(pos / piece) === Math.floor((pos + n - 1) / piece))
}

/** The real handle, with each writev cut to its first `cap` bytes (as a short pwritev(2) would be). */
function capped(fh: FileHandle, cap: number, calls: number[]): FileHandle {
  return new Proxy(fh, {
    get(target, prop, receiver) {
      if (prop !== 'writev') return Reflect.get(target, prop, receiver)
      return async (bufs: NodeJS.ArrayBufferView[], pos: number) => {
        const out: Uint8Array[] = []
        let left = cap
        for (const b of bufs) {
          if (left === 0) break
          const u = new Uint8Array(b.buffer, b.byteOffset, Math.min(b.byteLength, left))
          out.push(u)
          left -= u.length
        }
        calls.push(cap - left)
        return await target.writev(out, pos)
      }
    },
  })
}

t.test('a run of buffers lands back to back, across short writes and empty buffers', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'f')
  const bufs = [pattern(10_000, 1), Buffer.alloc(0), pattern(3, 2), pattern(65_536, 3), Buffer.alloc(0), pattern(7_777, 4)]
  const want = Buffer.concat(bufs)
  const fh = await open(p, 'w+')
  const calls: number[] = []
  try {
    await fh.write(Buffer.alloc(100, 0xee), 0, 100, 0)
    await writevFully(capped(fh, 4_000, calls), bufs, 100)
  } finally {
    await fh.close()
  }
  const got = readFileSync(p)
  t.equal(got.length, 100 + want.length)
  t.ok(got.subarray(0, 100).equals(Buffer.alloc(100, 0xee)), 'bytes before the offset untouched')
  t.ok(got.subarray(100).equals(want), 'every byte at its place')
  t.ok(calls.length >= Math.ceil(want.length / 4_000), 'continued after each short write')
  t.ok(
    calls.every((n) => n > 0),
    'no empty write issued',
  )
})

t.test('more buffers than one pwritev takes', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'g')
  const bufs = Array.from({ length: 2500 }, (_, i) => pattern(17 + (i % 5), i))
  const fh = await open(p, 'w+')
  const calls: number[] = []
  try {
    await writevFully(capped(fh, Number.MAX_SAFE_INTEGER, calls), bufs, 0)
  } finally {
    await fh.close()
  }
  t.ok(readFileSync(p).equals(Buffer.concat(bufs)))
  t.equal(calls.length, 3, 'IOV_MAX (1024) buffers per call')
})

t.test('writeInPieces: each call covers at most a piece of the file, never across a multiple of it', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'h')
  const piece = 64 * 1024
  const bufs = [pattern(3 * piece + 5, 1), Buffer.alloc(0), pattern(piece, 2), pattern(1000, 3), pattern(piece - 1000, 4), pattern(70_000, 5)]
  const want = Buffer.concat(bufs)
  const at = piece - 1000
  const fh = await open(p, 'w+')
  const ranges: Array<[number, number]> = []
  const busy = { now: 0, max: 0 }
  try {
    await writeInPieces(recording(fh, ranges, busy), bufs, at, piece)
  } finally {
    await fh.close()
  }
  const got = readFileSync(p)
  t.equal(got.length, at + want.length)
  t.ok(got.subarray(at).equals(want), 'every byte at its place')
  t.ok(withinPieces(ranges, piece), 'no call beyond a piece or across a multiple of it')
  t.equal(ranges.length, Math.ceil((at + want.length) / piece), 'one call per piece of the file touched')
  const sorted = [...ranges].sort((x, y) => x[0] - y[0])
  t.ok(
    sorted.every(([pos], i) => i === 0 || pos === (sorted[i - 1] as [number, number])[0] + (sorted[i - 1] as [number, number])[1]),
    'the pieces cover the range back to back, each once',
  )
  t.ok(busy.max > 1 && busy.max <= PIECES_IN_FLIGHT, `several pieces at once, at most ${PIECES_IN_FLIGHT} (${busy.max})`)
  t.equal(busy.now, 0, 'none still running')
})

t.test('writeInPieces rejects with a failed piece once no write is running, and starts none after it', async (t) => {
  const dir = t.testdir()
  const fh = await open(join(dir, 'j'), 'w+')
  const piece = 4096
  const ranges: Array<[number, number]> = []
  const busy = { now: 0, max: 0 }
  try {
    await t.rejects(writeInPieces(recording(fh, ranges, busy, 2 * piece), [pattern(40 * piece, 9)], 0, piece), { code: 'EIO' })
    t.equal(busy.now, 0, 'no write running once it rejected')
  } finally {
    await fh.close()
  }
  t.ok(ranges.length < 40, `the pieces after the failure not started (${ranges.length} of 40)`)
})

t.test('writeInPieces continues after short writes', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'i')
  // buffers smaller than a piece: each piece is a writev, held to 3,000 bytes a call
  const bufs = Array.from({ length: 30 }, (_, i) => pattern(1_000, i + 6))
  const fh = await open(p, 'w+')
  const calls: number[] = []
  try {
    await writeInPieces(capped(fh, 3_000, calls), bufs, 0, 8192)
  } finally {
    await fh.close()
  }
  t.ok(readFileSync(p).equals(Buffer.concat(bufs)))
  t.ok(calls.length >= 10, 'short writevs continued')
})

t.test("a seed batch's data goes to the file in writes of at most 1 MiB", async (t) => {
  await initDigests()
  const store = join(scratchDir(t), 's')
  const { m, a } = await openSeed(store, 16 * MiB, pino({ level: 'silent' }))
  t.teardown(async () => {
    await a.close()
    m.release()
  })
  const ranges: Array<[number, number]> = []
  // the store's own handle of the seed file, recorded
  Reflect.set(a, 'fh', recording(Reflect.get(a, 'fh') as FileHandle, ranges))
  const extents: ApplyExtent[] = [0, 1].map((seq) => {
    const data = pattern(4 * MiB, seq + 11)
    return { seq, offset: 2 * MiB + seq * 4 * MiB, length: 4 * MiB, zero: false, data, digest: createDigest('sha256').update(data).digest() }
  })
  const batch = extents.map((e) => a.accept(e))
  await a.prepareBatch(batch)
  await a.writeBatch(batch)
  t.equal(a.appliedSeq, 1)
  t.ok(ranges.length >= 8, `8 MiB in ${ranges.length} writes`)
  t.ok(withinPieces(ranges, WRITE_PIECE), 'none covers more than 1 MiB or crosses a multiple of it')
  const got = readFileSync(a.targetPath)
  t.ok(got.subarray(2 * MiB, 10 * MiB).equals(Buffer.concat(extents.map((e) => e.data as Uint8Array))), 'the bytes at their place')
})
