import t from 'tap'
import type { CliContext } from '../src/command.ts'
import { PROGRESS_DISPLAY_MS, progressDisplay } from '../src/progress-display.ts'

interface P {
  done: number
  total: number
}

/** A context that records what goes where; `tty` decides the display. */
function recorder(tty: boolean): { ctx: CliContext; out: string[]; errors: string[]; raw: string[] } {
  const out: string[] = []
  const errors: string[] = []
  const raw: string[] = []
  const stderr = { isTTY: tty, write: (s: string) => raw.push(s) } as unknown as NodeJS.WriteStream
  return { ctx: { write: (s) => out.push(s), error: (l) => errors.push(l), stderr }, out, errors, raw }
}

function display(ctx: CliContext, json: boolean, clock: { t: number }) {
  return progressDisplay<P>(
    ctx,
    json,
    (p) => `${p.done} of ${p.total}`,
    (p) => ({ ...p }),
    (p) => p.done >= p.total,
    () => clock.t,
  )
}

t.test('on a pipe: a line per report, at most one a second, the last one always', async (t) => {
  const r = recorder(false)
  const clock = { t: 0 }
  const d = display(r.ctx, false, clock)
  d.report({ done: 0, total: 10 })
  clock.t += PROGRESS_DISPLAY_MS / 2
  d.report({ done: 3, total: 10 })
  clock.t += PROGRESS_DISPLAY_MS
  d.report({ done: 6, total: 10 })
  clock.t += 1
  d.report({ done: 10, total: 10 })
  d.end()
  t.same(r.errors, ['0 of 10', '6 of 10', '10 of 10'], 'the one within a second of the last is skipped; the end is shown')
  t.same(r.raw, [], 'nothing written to the terminal itself')
  t.same(r.out, [], 'stdout kept for the report')
})

t.test('on a TTY: one line rewritten in place, closed by end()', async (t) => {
  const r = recorder(true)
  const clock = { t: 0 }
  const d = display(r.ctx, false, clock)
  d.report({ done: 0, total: 4 })
  clock.t += PROGRESS_DISPLAY_MS
  d.report({ done: 4, total: 4 })
  d.end()
  t.same(r.raw, ['\r0 of 4\u001b[K', '\r4 of 4\u001b[K', '\n'])
  t.same(r.errors, [])
  const quiet = recorder(true)
  display(quiet.ctx, false, clock).end()
  t.same(quiet.raw, [], 'nothing shown: no newline either')
})

t.test('--output json: an event per report on stdout, nothing on stderr', async (t) => {
  const r = recorder(true)
  const clock = { t: 0 }
  const d = display(r.ctx, true, clock)
  d.report({ done: 1, total: 3 })
  d.report({ done: 2, total: 3 })
  d.report({ done: 3, total: 3 })
  d.end()
  t.same(
    r.out.map((l) => JSON.parse(l)),
    [
      { event: 'progress', done: 1, total: 3 },
      { event: 'progress', done: 3, total: 3 },
    ],
    'throttled as on a terminal: the one within a second skipped, the last one shown',
  )
  t.ok(
    r.out.every((l) => l.endsWith('\n')),
    'one object per line',
  )
  t.same(r.raw, [])
  t.same(r.errors, [])
})

t.test("restore's line: the bytes and the total are the whole VM's, named as such beside the disk being written", async (t) => {
  const { restoreProgressLine } = await import('../src/commands/restore-run.ts')
  // two disks of 256 and 128 MiB: 264 MiB written, the second disk under way
  const MiB = 1024 * 1024
  t.equal(restoreProgressLine({ disk: 'Demo VM_1.vmdk', bytes: 264 * MiB, total: 384 * MiB, etaMs: 2000 }), "restoring Demo VM_1.vmdk: 264 MiB of 384 MiB of the VM's disks (68 %, 2.0 s left)")
  t.equal(restoreProgressLine({ disk: 'd.vmdk', bytes: 0, total: 0, etaMs: undefined }), "restoring d.vmdk: 0 B of 0 B of the VM's disks (100 %)")
})
