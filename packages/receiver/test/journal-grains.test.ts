/**
 * The grains a journal indexes (type 4 records) at a resume or rollback of a
 * disk that keeps restore points: bounded by the disk's capacity, held in
 * typed arrays and bitmaps (grain-set.ts), not an object and a Set entry per
 * grain — an incremental of 100 GiB in 4 KiB grains journals ~25 M of them.
 */
import t from 'tap'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createFlatDisk } from '@grainline/vmdk'
import { runNode } from '@grainline/test-utils'
import { Journal, readJournal, type JournalHead } from '../src/journal.ts'
import { POINT_GRAIN, ReverseIncrement, pointFileName } from '../src/increment.ts'
import { VmPaths } from '../src/vm-paths.ts'
import { undoInflight } from '../src/rollback.ts'
import type { InflightCycle } from '../src/state-file.ts'
import { pattern } from './helpers.ts'

const MiB = 1024 * 1024
const GiB = 1024 * MiB
const head = (capacity: number): JournalHead => ({ cycleId: 'cd'.repeat(8), cycle: 3, name: 'disk.vmdk', mode: 'incremental', capacity, baseSize: capacity, increment: 'disk.p2.vmdk' })

t.test('a grains record naming a grain beyond the disk capacity is refused (E_STATE naming the journal, disk and what to do), not read', async (t) => {
  const dir = t.testdir()
  const capacity = 16 * MiB + 512 // the last grain is partial: 4097 grains
  const last = Math.ceil(capacity / POINT_GRAIN) - 1
  const p = join(dir, 'disk.journal')
  const j = await Journal.create(p, head(capacity))
  j.appendGrains([
    { grain: 0, crc: 1 },
    { grain: last, crc: 2 },
  ])
  j.appendApplied(0)
  await j.flush(true)
  await j.close()
  const ok = await readJournal(p)
  t.same([ok?.grains.length, ok?.grains.at(-1)], [2, { grain: last, crc: 2 }], 'the last (partial) grain of the capacity is one of the disk')

  for (const bad of [last + 1, 2 ** 40, -1, 1.5]) {
    const q = join(dir, `bad-${bad}.journal`)
    const k = await Journal.create(q, head(capacity))
    k.appendGrains([{ grain: 7, crc: 3 }])
    k.appendGrains([
      { grain: 8, crc: 4 },
      { grain: bad, crc: 5 },
    ])
    k.appendApplied(1)
    await k.flush(true)
    await k.close()
    await t.rejects(
      readJournal(q),
      {
        name: 'ReceiverError',
        code: 'E_STATE',
        message: new RegExp(`${q.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} of disk disk\\.vmdk \\(cycle 3\\) is corrupt: .*grain ${bad},.*4097 grains.*grainline mirror remove`),
      },
      `grain ${bad}: refused, with the journal, the disk and what to do`,
    )
  }
})

t.test('a rollback of a disk whose journal names a grain beyond the capacity is refused before it changes anything', async (t) => {
  const dir = t.testdir()
  const paths = new VmPaths(dir, 'vm')
  mkdirSync(paths.gdir, { recursive: true })
  const capacity = MiB
  const flat = pattern(capacity, 9)
  writeFileSync(paths.flat('disk'), flat)
  const j = await Journal.create(paths.journal('disk'), { ...head(capacity), baseSize: capacity / 2 })
  j.appendGrains([{ grain: capacity / POINT_GRAIN, crc: 1 }])
  j.appendApplied(0)
  await j.flush(true)
  await j.close()
  const journal = readFileSync(paths.journal('disk'))
  // the state's in-flight record is the journal's head (journal-head.ts): the grains record is what is refused
  const rec = { target: 'flat', stem: 'disk', name: 'disk.vmdk', increment: 'disk.p2.vmdk', cycleId: 'cd'.repeat(8), mode: 'incremental', capacity, baseSize: capacity / 2 }
  const infl = { cycle: 3, startedAt: new Date(0).toISOString(), disks: { 'disk.vmdk': rec } } as unknown as InflightCycle
  await t.rejects(undoInflight(paths, infl), {
    code: 'E_STATE',
    message: /^journal vm\/\.grainline\/disk\.journal of disk disk\.vmdk \(cycle 3\) is corrupt: .*grainline mirror remove --store .* --vm vm --yes/,
  })
  t.ok(readFileSync(paths.journal('disk')).equals(journal), 'the journal as it was (not renamed for an undo, not reset)')
  t.notOk(existsSync(paths.undoing('disk')), 'no undo begun')
  t.ok(readFileSync(paths.flat('disk')).equals(flat), 'the flat as it was (not cut back to the base size)')
})

t.test('the first entry of a grain is the one kept (a resume that saved a grain again journals it again)', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'disk.journal')
  const j = await Journal.create(p, head(MiB))
  j.appendGrains([
    { grain: 5, crc: 1 },
    { grain: 9, crc: 2 },
  ])
  j.appendGrains([
    { grain: 5, crc: 0xfffffff0 },
    { grain: 6, crc: 0xfffffff1 },
    { grain: 9, crc: 7 },
  ])
  await j.flush(true)
  await j.close()
  const c = await readJournal(p)
  t.same(
    [...(c?.grains ?? [])],
    [
      { grain: 5, crc: 1 },
      { grain: 9, crc: 2 },
      { grain: 6, crc: 0xfffffff1 },
    ],
  )
  t.ok(c?.grains.has(6) === true && c.grains.has(7) === false, 'has() of the grains listed')
})

t.test('a grains record larger than the piece the reader takes at once (768 KiB) is read whole', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'disk.journal')
  const j = await Journal.create(p, head(GiB))
  const n = 100_000 // 1.2 MB of entries in one record
  j.appendGrains(Array.from({ length: n }, (_, k) => ({ grain: n - 1 - k, crc: k })))
  j.appendApplied(0)
  await j.flush(true)
  await j.close()
  const c = await readJournal(p)
  t.equal(c?.grains.length, n)
  t.same(
    [c?.grains.at(0), c?.grains.at(65535), c?.grains.at(65536), c?.grains.at(-1)],
    [
      { grain: n - 1, crc: 0 },
      { grain: n - 1 - 65535, crc: 65535 },
      { grain: n - 1 - 65536, crc: 65536 },
      { grain: 0, crc: n - 1 },
    ],
  )
  t.same(c?.applied, { seq: 0 }, 'and the records after it')
})

// The child measures what the grains cost: memoryUsage() heapUsed + arrayBuffers (typed arrays live outside the heap;
// both count), after a full GC, while the result is still referenced.
const CHILD = `
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
setFlagsFromString('--expose_gc')
const gc = runInNewContext('gc')
const [src, file, gdir] = process.argv.slice(2)
const { readJournal } = await import(src + '/journal.js')
const { ReverseIncrement, pointFileName } = await import(src + '/increment.js')
const { VmPaths } = await import(src + '/vm-paths.js')
const mem = () => { gc(); gc(); const m = process.memoryUsage(); return m.heapUsed + m.arrayBuffers }
const m0 = mem()
let t0 = performance.now()
const c = await readJournal(file)
const readMs = performance.now() - t0
const m1 = mem()
t0 = performance.now()
const paths = new VmPaths(gdir, 'vm')
const inc = await ReverseIncrement.open(paths, 'disk', pointFileName('disk', 2), c.grains)
const openMs = performance.now() - t0
const m2 = mem()
// the grains an apply saves are reserved in the increment's set of saved grains: every grain of the disk here
t0 = performance.now()
const runs = inc.reserve(0, c.head.capacity, c.head.capacity)
const reserveMs = performance.now() - t0
const m3 = mem()
await inc.close()
process.stdout.write(JSON.stringify({ grains: c.grains.length, runs: runs.length, readMs, openMs, reserveMs, read: m1 - m0, open: m2 - m1, reserve: m3 - m2 }))
`

t.test('a journal of 2 M grains is read, its increment reopened and all its grains reserved in bounded memory (typed arrays, bitmaps)', async (t) => {
  const dir = t.testdir()
  const n = 2 * 1024 * 1024
  const capacity = n * POINT_GRAIN // 8 GiB, sparse
  const paths = new VmPaths(dir, 'vm')
  mkdirSync(paths.gdir, { recursive: true })
  await createFlatDisk(paths.descriptor('disk'), capacity)
  // the increment exists (empty: the crash came before its first flush), so the resume verifies the journaled grains
  const file = pointFileName('disk', 2)
  const first = await ReverseIncrement.open(paths, 'disk', file, [])
  await first.close()
  // the journal as the receiver's writer leaves it: a grains record per 8 MiB run (2,048 grains), scattered
  // over the disk in an order of its own, crcs over the whole u32 range
  const p = paths.journal('disk')
  const j = await Journal.create(p, head(capacity))
  const RUN = 2048
  for (let r = 0; r < n / RUN; r++) {
    const base = ((r * 7919) % (n / RUN)) * RUN
    j.appendGrains(Array.from({ length: RUN }, (_, k) => ({ grain: base + k, crc: (Math.imul(base + k, 2654435761) >>> 0) | 0x80000000 })))
    if (r % 16 === 15) {
      j.appendApplied(r)
      await j.flush(false)
    }
  }
  await j.flush(true)
  await j.close()
  const script = join(dir, 'child.mjs')
  writeFileSync(script, CHILD)
  const src = new URL('../src', import.meta.url).pathname
  const r = await runNode(script, [src, p, dir], { timeoutMs: 60_000 })
  t.equal(r.code, 0, r.stderr)
  const got = JSON.parse(r.stdout) as { grains: number; runs: number; readMs: number; openMs: number; reserveMs: number; read: number; open: number; reserve: number }
  t.comment(
    `${n} grains: read ${(got.read / MiB).toFixed(1)} MiB in ${got.readMs.toFixed(0)} ms, reopen ${(got.open / MiB).toFixed(1)} MiB in ${got.openMs.toFixed(0)} ms, reserve ${(got.reserve / MiB).toFixed(1)} MiB in ${got.reserveMs.toFixed(0)} ms`,
  )
  t.equal(got.grains, n, 'every grain listed')
  t.equal(got.runs, n / RUN, 'none counted saved (the increment holds none): all reserved again, 8 MiB runs')
  // 12 bytes a grain in typed arrays (chunks of 64 Ki entries) and a bitmap of 1 bit a grain; an object per
  // grain in an array cost ~60 bytes of heap
  t.ok(got.read < n * 16, `the journal's grains: ${(got.read / n).toFixed(1)} bytes a grain (under 16)`)
  // a bitmap of the saved grains: 1 bit a grain (a Set entry each cost ~20–40 bytes)
  t.ok(got.open + got.reserve < n, `the increment's saved grains: ${((got.open + got.reserve) / n).toFixed(2)} bytes a grain (under 1)`)
})

// A child as CHILD: what a journal of grains scattered one per 256 MiB costs read (its GrainList) and saved (a GrainSet,
// as the increment's set of saved grains).
const SCATTERED_CHILD = `
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
setFlagsFromString('--expose_gc')
const gc = runInNewContext('gc')
const [src, file] = process.argv.slice(2)
const { readJournal } = await import(src + '/journal.js')
const { GrainSet } = await import(src + '/grain-set.js')
const mem = () => { gc(); gc(); const m = process.memoryUsage(); return m.heapUsed + m.arrayBuffers }
const m0 = mem()
const c = await readJournal(file)
const m1 = mem()
const saved = new GrainSet()
for (const e of c.grains) saved.add(e.grain)
const m2 = mem()
process.stdout.write(JSON.stringify({ grains: c.grains.length, saved: saved.size, read: m1 - m0, set: m2 - m1 }))
`

t.test('grains scattered over a large disk (one 4 KiB write per 256 MiB of 16 TiB) cost well under 1 KiB each read and saved, not a bitmap page of 8 KiB each', async (t) => {
  const dir = t.testdir()
  const n = 16_384
  const capacity = 16 * 1024 * GiB
  const p = join(dir, 'disk.journal')
  const j = await Journal.create(p, head(capacity))
  // one grain in each span of 2^16 grains (256 MiB), as a writer of one block per 256 MiB leaves them
  for (let r = 0; r < n / 2048; r++) j.appendGrains(Array.from({ length: 2048 }, (_, k) => ({ grain: (r * 2048 + k) * 65536 + (k % 97), crc: k })))
  j.appendApplied(0)
  await j.flush(true)
  await j.close()
  const script = join(dir, 'child.mjs')
  writeFileSync(script, SCATTERED_CHILD)
  const src = new URL('../src', import.meta.url).pathname
  const r = await runNode(script, [src, p], { timeoutMs: 60_000 })
  t.equal(r.code, 0, r.stderr)
  const got = JSON.parse(r.stdout) as { grains: number; saved: number; read: number; set: number }
  t.comment(`${n} scattered grains: read ${(got.read / n).toFixed(0)} bytes a grain, saved set ${(got.set / n).toFixed(0)} bytes a grain`)
  t.same([got.grains, got.saved], [n, n], 'every grain listed and saved')
  // the GrainList's chunk of 64 Ki entries (768 KiB) is its fixed cost; pages of 2^16 grains cost 8 KiB a grain here
  t.ok(got.read - 768 * 1024 < n * 1024, `the journal's grains: ${(got.read / n).toFixed(0)} bytes a grain (under 1 KiB beyond the first chunk)`)
  t.ok(got.set < n * 1024, `the set of saved grains: ${(got.set / n).toFixed(0)} bytes a grain (under 1 KiB)`)
})
