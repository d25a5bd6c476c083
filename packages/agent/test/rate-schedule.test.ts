/**
 * Bandwidth timetables (rate-schedule.ts) and the token bucket following
 * one: parsing with every bad entry named, the rate in force with wrap-round
 * over the day and the week, the next change, and a bucket whose waiting
 * sender is released by a switch to `off` and slowed by a switch to a limit.
 */
import t from 'tap'
import { createRateLimiter } from '../src/rate-limiter.ts'
import { msUntilChange, parseBandwidth, rateAt, type RateSchedule } from '../src/rate-schedule.ts'
import { loadJob } from '../src/job/load-job.ts'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'

const KiB = 1024
const MiB = 1024 * 1024
/** 2026-11-30 is a Monday; local time */
const at = (day: number, hh: number, mm: number, ss = 0) => new Date(2026, 10, 29 + day, hh, mm, ss)

t.test('constants: a number, a rate, 0 and off', async (t) => {
  t.equal(parseBandwidth('20M'), 20 * MiB)
  t.equal(parseBandwidth(1000), 1000)
  t.equal(parseBandwidth('0'), Infinity)
  t.equal(parseBandwidth('off'), Infinity)
  t.equal(parseBandwidth(0), Infinity)
})

t.test('a daily timetable: sorted, the latest entry in force, wrapping round midnight', async (t) => {
  const s = parseBandwidth('18:00,30M 08:00,512k 12:00,10M 13:00,512k 23:00,off') as RateSchedule
  t.equal(s.kind, 'daily')
  t.same(
    s.entries.map((e) => e.minute),
    [480, 720, 780, 1080, 1380],
  )
  t.equal(rateAt(s, at(1, 7, 59)), Infinity, 'before the first entry the last one (23:00 off) is in force')
  t.equal(rateAt(s, at(1, 8, 0)), 512 * KiB)
  t.equal(rateAt(s, at(1, 12, 30)), 10 * MiB)
  t.equal(rateAt(s, at(1, 19, 0)), 30 * MiB)
  t.equal(rateAt(s, at(1, 23, 59)), Infinity)
  t.equal(msUntilChange(s, at(1, 11, 59, 30)), 30_000, 'the next change at 12:00')
  t.equal(msUntilChange(s, at(1, 23, 30)), 8.5 * 3600_000, 'the next change wraps to 08:00 tomorrow')
  t.equal(msUntilChange(parseBandwidth('20M'), at(1, 1, 0)), Infinity, 'a constant never changes')
  t.equal(msUntilChange(parseBandwidth('08:00,1M'), at(1, 1, 0)), Infinity, 'one entry: constant all day')
})

t.test('a weekly timetable: days, wrap-round over the week', async (t) => {
  const s = parseBandwidth('Mon-08:00,2M Fri-18:00,off') as RateSchedule
  t.equal(s.kind, 'weekly')
  t.equal(rateAt(s, at(1, 7, 0)), Infinity, 'Monday 07:00: still the weekend (Fri 18:00 off)')
  t.equal(rateAt(s, at(1, 9, 0)), 2 * MiB, 'Monday 09:00')
  t.equal(rateAt(s, at(3, 23, 0)), 2 * MiB, 'Wednesday night')
  t.equal(rateAt(s, at(5, 18, 0)), Infinity, 'Friday 18:00')
  t.equal(rateAt(s, at(6, 12, 0)), Infinity, 'Sunday')
  t.equal(msUntilChange(s, at(0, 8, 0)), 24 * 3600_000, 'Sunday 08:00 → Monday 08:00')
})

t.test('bad timetables are refused, naming the entry', async (t) => {
  const bad: Array<[string, RegExp]> = [
    ['08:00,1M 25:00,2M', /"25:00,2M": 25:00 is not a time of day/],
    ['08:00,1M 09:60,2M', /09:60 is not a time of day/],
    ['08:00,fast', /"08:00,fast": "fast" is not a rate/],
    ['08:00 1M', /timetable entry "08:00" is not \[Day-\]HH:MM,RATE/],
    ['Xyz-08:00,1M', /"Xyz" is not a day/],
    ['Mon-08:00,1M 18:00,off', /mix of entries with and without a day/],
    ['08:00,1M 08:00,2M', /two entries for the same time/],
    ['20 furlongs', /is not a rate \(e\.g\. 500k, 20M, off\) or a timetable/],
    [Array.from({ length: 300 }, (_, i) => `${String(Math.floor(i / 60)).padStart(2, '0')}:${String(i % 60).padStart(2, '0')},1M`).join(' '), /300 timetable entries; at most 256/],
  ]
  for (const [text, re] of bad) t.throws(() => parseBandwidth(text), re, text)
})

t.test('a bucket on a timetable: off releases a waiting sender, a limit slows the next', async (t) => {
  let ms = 0
  let wall = at(1, 7, 59, 59)
  const s = parseBandwidth('08:00,off 08:01,1k') as RateSchedule
  const rl = createRateLimiter({ rate: s, now: () => ms, clock: () => wall })
  t.equal(rl.rate, 1 * KiB, 'before 08:00 the 08:01 entry is in force')
  t.equal(rl.bandwidth, s)
  // 100 KiB at 1 KiB/s would wait 100 s; the switch to off at 08:00 (1 s away) releases it
  const started = Date.now()
  const waited = rl.take(100 * KiB)
  ms += 1000
  wall = at(1, 8, 0, 0)
  await waited
  t.ok(Date.now() - started < 5000, 'released at the change, not after 100 s')
  t.equal(rl.rate, Infinity, 'off from 08:00')
  await rl.take(10 * MiB)
  t.pass('unlimited: no wait')
  wall = at(1, 8, 1, 0)
  t.equal(rl.rate, 1 * KiB, 'limited again from 08:01')
  let done = false
  const p = rl.take(2 * KiB).then(() => {
    done = true
  })
  await new Promise((r) => setTimeout(r, 50))
  t.notOk(done, 'no credit carried over from the unlimited period: the sender waits')
  ms += 2000
  await p
  t.ok(done)
})

t.test('a job file takes a timetable; a bad one is named with its key', async (t) => {
  const dir = t.testdir()
  const file = join(dir, 'job.json')
  writeFileSync(join(dir, 't.token'), 'x'.repeat(32))
  writeFileSync(file, JSON.stringify({ to: 'wss://127.0.0.1:1', tokenFile: 't.token', bwlimit: '08:00,512k 18:00,off', vms: ['/nowhere/a.vmx'] }))
  const job = await loadJob({ file, cwd: dir })
  t.match(job.bwlimit, { kind: 'daily', text: '08:00,512k 18:00,off' })
  writeFileSync(file, JSON.stringify({ to: 'wss://127.0.0.1:1', tokenFile: 't.token', bwlimit: '08:00,512k 24:00,off', vms: ['/nowhere/a.vmx'] }))
  await t.rejects(loadJob({ file, cwd: dir }), /job\.bwlimit: "24:00,off": 24:00 is not a time of day/)
})
