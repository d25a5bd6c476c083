/**
 * Property: a journal read a window at a time (journal.ts scanJournal, journalExtents) — its extent list, a
 * resume's replay (DiskApply.resume: seq 0, 1, 2… up to the applied marker, each seq's first record, waiting for
 * a bounded number of seqs and reading the journal again past them) and a rollback (undoJournal, newest record
 * first, window by window from the end) — gives exactly what the whole list of its records gives: the records the
 * writer wrote, the resume point and counts of the chain of first records, and the flat with every record's old
 * contents written back newest first. Windows and the waiting bound are made tiny (JOURNAL_READ_LIMITS) so that
 * journals of a few dozen records read in many windows and passes.
 */
import t from 'tap'
import fc from 'fast-check'
import { mkdirSync, readFileSync, writeFileSync, appendFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { join, relative } from 'node:path'
import { initDigests } from '@grainline/protocol'
import { DiskApply } from '../src/disk-apply.ts'
import { JOURNAL_READ_LIMITS, Journal, journalExtents, readJournal, scanJournal, undoJournal, type JournalExtent } from '../src/journal.ts'
import type { InflightDisk } from '../src/state-file.ts'
import { VmPaths } from '../src/vm-paths.ts'
import { pattern } from './helpers.ts'

const CAP = 32 * 1024

/** A record as the writer was given it: its old contents stored (bytes), zeros (their length) or none. */
type ModelExtent = Pick<JournalExtent, 'seq' | 'offset' | 'length' | 'zero' | 'digest' | 'oldOffset'> & { readonly old: Buffer | number | undefined }

const opArb = fc.record({
  applied: fc.integer({ min: 0, max: 9 }),
  seq: fc.integer({ min: 0, max: 40 }),
  offset: fc.nat({ max: CAP - 1 }),
  length: fc.nat(),
  zero: fc.boolean(),
  digest: fc.constantFrom('aa', 'bb', 'cc'),
  old: fc.constantFrom('none', 'data', 'zeros'),
  oldStart: fc.nat(),
  oldLen: fc.nat(),
  fill: fc.integer({ min: 1, max: 1e6 }),
})

/** The in-flight record of disk d.vmdk of an incremental cycle (what DiskApply.resume reads of it), its base size `baseSize`. */
function diskInfo(baseSize: number): InflightDisk {
  return {
    name: 'd.vmdk',
    stem: 'd',
    cycleId: 'ef'.repeat(8),
    mode: 'incremental',
    capacity: CAP,
    baseSize,
    target: 'flat',
    source: {},
    ddb: {},
    algorithm: 'sha256',
  } as unknown as InflightDisk
}

const saved = { ...JOURNAL_READ_LIMITS }
t.teardown(() => Object.assign(JOURNAL_READ_LIMITS, saved))

t.test('windowed scan, replay and undo give what the whole record list gives', async (t) => {
  await initDigests()
  let run = 0
  let chains = 0
  await fc.assert(
    fc.asyncProperty(
      fc.array(opArb, { minLength: 20, maxLength: 80 }),
      fc.integer({ min: 2, max: 24 }),
      fc.option(fc.integer({ min: 0, max: 40 })),
      fc.integer({ min: 0, max: CAP / 512 }),
      fc.record({ records: fc.integer({ min: 1, max: 6 }), bytes: fc.integer({ min: 1, max: 2048 }), waiting: fc.integer({ min: 1, max: 5 }) }),
      fc.boolean(),
      fc.boolean(),
      async (ops, seqs, finalApplied, baseSectors, limits, inOrder, tornTail) => {
        Object.assign(JOURNAL_READ_LIMITS, limits)
        const store = join(t.testdir(), `s${run++}`)
        const paths = new VmPaths(store, 'vm')
        mkdirSync(paths.gdir, { recursive: true })
        const baseSize = baseSectors * 512
        const info = diskInfo(baseSize)
        const jpath = paths.journal('d')
        const j = await Journal.create(jpath, { cycleId: info.cycleId, cycle: 2, name: info.name, mode: info.mode, capacity: CAP, baseSize })
        const model: ModelExtent[] = []
        let applied: number | null = null
        let nextInOrder = 0
        for (const op of ops) {
          // an applied marker now and then (its seq below the seqs journaled, or any)
          if (op.applied === 0) {
            applied = inOrder ? Math.max(0, nextInOrder - 1 - (op.seq % 3)) : op.seq % seqs
            j.appendApplied(applied)
            continue
          }
          // in order, now and then an earlier seq again (a resume journals it again); or any order, seqs below `seqs`
          const seq = inOrder ? (op.seq % 4 === 0 ? op.seq % Math.max(1, nextInOrder) : nextInOrder++) : op.seq % seqs
          const length = 1 + (op.length % (CAP - op.offset))
          const e = { seq, offset: op.offset, length, zero: op.zero, digest: op.zero ? '' : op.digest }
          // old contents: a piece of the committed part of the range
          const committedEnd = Math.min(op.offset + length, baseSize)
          let m: ModelExtent = { ...e, oldOffset: op.offset, old: undefined }
          if (op.old !== 'none' && committedEnd > op.offset) {
            const oldOffset = op.offset + (op.oldStart % (committedEnd - op.offset))
            const n = 1 + (op.oldLen % (committedEnd - oldOffset))
            if (op.old === 'data') {
              const data = pattern(n, op.fill)
              j.appendExtent(e, data, oldOffset)
              m = { ...e, oldOffset, old: data }
            } else {
              j.appendExtentOverZeros(e, oldOffset, n)
              m = { ...e, oldOffset, old: n }
            }
          } else {
            j.appendExtent(e, undefined)
          }
          model.push(m)
        }
        if (finalApplied !== null) {
          applied = finalApplied
          j.appendApplied(applied)
        }
        await j.flush(true)
        await j.close()
        // a stale tail of an earlier cycle: not part of the journal
        if (tornTail) appendFileSync(jpath, pattern(300, run))

        // the extent list, read a window at a time, is what the writer wrote
        const whole = await readJournal(jpath)
        if (whole === undefined) throw new Error('no journal')
        t.equal(whole.extents.length, model.length)
        const oldLength = (m: ModelExtent): number => (m.old === undefined ? 0 : typeof m.old === 'number' ? m.old : m.old.length)
        const listed = whole.extents.map((e) => [e.seq, e.offset, e.length, e.zero, e.digest, e.oldLength === 0 ? e.offset : e.oldOffset, e.oldLength, e.oldZeros])
        const wrote = model.map((m) => [m.seq, m.offset, m.length, m.zero, m.digest, m.oldOffset, oldLength(m), typeof m.old === 'number'])
        if (JSON.stringify(listed) !== JSON.stringify(wrote)) t.same(listed, wrote, 'the records read are the records written')

        // resume: the chain of each seq's first record, up to the applied marker
        const last = applied ?? -1
        const first = new Map<number, ModelExtent>()
        for (const m of model) if (m.seq <= last && !first.has(m.seq)) first.set(m.seq, m)
        let next = 0
        const counts = { extents: 0, dataBytes: 0, zeroBytes: 0 }
        for (let m = first.get(0); m !== undefined; m = first.get(++next)) {
          counts.extents++
          if (m.zero) counts.zeroBytes += m.length
          else counts.dataBytes += m.length
        }
        const before = pattern(CAP, run + 7)
        writeFileSync(paths.flat('d'), before)
        const scan = await scanJournal(jpath)
        if (scan === undefined) throw new Error('no journal')
        const a = await DiskApply.resume(paths, info, scan)
        await a.close({ flush: false })
        const got = { next: a.nextSeq, counts: a.counts }
        const want = { next, counts }
        if (next > 3) chains++
        if (JSON.stringify(got) !== JSON.stringify(want)) t.same(got, want, 'resume point and counts')

        // undo: every record's old contents written back, newest first, the flat cut to its base size
        const expect = Buffer.from(before)
        for (let i = model.length - 1; i >= 0; i--) {
          const m = model[i] as ModelExtent
          if (m.old === undefined) continue
          if (typeof m.old === 'number') expect.fill(0, m.oldOffset, m.oldOffset + m.old)
          else m.old.copy(expect, m.oldOffset)
        }
        const undoScan = await scanJournal(jpath)
        if (undoScan === undefined) throw new Error('no journal')
        let reported = 0
        await undoJournal(jpath, undoScan, paths.flat('d'), (n) => {
          reported = n
        })
        const flat = readFileSync(paths.flat('d'))
        if (!flat.equals(expect.subarray(0, baseSize))) t.fail(`undone flat differs (run ${run}, ${flat.length} bytes, base size ${baseSize})`)
        const oldBytes = model.reduce((n, m) => n + oldLength(m), 0)
        if (reported !== oldBytes || undoScan.oldBytes !== oldBytes) t.same({ reported, scanned: undoScan.oldBytes }, { reported: oldBytes, scanned: oldBytes }, 'bytes undone')
        return true
      },
    ),
    { numRuns: 300 },
  )
  t.ok(chains > 100, `${chains} of the resumes replayed more than 3 extents`)
  t.pass(`${run} random journals: list, resume and undo as the whole list gives`)
})

t.test('a journal changed after its scan is refused, not read as records', async (t) => {
  Object.assign(JOURNAL_READ_LIMITS, saved)
  const paths = new VmPaths(t.testdir(), 'vm')
  mkdirSync(paths.gdir, { recursive: true })
  const jpath = paths.journal('d')
  const j = await Journal.create(jpath, { cycleId: 'ef'.repeat(8), cycle: 2, name: 'd.vmdk', mode: 'incremental', capacity: CAP, baseSize: CAP })
  for (let seq = 0; seq < 3; seq++) j.appendExtent({ seq, offset: seq * 4096, length: 4096, zero: false, digest: 'aa' }, pattern(4096, seq + 1))
  await j.flush(true)
  await j.close()
  const before = pattern(CAP, 99)
  writeFileSync(paths.flat('d'), before)
  const scan = await scanJournal(jpath)
  if (scan === undefined) throw new Error('no journal')
  t.equal(scan.extentRecords, 3)
  // the second record's length field says more than the file holds: no record where the scan read one
  const bytes = readFileSync(jpath)
  const second = scan.headEnd + 8 + bytes.readUInt32LE(scan.headEnd)
  const originalLen = bytes.readUInt32LE(second)
  bytes.writeUInt32LE(0x7fffffff, second)
  writeFileSync(jpath, bytes)
  await t.rejects(undoJournal(jpath, scan, paths.flat('d')), { code: 'E_STATE', message: new RegExp(`changed while it was read: its record at byte ${second} is not the one read before`) })
  t.ok(readFileSync(paths.flat('d')).equals(before), 'nothing was written back')
  // its frames intact, a record's type byte (an extent no more) or a byte of its old contents changed: its crc
  // says so, so it is neither dropped from the undo nor written back as it now reads
  for (const [what, at] of [
    ['type byte', second + 8],
    ['old contents', second + 8 + originalLen - 1],
  ] as const) {
    const changed = Buffer.from(bytes)
    changed.writeUInt32LE(originalLen, second)
    changed.writeUInt8(changed.readUInt8(at) ^ 0x01, at)
    writeFileSync(jpath, changed)
    await t.rejects(
      undoJournal(jpath, scan, paths.flat('d')),
      { code: 'E_STATE', message: new RegExp(`changed while it was read: its record at byte ${second} is not the one read before`) },
      `${what}: refused`,
    )
    t.ok(readFileSync(paths.flat('d')).equals(before), `${what}: nothing was written back`)
  }
})

t.test("a journal changed after its scan: the refusal names it as the journal's other refusals do, with what to do", async (t) => {
  Object.assign(JOURNAL_READ_LIMITS, saved)
  await initDigests()
  const store = join(t.testdir(), 'store')
  const paths = new VmPaths(store, 'web 01')
  mkdirSync(paths.gdir, { recursive: true })
  const jpath = paths.journal('d')
  const info = diskInfo(CAP)
  const j = await Journal.create(jpath, { cycleId: info.cycleId, cycle: 7, name: info.name, mode: info.mode, capacity: CAP, baseSize: CAP })
  for (let seq = 0; seq < 3; seq++) j.appendExtent({ seq, offset: seq * 4096, length: 4096, zero: false, digest: 'aa' }, pattern(4096, seq + 1))
  j.appendApplied(2)
  await j.flush(true)
  await j.close()
  const before = pattern(CAP, 5)
  writeFileSync(paths.flat('d'), before)
  const scan = await scanJournal(jpath, { paths })
  if (scan === undefined) throw new Error('no journal')
  const bytes = readFileSync(jpath)
  const second = scan.headEnd + 8 + bytes.readUInt32LE(scan.headEnd)
  bytes.writeUInt8(bytes.readUInt8(second + 8) ^ 0x01, second + 8)
  writeFileSync(jpath, bytes)
  const rollback = `grainline mirror rollback --store ${store} --vm 'web 01'`
  const said =
    `journal web 01/.grainline/d.journal of disk d.vmdk (cycle 7) changed while it was read: its record at byte ${second} is not the one read before (below its valid end at byte ${scan.validEnd}). ` +
    'Nothing more was read from it, nothing written from it. Something other than this receiver writes in the folder of VM web 01 (a copy or restore of the store, another program): ' +
    `stop it, then run again — the agent's next run, or ${rollback} — and the journal is read anew`
  t.equal(relative(store, jpath), 'web 01/.grainline/d.journal', 'the journal as the store holds it')
  // a resume's replay, a rollback's undo and a whole read: the same words, the path relative to the store
  await t.rejects(DiskApply.resume(paths, info, scan), { code: 'E_STATE', message: said }, 'resume')
  await t.rejects(undoJournal(jpath, scan, paths.flat('d'), undefined, paths), { code: 'E_STATE', message: said }, 'undo')
  t.ok(readFileSync(paths.flat('d')).equals(before), 'nothing was written back')
  await t.rejects(
    (async () => {
      const fh = await open(jpath, 'r')
      try {
        return await journalExtents(fh, jpath, scan, 0, paths)
      } finally {
        await fh.close()
      }
    })(),
    { code: 'E_STATE', message: said },
    'a window read again',
  )
  // without the VM's paths (a test's, a tool's): the journal's own path, no command naming a store
  await t.rejects(undoJournal(jpath, scan, paths.flat('d')), {
    code: 'E_STATE',
    message: new RegExp(`^journal ${jpath} of disk d\\.vmdk \\(cycle 7\\) changed while it was read: .* the agent's next run, or grainline mirror rollback — `),
  })
})
