/**
 * What the agent logs of the receiver's long work (receiver-progress.ts):
 * the start and the end at once, every 30 s between, and no more than that
 * however the reports come.
 */
import t from 'tap'
import { MessageKind } from '@grainline/protocol'
import { RECEIVER_PROGRESS_LOG_MS, vmProgress } from '../src/receiver-progress.ts'
import { memoryLogger } from './helpers.ts'

const report = (doneBytes: number, totalBytes: number) => ({ kind: MessageKind.VmProgress, vm: 'vm', step: 'undo', doneBytes, totalBytes }) as const

t.test('an undo: its start, a line every 30 s with an ETA, its end', async (t) => {
  const { logger, lines } = memoryLogger()
  let now = 0
  const heard = vmProgress(logger, () => now)
  heard(report(0, 100))
  now = 10_000
  heard(report(10, 100))
  now = RECEIVER_PROGRESS_LOG_MS + 1
  heard(report(40, 100))
  now = RECEIVER_PROGRESS_LOG_MS + 2
  heard(report(41, 100))
  now = 60_000
  heard(report(100, 100))
  t.same(
    lines.map((l) => [l['msg'], l['doneBytes'], l['etaS']]),
    [
      ['the receiver rolls back the interrupted cycle (writing back what it overwrote)', 0, undefined],
      ['the receiver rolls back the interrupted cycle (writing back what it overwrote)', 40, 45],
      ['the receiver rolls back the interrupted cycle (writing back what it overwrote): done', 100, undefined],
    ],
  )
})

t.test('reports that each claim to end (1 of 1, 2 of 2, …) log the first end only, then one line per 30 s', async (t) => {
  const { logger, lines } = memoryLogger()
  let now = 0
  const heard = vmProgress(logger, () => now)
  for (let i = 1; i <= 1000; i++) {
    now = i * 100
    heard(report(i, i))
  }
  // 100 s of reports: the first end, then one line per 30 s
  t.ok(lines.length <= 5, `${lines.length} lines for 1000 reports`)
  t.equal(lines[0]?.['doneBytes'], 1)
})

t.test('the steps of a VmOpen and a Rollback are named', async (t) => {
  const { logger, lines } = memoryLogger()
  vmProgress(logger)({ ...report(0, 1), step: 'merge-points' })
  vmProgress(logger)({ ...report(0, 1), step: 'sweep' })
  t.match(lines[0]?.['msg'], /finishes a commit a crash interrupted/)
  t.equal(lines[1]?.['msg'], 'the receiver works on the VM (sweep)')
})
