/**
 * A rollback writes back what the in-flight cycle overwrote — O(what it
 * wrote), minutes for a large cycle — and a VmOpen that finds a commit
 * interrupted by a crash finishes it, its merges of dropped points included,
 * before it answers. Neither is silent in the receiver's log: start, every
 * 30 s with an ETA, end (rollback.ts undoInflight, vm-mirror.ts).
 */
import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import { readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { scratchDir } from '@grainline/test-utils'
import { MessageKind } from '@grainline/protocol'
import { Agent, MiB, TOKEN, evolve, hello, incPlan, makeEnv, memoryLogger, pattern, runCycle, seedPlan, startReceiver, vmOpen, type LogLine } from './helpers.ts'
import { UNDO_PROGRESS_MS, undoInflight } from '../src/rollback.ts'
import { dropPoints } from '../src/points.ts'
import { VmMirror } from '../src/vm-mirror.ts'
import { VmPaths } from '../src/vm-paths.ts'
import type { VmStateFile } from '../src/state-file.ts'

function state(store: string, vm: string): VmStateFile {
  return JSON.parse(readFileSync(join(store, vm, '.grainline', 'state.json'), 'utf8')) as VmStateFile
}

/** qemu-img's reading of the mirror of disk `disk` (default d) as raw bytes. */
function mirrorBytes(dir: string, store: string, vm: string, disk = 'd'): Buffer {
  const out = join(dir, `${disk}-${Math.random().toString(16).slice(2)}.raw`)
  execFileSync('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', join(store, vm, `${disk}.vmdk`), out])
  return readFileSync(out)
}

/** A seed and `inflight` — an incremental cycle 2 sent whole but not committed. */
async function inflightCycle(t: Test, keep: number | undefined, vm: string) {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env, keep === undefined ? {} : { retention: { keep } })
  t.teardown(() => receiver.close())
  const cap = 12 * MiB
  const img1 = pattern(cap, 3)
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', img1, 'aa01aa01aa01aa01')])
  a.close()
  const ranges = [
    { offset: 0, length: 5 * MiB },
    { offset: 6 * MiB, length: 3 * MiB, zero: true },
  ]
  const img2 = evolve(img1, 9, ranges)
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 2, [incPlan(0, 'd.vmdk', img2, 1, 'aa02aa02aa02aa02', ranges, 'd-000001.vmdk', 'd-000002.vmdk')], { commit: false })
  a.close()
  t.equal(state(env.store, vm).inflight?.cycle, 2, 'cycle 2 is in flight')
  return { env, receiver, url, logs, img1 }
}

function undoLines(lines: readonly LogLine[], vm: string): LogLine[] {
  return lines.filter((l) => l['vm'] === vm && l['step'] === 'undo')
}

for (const [how, keep] of [
  ['from the journal (points off)', undefined],
  ['from the reverse increment (points on)', 5],
] as const) {
  t.test(`a Rollback ${how} is logged with its size, start and end; the mirror is back at cycle 1`, async (t) => {
    const vm = keep === undefined ? 'web-undo-j' : 'web-undo-i'
    const { env, url, logs, img1 } = await inflightCycle(t, keep, vm)
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    a.send(hello())
    await a.expect(MessageKind.Welcome)
    a.send(vmOpen(vm, 2, ['d-000002.vmdk']))
    const st = await a.expect(MessageKind.VmState)
    t.equal(st.inflightCycle, 2)
    a.send({ kind: MessageKind.Rollback, vm })
    await a.expect(MessageKind.RolledBack)
    a.close()
    const lines = undoLines(logs.lines, vm)
    t.ok(lines.length >= 2, `the undo is logged (${lines.length} lines)`)
    const total = lines[0]?.['totalBytes'] as number
    // the journal holds the 5 MiB of old data and the 3 MiB zeroed; the increment the grains of both
    t.ok(total >= 8 * MiB, `with what it writes back (${total} bytes)`)
    t.match(lines[0], { cycle: 2, doneBytes: 0, msg: /^rolling back the in-flight cycle/ }, '… as it starts')
    t.match(lines.at(-1), { cycle: 2, doneBytes: total, totalBytes: total, msg: 'in-flight cycle undone' }, '… and as it ends')
    t.ok(mirrorBytes(env.dir, env.store, vm).equals(img1), 'the mirror reads as cycle 1 again')
  })
}

t.test('undoInflight reports the bytes written back as it goes, never past the total, then the total', async (t) => {
  const vm = 'web-undo-clock'
  const { env, receiver, img1 } = await inflightCycle(t, undefined, vm)
  await receiver.close()
  const infl = state(env.store, vm).inflight
  if (infl === null || infl === undefined) throw new Error('no cycle in flight')
  let clock = 0
  const reports: Array<[number, number]> = []
  await undoInflight(
    new VmPaths(env.store, vm),
    infl,
    (d, total) => reports.push([d, total]),
    () => (clock += UNDO_PROGRESS_MS),
  )
  const total = reports[0]?.[1] ?? 0
  t.ok(reports.length >= 4, `a report per step (${reports.length})`)
  t.same(reports[0], [0, total], 'the first one at 0')
  t.same(reports.at(-1), [total, total], 'the last one at the total')
  t.ok(
    reports.every(([d, tt], i) => tt === total && d <= total && (i === 0 || d >= (reports[i - 1]?.[0] ?? 0))),
    'one total, never passed, never going back',
  )
  t.ok(mirrorBytes(env.dir, env.store, vm).equals(img1), 'the mirror reads as cycle 1 again')
})

t.test('locking a VM whose commit a crash left with merges pending (a VmOpen, start-up recovery, an admin command) finishes the merges and logs them', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const vm = 'web-undo-merge'
  const cap = 3 * MiB
  const images: Buffer[] = [Buffer.alloc(0), pattern(cap, 5)]
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, 'ab01ab01ab01ab01')])
  a.close()
  for (let c = 2; c <= 4; c++) {
    const ranges = [{ offset: (c - 2) * MiB, length: 512 * 1024 }]
    images[c] = evolve(images[c - 1] as Buffer, c, ranges)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, c, [incPlan(0, 'd.vmdk', images[c] as Buffer, c - 1, `ab0${c}ab0${c}ab0${c}ab0${c}`, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)])
    a.close()
  }
  await receiver.close()
  // the state a crash leaves between a prune's state write and its merges: point 2 dropped, its merge pending
  const before = state(env.store, vm)
  const kept = dropPoints(before.points ?? [], [2])
  t.equal(kept.merges.length, 1, 'one merge pending')
  writeFileSync(
    join(env.store, vm, '.grainline', 'state.json'),
    JSON.stringify({
      ...before,
      points: kept.points,
      pending: { cycle: before.committedCycle, renames: [], descriptors: [], journals: [], files: false, merges: kept.merges, removePoints: kept.removePoints },
    }),
  )
  const logs = memoryLogger()
  const m = await VmMirror.acquire(env.store, vm, logs.logger, { create: false })
  m.release()
  const lines = logs.lines.filter((l) => l['vm'] === vm && l['step'] === 'merge-points')
  t.ok(lines.length >= 2, `the merges are logged (${lines.length} lines)`)
  const total = lines[0]?.['totalBytes'] as number
  t.ok(total > 0, `with their size (${total} bytes)`)
  t.match(lines[0], { cycle: 4, doneBytes: 0, msg: /^finishing an interrupted commit or prune/ })
  t.match(lines.at(-1), { cycle: 4, doneBytes: total, totalBytes: total, msg: 'interrupted commit or prune: restore points merged' })
  t.equal(state(env.store, vm).pending, null, 'the commit is finished')
  t.same(
    (state(env.store, vm).points ?? []).map((p) => p.cycle),
    [1, 3],
  )
})

t.test('a two-disk undo counts both disks in one total; an undo a crash left half-done (the journal already renamed .undo) is sized from that file and finished', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const vm = 'web-undo-two'
  const cap = 6 * MiB
  const d1 = pattern(cap, 31)
  const e1 = pattern(cap, 32)
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', d1, 'ac01ac01ac01ac01'), seedPlan(1, 'e.vmdk', e1, 'ad01ad01ad01ad01')])
  a.close()
  const rd = [{ offset: MiB, length: 3 * MiB }]
  const re = [{ offset: 0, length: 2 * MiB }]
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(
    a,
    vm,
    2,
    [
      incPlan(0, 'd.vmdk', evolve(d1, 3, rd), 1, 'ac02ac02ac02ac02', rd, 'd-000001.vmdk', 'd-000002.vmdk'),
      incPlan(1, 'e.vmdk', evolve(e1, 4, re), 1, 'ad02ad02ad02ad02', re, 'e-000001.vmdk', 'e-000002.vmdk'),
    ],
    { commit: false },
  )
  a.close()
  await receiver.close()
  const infl = state(env.store, vm).inflight
  if (infl === null || infl === undefined) throw new Error('no cycle in flight')
  const paths = new VmPaths(env.store, vm)
  // a crash after the first step of e's undo: its journal is renamed, nothing written back yet
  renameSync(paths.journal('e'), paths.undoing('e'))
  let clock = 0
  const reports: Array<[number, number]> = []
  await undoInflight(
    paths,
    infl,
    (d, total) => reports.push([d, total]),
    () => (clock += UNDO_PROGRESS_MS),
  )
  const total = reports[0]?.[1] ?? 0
  t.ok(total >= 5 * MiB, `one total for both disks (${total} bytes: 3 MiB of d, 2 MiB of e, the .undo file read for e)`)
  t.ok(
    reports.every(([d, tt], i) => tt === total && d <= total && (i === 0 || d >= (reports[i - 1]?.[0] ?? 0))),
    'never passed, never going back across the disks',
  )
  t.ok(
    reports.some(([d]) => d > 0 && d < total),
    'reports between the start and the end',
  )
  t.same(reports.at(-1), [total, total])
  const read = (disk: string): Buffer => mirrorBytes(env.dir, env.store, vm, disk)
  t.ok(read('d').equals(d1), 'disk d reads as cycle 1 again')
  t.ok(read('e').equals(e1), 'disk e, whose undo the crash had begun, reads as cycle 1 again')
})
