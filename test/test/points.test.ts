// Restore points end to end: real receiver and agent processes over TLS, a
// sample VM whose guest writes between cycles, a seed and 8 incremental
// cycles with a retention of 6 points. For every kept point K, QEMU's
// reading of the point's descriptor equals the frozen source view of cycle K
// (kept with qemu-img convert right before each cycle), and so does
// `grainline restore --point K`.
import t from 'tap'
import { writeFile } from 'node:fs/promises'
import { readFile } from 'node:fs/promises'
import { join, dirname } from 'node:path'
import { createSampleVm, simulateGuestWrites, VmxConfig, vmxDisks } from '@grainline/agent'
import { failIfLingering, firstDifference, qemuRaw, scratchDir } from '@grainline/test-utils'
import { startSite, replicateCli, runCli } from '@grainline/e2e'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const MiB = 1024 * 1024

async function topDescriptors(vmx: string): Promise<string[]> {
  const cfg = VmxConfig.parse(await readFile(vmx, 'utf8'), vmx)
  return vmxDisks(cfg).map((d) => join(dirname(vmx), d.fileName))
}

interface Listed {
  committedCycle: number
  points: { cycle: number; current: boolean; bytes: number; disks: { name: string; source: string; certify: { algorithm: string } | null }[] }[]
}

t.test('seed + 8 cycles with points: every kept point and its restore equal the frozen source of its cycle', async (t) => {
  const dir = scratchDir(t, 'grainline-points-')
  const config = join(dir, 'receiver.json')
  await writeFile(config, JSON.stringify({ store: join(dir, 'dr', 'store'), retention: { keep: 6 } }))
  const site = await startSite(join(dir, 'dr'), ['*'], [], ['--config', config])
  t.teardown(() => site.receiver.stop())
  const name = 'app points'
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes: 24 * MiB }, { sizeBytes: 8 * MiB, node: 'sata0:1' }], seed: 5 })
  const expected: string[][] = []
  for (let cycle = 1; cycle <= 9; cycle++) {
    if (cycle > 1) await simulateGuestWrites(vm.vmxPath, { bytes: 2 * MiB, writeSize: 32 * 1024, seed: cycle * 7, zeroFraction: 0.2 })
    // the VM's memory raised before cycle 7: points 3-6 keep the .vmx they had (point-config.ts)
    if (cycle === 7) await writeFile(vm.vmxPath, (await readFile(vm.vmxPath, 'utf8')).replace(/^memSize = "\d+"$/m, 'memSize = "2048"'))
    expected[cycle] = []
    for (const [i, d] of (await topDescriptors(vm.vmxPath)).entries()) {
      const raw = join(dir, `expected-${cycle}-${i}.raw`)
      await qemuRaw(d, raw)
      expected[cycle]?.push(raw)
    }
    const r = await replicateCli(site, vm.vmxPath, cycle % 3 === 0 ? ['--certify', 'sha256'] : [])
    t.equal(r.code, 0, `cycle ${cycle}: ${r.stderr.slice(-1500)}`)
  }
  const ls = await runCli(['points', '--store', site.store, '--vm', name, '--output', 'json'])
  t.equal(ls.code, 0, ls.stderr)
  const listed = JSON.parse(ls.stdout) as Listed
  t.same(
    listed.points.map((p) => [p.cycle, p.current]),
    [
      [3, false],
      [4, false],
      [5, false],
      [6, false],
      [7, false],
      [8, false],
      [9, true],
    ],
    'six points kept (the oldest pruned) and the mirror',
  )
  const human = await runCli(['points', '--store', site.store, '--vm', name])
  t.match(human.stdout, /9 \(mirror\)/)
  t.match(human.stdout, /sha256 ok/, 'the certify of cycles 3 and 6 shown')
  for (const p of listed.points) {
    const exp = expected[p.cycle] as string[]
    for (const [i, d] of p.disks.entries()) {
      const raw = join(dir, `point-${p.cycle}-${i}.raw`)
      await qemuRaw(d.source, raw)
      t.equal(
        await firstDifference(raw, exp[i] as string),
        -1,
        `point ${p.cycle}, disk ${d.name}: qemu-img convert of ${p.current ? 'the mirror' : 'the point'} = the frozen source of cycle ${p.cycle}`,
      )
    }
    if (!p.current) t.ok(p.bytes > 0 && p.bytes < 6 * MiB, `point ${p.cycle} costs about its changes (${p.bytes} bytes)`)
    const to = join(dir, `restored-${p.cycle}`)
    const rr = await runCli(['restore', '--store', site.store, '--vm', name, '--point', String(p.cycle), '--to', to, '--output', 'json'])
    t.equal(rr.code, 0, rr.stderr)
    const done = JSON.parse(rr.stdout.trim().split('\n').at(-1) ?? '{}') as { disks: { name: string; flat: string; descriptor: string; verified: string }[] }
    const mem = p.cycle < 7 ? '1024' : '2048'
    t.match(await readFile(join(to, `${name}.vmx`), 'utf8'), new RegExp(`^memSize = "${mem}"$`, 'm'), `restore of point ${p.cycle}: the .vmx of that cycle (${mem} MiB)`)
    for (const d of done.disks) {
      const i = p.disks.findIndex((x) => x.name === d.name)
      t.equal(await firstDifference(d.flat, exp[i] as string), -1, `restore of point ${p.cycle}, disk ${d.name} = the frozen source`)
      // certify ran at cycles 3, 6 and 9; the agent's trivial check at every cycle
      t.equal(d.verified, p.cycle % 3 === 0 ? 'certify' : 'trivial', `point ${p.cycle}: verification ${d.verified}`)
    }
  }
  // the replication goes on after all this: a 10th cycle still works and point 9 appears
  await simulateGuestWrites(vm.vmxPath, { bytes: MiB, writeSize: 16 * 1024, seed: 99, zeroFraction: 0.1 })
  const r10 = await replicateCli(site, vm.vmxPath)
  t.equal(r10.code, 0, r10.stderr.slice(-1500))
  const after = JSON.parse((await runCli(['points', '--store', site.store, '--vm', name, '--output', 'json'])).stdout) as Listed
  t.same(
    after.points.map((p) => p.cycle),
    [4, 5, 6, 7, 8, 9, 10],
  )
})
