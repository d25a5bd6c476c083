/**
 * A resume and a rollback of a journal of 300,000 extent records in a process of 32 MiB of heap
 * (`node --max-old-space-size=32`): the journal's records are read a window at a time (journal.ts scanJournal,
 * journalExtents), never held all at once — ~150–200 bytes a record held took ~60 MiB here, and the process died of
 * heap exhaustion. The rollback puts the mirror flat back byte for byte.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Journal } from '../src/journal.ts'
import type { InflightCycle, InflightDisk } from '../src/state-file.ts'
import { VmPaths } from '../src/vm-paths.ts'

const RECORDS = 300_000
const GRAIN = 4096
const RANGES = 8192
const SIZE = RANGES * GRAIN
const APPLIED = 200_000
const CHILD = join(import.meta.dirname, 'journal-bound-child.js')

t.test('a journal of 300,000 records resumes and rolls back in 32 MiB of heap', async (t) => {
  const store = t.testdir()
  const paths = new VmPaths(store, 'vm')
  mkdirSync(paths.gdir, { recursive: true })
  const disk: InflightDisk = {
    name: 'd.vmdk',
    stem: 'd',
    cycleId: 'cd'.repeat(8),
    mode: 'incremental',
    capacity: SIZE,
    baseSize: SIZE,
    target: 'flat',
    source: { kind: 'vm', moref: 'vm-1', uuid: 'u', instanceUuid: 'i' } as unknown as InflightDisk['source'],
    ddb: {},
    algorithm: 'sha256',
  }
  const infl: InflightCycle = { cycle: 3, startedAt: new Date().toISOString(), disks: { [disk.name]: disk } }
  // the committed flat: random bytes in every 16th range, zeros elsewhere
  const original = Buffer.alloc(SIZE)
  for (let r = 0; r < RANGES; r += 16) randomBytes(GRAIN).copy(original, r * GRAIN)
  // the journal of a cycle writing range i % RANGES at seq i: the first record of a range holds its committed
  // bytes (stored, or zeros), a later one the zeros an earlier zero extent of the cycle wrote there
  const j = await Journal.create(paths.journal(disk.stem), {
    cycleId: disk.cycleId,
    cycle: infl.cycle,
    name: disk.name,
    mode: disk.mode,
    capacity: disk.capacity,
    baseSize: disk.baseSize,
  })
  for (let i = 0; i < RECORDS; i++) {
    const r = i % RANGES
    const e = { seq: i, offset: r * GRAIN, length: GRAIN, zero: true, digest: '' }
    if (i < RANGES && r % 16 === 0) j.appendExtent(e, original.subarray(r * GRAIN, (r + 1) * GRAIN))
    else j.appendExtentOverZeros(e, e.offset, GRAIN)
    if (i % 10_000 === 9_999 && i <= APPLIED) j.appendApplied(i)
    if (i === APPLIED) j.appendApplied(i)
    if (i % 10_000 === 0) await j.flush(false)
  }
  await j.flush(true)
  await j.close()
  // the cycle overwrote the flat
  writeFileSync(paths.flat(disk.stem), Buffer.alloc(SIZE, 0xab))
  const jsize = statSync(paths.journal(disk.stem)).size
  t.ok(jsize > 20 * 1024 * 1024, `the journal holds over 20 MiB of records (${jsize} bytes)`)

  const run = spawnSync(process.execPath, ['--max-old-space-size=32', CHILD, store, 'vm', JSON.stringify(infl)], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 })
  t.equal(run.status, 0, `the child exits 0 (stderr: ${run.stderr.slice(-600)})`)
  const [resumed, undone] = run.stdout.trim().split('\n')
  t.same(
    JSON.parse(resumed ?? '{}'),
    { resumeSeq: APPLIED + 1, counts: { extents: APPLIED + 1, dataBytes: 0, zeroBytes: (APPLIED + 1) * GRAIN } },
    'resumed after the applied marker, every extent up to it replayed',
  )
  t.equal(undone, 'undone')
  const flat = readFileSync(paths.flat(disk.stem))
  t.equal(flat.length, SIZE)
  t.ok(flat.equals(original), 'the rolled back flat is the committed one byte for byte')
})
