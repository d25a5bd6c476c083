/**
 * Where a chain holds data, found without reading it (data-ranges.ts,
 * DiskChain.dataRanges): a sparse flat base with known holes (written by
 * qemu-io) under an SEsparse delta (data and zero grains). qemu-img map is the
 * oracle: its non-zero entries are exactly our ranges, for the base alone and
 * for the chain; every byte outside the ranges reads as zero. Without
 * SEEK_DATA (no helper, a transport that cannot tell) the flat is listed
 * whole as data and counted as unknown. Malformed helper output is refused.
 * A kept helper answers many questions with one process, the same answers.
 */
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { type FileHandle, open } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import type { Test } from 'tap'
import {
  createDelta,
  createFlatDisk,
  dataCursor,
  type FileAccess,
  fileDataRanges,
  KeptSeekHelper,
  keptSeekHelper,
  localFileAccess,
  openChain,
  openWriter,
  parseRanges,
  seekHelper,
} from '../src/index.ts'
import { qemuImg } from './helpers.ts'

const MiB = 1024 * 1024

/** qemu-img map's entries that read as non-zero, merged: [start, end) pairs. */
function qemuNonZero(image: string): Array<[number, number]> {
  const out: Array<[number, number]> = []
  for (const e of JSON.parse(qemuImg('map', '--output=json', '-f', 'vmdk', image)) as Array<{ start: number; length: number; zero: boolean }>) {
    if (e.zero) continue
    const last = out[out.length - 1]
    if (last !== undefined && last[1] === e.start) last[1] += e.length
    else out.push([e.start, e.start + e.length])
  }
  return out
}

async function makeChain(dir: string): Promise<{ base: string; top: string }> {
  const base = join(dir, 'base.vmdk')
  const top = join(dir, 'top.vmdk')
  await createFlatDisk(base, 64 * MiB)
  // the base's data: 4 MiB at 8 MiB, 64 KiB at 40 MiB, 4 KiB at the last page; the rest holes
  execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x11 8M 4M', '-c', 'write -P 0x22 40M 64k', '-c', `write -P 0x44 ${64 * MiB - 4096} 4k`, base], { stdio: 'ignore' })
  await createDelta(base, top, { format: 'sesparse' })
  const w = await openWriter(top)
  await w.write(20 * MiB, Buffer.alloc(MiB, 0x33))
  // zero grains over part of the base's data
  await w.writeZeroes(9 * MiB, MiB)
  await w.close()
  return { base, top }
}

t.test('ranges equal qemu-img map (base, chain); everything outside reads as zeros', async (t) => {
  const dir = t.testdir({})
  const { base, top } = await makeChain(dir)
  const chain = await openChain(top)
  t.teardown(() => chain.close())
  const atBase = await chain.dataRanges(0, chain.capacity, { depth: 1 })
  t.equal(atBase.unknownBytes, 0, 'SEEK_DATA answered')
  t.same(atBase.ranges, qemuNonZero(base), 'base: our data ranges are qemu-img map non-zero entries')
  const whole = await chain.dataRanges(0, chain.capacity)
  t.same(whole.ranges, qemuNonZero(top), 'chain: our data ranges are qemu-img map non-zero entries')
  t.same(whole.ranges, [
    [8 * MiB, 9 * MiB],
    [10 * MiB, 12 * MiB],
    [20 * MiB, 21 * MiB],
    [40 * MiB, 40 * MiB + 65536],
    [64 * MiB - 4096, 64 * MiB],
  ])
  await t.rejects(chain.dataRanges(0, chain.capacity + 1), { code: 'E_RANGE' }, 'beyond the disk')
  // a window inside: clipped to it
  t.same((await chain.dataRanges(11 * MiB, 10 * MiB)).ranges, [
    [11 * MiB, 12 * MiB],
    [20 * MiB, 21 * MiB],
  ])
  // outside the ranges, the full read is zero
  const bytes = await chain.read(0, chain.capacity)
  let at = 0
  for (const [a, b] of [...whole.ranges, [chain.capacity, chain.capacity] as const]) {
    t.ok(
      bytes.subarray(at, a).every((x) => x === 0),
      `zeros in ${at}…${a}`,
    )
    at = b
  }
})

t.test('without SEEK_DATA the flat is data, counted as unknown; the answers are the same bytes', async (t) => {
  const dir = t.testdir({})
  const { top } = await makeChain(dir)
  // a transport that cannot tell (like SFTP): no dataRanges on its files
  const blind: FileAccess = {
    stat: async (p) => await localFileAccess.stat(p),
    open: async (p, m) => {
      const f = await localFileAccess.open(p, m)
      return { stat: f.stat, read: f.read.bind(f), close: f.close.bind(f) }
    },
  }
  const chain = await openChain(top, { files: blind })
  t.teardown(() => chain.close())
  const r = await chain.dataRanges(0, chain.capacity)
  // the delta's own data and zero grains are still known; the base's fall-throughs are data
  t.same(r.ranges, [
    [0, 9 * MiB],
    [10 * MiB, 64 * MiB],
  ])
  t.equal(r.unknownBytes, 63 * MiB - MiB, 'the base bytes seen through the delta, not known')

  // no helper on this host (python3 missing): the same fallback, and it is not tried again
  const saved = seekHelper.command
  seekHelper.command = join(dir, 'no-such-python3')
  t.teardown(() => {
    seekHelper.command = saved
    seekHelper.missing = false
  })
  const local = await openChain(top)
  t.teardown(() => local.close())
  const r2 = await local.dataRanges(0, local.capacity)
  t.same(r2.ranges, r.ranges, 'no helper: the flat is data')
  t.ok(seekHelper.missing, 'remembered as missing')
  t.equal((await local.dataRanges(0, local.capacity)).unknownBytes, r2.unknownBytes, 'asked again: same answer without a child')
})

t.test('a file that reports no allocated blocks (st_blocks 0: some FUSE/NAS mounts) still has its data listed', async (t) => {
  const dir = t.testdir({})
  const { base } = await makeChain(dir)
  // the same files, but their status says nothing is allocated
  const noBlocks = (withSeek: boolean): FileAccess => ({
    stat: async (p) => ({ ...(await localFileAccess.stat(p)), allocatedBytes: 0 }),
    open: async (p, m) => {
      const f = await localFileAccess.open(p, m)
      const stat = { ...f.stat, allocatedBytes: 0 }
      return withSeek ? { stat, read: f.read.bind(f), dataRanges: f.dataRanges?.bind(f), close: f.close.bind(f) } : { stat, read: f.read.bind(f), close: f.close.bind(f) }
    },
  })
  const chain = await openChain(base, { files: noBlocks(true) })
  t.teardown(() => chain.close())
  const r = await chain.dataRanges(0, chain.capacity)
  t.same(r.ranges, qemuNonZero(base), 'SEEK_DATA decides, not st_blocks: the data is listed')
  t.equal((await chain.read(8 * MiB, 1))[0], 0x11, 'and it is data')
  const blind = await openChain(base, { files: noBlocks(false) })
  t.teardown(() => blind.close())
  const b = await blind.dataRanges(0, blind.capacity)
  t.same(b.ranges, [[0, 64 * MiB]], 'a transport that cannot tell: the whole flat is data')
  t.equal(b.unknownBytes, 64 * MiB)
})

/** A 16 MiB file with 4 KiB of data at every 4 MiB, the rest holes. */
async function sparseFile(t: Test): Promise<{ dir: string; fh: FileHandle }> {
  const dir = t.testdir({})
  const fh = await open(join(dir, 'sparse.raw'), 'w+')
  t.teardown(() => fh.close())
  await fh.truncate(16 * MiB)
  for (let i = 0; i < 4; i++) await fh.write(Buffer.alloc(4096, 1), 0, 4096, i * 4 * MiB)
  await fh.datasync()
  return { dir, fh }
}

t.test('fileDataRanges: caps, empty windows, a helper that fails, malformed output', async (t) => {
  const { fh } = await sparseFile(t)
  t.same(await fileDataRanges(fh.fd, 0, 16 * MiB), [
    [0, 4096],
    [4 * MiB, 4 * MiB + 4096],
    [8 * MiB, 8 * MiB + 4096],
    [12 * MiB, 12 * MiB + 4096],
  ])
  // at most 2 ranges: the rest of the window is data
  t.same(await fileDataRanges(fh.fd, 0, 16 * MiB, 2), [
    [0, 4096],
    [4 * MiB, 4 * MiB + 4096],
    [8 * MiB, 16 * MiB],
  ])
  t.same(await fileDataRanges(fh.fd, 5 * MiB, 5 * MiB), [], 'an empty window')
  t.same(await fileDataRanges(fh.fd, 13 * MiB, 16 * MiB), [], 'a hole up to the end')
  t.same(await fileDataRanges(fh.fd, 20 * MiB, 24 * MiB), [], 'past the end of the file')
  // a helper that exits non-zero (here: a closed descriptor number) is unknown, not an error
  t.equal(await fileDataRanges(987654, 0, MiB), undefined)
  t.equal(parseRanges('1 2\nx\n', 0, 10), undefined, 'garbage')
  t.equal(parseRanges('5 6\n1 2\n', 0, 10), undefined, 'out of order')
  t.equal(parseRanges('1 20\n', 0, 10), undefined, 'beyond the window')
  t.equal(parseRanges('3 3\n', 0, 10), undefined, 'empty range')
  t.same(parseRanges('\n', 0, 10), [])
})

t.test('KeptSeekHelper: one process answers every question, as fileDataRanges does; without python3, unknown', async (t) => {
  const { dir, fh } = await sparseFile(t)
  const kept = new KeptSeekHelper()
  t.teardown(() => kept.close())
  kept.warm()
  t.equal(kept.starts, 1, 'warmed: started before any question')
  kept.warm()
  const windows: Array<[number, number, number?]> = [
    [0, 16 * MiB],
    [0, 16 * MiB, 2],
    [2 * MiB, 9 * MiB],
    [13 * MiB, 16 * MiB],
    [20 * MiB, 24 * MiB],
  ]
  // asked at once: answered in order, each as the one-shot helper answers it
  const answers = await Promise.all(windows.map(([s, e, m]) => kept.dataRanges(fh.fd, s, e, m)))
  for (const [i, [s, e, m]] of windows.entries()) t.same(answers[i], await fileDataRanges(fh.fd, s, e, m), `[${s / MiB}, ${e / MiB}) MiB${m === undefined ? '' : ` at most ${m}`}`)
  t.same(answers[0], [
    [0, 4096],
    [4 * MiB, 4 * MiB + 4096],
    [8 * MiB, 8 * MiB + 4096],
    [12 * MiB, 12 * MiB + 4096],
  ])
  t.same(await kept.dataRanges(fh.fd, 5 * MiB, 5 * MiB), [], 'an empty window: no question')
  t.equal(await kept.dataRanges(987654, 0, MiB), undefined, 'a descriptor not open here: unknown (one-shot fallback)')
  t.equal(kept.starts, 1, 'one helper process for all of them')
  // the file written again: the next answer sees it (the descriptor is reopened per question)
  await fh.write(Buffer.alloc(4096, 2), 0, 4096, 14 * MiB)
  await fh.datasync()
  t.same(await kept.dataRanges(fh.fd, 13 * MiB, 16 * MiB), [[14 * MiB, 14 * MiB + 4096]], 'asked again: the new data')
  t.equal(kept.starts, 1)
  // another interpreter (tests point the command elsewhere): a new helper; none there: unknown, remembered
  const saved = seekHelper.command
  seekHelper.command = join(dir, 'no-python3-here')
  t.teardown(() => {
    seekHelper.command = saved
    seekHelper.missing = false
  })
  t.equal(await kept.dataRanges(fh.fd, 0, 16 * MiB), undefined, 'no helper: unknown')
  t.equal(seekHelper.missing, true, 'remembered')
})

t.test("local files ask through the process's kept helper: one python3 for a chain's questions; close waits for an asked question", async (t) => {
  const dir = t.testdir({})
  const { base, top } = await makeChain(dir)
  // a wrapper that counts the helper processes started
  const starts = join(dir, 'starts')
  const wrapper = join(dir, 'counting-python3')
  writeFileSync(wrapper, `#!/bin/sh\necho started >> '${starts}'\nexec '${seekHelper.command}' "$@"\n`, { mode: 0o755 })
  const saved = seekHelper.command
  seekHelper.command = wrapper
  t.teardown(() => {
    seekHelper.command = saved
    keptSeekHelper.close()
  })
  const started = (): number =>
    existsSync(starts)
      ? readFileSync(starts, 'utf8')
          .split('\n')
          .filter((l) => l === 'started').length
      : 0
  const chain = await openChain(top)
  // windows of the base seen through the delta: each asks the flat base about one or more runs
  const want = qemuNonZero(top)
  const clip = (s: number, e: number): Array<[number, number]> => want.filter(([a, b]) => b > s && a < e).map(([a, b]) => [Math.max(a, s), Math.min(b, e)])
  for (const [s, e] of [
    [0, 64 * MiB],
    [0, 16 * MiB],
    [16 * MiB, 48 * MiB],
    [39 * MiB, 41 * MiB],
    [60 * MiB, 64 * MiB],
  ] as const) {
    const r = await chain.dataRanges(s, e - s)
    t.equal(r.unknownBytes, 0, `[${s / MiB}, ${e / MiB}) MiB answered`)
    t.same(r.ranges, clip(s, e), `[${s / MiB}, ${e / MiB}) MiB: qemu-img map's non-zero entries`)
  }
  await chain.close()
  t.equal(started(), 1, 'one helper process for every question (one per question before)')

  // a question asked just before the file closes is still answered about that file
  const f = await localFileAccess.open(join(dir, 'base-flat.vmdk'), 'r')
  const asked = f.dataRanges?.(0, 64 * MiB)
  await f.close()
  t.same(await asked, qemuNonZero(base), 'answered: the descriptor stayed open until then')
  t.equal(await f.dataRanges?.(0, 64 * MiB), undefined, 'closed: unknown, not asked')
})

t.test('dataCursor: may a range hold data, asked in increasing order', async (t) => {
  const may = dataCursor([
    [10, 20],
    [40, 50],
  ])
  t.equal(may(0, 10), false, 'a hole before the first range')
  t.equal(may(5, 11), true, 'overlapping the first range')
  t.equal(may(20, 40), false, 'the hole between the ranges')
  t.equal(may(39, 41), true, 'overlapping the second')
  t.equal(may(50, 100), false, 'past the last range')
  const unknown = dataCursor(undefined)
  t.equal(unknown(0, 1), true, 'holes unknown: everything may hold data')
  t.equal(dataCursor([])(0, 1 << 30), false, 'no data at all')
})
