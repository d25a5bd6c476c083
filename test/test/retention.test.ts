// A job's restore-point retention request (SPEC §5.5) through real receiver
// and agent processes over TLS: the receiver applies it within its
// `retentionLimits` — a request to keep fewer points than the floor keeps the
// floor (an agent cannot erase the DR site's history), a request within the
// limits holds (unit-tested in the receiver), a request above the ceiling is lowered — and the run report
// and the agent's log say what was applied.
import t from 'tap'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { failIfLingering, firstDifference, qemuRaw, scratchDir } from '@grainline/test-utils'
import { startSite, replicateCli, runCli } from '@grainline/e2e'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const MiB = 1024 * 1024

interface Listed {
  points: { cycle: number; current: boolean }[]
}

t.test('per-job retention within the receiver limits: floor, request, ceiling', async (t) => {
  const dir = scratchDir(t, 'grainline-retention-')
  const config = join(dir, 'receiver.json')
  await writeFile(config, JSON.stringify({ store: join(dir, 'dr', 'store'), retention: { keep: 1 }, retentionLimits: { minKeep: 2, maxKeep: 3 } }))
  const site = await startSite(join(dir, 'dr'), ['*'], [], ['--config', config])
  t.teardown(() => site.receiver.stop())
  const jobs = [
    { name: 'asks-one', ask: 'keep=1,maxAge=1s', keep: 2, note: 'raised to the floor minKeep 2' },
    { name: 'asks-many', ask: 'keep=40,daily=9', keep: 3, note: 'lowered to the ceiling maxKeep 3' },
    { name: 'asks-nothing', ask: undefined, keep: 1, note: "the receiver's own policy (its limits bound requests only)" },
  ]
  for (const j of jobs) {
    const vm = await createSampleVm(join(dir, 'src', j.name), { name: j.name, disks: [{ sizeBytes: 8 * MiB }], seed: 3 })
    for (let cycle = 1; cycle <= 5; cycle++) {
      if (cycle > 1) await simulateGuestWrites(vm.vmxPath, { bytes: 256 * 1024, writeSize: 16 * 1024, seed: cycle, zeroFraction: 0.1 })
      const r = await replicateCli(site, vm.vmxPath, j.ask === undefined ? [] : ['--retention', j.ask])
      t.equal(r.code, 0, `${j.name} cycle ${cycle}: ${r.stderr.slice(-1500)}`)
      const rep = r.report?.vms[0]?.retention
      if (cycle === 5) {
        t.equal(rep?.applied?.['keep'], j.keep, `${j.name}: the report shows keep ${j.keep} applied (${j.note})`)
        if (j.ask === undefined) t.equal(rep?.requested, null, `${j.name}: no request made`)
        else t.not(rep?.requested, null, `${j.name}: the request is in the report`)
        if (j.name === 'asks-many') t.equal(rep?.applied?.['daily'], 3, 'every GFS level lowered to maxKeep too')
        if (j.name === 'asks-one') t.equal(rep?.applied?.['maxAgeSeconds'], 1, 'the age rule applies, but the floor keeps the newest two')
        if (j.keep !== 3 || j.name === 'asks-many')
          if (j.ask === undefined) t.notMatch(r.stderr, /applied another retention/, `${j.name}: no request, no warning`)
          else t.match(r.stderr, /applied another retention/, `${j.name}: the agent warns that the receiver applied another retention`)
      }
    }
    const ls = await runCli(['points', '--store', site.store, '--vm', j.name, '--output', 'json'])
    t.equal(ls.code, 0, ls.stderr)
    const listed = JSON.parse(ls.stdout) as Listed
    t.same(
      listed.points.filter((p) => !p.current).map((p) => p.cycle),
      Array.from({ length: j.keep }, (_, i) => 5 - j.keep + i),
      `${j.name}: ${j.keep} points kept before the mirror (${j.note})`,
    )
  }
})

t.test("a job's retention that drops a middle point: the receiver merges it before the Committed and the agent shows the merge (SPEC §5.5 CommitProgress, v4)", async (t) => {
  const dir = scratchDir(t, 'grainline-retention-merge-')
  const config = join(dir, 'receiver.json')
  await writeFile(config, JSON.stringify({ store: join(dir, 'dr', 'store'), retention: { keep: 10 }, retentionLimits: { minKeep: 1, maxKeep: 10 } }))
  const site = await startSite(join(dir, 'dr'), ['*'], [], ['--config', config])
  t.teardown(() => site.receiver.stop())
  const name = 'merges'
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes: 8 * MiB }], seed: 4 })
  const cycle = async (c: number, args: string[] = []) => {
    if (c > 1) await simulateGuestWrites(vm.vmxPath, { bytes: 512 * 1024, writeSize: 16 * 1024, seed: c * 5, zeroFraction: 0.1 })
    const r = await replicateCli(site, vm.vmxPath, args, { logLevel: 'info' })
    t.equal(r.code, 0, `cycle ${c}: ${r.stderr.slice(-1500)}`)
    return r
  }
  const frozen1 = join(dir, 'expected-1.raw')
  await qemuRaw(vm.disks[0] as string, frozen1)
  for (let c = 1; c <= 4; c++) await cycle(c)
  // points 1, 2 and 3, spread over the last days (UTC) while the receiver is idle: 1 three days ago, 2 and 3 two days ago
  const sf = join(site.store, name, '.grainline', 'state.json')
  const st = JSON.parse(await readFile(sf, 'utf8')) as { points: { cycle: number; committedAt: string }[] }
  const now = new Date()
  const day = (back: number, hour: number): string => new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() - back, hour)).toISOString()
  const at: Record<number, string> = { 1: day(3, 12), 2: day(2, 6), 3: day(2, 18) }
  t.same(
    st.points.map((p) => p.cycle),
    [1, 2, 3],
  )
  await writeFile(sf, JSON.stringify({ ...st, points: st.points.map((p) => ({ ...p, committedAt: at[p.cycle] })) }))
  // the newest point and the newest of each of the 3 newest days: 4 (today), 3 and 1 — point 2 goes, and point 1's increment is merged into its file
  const r5 = await cycle(5, ['--retention', 'keep=1,daily=3'])
  const merging = r5.stderr
    .split('\n')
    .filter((l) => l.includes('the receiver merges the restore points its retention drops'))
    .map((l) => JSON.parse(l) as { doneBytes: number; totalBytes: number; msg: string })
  t.ok(merging.length >= 2, `the agent logs the merge (${merging.length} lines)`)
  t.match(merging[0], { doneBytes: 0 }, '… as it starts')
  t.ok((merging[0]?.totalBytes ?? 0) > 0, `… with its size (${merging[0]?.totalBytes} bytes)`)
  t.match(merging.at(-1), { doneBytes: merging[0]?.totalBytes, totalBytes: merging[0]?.totalBytes, msg: /: done$/ }, '… and as it ends')
  const ls = await runCli(['points', '--store', site.store, '--vm', name, '--output', 'json'])
  t.same(
    (JSON.parse(ls.stdout) as Listed).points.map((p) => p.cycle),
    [1, 3, 4, 5],
    'point 2 dropped, the others kept, and the mirror',
  )
  // point 1 now lives in the merged file (point 2's, with point 1's increment merged in): its restore is still the source of cycle 1
  const rr = await runCli(['restore', '--store', site.store, '--vm', name, '--point', '1', '--to', join(dir, 'restored-1'), '--output', 'json'])
  t.equal(rr.code, 0, rr.stderr)
  const restored = JSON.parse(rr.stdout.trim().split('\n').at(-1) ?? '{}') as { disks: { flat: string }[] }
  t.equal(await firstDifference(restored.disks[0]?.flat as string, frozen1), -1, 'the restore of point 1 = the frozen source of cycle 1')
  // the operator drops point 3 by hand: point 1's file is merged into it, and the CLI shows the merge as it goes
  const drop = await runCli(['points', 'drop', '--store', site.store, '--vm', name, '--point', '3', '--output', 'json'])
  t.equal(drop.code, 0, drop.stderr)
  const events = drop.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { event?: string; step?: string; vm?: string; doneBytes?: number; totalBytes?: number; dropped?: number[] })
  const shown = events.filter((e) => e.event === 'progress')
  t.ok(shown.length >= 2, `points drop reports the merge (${shown.length} events)`)
  t.match(shown[0], { vm: name, step: 'merge-points', doneBytes: 0 }, '… as it starts')
  const mergeTotal = shown[0]?.totalBytes ?? 0
  t.ok(mergeTotal > 0, `… with its size (${mergeTotal} bytes)`)
  t.match(shown.at(-1), { doneBytes: mergeTotal, totalBytes: mergeTotal }, '… and as it ends')
  t.match(events.at(-1), { vm: name, dropped: [3], kept: [1, 4] }, 'then the report: point 3 dropped')
  const rr1 = await runCli(['restore', '--store', site.store, '--vm', name, '--point', '1', '--to', join(dir, 'restored-1b'), '--output', 'json'])
  t.equal(rr1.code, 0, rr1.stderr)
  const again = JSON.parse(rr1.stdout.trim().split('\n').at(-1) ?? '{}') as { disks: { flat: string }[] }
  t.equal(await firstDifference(again.disks[0]?.flat as string, frozen1), -1, 'merged twice, the restore of point 1 is still the frozen source of cycle 1')
  // without --output json, on a pipe: a line per report on stderr
  const human = await runCli(['points', 'drop', '--store', site.store, '--vm', name, '--point', '4'])
  t.equal(human.code, 0, human.stderr)
  t.match(human.stderr, new RegExp(`${name}: merging the dropped points' increments: .* of `), 'the human display names the VM and the bytes merged of the total')
  t.match(human.stdout, /dropped point\(s\) 4; kept 1 and the mirror/)
})
