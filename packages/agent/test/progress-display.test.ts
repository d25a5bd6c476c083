/** The progress display: lines fitted to any width, redrawn in place, a job total and ETA; pino lines off a terminal. */
import t from 'tap'
import { Writable } from 'node:stream'
import { memoryLogger } from '@grainline/test-utils'
import { JobProgress, type JobProgressState } from '../src/job-progress.ts'
import { LogProgressView } from '../src/progress-log.ts'
import { formatEta, progressLines, TtyProgressView, truncate, vmResultLine } from '../src/progress-tty.ts'
import { DiskProgress, type ProgressEvent } from '../src/progress.ts'
import { emptyDiskReport, emptyVmReport, type VmReport } from '../src/report.ts'

const MiB = 1024 * 1024

/** A terminal-like stream: collects what is written, reports `columns`. */
function fakeTty(columns: number | undefined): NodeJS.WriteStream & { out: string } {
  const chunks: string[] = []
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk.toString('utf8'))
      cb()
    },
  }) as unknown as NodeJS.WriteStream & { out: string }
  Object.defineProperty(w, 'columns', { value: columns })
  Object.defineProperty(w, 'isTTY', { value: true })
  Object.defineProperty(w, 'out', { get: () => chunks.join('') })
  return w
}

const ev = (vm: string, disk: string, over: Partial<ProgressEvent> = {}): ProgressEvent => ({
  vm,
  disk,
  phase: 'send',
  doneBytes: 30 * MiB,
  totalBytes: 100 * MiB,
  wireBytes: 20 * MiB,
  rate: 12.5 * MiB,
  etaSeconds: 56,
  ...over,
})

function okReport(vm: string, cycle: number, bytes: number): VmReport {
  const r = emptyVmReport(vm)
  r.ok = true
  r.cycle = cycle
  r.durationMs = 12_400
  const d = emptyDiskReport(`${vm}.vmdk`, 'scsi0:0', bytes)
  d.ok = true
  d.mode = 'incremental'
  d.dataBytes = bytes
  d.wireBytes = bytes / 2
  r.disks.push(d)
  return r
}

/** A state with two VMs in flight (long names), made through the aggregate with a fake clock. */
function busyState(): JobProgressState {
  let now = 0
  const seen: JobProgressState[] = []
  const jp = new JobProgress(['web 01', 'a-very-long-virtual-machine-name-for-the-database-cluster', 'queued'], { update: (s) => seen.push(s), vmFinished: () => {}, close: () => {} }, () => now)
  jp.vmStarted(0)
  jp.vmStarted(1)
  jp.event(0, ev('web 01', 'web 01.vmdk', { doneBytes: 0 }))
  jp.event(1, ev('a-very-long-virtual-machine-name-for-the-database-cluster', 'a-very-long-virtual-machine-name-for-the-database-cluster_1.vmdk', { doneBytes: 0 }))
  now = 4000
  jp.event(0, ev('web 01', 'web 01.vmdk', { doneBytes: 40 * MiB }))
  jp.event(1, ev('a-very-long-virtual-machine-name-for-the-database-cluster', 'a-very-long-virtual-machine-name-for-the-database-cluster_1.vmdk', { doneBytes: 10 * MiB, phase: 'commit' }))
  return jp.state()
}

t.test('every line fits the terminal: 40, 80 and 200 columns, a 0-column pty and no columns at all', async (t) => {
  const state = busyState()
  for (const columns of [40, 80, 200, 0, undefined]) {
    const lines = progressLines(state, columns)
    const width = columns !== undefined && columns > 0 ? columns : 80
    t.equal(lines.length, 3, `${columns}: two disks in flight and the job line`)
    for (const l of lines) t.ok(l.length <= width - 1, `${columns}: ${JSON.stringify(l)} fits in ${width - 1}`)
    t.match(lines[0], /^web 01 …\.vmdk /, `${columns}: VM then disk (its name after the VM's)`)
    t.match(lines[2], /^job 0\/3 VMs/, `${columns}: the job line last`)
  }
  const wide = progressLines(state, 200)
  t.match(wide[0], /^web 01 …\.vmdk +\[#{16}-{24}\] 40% {2}12\.5 MiB\/s {2}ETA 0:56$/, 'at 200 columns: bar (at most 42 wide), percent, rate, ETA')
  t.match(wide[2], /^job 0\/3 VMs, 50\.0 MiB of ~300 MiB /, "a wide terminal also shows the job's bytes")
  t.match(wide[1], /committing/, 'a disk past sending shows its phase')
  t.match(wide[2], /\[#*-+\] +\d+% {2}.*\/s {2}ETA ~/, 'the job line: bar, rate and an ETA marked as an estimate while a VM is unplanned')
  t.equal(wide[0]?.indexOf('['), wide[2]?.indexOf('['), 'the bars line up')
  const narrow = progressLines(state, 40)
  t.notMatch(narrow.join('\n'), /\[/, 'at 40 columns the bar goes first')
  t.match(narrow[0], /^web 01 …\.vmdk +40% {2}ETA 0:56$/, '… then the rate; names and ETA stay')
  t.match(narrow[1], /^a-very-long-v… …_1\.vmdk 10% {2}committing$/, 'long names are cut with an ellipsis, both VM and disk kept')
  const tiny = progressLines(state, 12)
  for (const l of tiny) t.ok(l.length <= 11, `12 columns: ${JSON.stringify(l)}`)
})

t.test('ETA, truncation and result lines in words', async (t) => {
  t.equal(formatEta(56), '0:56')
  t.equal(formatEta(3725), '1:02:05')
  t.equal(formatEta(500 * 3600), '>20d')
  t.equal(formatEta(undefined), '--:--')
  t.equal(formatEta(Number.NaN), '--:--')
  t.equal(truncate('abcdef', 4), 'abc…')
  t.equal(truncate('abcdef', 1), '…')
  t.equal(truncate('abcdef', 0), '')
  t.match(vmResultLine(okReport('web 01', 7, 45.3 * MiB), 120), /^ok {4}web 01: cycle 7 incremental, 45\.3 MiB covered, 22\.6 MiB sent, 12\.4 s$/)
  const failed = emptyVmReport('db01')
  failed.error = { code: 'E_CONNECT', message: 'use wss://' }
  t.equal(vmResultLine(failed, undefined), 'FAIL  db01: E_CONNECT use wss://')
  t.ok(vmResultLine(failed, 10).length <= 9)
})

t.test('the TTY view redraws in place, keeps finished VMs above, and prints log lines without garbling', async (t) => {
  const tty = fakeTty(100)
  let now = 0
  const view = new TtyProgressView(tty, { now: () => now, minIntervalMs: 100 })
  const jp = new JobProgress(['web 01', 'db01'], view, () => now)
  jp.vmStarted(0)
  t.match(tty.out, /web 01 +preparing/, 'a VM still preparing has a line')
  now = 50
  jp.event(0, ev('web 01', 'web 01.vmdk', { doneBytes: 0 }))
  const before = tty.out
  now = 60
  jp.event(0, ev('web 01', 'web 01.vmdk', { doneBytes: 1 * MiB }))
  t.equal(tty.out, before, 'no redraw within the minimum interval')
  now = 200
  jp.event(0, ev('web 01', 'web 01.vmdk', { doneBytes: 2 * MiB }))
  t.match(tty.out.slice(before.length), /^\r\u001b\[2A\u001b\[J/, 'the next frame moves up over the two lines it drew and erases them')
  view.print('a log line')
  t.match(tty.out, /\u001b\[J+a log line\n\u001b\[2K/, 'a printed line goes above a redrawn block')
  jp.vmFinished(0, okReport('web 01', 3, 10 * MiB))
  t.match(tty.out, /ok {4}web 01: cycle 3 incremental/, 'the finished VM leaves a permanent line')
  jp.close()
  const end = tty.out
  t.match(end, /\r\u001b\[\d+A\u001b\[J$/, 'closing erases the live block and nothing else')
  view.print('after')
  t.match(tty.out, /after\n$/, 'after close, lines are plain')
  for (const chunk of end.split('\n')) t.ok(chunk.replace(/\u001b\[[0-9;]*[A-Za-z]|\r/g, '').length <= 99, 'no line wider than the terminal')
})

t.test('the job aggregate: totals, failed VMs, unplanned VMs estimated, rate over time', async (t) => {
  let now = 0
  const states: JobProgressState[] = []
  const finished: string[] = []
  const jp = new JobProgress(['a', 'b', 'c'], { update: (s) => states.push(s), vmFinished: (vm) => finished.push(vm.vm), close: (s) => states.push(s) }, () => now)
  jp.vmStarted(0)
  jp.event(0, ev('a', 'a.vmdk', { phase: 'plan', doneBytes: 0, totalBytes: 100 * MiB }))
  t.equal(jp.state().estimated, true)
  t.equal(jp.state().totalBytes, 0, 'a disk in plan does not count until the VM ships')
  jp.event(0, ev('a', 'a.vmdk', { doneBytes: 0, totalBytes: 100 * MiB }))
  t.equal(jp.state().totalBytes, 300 * MiB, 'two unplanned VMs counted at the planned mean')
  t.equal(jp.state().etaSeconds, undefined, 'no rate yet: no ETA')
  now = 10_000
  jp.event(0, ev('a', 'a.vmdk', { doneBytes: 50 * MiB, totalBytes: 100 * MiB }))
  const s = jp.state()
  t.equal(Math.round(s.rate), 5 * MiB, '50 MiB in 10 s')
  t.equal(Math.round(s.etaSeconds ?? 0), 50, '250 MiB left at 5 MiB/s')
  const failed = emptyVmReport('a')
  failed.error = { code: 'E_CHECK', message: 'x' }
  jp.vmFinished(0, failed)
  t.same(finished, ['a'])
  t.equal(jp.state().vmsFailed, 1)
  t.equal(jp.state().doneBytes, 50 * MiB, 'a failed VM counts what it covered')
  jp.vmStarted(1)
  jp.event(1, ev('b', 'b.vmdk', { doneBytes: 0, totalBytes: 10 * MiB }))
  jp.vmFinished(1, okReport('b', 1, 10 * MiB))
  jp.vmStarted(2)
  jp.event(2, ev('c', 'c.vmdk', { doneBytes: 0, totalBytes: 10 * MiB }))
  jp.vmFinished(2, okReport('c', 1, 10 * MiB))
  t.equal(jp.state().etaSeconds, 0, 'all done: nothing left')
  t.equal(jp.state().estimated, false)
  jp.event(2, ev('c', 'c.vmdk'))
  jp.close()
  jp.close()
  t.throws(() => jp.vmStarted(7), RangeError)
})

t.test('off a terminal: pino lines per disk (throttled, phase changes always), job totals, VM results', async (t) => {
  const log = memoryLogger({ level: 'info' })
  let now = 0
  const view = new LogProgressView(log.logger, { diskEveryMs: 5000, jobEveryMs: 10_000, now: () => now })
  const jp = new JobProgress(['a'], view, () => now)
  jp.vmStarted(0)
  jp.event(0, ev('a', 'a.vmdk', { phase: 'plan', doneBytes: 0 }))
  jp.event(0, ev('a', 'a.vmdk', { doneBytes: 0 }))
  now = 1000
  jp.event(0, ev('a', 'a.vmdk', { doneBytes: 10 * MiB }))
  now = 6000
  jp.event(0, ev('a', 'a.vmdk', { doneBytes: 20 * MiB }))
  jp.event(0, ev('a', 'a.vmdk', { phase: 'commit', doneBytes: 100 * MiB }))
  now = 9000
  jp.event(0, ev('a', 'a.vmdk', { phase: 'commit', doneBytes: 100 * MiB }))
  now = 12_000
  jp.vmFinished(0, okReport('a', 2, 100 * MiB))
  jp.close()
  const disk = log.filter('progress')
  t.same(
    disk.map((l) => [l['phase'], l['doneBytes']]),
    [
      ['send', 0],
      ['send', 20 * MiB],
      ['commit', 100 * MiB],
    ],
    'the first sample, one after 5 s, the phase change; plan samples and the throttled ones are not logged',
  )
  const job = log.filter('job progress')
  t.ok(job.length >= 2, 'the job totals at start, every 10 s and at the end')
  t.match(job[job.length - 1], { vmsDone: 1, vmsTotal: 1, doneBytes: 100 * MiB, estimated: false, etaSeconds: 0 })
  t.match(log.find('VM replicated'), { vm: 'a', ok: true, cycle: 2 })
  t.notMatch(log.text(), /\u001b/, 'no terminal control characters')
})

t.test('DiskProgress: exact totals, throttled samples, forced ones', async (t) => {
  const events: ProgressEvent[] = []
  const p = new DiskProgress('vm', 'd.vmdk', (e) => events.push(e), 10_000)
  p.totalBytes = 100 * MiB
  p.update('send', true)
  p.update('send')
  t.equal(events.length, 1, 'throttled')
  p.doneBytes = 100 * MiB
  p.update('done', true)
  t.match(events[1], { phase: 'done', etaSeconds: 0, totalBytes: 100 * MiB })
})
