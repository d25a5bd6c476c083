// A restore that finds a disk wrong tells whose fault it is, real receiver,
// agent and CLI processes. A point reads the reverse increments newer than
// it, then the mirror's flat: a byte changed in the mirror's flat (bit rot, a
// stray write) makes an older point restore wrong although the point's own
// increment is intact. The restore digests the mirror against the digest its
// last commit recorded and, when it differs, names the mirror, marks the disk
// diverged (status CRITICAL) and the next agent cycle resyncs the disk. A
// byte changed in the point's own increment is blamed on the point, and
// nothing is marked.
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { open, readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { storeOverview } from '@grainline/receiver'
import { replicateCli, runCli, startSite, type Site, expectedView } from '@grainline/e2e'
import { failIfLingering, firstDifference, scratchDir } from '@grainline/test-utils'

failIfLingering(t)

const exec = promisify(execFile)
const MiB = 1024 * 1024
const BLOCK = 64 * 1024

async function site(dir: string): Promise<Site> {
  const config = join(dir, 'receiver.json')
  await writeFile(config, JSON.stringify({ store: join(dir, 'dr', 'store'), retention: { keep: 10 } }))
  return await startSite(join(dir, 'dr'), ['*'], [], ['--config', config])
}

async function cycle(t: Test, s: Site, vmx: string, mode: string, label: string): Promise<void> {
  const r = await replicateCli(s, vmx, ['--trivial-mb', '4', '--certify', 'sha256'])
  t.equal(r.code, 0, `${label}: ${r.stderr.slice(-1500)}`)
  t.equal(r.report?.vms[0]?.disks[0]?.mode, mode, `${label}: ${mode}`)
}

/** Two cycles of a 16 MiB VM (point 1 and the mirror at 2, both certified), and the source's view of each. */
async function twoCycles(t: Test, name: string): Promise<{ dir: string; s: Site; vmx: string; views: string[] }> {
  const dir = scratchDir(t, `grainline-${name}-`)
  const s = await site(dir)
  t.teardown(() => s.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes: 16 * MiB }], seed: 7 })
  const views: string[] = []
  for (let c = 1; c <= 2; c++) {
    if (c > 1) await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, writeSize: 32 * 1024, seed: c, zeroFraction: 0.2 })
    views[c] = await expectedView(vm.vmxPath, join(dir, `v${c}.raw`))
    await cycle(t, s, vm.vmxPath, c === 1 ? 'seed' : 'incremental', `cycle ${c}`)
  }
  return { dir, s, vmx: vm.vmxPath, views }
}

/** The offset of a block holding data that cycle 2 left unchanged: point 1 reads it from the mirror's flat. */
async function unchangedBlock(a: string, b: string): Promise<number> {
  const [x, y] = [await readFile(a), await readFile(b)]
  for (let off = 0; off + BLOCK <= x.length; off += BLOCK) {
    const p = x.subarray(off, off + BLOCK)
    if (p.equals(y.subarray(off, off + BLOCK)) && p.some((v) => v !== 0)) return off
  }
  throw new Error('no unchanged non-zero block')
}

/** Flip 4 bytes at `off` of `file` in place (a stray write, bit rot). */
async function damage(file: string, off: number): Promise<void> {
  const fh = await open(file, 'r+')
  try {
    const b = Buffer.alloc(4)
    await fh.read(b, 0, 4, off)
    for (let i = 0; i < 4; i++) b[i] = (b[i] as number) ^ 0xa5
    await fh.write(b, 0, 4, off)
  } finally {
    await fh.close()
  }
}

t.test('the mirror damaged under an older point: the restore names the mirror, status reports it, the next cycle resyncs it', async (t) => {
  const { dir, s, vmx, views } = await twoCycles(t, 'mdmg')
  const flat = join(s.store, 'mdmg', 'mdmg-flat.vmdk')
  const off = await unchangedBlock(views[1] as string, views[2] as string)
  await damage(flat, off + 1000)

  const r = await runCli(['restore', '--store', s.store, '--vm', 'mdmg', '--point', '1', '--to', join(dir, 'r1')])
  t.equal(r.code, 1, 'the restore fails')
  t.match(r.stderr, /restored disk mdmg\.vmdk of point 1 of VM mdmg does not match the certify digest recorded at that cycle/, 'names the disk and the point')
  t.match(
    r.stderr,
    /the MIRROR of disk mdmg\.vmdk of VM mdmg is damaged, not the point's own data: its flat .*mdmg-flat\.vmdk no longer matches the certify digest recorded when cycle 2 committed/,
    'blames the mirror, not the point',
  )
  t.match(r.stderr, /marked diverged .*the next cycle of the VM resyncs it from the source; run it, then restore again/, 'and says what to do')
  t.match(r.stderr, /\[E_VERIFY\]/)

  const st = await runCli(['status', '--store', s.store])
  t.equal(st.code, 2, `status CRITICAL: ${st.stdout}`)
  t.match(st.stdout, /mdmg\.vmdk DIVERGED from its source: restore of point 1 found the mirror damaged/, 'status names the disk and why')

  // the next real agent cycle resyncs the disk (an incremental would stack on the wrong bytes) and the mirror ends as the source
  await simulateGuestWrites(vmx, { bytes: 1 * MiB, writeSize: 32 * 1024, seed: 3, zeroFraction: 0.2 })
  const v3 = await expectedView(vmx, join(dir, 'v3.raw'))
  await cycle(t, s, vmx, 'resync', 'cycle 3 after the restore found the mirror damaged')
  const cmp = await exec('qemu-img', ['compare', '-f', 'vmdk', '-F', 'raw', join(s.store, 'mdmg', 'mdmg.vmdk'), v3]).then(
    (x) => ({ code: 0, out: x.stdout }),
    (e: { code: number; stdout: string }) => ({ code: e.code, out: e.stdout }),
  )
  t.equal(cmp.code, 0, `qemu-img compare: the mirror is byte-identical to the source (${cmp.out.trim()})`)
  const st2 = await runCli(['status', '--store', s.store])
  t.equal(st2.code, 0, `status OK after the resync: ${st2.stdout}`)
  const r3 = await runCli(['restore', '--store', s.store, '--vm', 'mdmg', '--point', '3', '--to', join(dir, 'r3')])
  t.equal(r3.code, 0, `the mirror restores verified: ${r3.stderr}`)

  // point 1 reads the damaged block through what the resync overwrote (point 2's increment): its certify digest
  // catches it, and the refusal names the resync, not the point's own data nor the (now sound) mirror
  const again = await runCli(['restore', '--store', s.store, '--vm', 'mdmg', '--point', '1', '--to', join(dir, 'r1-again')])
  t.equal(again.code, 1, 'point 1 still restores wrong')
  t.match(
    again.stderr,
    /point 1 was taken before the resync at cycle 3 repaired the mirror of disk mdmg\.vmdk \(marked diverged: restore of point 1 found the mirror damaged.*the mirror itself is sound.*Restore a point taken at or after cycle 3/,
    'names the resync it reads through',
  )
  t.notMatch(again.stderr, /the point's own data is damaged/, 'does not blame the increments')
  const ls = await runCli(['points', '--store', s.store, '--vm', 'mdmg'])
  t.equal(ls.code, 0, ls.stderr)
  t.match(
    ls.stdout,
    /point\(s\) 1, 2 predate the resync at cycle 3 that repaired the mirror of mdmg\.vmdk \(marked diverged: restore of point 1 found the mirror damaged/,
    'points lists the points older than the resync',
  )
  t.match(ls.stdout, /Each has a whole-disk certify digest, which a restore checks/, 'and that their certify digests prove them')
})

t.test('a point older than a resync of a damaged mirror, checked by a prefix only: the restore warns', async (t) => {
  const dir = scratchDir(t, 'grainline-pfx-')
  const s = await site(dir)
  t.teardown(() => s.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'pfx', disks: [{ sizeBytes: 16 * MiB }], seed: 9 })
  const views: string[] = []
  const run = async (c: number, mode: string, extra: string[]): Promise<void> => {
    if (c > 1) await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, writeSize: 32 * 1024, seed: c, zeroFraction: 0.2 })
    views[c] = await expectedView(vm.vmxPath, join(dir, `v${c}.raw`))
    const r = await replicateCli(s, vm.vmxPath, ['--trivial-mb', '4', ...extra])
    t.equal(r.report?.vms[0]?.disks[0]?.mode, mode, `cycle ${c}: ${mode} ${r.stderr.slice(-800)}`)
  }
  await run(1, 'seed', [])
  await run(2, 'incremental', [])
  // damage a block past the 4 MiB the trivial check digests, one cycle 2 left unchanged (point 1 reads it from the mirror)
  const [a, b] = [await readFile(views[1] as string), await readFile(views[2] as string)]
  let off = -1
  for (let o = 8 * MiB; o + BLOCK <= a.length; o += BLOCK) {
    if (a.subarray(o, o + BLOCK).equals(b.subarray(o, o + BLOCK)) && a.subarray(o, o + BLOCK).some((v) => v !== 0)) {
      off = o
      break
    }
  }
  t.ok(off >= 0, 'an unchanged data block past the prefix')
  await damage(join(s.store, 'pfx', 'pfx-flat.vmdk'), off + 1000)
  // cycle 3's certify finds the mirror wrong (marked diverged); cycle 4 resyncs it
  await run(3, 'incremental', ['--certify', 'sha256'])
  await run(4, 'resync', [])
  const ls = await runCli(['points', '--store', s.store, '--vm', 'pfx', '--output', 'json'])
  const listed = JSON.parse(ls.stdout) as { points: Array<{ cycle: number; current: boolean; disks: Array<{ divergedResync?: { cycle: number; reason: string } }> }> }
  t.same(
    listed.points.map((p) => [p.cycle, p.disks[0]?.divergedResync?.cycle ?? null]),
    [
      [1, 4],
      [2, 4],
      [3, 4],
      [4, null],
    ],
    'points 1–3 read through the resync at cycle 4; the mirror does not',
  )
  const text = await runCli(['points', '--store', s.store, '--vm', 'pfx'])
  t.match(
    text.stdout,
    /point\(s\) 1, 2, 3 predate the resync at cycle 4 .*A restore of point\(s\) 1, 2, 3 cannot prove that disk .*prefer a point at or after cycle 4/s,
    'points says which points cannot be proven',
  )

  // the dashboard's overview marks them too
  const ov = await storeOverview(s.store)
  t.same(
    ov.vms.find((v) => v.vm === 'pfx')?.restorePoints.map((p) => [p.cycle, p.unprovenBeforeRepair ?? null]),
    [
      [1, 4],
      [2, 4],
      [3, 4],
    ],
    'the overview names the repair each point predates',
  )

  const r1 = await runCli(['restore', '--store', s.store, '--vm', 'pfx', '--point', '1', '--to', join(dir, 'r1')])
  t.equal(r1.code, 0, `the prefix matches, so the restore completes: ${r1.stderr}`)
  t.match(r1.stdout, /verified against the trivial-check \(prefix\) digest/)
  t.match(
    r1.stdout,
    /WARNING: point 1 was taken before the resync at cycle 4 repaired the mirror of pfx\.vmdk \(marked diverged: .*which may be the damage the resync repaired.*only the trivial-check prefix .*restore a point taken at or after cycle 4/,
    'and warns that the point may hold what the resync repaired',
  )
  // why the warning: the restored point 1 holds the damaged block, not the source of cycle 1
  const raw = join(dir, 'r1.raw')
  await exec('qemu-img', ['convert', '-O', 'raw', join(dir, 'r1', 'pfx.vmdk'), raw])
  t.equal(Math.floor((await firstDifference(raw, views[1] as string)) / BLOCK) * BLOCK, off, 'the restored point differs from its source exactly at the damaged block')
  const r4 = await runCli(['restore', '--store', s.store, '--vm', 'pfx', '--point', '4', '--to', join(dir, 'r4')])
  t.equal(r4.code, 0, r4.stderr)
  t.notMatch(r4.stdout, /WARNING/, 'the mirror after the resync: no warning')
})

t.test("a point's own increment damaged: the restore blames the point, the mirror stays OK", async (t) => {
  const { dir, s } = await twoCycles(t, 'pdmg')
  const points = join(s.store, 'pdmg', '.grainline', 'points')
  const extent = (await readdir(points)).find((f) => f.endsWith('-sesparse.vmdk'))
  if (extent === undefined) throw new Error('no point extent')
  // the last grain of the extent: data cycle 2 overwrote, kept for point 1
  const size = (await open(join(points, extent), 'r').then(async (fh) => ({ s: (await fh.stat()).size, c: await fh.close() }))).s
  await damage(join(points, extent), size - 512)

  const r = await runCli(['restore', '--store', s.store, '--vm', 'pdmg', '--point', '1', '--to', join(dir, 'r1')])
  t.equal(r.code, 1, 'the restore fails')
  t.match(
    r.stderr,
    /the point's own data is damaged \(its increments in \.grainline\/points.*the mirror's flat still matches the whole-disk digest of cycle 2, so the mirror is sound/,
    'blames the point',
  )
  t.notMatch(r.stderr, /MIRROR/)
  const st = await runCli(['status', '--store', s.store])
  t.equal(st.code, 0, `status OK: ${st.stdout}`)
  const r2 = await runCli(['restore', '--store', s.store, '--vm', 'pdmg', '--point', '2', '--to', join(dir, 'r2')])
  t.equal(r2.code, 0, `the mirror still restores verified: ${r2.stderr}`)
})
