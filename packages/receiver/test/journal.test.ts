import t from 'tap'
import { openSync, readFileSync, writeFileSync, truncateSync, statSync, writeSync, closeSync } from 'node:fs'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import { Journal, readJournal, undoJournal } from '../src/journal.ts'
import { pattern } from './helpers.ts'

const head = { cycleId: 'ab'.repeat(8), cycle: 2, name: 'd.vmdk', mode: 'incremental' as const, capacity: 1 << 20, baseSize: 1 << 19 }

t.test('journal round trip, torn tails and corruption end the journal', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'd.journal')
  const j = await Journal.create(p, head)
  j.appendExtent({ seq: 0, offset: 0, length: 4096, zero: false, digest: 'aa' }, pattern(4096, 1))
  j.appendExtent({ seq: 1, offset: 8192, length: 512, zero: true, digest: '' }, pattern(512, 2))
  await j.flush(true)
  j.appendApplied(1)
  j.appendExtent({ seq: 2, offset: 1 << 19, length: 4096, zero: false, digest: 'bb' }, undefined)
  await j.flush(true)
  await j.close()
  const c = await readJournal(p)
  t.match(c?.head, head)
  t.type(c?.head.gen, 'number')
  t.equal(c?.extents.length, 3)
  t.same(c?.applied, { seq: 1 })
  t.equal(c?.extents[0]?.oldLength, 4096)
  t.equal(c?.extents[2]?.oldLength, 0)
  t.equal(c?.validEnd, statSync(p).size)
  const full = readFileSync(p)

  // torn tail: every cut inside the last record drops just that record
  for (const cut of [1, 5, 13, 20]) {
    writeFileSync(p, full.subarray(0, full.length - cut))
    const d = await readJournal(p)
    t.equal(d?.extents.length, 2, `cut ${cut}`)
    t.same(d?.applied, { seq: 1 })
  }
  // a flipped byte in the first extent's old data: the journal ends before it
  const bad = Buffer.from(full)
  bad[200] = (bad[200] as number) ^ 0xff
  writeFileSync(p, bad)
  const e = await readJournal(p)
  t.equal(e?.extents.length, 0)
  t.equal(e?.applied, null)
  // absurd length field: bounded, treated as the end
  const huge = Buffer.from(full)
  const firstLen = huge.readUInt32LE(0)
  huge.writeUInt32LE(0xffffffff, 8 + firstLen)
  writeFileSync(p, huge)
  t.equal((await readJournal(p))?.extents.length, 0)
  // no valid head → undefined
  writeFileSync(p, Buffer.from('garbage that is not a journal'))
  t.equal(await readJournal(p), undefined)

  // reopen cuts the torn tail and appends after it
  writeFileSync(p, full.subarray(0, full.length - 3))
  const f = await readJournal(p)
  if (f === undefined) throw new Error('no journal')
  const j2 = await Journal.reopen(p, f)
  j2.appendApplied(7)
  await j2.flush(true)
  await j2.close()
  const g = await readJournal(p)
  t.same(g?.applied, { seq: 7 })
  t.equal(g?.extents.length, 2)
})

t.test('undo restores old contents in reverse order and cuts back to the base size', async (t) => {
  const dir = t.testdir()
  const target = join(dir, 'flat')
  const base = pattern(1 << 19, 5)
  writeFileSync(target, base)
  const p = join(dir, 'x.journal')
  const j = await Journal.create(p, head)
  // extent 0 journaled twice (a resume re-journals what was already written)
  j.appendExtent({ seq: 0, offset: 4096, length: 8192, zero: false, digest: 'aa' }, base.subarray(4096, 4096 + 8192))
  await j.flush(true)
  const fd = openSync(target, 'r+')
  writeSync(fd, pattern(8192, 9), 0, 8192, 4096)
  const second = readFileSync(target).subarray(4096, 4096 + 8192)
  j.appendExtent({ seq: 0, offset: 4096, length: 8192, zero: false, digest: 'aa' }, Buffer.from(second))
  // an extent past the base size (disk grew)
  j.appendExtent({ seq: 1, offset: (1 << 19) - 4096, length: 8192, zero: false, digest: 'bb' }, base.subarray((1 << 19) - 4096))
  await j.flush(true)
  await j.close()
  truncateSync(target, 1 << 20)
  writeSync(fd, pattern(8192, 11), 0, 8192, (1 << 19) - 4096)
  closeSync(fd)
  const c = await readJournal(p)
  if (c === undefined) throw new Error('no journal')
  await undoJournal(p, c, target)
  t.ok(readFileSync(target).equals(base), 'exact base image')
  await undoJournal(p, c, target)
  t.ok(readFileSync(target).equals(base), 'idempotent')
})

/** An extent record (type 2) framed as journal.ts frames it: u32 length, u32 crc seeded with `gen`, type, header length, header, bytes. */
function frameFor(gen: number, header: object, data: Buffer | undefined): Buffer[] {
  const h = Buffer.from(JSON.stringify(header), 'utf8')
  const pre = Buffer.alloc(13)
  pre.writeUInt32LE(1 + 4 + h.length + (data?.length ?? 0), 0)
  pre.writeUInt8(2, 8)
  pre.writeUInt32LE(h.length, 9)
  let c = crc32(pre.subarray(8, 13), gen)
  c = crc32(h, c)
  if (data !== undefined) c = crc32(data, c)
  pre.writeUInt32LE(c >>> 0, 4)
  return data === undefined ? [pre, h] : [pre, h, data]
}

t.test('old contents that are zeros are journaled by their length alone; undo writes the zeros back; a malformed zero record ends the journal', async (t) => {
  const dir = t.testdir()
  const target = join(dir, 'flat')
  // a thin mirror: data, a hole, data
  const base = Buffer.concat([pattern(65536, 3), Buffer.alloc(131072), pattern((1 << 19) - 196608, 4)])
  writeFileSync(target, base)
  const p = join(dir, 'z.journal')
  const j = await Journal.create(p, head)
  const e = { seq: 0, offset: 32768, length: 98304, zero: false, digest: 'aa' }
  j.appendExtent(e, base.subarray(32768, 65536), 32768)
  j.appendExtentOverZeros(e, 65536, 65536)
  t.throws(() => j.appendExtentOverZeros(e, 0, 0), RangeError, 'a zero piece of no bytes is refused')
  await j.flush(true)
  await j.close()
  t.ok(statSync(p).size < 32768 + 4096, 'the 64 KiB of old zeros take no room in the journal')
  const fd = openSync(target, 'r+')
  writeSync(fd, pattern(98304, 9), 0, 98304, 32768)
  closeSync(fd)
  const c = await readJournal(p)
  if (c === undefined) throw new Error('no journal')
  t.same(
    c.extents.map((x) => [x.oldOffset, x.oldLength, x.oldZeros]),
    [
      [32768, 32768, false],
      [65536, 65536, true],
    ],
  )
  await undoJournal(p, c, target)
  t.ok(readFileSync(target).equals(base), 'exact base image: the overwritten hole reads as zeros again')
  // a zero record that carries bytes, or a length out of bounds: corruption, the journal ends before it
  for (const bad of [{ oldZeros: 4096, control: true }, { oldZeros: 4096, bytes: 4096 }, { oldZeros: -1 }, { oldZeros: 2 ** 40 }, { oldZeros: '4096' }] as Array<{
    oldZeros: unknown
    bytes?: number
    control?: boolean
  }>) {
    const q = join(dir, `bad-${Math.random().toString(16).slice(2)}.journal`)
    const k = await Journal.create(q, head)
    const gen = (await readJournal(q))?.head.gen ?? 0
    k.appendExtent(e, base.subarray(32768, 65536), 32768)
    // a well-framed record (its crc right) whose header is wrong
    ;(k as unknown as { push: (b: Buffer[]) => void }).push(
      frameFor(gen, { seq: 0, offset: 32768, length: 98304, zero: false, digest: 'aa', oldOffset: 65536, oldZeros: bad.oldZeros }, bad.bytes === undefined ? undefined : Buffer.alloc(bad.bytes)),
    )
    await k.flush(true)
    await k.close()
    if (bad.control === true) t.equal((await readJournal(q))?.extents.length, 2, 'control: a well-formed zero record framed by the test is read')
    else t.equal((await readJournal(q))?.extents.length, 1, `oldZeros ${JSON.stringify(bad)}: the journal ends at that record`)
  }
})

t.test('a reused journal file: stale records of the previous generation are never read', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'd.journal')
  const j = await Journal.create(p, head)
  for (let i = 0; i < 5; i++) j.appendExtent({ seq: i, offset: i * 4096, length: 4096, zero: false, digest: 'aa' }, pattern(4096, i))
  j.appendApplied(4)
  await j.flush(true)
  await j.close()
  const { renameSync, existsSync } = await import('node:fs')
  renameSync(p, `${p}.spare`)
  const big = statSync(`${p}.spare`).size
  const j2 = await Journal.create(p, { ...head, cycleId: 'cd'.repeat(8) }, `${p}.spare`)
  j2.appendExtent({ seq: 0, offset: 0, length: 4096, zero: false, digest: 'bb' }, pattern(4096, 9))
  await j2.flush(true)
  await j2.close()
  t.notOk(existsSync(`${p}.spare`), 'spare renamed into place')
  t.equal(statSync(p).size, big, 'blocks kept, stale bytes beyond the end')
  const c = await readJournal(p)
  t.equal(c?.head.cycleId, 'cd'.repeat(8))
  t.equal(c?.extents.length, 1, 'only the new generation')
  t.equal(c?.applied, null, 'the stale applied marker is not read')
  // no spare: a fresh file
  const j3 = await Journal.create(join(dir, 'e.journal'), head, join(dir, 'missing.spare'))
  await j3.close()
  t.equal((await readJournal(join(dir, 'e.journal')))?.extents.length, 0)
})

t.test('a flush resolves only once every record queued before it is written, also those an overlapping flush took', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'o.journal')
  const j = await Journal.create(p, head)
  // hold the first write of records until released (a slow disk): the second flush must wait for it
  const fh = (j as unknown as { fh: { writev: (bufs: Buffer[], pos: number) => Promise<{ bytesWritten: number }> } }).fh
  const writev = fh.writev.bind(fh)
  let release: () => void = () => {}
  const held = new Promise<void>((r) => {
    release = r
  })
  let calls = 0
  let firstStarted: () => void = () => {}
  const started = new Promise<void>((r) => {
    firstStarted = r
  })
  let secondWritten: () => void = () => {}
  const written = new Promise<void>((r) => {
    secondWritten = r
  })
  fh.writev = async (bufs, pos) => {
    const call = calls++
    if (call === 0) {
      firstStarted()
      await held
    }
    const r = await writev(bufs, pos)
    if (call === 1) secondWritten()
    return r
  }
  j.appendExtent({ seq: 0, offset: 0, length: 4096, zero: false, digest: 'aa' }, pattern(4096, 1))
  const first = j.flush(false)
  await started
  j.appendExtent({ seq: 1, offset: 8192, length: 4096, zero: false, digest: 'bb' }, pattern(4096, 2))
  let secondDone = false
  const second = j.flush(false).then(() => {
    secondDone = true
  })
  // the second record's own write goes out at once and completes; its flush still waits for the first one's
  await written
  for (let k = 0; k < 5; k++) await new Promise(setImmediate)
  t.equal(calls, 2, 'both writes started')
  t.notOk(secondDone, 'the second flush has not resolved while the first write is held')
  release()
  await first
  await second
  t.ok(secondDone)
  await j.close()
  const c = await readJournal(p)
  t.equal(c?.extents.length, 2, 'both records written')
  t.same(
    c?.extents.map((e) => e.seq),
    [0, 1],
  )
})

// readJournal reads through a 1 MiB window (journal.ts JournalWindow): records that straddle its edge, old contents
// larger than the window and than the 4 MiB crc chunk, grains, and a torn or corrupt record far from the start.
t.test('a journal of many records across read windows reads back whole; a corrupt record deep inside ends it there', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'd.journal')
  const j = await Journal.create(p, { ...head, capacity: 1 << 30, baseSize: 1 << 30 })
  const n = 20_000
  const big = 5
  let seq = 0
  const olds = new Map<number, Buffer>()
  for (let i = 0; i < n; i++) {
    const e = { seq, offset: seq * 4096, length: 4096, zero: false, digest: seq.toString(16) }
    // old contents are a piece of the record's own range (readJournal refuses others): the range as long as they are
    if (i === big) {
      // 6 MiB of old contents: over the window and over one crc chunk
      const old = pattern(6 * 1024 * 1024, 7)
      olds.set(seq, old)
      j.appendExtent({ ...e, length: old.length }, old)
    } else if (i % 997 === 0) {
      const old = pattern(4096 + (i % 3) * 512, i)
      olds.set(seq, old)
      j.appendExtent({ ...e, length: old.length }, old)
    } else j.appendExtentOverZeros(e, e.offset, 4096)
    if (i % 2000 === 1999) {
      j.appendGrains([{ grain: i, crc: i * 3 }])
      j.appendApplied(seq)
      await j.flush(false)
    }
    seq++
  }
  await j.flush(true)
  await j.close()
  const size = statSync(p).size
  t.ok(size > 2 * 1024 * 1024 + 6 * 1024 * 1024, `the journal spans many windows (${size} bytes)`)
  const c = await readJournal(p)
  t.equal(c?.extents.length, n)
  t.equal(c?.validEnd, size)
  t.same(c?.applied, { seq: n - 1 })
  t.equal(c?.grains.length, n / 2000)
  t.same(c?.grains.at(-1), { grain: n - 1, crc: (n - 1) * 3 })
  t.ok(
    c?.extents.every((e, i) => e.seq === i && e.digest === i.toString(16) && e.offset === i * 4096),
    'every record in order, as written',
  )
  const whole = readFileSync(p)
  for (const [s, old] of olds) {
    const e = c?.extents[s]
    if (e === undefined) throw new Error(`no record ${s}`)
    t.equal(e.oldZeros, false)
    t.equal(e.oldLength, old.length)
    t.ok(whole.subarray(e.oldPos, e.oldPos + e.oldLength).equals(old), `record ${s}: its old contents at oldPos`)
  }
  const zeros = c?.extents[n - 2]
  t.same([zeros?.oldZeros, zeros?.oldLength], [true, 4096])

  // one byte flipped in a record ~3/4 in: the journal ends just before that record
  const k = Math.floor(n * 0.75)
  const at = c?.extents[k]?.oldPos as number
  const bad = Buffer.from(whole)
  bad[at - 3] = (bad[at - 3] as number) ^ 0x55
  writeFileSync(p, bad)
  const d = await readJournal(p)
  t.equal(d?.extents.length, k, 'the records before it')
  t.ok((d?.validEnd as number) < at, 'the valid end before the corrupt record')
  // cut inside the big record's old contents: it and everything after are gone
  const bigPos = c?.extents[big]?.oldPos as number
  writeFileSync(p, whole.subarray(0, bigPos + 5 * 1024 * 1024))
  t.equal((await readJournal(p))?.extents.length, big)
})

// undoJournal undoes runs of non-overlapping extents with their writes in flight together: where ranges overlap
// (an extent rewritten within the cycle, a resume that journaled it again) the older contents must still be
// written last. Extents applied in order over a base, each journaled with what it overwrote, then undone.
t.test('undo of many extents, overlapping ones among them, gives back the exact base (writes in flight together)', async (t) => {
  const dir = t.testdir()
  const size = 1 << 20
  const base = pattern(size, 21)
  base.fill(0, 3 * 65536, 5 * 65536) // a zero region: its old contents journaled by length
  const target = join(dir, 'flat')
  writeFileSync(target, base)
  const img = Buffer.from(base)
  const p = join(dir, 'x.journal')
  const j = await Journal.create(p, { ...head, capacity: size, baseSize: size })
  let seed = 7
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % n
  }
  const progress: number[] = []
  for (let i = 0; i < 400; i++) {
    // mostly scattered, every fifth on top of one of the last few (an overlap within a run)
    const offset = i % 5 === 4 ? Math.max(0, (i - 2) * 2048 + rnd(3) * 512) % (size - 16384) : rnd(size / 512 - 32) * 512
    const length = (1 + rnd(24)) * 512
    const e = { seq: i, offset, length, zero: false, digest: '' }
    const old = img.subarray(offset, offset + length)
    if (old.every((b) => b === 0)) j.appendExtentOverZeros(e, offset, length)
    else j.appendExtent(e, Buffer.from(old))
    pattern(length, 100 + i).copy(img, offset)
  }
  await j.flush(true)
  await j.close()
  writeFileSync(target, img)
  const c = await readJournal(p)
  if (c === undefined) throw new Error('no journal')
  t.ok(
    c.extents.some((e) => e.oldZeros),
    'some old contents were zeros',
  )
  await undoJournal(p, c, target, (b) => progress.push(b))
  t.ok(readFileSync(target).equals(base), 'the exact base')
  t.ok(
    progress.every((b, i) => i === 0 || b > (progress[i - 1] as number)),
    'progress only moves forward',
  )
  t.equal(
    progress.at(-1),
    c.extents.reduce((n, e) => n + e.oldLength, 0),
    'and ends at every old byte',
  )
})
