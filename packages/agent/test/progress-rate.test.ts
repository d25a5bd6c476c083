/** A real cycle's progress (totals before the first extent) and its bandwidth limit, against the receiver process. */
import t from 'tap'
import { join } from 'node:path'
import { replicate } from '../src/replicate.ts'
import { createSampleVm } from '../src/sample-vm.ts'
import type { ProgressEvent } from '../src/progress.ts'
import { haveReceiver, memoryLogger, MiB, scratch, startReceiver, TOKEN } from './helpers.ts'

if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')

const hhmm = (d: Date) => `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`
const rate = 2 * MiB
/** a timetable whose entry in force now is `rate` (set a minute ago; off in six hours) */
const timetable = () => `${hhmm(new Date(Date.now() - 60_000))},2M ${hhmm(new Date(Date.now() + 6 * 3600_000))},off`

for (const [what, bwlimit] of [
  ['a constant bwlimit', rate],
  ['a bwlimit timetable', timetable()],
] as const)
  t.test(`progress totals are known before the first extent; ${what} holds the wire rate`, async (t) => {
    const dir = scratch(t)
    const rx = await startReceiver(join(dir, 'rx'))
    t.teardown(() => rx.stop())
    const vm = await createSampleVm(dir, {
      name: 'slow',
      disks: [
        { sizeBytes: 6 * MiB, fill: 'random' },
        { sizeBytes: 2 * MiB, fill: 'zero' },
      ],
    })
    const { logger } = memoryLogger()
    const events: ProgressEvent[] = []
    const t0 = performance.now()
    const r = await replicate(
      { logger },
      {
        vm: vm.vmxPath,
        to: rx.url,
        token: TOKEN,
        ca: rx.ca,
        stateDir: join(dir, 'agent-state'),
        compress: 'none',
        bwlimit,
        maxExtentBytes: 256 * 1024,
        onProgress: (e) => events.push(e),
      },
    )
    const seconds = (performance.now() - t0) / 1000
    t.ok(r.ok, JSON.stringify(r.vms[0]?.error))
    for (const d of r.vms[0]?.disks ?? []) {
      const mine = events.filter((e) => e.disk === d.name)
      const firstSend = mine.find((e) => e.phase === 'send')
      t.ok(firstSend !== undefined && firstSend.doneBytes === 0, `${d.name}: a progress event before the first extent`)
      t.equal(firstSend?.totalBytes, d.dataBytes + d.zeroBytes, `${d.name}: its total is the exact total`)
      t.equal(mine[mine.length - 1]?.phase, 'done')
      t.equal(mine[mine.length - 1]?.doneBytes, d.capacity, 'a seed covers the whole disk')
    }
    const wire = (r.vms[0]?.disks ?? []).reduce((s, d) => s + d.wireBytes, 0)
    t.ok(wire >= 6 * MiB, `the random disk went over the wire (${wire} bytes)`)
    const measured = wire / seconds
    t.ok(measured <= rate * 1.05, `wire rate ${Math.round(measured)} B/s ≤ limit + 5% (${rate})`)
    t.ok(seconds >= (wire / rate) * 0.8, `took ${seconds.toFixed(2)} s for ${wire} bytes at ${rate} B/s`)
    const sends = events.filter((e) => e.phase === 'send' && e.rate > 0)
    t.ok(
      sends.some((e) => e.etaSeconds !== undefined && e.etaSeconds > 0),
      'an ETA is reported while sending',
    )
  })
