/**
 * The ETA of a seed that skips holes follows the bytes it reads (progress.ts
 * `workMode`, job-progress.ts `etaMeasure`): holes are covered at once and
 * data at the link's pace, so the bytes covered would promise an end while
 * the holes fly by. Other disks keep the covered bytes as their measure.
 */
import t from 'tap'
import { etaMeasure, JobProgress, type JobProgressState } from '../src/job-progress.ts'
import { DiskProgress, type ProgressEvent } from '../src/progress.ts'

const MiB = 1024 * 1024
const GiB = 1024 * MiB

t.test('a disk in work mode: the ETA is the bytes left to read at the reading pace', async (t) => {
  let now = 0
  const seen: ProgressEvent[] = []
  const p = new DiskProgress(
    'vm',
    'd.vmdk',
    (e) => seen.push(e),
    0,
    () => now,
  )
  p.totalBytes = 16 * GiB
  p.workMode = true
  p.update('send', true)
  // one second: 10 GiB of holes covered, 10 MiB read; the count is not in yet
  now = 1000
  p.doneBytes = 10 * GiB
  p.workDoneBytes = 10 * MiB
  p.update('send', true)
  let e = seen.at(-1) as ProgressEvent
  t.equal(e.workDoneBytes, 10 * MiB)
  t.equal(e.workTotalBytes, undefined, 'not counted yet')
  t.equal(Math.round(e.etaSeconds ?? -1), 614, 'until counted: the 6 GiB left to cover, at the reading pace (an upper bound)')
  // the count: 100 MiB to read in all
  p.workTotalBytes = 100 * MiB
  now = 2000
  p.doneBytes = 12 * GiB
  p.workDoneBytes = 20 * MiB
  p.update('send', true)
  e = seen.at(-1) as ProgressEvent
  t.equal(e.workTotalBytes, 100 * MiB)
  t.equal(Math.round(e.etaSeconds ?? -1), 8, '80 MiB left to read at 10 MiB/s — not the 0.7 s the covered bytes would say')
  t.ok(e.rate > 5 * GiB, 'the rate shown is still the bytes covered')
  // everything read, holes left to cover: nothing left that costs
  now = 3000
  p.doneBytes = 15 * GiB
  p.workDoneBytes = 100 * MiB
  p.update('send', true)
  t.equal((seen.at(-1) as ProgressEvent).etaSeconds, 0)
})

t.test('a disk not in work mode keeps the covered bytes as its measure and sends no work fields', async (t) => {
  let now = 0
  const seen: ProgressEvent[] = []
  const p = new DiskProgress(
    'vm',
    'd.vmdk',
    (e) => seen.push(e),
    0,
    () => now,
  )
  p.totalBytes = 100 * MiB
  p.update('send', true)
  now = 1000
  p.doneBytes = 10 * MiB
  p.update('send', true)
  const e = seen.at(-1) as ProgressEvent
  t.equal(Math.round(e.etaSeconds ?? -1), 9)
  t.equal(e.workDoneBytes, undefined)
  t.equal(e.workTotalBytes, undefined)
})

t.test('the job: its ETA sums the measures of its disks; a finished VM keeps its part', async (t) => {
  let now = 0
  const states: JobProgressState[] = []
  const jp = new JobProgress(['thin', 'plain'], { update: (s) => states.push(s), vmFinished: () => {}, close: () => {} }, () => now)
  const base = { phase: 'send' as const, wireBytes: 0, rate: 0, etaSeconds: undefined }
  jp.vmStarted(0)
  jp.vmStarted(1)
  jp.event(0, { ...base, vm: 'thin', disk: 'thin.vmdk', doneBytes: 0, totalBytes: 16 * GiB, workDoneBytes: 0, workTotalBytes: 100 * MiB })
  jp.event(1, { ...base, vm: 'plain', disk: 'plain.vmdk', doneBytes: 0, totalBytes: 100 * MiB })
  now = 2000
  jp.event(0, { ...base, vm: 'thin', disk: 'thin.vmdk', doneBytes: 8 * GiB, totalBytes: 16 * GiB, workDoneBytes: 20 * MiB, workTotalBytes: 100 * MiB })
  jp.event(1, { ...base, vm: 'plain', disk: 'plain.vmdk', doneBytes: 20 * MiB, totalBytes: 100 * MiB })
  const s = states.at(-1) as JobProgressState
  // measure: 200 MiB in all, 40 MiB done in 2 s: 160 MiB left at 20 MiB/s
  t.equal(Math.round(s.etaSeconds ?? -1), 8, 'the thin seed counted by what it reads')
  t.equal(s.doneBytes, 8 * GiB + 20 * MiB, 'the bytes shown are still the bytes covered')
  t.same(
    etaMeasure({ vm: 'v', disk: 'd', phase: 'send', doneBytes: 3 * GiB, totalBytes: 16 * GiB, wireBytes: 0, rate: 0, etaSeconds: undefined, workDoneBytes: MiB }),
    { done: MiB, total: MiB + 13 * GiB },
    'not counted yet: the bytes left to cover bound what is left to read',
  )
})
