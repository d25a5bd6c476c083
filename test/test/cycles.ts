// Seed + five incremental cycles for every delta kind, two disks per VM, real
// receiver and agent processes over TLS on loopback. After each cycle every
// mirror disk equals `qemu-img convert -O raw` of the frozen source view.
import t from 'tap'
import { readFile } from 'node:fs/promises'
import { join, dirname } from 'node:path'
import { createSampleVm, simulateGuestWrites, VmxConfig, vmxDisks } from '@grainline/agent'
import { failIfLingering, firstDifference, qemuRaw, scratchDir } from '@grainline/test-utils'
import { startSite, replicateCli } from '@grainline/e2e'

const MiB = 1024 * 1024

/** Current top descriptor of every disk, from the .vmx. */
async function topDescriptors(vmx: string): Promise<{ node: string; path: string }[]> {
  const cfg = VmxConfig.parse(await readFile(vmx, 'utf8'), vmx)
  return vmxDisks(cfg).map((d) => ({ node: d.node, path: join(dirname(vmx), d.fileName) }))
}

export type DeltaKind = 'sesparse' | 'vmfssparse' | 'hosted'

/** One delta kind's six cycles (one test file per kind: each gets tap's whole timeout on a loaded machine). */
export function cyclesOf(kind: DeltaKind): void {
  // a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
  failIfLingering(t)
  t.test(`seed + 5 incremental cycles, ${kind} deltas, two disks`, async (t) => {
    const dir = scratchDir(t, 'grainline-e2e-')
    const site = await startSite(join(dir, 'dr'))
    t.teardown(() => site.receiver.stop())
    const vm = await createSampleVm(join(dir, 'src'), { name: `web ${kind}`, disks: [{ sizeBytes: 48 * MiB }, { sizeBytes: 24 * MiB, node: 'sata0:1' }], seed: 11 })
    const mirrorDir = join(site.store, `web ${kind}`)
    for (let cycle = 1; cycle <= 6; cycle++) {
      if (cycle > 1) {
        // the guest writes into the running delta between cycles
        await simulateGuestWrites(vm.vmxPath, { bytes: 3 * MiB, writeSize: 64 * 1024, seed: cycle * 31, zeroFraction: 0.15 })
      }
      // the frozen view this cycle will ship = the current top view before the snapshot
      const expected: string[] = []
      for (const [i, d] of (await topDescriptors(vm.vmxPath)).entries()) {
        const raw = join(dir, `expected-${cycle}-${i}.raw`)
        await qemuRaw(d.path, raw)
        expected.push(raw)
      }
      const r = await replicateCli(site, vm.vmxPath, ['--delta-format', kind, '--certify', cycle % 2 === 0 ? 'sha256' : 'xxh64'])
      t.equal(r.code, 0, `cycle ${cycle} exit status 0: ${r.stderr.slice(-2000)}`)
      const vr = r.report?.vms[0]
      t.equal(vr?.ok, true, `cycle ${cycle} ok`)
      t.equal(vr?.cycle, cycle, 'cycle number')
      for (const d of vr?.disks ?? []) {
        t.equal(d.mode, cycle === 1 ? 'seed' : 'incremental', `${d.name} mode in cycle ${cycle}`)
        t.equal(d.trivial?.ok, true, `${d.name} trivial check`)
        t.equal(d.certify?.ok, true, `${d.name} certify`)
      }
      if (cycle > 1) {
        const shipped = (vr?.disks ?? []).reduce((s, d) => s + d.dataBytes + d.zeroBytes, 0)
        t.ok(shipped < 24 * MiB, `incremental ships the change, not the disk (${shipped} bytes)`)
      }
      const baseNames = ['web ' + kind, `web ${kind}_1`]
      for (const [i, raw] of expected.entries()) {
        const flat = join(mirrorDir, `${baseNames[i]}-flat.vmdk`)
        t.equal(await firstDifference(flat, raw), -1, `cycle ${cycle}: mirror disk ${i} equals qemu-img convert of the frozen source view`)
        // the mirror is a VMware disk QEMU opens as it is
        const viaQemu = join(dir, `mirror-${cycle}-${i}.raw`)
        await qemuRaw(join(mirrorDir, `${baseNames[i]}.vmdk`), viaQemu)
        t.equal(await firstDifference(viaQemu, raw), -1, `cycle ${cycle}: qemu reads the mirror descriptor to the same image`)
      }
      // after the cycle the VM runs on exactly one grainline snapshot
      const tops = await topDescriptors(vm.vmxPath)
      for (const d of tops) t.match(d.path, /-00000\d+\.vmdk$/, 'the VM runs on a delta')
      const vmsd = await readFile(join(dirname(vm.vmxPath), `web ${kind}.vmsd`), 'utf8')
      t.match(vmsd, /snapshot\.numSnapshots = "1"/, 'exactly one snapshot')
    }
  })
}
