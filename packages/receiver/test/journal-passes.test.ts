/**
 * How many times a resume's replay (DiskApply.resume, disk-apply.ts `#replay`) reads its journal, counted in bytes
 * read by this process (/proc/self/io rchar), not in time.
 *
 * The receiver takes a disk's extents in seq order only (DiskApply.accept: E_SEQUENCE otherwise) and journals them
 * in that order, batch after batch; a resume starts again at the seq after the journal's last applied marker, which
 * is at most one past the highest seq journaled. So in any journal it writes, each extent record's seq is at most
 * one past every seq before it, whatever the peer sends and however often the cycle resumes: the replay takes
 * every record it keeps at once, none waits, and one pass reads the journal — even with the waiting bound at 1.
 * The journal of the worst order the receiver accepts (many resumes, each after journaling far past its last
 * marker, every seq journaled again) is read once; a journal the receiver never writes (seqs descending: another
 * program's) costs a pass per JOURNAL_READ_LIMITS.waiting seqs — the bound the passes have.
 */
import t from 'tap'
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { initDigests } from '@grainline/protocol'
import { DiskApply } from '../src/disk-apply.ts'
import { JOURNAL_READ_LIMITS, Journal, scanJournal } from '../src/journal.ts'
import type { InflightDisk } from '../src/state-file.ts'
import { VmPaths } from '../src/vm-paths.ts'

const GRAIN = 4096
const RANGES = 64
const CAP = RANGES * GRAIN

const saved = { ...JOURNAL_READ_LIMITS }
t.teardown(() => Object.assign(JOURNAL_READ_LIMITS, saved))

function diskInfo(): InflightDisk {
  return {
    name: 'd.vmdk',
    stem: 'd',
    cycleId: 'ab'.repeat(8),
    mode: 'incremental',
    capacity: CAP,
    baseSize: CAP,
    target: 'flat',
    source: {},
    ddb: {},
    algorithm: 'sha256',
  } as unknown as InflightDisk
}

/** Bytes this process has read so far (read, pread: /proc/self/io rchar). */
function bytesRead(): number {
  const m = /^rchar: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'))
  return Number(m?.[1])
}

/** Write a journal of the extent records of `seqs` in that order (zero extents over zeros), the applied markers `markers` after the record at their index. */
async function writeJournal(paths: VmPaths, seqs: readonly number[], markers: ReadonlyMap<number, number>): Promise<number> {
  const info = diskInfo()
  const j = await Journal.create(paths.journal('d'), { cycleId: info.cycleId, cycle: 4, name: info.name, mode: info.mode, capacity: CAP, baseSize: CAP })
  for (const [i, seq] of seqs.entries()) {
    const offset = (seq % RANGES) * GRAIN
    j.appendExtentOverZeros({ seq, offset, length: GRAIN, zero: true, digest: '' }, offset, GRAIN)
    const m = markers.get(i)
    if (m !== undefined) j.appendApplied(m)
    if (i % 4096 === 4095) await j.flush(false)
  }
  await j.flush(true)
  await j.close()
  writeFileSync(paths.flat('d'), Buffer.alloc(CAP))
  return statSync(paths.journal('d')).size
}

/** Resume from the journal; the resume point and the bytes read by the replay (the scan before it not counted). */
async function resume(paths: VmPaths): Promise<{ next: number; read: number }> {
  const scan = await scanJournal(paths.journal('d'))
  if (scan === undefined) throw new Error('no journal')
  const before = bytesRead()
  const a = await DiskApply.resume(paths, diskInfo(), scan)
  const read = bytesRead() - before
  await a.close({ flush: false })
  return { next: a.nextSeq, read }
}

t.test('the worst seq order the receiver journals replays in one pass, whatever the waiting bound', async (t) => {
  await initDigests()
  // the receiver's own order: session k journals from the seq after the last marker on, in order, 400 seqs past
  // it, and marks only the first 3 applied before it stops; the next resumes there and journals them again
  const SESSIONS = 100
  const AHEAD = 400
  const MARKED = 3
  const seqs: number[] = []
  const markers = new Map<number, number>()
  let start = 0
  for (let k = 0; k < SESSIONS; k++) {
    for (let s = start; s < start + AHEAD; s++) {
      seqs.push(s)
      if (s === start + MARKED - 1) markers.set(seqs.length - 1, s)
    }
    start += MARKED
  }
  // what the receiver writes: each record's seq at most one past every seq before it
  let max = -1
  for (const s of seqs) {
    if (s > max + 1) t.fail(`seq ${s} after seq ${max}`)
    max = Math.max(max, s)
  }
  const paths = new VmPaths(t.testdir(), 'vm')
  mkdirSync(paths.gdir, { recursive: true })
  const size = await writeJournal(paths, seqs, markers)
  t.ok(size > 4 * 1024 * 1024, `a journal of ${seqs.length} records, ${size} bytes`)
  for (const waiting of [1, 64, 65536]) {
    Object.assign(JOURNAL_READ_LIMITS, { records: 4096, bytes: 1024 * 1024, waiting })
    const { next, read } = await resume(paths)
    t.equal(next, start, `waiting ${waiting}: resumed after the last marker (seq ${start - 1})`)
    t.ok(read >= size - 64 * 1024 && read < 1.5 * size, `waiting ${waiting}: the replay read the journal once (${read} bytes of ${size})`)
  }
})

t.test('a journal the receiver never writes (seqs descending) costs a pass per waiting bound: the measure sees passes', async (t) => {
  await initDigests()
  const N = 20_000
  const seqs = Array.from({ length: N }, (_, i) => N - 1 - i)
  const paths = new VmPaths(t.testdir(), 'vm')
  mkdirSync(paths.gdir, { recursive: true })
  const size = await writeJournal(paths, seqs, new Map([[N - 1, N - 1]]))
  Object.assign(JOURNAL_READ_LIMITS, { records: 4096, bytes: 1024 * 1024, waiting: 2000 })
  const { next, read } = await resume(paths)
  t.equal(next, N, 'every seq replayed')
  t.ok(read >= 9 * size, `ten passes of 2,000 seqs: ${read} bytes read of a journal of ${size}`)
})
