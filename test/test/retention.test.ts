// A job's restore-point retention request (SPEC §5.5) through real receiver
// and agent processes over TLS: the receiver applies it within its
// `retentionLimits` — a request to keep fewer points than the floor keeps the
// floor (an agent cannot erase the DR site's history), a request within the
// limits holds (unit-tested in the receiver), a request above the ceiling is lowered — and the run report
// and the agent's log say what was applied.
import t from 'tap'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { failIfLingering, scratchDir } from '@grainline/test-utils'
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
