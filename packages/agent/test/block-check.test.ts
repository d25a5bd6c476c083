/**
 * `--verify changed` and `--scrub N` on the agent side (SPEC §5.6) against a
 * real receiver process: the blocks a cycle wrote are compared after commit;
 * a scrub rotation covers the whole disk in N cycles and then reports it
 * proven (each slice sent as several BlockChecks in flight, chained by the
 * receiver into its own rotation); a block tampered with in the mirror under an unchanged CID is found
 * by the rotation (E_CHECK, the disk marked diverged) and the next cycle
 * resyncs exactly the differing block, after which the mirror equals the
 * frozen source again. A long scrub slice of a sparse disk skips its holes
 * and still finds a block written into a hole of the mirror. The agent's
 * digests of the written blocks are taken before the commit (an incremental
 * while it ships, a resync as it sends): no read of the frozen view between
 * the commit and the end of the checks (counted through the driver's file
 * access), and a mirror changed between the commit and the check is still
 * found; with a trivial check the BlockChecks follow it unanswered. The
 * same for the scrub slice: an incremental digests it while it ships, a
 * resync as it compares its blocks (no read of the frozen view after the
 * commit), a seed reads it after the commit; a block of the slice tampered
 * with in the mirror after the commit is found and repaired by the next cycle.
 */
import t from 'tap'
import { open, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { pollUntil } from '@grainline/test-utils'
import { keptSeekHelper, localFileAccess, openChain, type FileAccess } from '@grainline/vmdk'
import { SCRUB_HOLE_ASK_MIN_BYTES, scrubHoles } from '../src/block-check.ts'
import type { HypervisorDriver } from '../src/driver.ts'
import { createLocalDriver } from '../src/local-driver.ts'
import { replicate, type ReplicateInit } from '../src/replicate.ts'
import type { VmReport } from '../src/report.ts'
import { createSampleVm, simulateGuestWrites, type SampleVm } from '../src/sample-vm.ts'
import { firstDifference, haveReceiver, memoryLogger, MiB, qemuRaw, scratch, startReceiver, TOKEN, type ReceiverEnv } from './helpers.ts'

if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')

async function cycle(dir: string, vm: SampleVm, rx: ReceiverEnv, tag: string, over: Partial<ReplicateInit>): Promise<{ v: VmReport; raw: string; lines: ReadonlyArray<Record<string, unknown>> }> {
  const raw = join(dir, `frozen-${tag}.raw`)
  const { logger, lines } = memoryLogger()
  const r = await replicate(
    { logger },
    {
      vm: vm.vmxPath,
      to: rx.url,
      token: TOKEN,
      ca: rx.ca,
      stateDir: join(dir, 'agent-state'),
      progress: 'none',
      trivialMiB: 0,
      compress: 'none',
      resyncBlockBytes: 256 * 1024,
      afterSnapshot: async (h) => {
        const chain = await openChain(h.disks[0]?.path as string)
        await qemuRaw(chain.layers[1]?.path as string, raw)
        await chain.close()
        await simulateGuestWrites(h.vmxPath, { bytes: 128 * 1024, writeSize: 32 * 1024, seed: tag.charCodeAt(tag.length - 1), zeroFraction: 0.2 })
      },
      ...over,
    },
  )
  return { v: r.vms[0] as VmReport, raw, lines }
}

t.test('--verify changed compares the written blocks; --scrub 4 proves the disk in 4 cycles and finds a tampered block', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'checked', disks: [{ sizeBytes: 4 * MiB }], seed: 9 })
  const flat = join(rx.store, 'checked', 'checked-flat.vmdk')
  const seed = await cycle(dir, vm, rx, 'c1', {})
  t.ok(seed.v.ok, 'seed')
  const c2 = await cycle(dir, vm, rx, 'c2', { verify: 'changed' })
  const d2 = c2.v.disks[0]
  t.ok(c2.v.ok, `cycle 2 ok ${JSON.stringify(d2?.error)}`)
  t.equal(d2?.blockCheck?.ok, true, 'the changed blocks match')
  t.ok((d2?.blockCheck?.blocks ?? 0) > 0 && (d2?.blockCheck?.blocks ?? 0) < (4 * MiB) / (1 * MiB) + 1, `only the written blocks are compared (${d2?.blockCheck?.blocks})`)
  t.equal(d2?.blockCheck?.mismatched, 0)
  // a scrub rotation of 4 cycles
  const seen: Array<[number, number]> = []
  let last: VmReport | undefined
  for (let c = 3; c <= 6; c++) {
    const r = await cycle(dir, vm, rx, `c${c}`, { scrub: 4 })
    const s = r.v.disks[0]?.scrub
    t.equal(s?.ok, true, `cycle ${c}: scrub of blocks ${s?.from}…${s?.to} ok`)
    // 4 blocks of 256 KiB a slice, its digests taken while shipping: sent as one BlockCheck (nothing to read after the commit)
    t.equal(r.lines.find((l) => l['msg'] === 'scrub ok')?.['messages'], 1, `cycle ${c}: the slice went in one BlockCheck`)
    seen.push([s?.from ?? -1, s?.to ?? -1])
    last = r.v
  }
  t.equal(seen[0]?.[0], 0, 'the rotation starts at block 0')
  for (let i = 1; i < seen.length; i++) t.equal(seen[i]?.[0], seen[i - 1]?.[1], 'each cycle continues where the last stopped')
  t.equal(last?.disks[0]?.scrub?.rotationComplete, true, 'the rotation is complete after 4 cycles')
  t.ok(last?.disks[0]?.scrub?.provenAt !== undefined, 'and the disk is reported proven')
  // the receiver chained the parts into its own rotation: proven there too (its clean verdicts are written after the last answer)
  const proven = await pollUntil(async () => {
    const st = JSON.parse(await readFile(join(rx.store, 'checked', '.grainline', 'state.json'), 'utf8')) as { disks: Record<string, { proven?: { kind: string } }> }
    return st.disks['checked.vmdk']?.proven?.kind === 'scrub' ? st.disks['checked.vmdk'].proven : undefined
  })
  t.match(proven, { kind: 'scrub' }, 'the receiver records the disk proven by the rotation')
  // tamper one byte of the mirror (the CID stays): the next rotation finds it
  const fh = await open(flat, 'r+')
  const b = Buffer.alloc(1)
  await fh.read(b, 0, 1, 3 * MiB + 77)
  b[0] = (b[0] as number) ^ 0xff
  await fh.write(b, 0, 1, 3 * MiB + 77)
  await fh.close()
  let found: VmReport | undefined
  for (let c = 7; c <= 10 && found === undefined; c++) {
    const r = await cycle(dir, vm, rx, `c${c}`, { scrub: 4 })
    if (r.v.disks[0]?.scrub?.ok === false) found = r.v
  }
  t.ok(found !== undefined, 'the scrub rotation finds the tampered block')
  t.equal(found?.ok, false, 'the cycle is not ok')
  t.equal(found?.disks[0]?.scrub?.mismatched, 1, 'exactly one block differs')
  t.equal(found?.disks[0]?.error?.code, 'E_CHECK')
  const repair = await cycle(dir, vm, rx, 'c11', {})
  t.ok(repair.v.ok, 'the next cycle is ok')
  t.equal(repair.v.disks[0]?.mode, 'resync', 'and a resync')
  t.equal(await firstDifference(flat, repair.raw), -1, 'the mirror equals the frozen source again')
})

t.test('--scrub 2 of a sparse 128 MiB disk: the slices skip the holes, a block written into a hole of the mirror and a changed data byte are found and repaired', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'holes', disks: [{ sizeBytes: 128 * MiB, fill: 'sparse' }], seed: 4 })
  const flat = join(rx.store, 'holes', 'holes-flat.vmdk')
  t.ok((await cycle(dir, vm, rx, 'c1', {})).v.ok, 'seed')
  const startsBefore = keptSeekHelper.starts
  // restored even when a cycle throws
  t.teardown(() => {
    scrubHoles.askMinBytes = SCRUB_HOLE_ASK_MIN_BYTES
  })
  for (const [c, from, ask] of [
    [2, 0, false],
    [3, 256, true],
  ] as const) {
    // a slice shorter than SCRUB_HOLE_ASK_MIN_BYTES (256 MiB) reads its holes: asking would start a helper process
    scrubHoles.askMinBytes = ask ? 64 * MiB : SCRUB_HOLE_ASK_MIN_BYTES
    const r = await cycle(dir, vm, rx, `c${c}`, { scrub: 2 })
    scrubHoles.askMinBytes = SCRUB_HOLE_ASK_MIN_BYTES
    const s = r.v.disks[0]?.scrub
    // blocks of 256 KiB (resyncBlockBytes): 256 a slice
    t.match(s, { ok: true, from, to: from + 256, blockSize: 256 * 1024 }, `cycle ${c}: scrub of blocks ${from}…${from + 256} ok`)
    const line = r.lines.find((l) => l['msg'] === 'scrub ok')
    if (ask) t.ok(Number(line?.['holeBytes']) >= 32 * MiB, `cycle ${c}: the holes of the 64 MiB slice were not read (${Number(line?.['holeBytes']) / MiB} MiB)`)
    else {
      t.equal(Number(line?.['holeBytes'] ?? 0), 0, `cycle ${c}: the 64 MiB slice, below the size that asks, was read whole`)
      t.equal(keptSeekHelper.starts, startsBefore, 'and no SEEK_DATA helper was started for it')
    }
  }
  // the flat base's holes were asked through the process's kept helper, not a python3 per question
  t.equal(keptSeekHelper.starts, 1, 'one SEEK_DATA helper process for the whole process')
  // 4 KiB written into the mirror where the source reads zeros in block 10, one data byte changed in block 100
  const last = await cycle(dir, vm, rx, 'c4', {})
  const src = await open(last.raw, 'r')
  const page = Buffer.alloc(4096)
  let hole = -1
  for (let off = 10 * MiB; off < 11 * MiB && hole < 0; off += 4096) {
    await src.read(page, 0, 4096, off)
    if (page.every((x) => x === 0)) hole = off
  }
  let data = -1
  for (let off = 100 * MiB; off < 128 * MiB && data < 0; off += 4096) {
    await src.read(page, 0, 4096, off)
    const i = page.findIndex((x) => x !== 0)
    if (i >= 0) data = off + i
  }
  await src.close()
  t.ok(hole >= 0 && data >= 0, `a zero page (${hole}) and a data byte (${data}) of the source`)
  const fh = await open(flat, 'r+')
  await fh.write(Buffer.alloc(4096, 0xab), 0, 4096, hole)
  const b = Buffer.alloc(1)
  await fh.read(b, 0, 1, data)
  b[0] = (b[0] as number) ^ 0xff
  await fh.write(b, 0, 1, data)
  await fh.close()
  const first = await cycle(dir, vm, rx, 'c5', { scrub: 2 })
  t.match(first.v.disks[0]?.scrub, { ok: false, from: 0, to: 256, mismatched: 1 }, 'the block written into a hole is found')
  t.equal(first.v.disks[0]?.error?.code, 'E_CHECK')
  const repair = await cycle(dir, vm, rx, 'c6', { scrub: 2 })
  t.equal(repair.v.disks[0]?.mode, 'resync', 'the next cycle resyncs')
  t.ok(repair.v.ok, `and is ok ${JSON.stringify(repair.v.disks[0]?.error)}`)
  t.equal(await firstDifference(flat, repair.raw), -1, 'both differences repaired: the mirror equals the frozen source')
})

/**
 * The local driver reading the VM's files through a wrapper that counts the reads of disk files while `on`, and
 * `counted(base)(over)`: cycle options with that driver that count the reads from the commit to the end of the checks.
 */
function countingDriver(): {
  driver: HypervisorDriver
  reads: { on: boolean; count: number }
  counted: (base: Partial<ReplicateInit>) => (over: Partial<ReplicateInit>) => Partial<ReplicateInit>
} {
  const reads = { on: false, count: 0 }
  const files: FileAccess = {
    ...localFileAccess,
    async open(path, mode) {
      const f = await localFileAccess.open(path, mode)
      return new Proxy(f, {
        get(target, prop) {
          if (prop === 'read') {
            return async (buf: Uint8Array, at: number, length: number, position: number): Promise<number> => {
              if (reads.on && path.endsWith('.vmdk')) reads.count++
              return await target.read(buf, at, length, position)
            }
          }
          const v: unknown = Reflect.get(target, prop, target)
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v
        },
      })
    },
  }
  const driver = { ...createLocalDriver(), files }
  const counted =
    (base: Partial<ReplicateInit>) =>
    (over: Partial<ReplicateInit>): Partial<ReplicateInit> => ({
      driver,
      ...base,
      ...over,
      afterCommit: async (h) => {
        await over.afterCommit?.(h)
        reads.count = 0
        reads.on = true
      },
      beforeRemove: async () => {
        reads.on = false
      },
    })
  return { driver, reads, counted }
}

t.test('--verify changed: the digests of the written blocks are ready at the commit (no read of the frozen view after it), a mirror changed after the commit is still found', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'ready', disks: [{ sizeBytes: 4 * MiB }], seed: 11 })
  const flat = join(rx.store, 'ready', 'ready-flat.vmdk')
  const { driver, reads, counted: countedWith } = countingDriver()
  const counted = countedWith({ verify: 'changed' })
  t.ok((await cycle(dir, vm, rx, 'c1', { driver })).v.ok, 'seed')
  const c2 = await cycle(dir, vm, rx, 'c2', counted({}))
  const d2 = c2.v.disks[0]
  t.ok(c2.v.ok, `incremental ok ${JSON.stringify(d2?.error)}`)
  t.match(d2?.blockCheck, { ok: true, blockSize: 256 * 1024, mismatched: 0 }, 'the written blocks match')
  t.ok((d2?.blockCheck?.blocks ?? 0) > 0, `blocks compared (${d2?.blockCheck?.blocks})`)
  t.equal(reads.count, 0, 'no read of the frozen view between the commit and the end of the checks')
  t.equal(c2.lines.find((l) => l['msg'] === 'block check ok')?.['ready'], true, 'the digests were taken while shipping')
  // one byte of every block of the mirror changed after the commit: every block compared differs
  const tamper = async (): Promise<void> => {
    const fh = await open(flat, 'r+')
    const b = Buffer.alloc(1)
    for (let at = 1000; at < 4 * MiB; at += 256 * 1024) {
      await fh.read(b, 0, 1, at)
      b[0] = (b[0] as number) ^ 0x5a
      await fh.write(b, 0, 1, at)
    }
    await fh.close()
  }
  const c3 = await cycle(dir, vm, rx, 'c3', counted({ afterCommit: tamper }))
  const d3 = c3.v.disks[0]
  t.equal(c3.v.ok, false, 'the cycle is not ok')
  t.equal(d3?.blockCheck?.ok, false, 'the block check fails')
  t.ok((d3?.blockCheck?.blocks ?? 0) > 0 && d3?.blockCheck?.mismatched === d3?.blockCheck?.blocks, `every block compared differs (${d3?.blockCheck?.mismatched} of ${d3?.blockCheck?.blocks})`)
  t.equal(d3?.error?.code, 'E_CHECK')
  t.equal(reads.count, 0, 'still no read of the frozen view after the commit')
  // the next cycle resyncs the diverged disk; its differing blocks' digests are kept as they are sent
  const c4 = await cycle(dir, vm, rx, 'c4', counted({}))
  const d4 = c4.v.disks[0]
  t.equal(d4?.mode, 'resync', 'the next cycle resyncs')
  t.ok(c4.v.ok, `and is ok ${JSON.stringify(d4?.error)}`)
  t.match(d4?.blockCheck, { ok: true, blocks: 16, mismatched: 0 }, 'the 16 blocks the resync wrote (every block was changed) match')
  t.equal(reads.count, 0, 'no read of the frozen view after the resync commit')
  t.equal(await firstDifference(flat, c4.raw), -1, 'the mirror equals the frozen source again')
  // with a trivial check: the BlockChecks go behind it unanswered, both answers read in order
  const c5 = await cycle(dir, vm, rx, 'c5', { driver, verify: 'changed', trivialMiB: 1 })
  const d5 = c5.v.disks[0]
  t.ok(c5.v.ok, `incremental with a trivial check ok ${JSON.stringify(d5?.error)}`)
  t.match(d5?.trivial, { ok: true, prefixBytes: MiB }, 'the trivial check passes')
  t.match(d5?.blockCheck, { ok: true, mismatched: 0 }, 'and the block check')
  t.equal(c5.lines.find((l) => l['msg'] === 'block check ok')?.['ready'], true, 'with digests taken while shipping')
})

t.test(
  '--scrub: the slice digests are ready at the commit (no read of the frozen view after it) for an incremental and a resync; a seed reads its slice; a mirror block tampered with after the commit is still found and repaired',
  async (t) => {
    const dir = scratch(t)
    const rx = await startReceiver(join(dir, 'rx'))
    t.teardown(() => rx.stop())
    // 16 blocks of 256 KiB, 4 a slice
    const vm = await createSampleVm(dir, { name: 'sliced', disks: [{ sizeBytes: 4 * MiB }], seed: 13 })
    const flat = join(rx.store, 'sliced', 'sliced-flat.vmdk')
    const { driver, reads, counted: countedWith } = countingDriver()
    const counted = countedWith({ scrub: 4 })
    const ready = (c: { lines: ReadonlyArray<Record<string, unknown>> }): unknown => c.lines.find((l) => l['msg'] === 'scrub ok' || l['msg'] === 'scrub failed')?.['ready']
    // a seed reads its slice after the commit (the wrapper counts those reads)
    const c1 = await cycle(dir, vm, rx, 'c1', counted({}))
    t.ok(c1.v.ok, `seed ok ${JSON.stringify(c1.v.disks[0]?.error)}`)
    t.match(c1.v.disks[0]?.scrub, { ok: true, from: 0, to: 4 }, 'the seed starts the rotation')
    t.ok(reads.count > 0, `the seed read its slice after the commit (${reads.count} reads)`)
    t.equal(ready(c1), false, 'not ready: read after the commit')
    // an incremental: the slice read while it shipped
    const c2 = await cycle(dir, vm, rx, 'c2', counted({}))
    t.ok(c2.v.ok, `incremental ok ${JSON.stringify(c2.v.disks[0]?.error)}`)
    t.match(c2.v.disks[0]?.scrub, { ok: true, from: 4, to: 8, mismatched: 0 }, 'the next slice matches')
    t.equal(reads.count, 0, 'no read of the frozen view between the commit and the end of the checks')
    t.equal(ready(c2), true, 'the slice digests were taken while shipping')
    t.equal(c2.lines.find((l) => l['msg'] === 'scrub ok')?.['messages'], 1, 'sent whole: one BlockCheck')
    t.equal(c1.lines.find((l) => l['msg'] === 'scrub ok')?.['messages'], 4, 'the seed read its slice and sent it in 4 parts (the receiver reads one while the next is read)')
    // a block of the next slice tampered with in the mirror after the commit (its CID unchanged): found
    const tamper = async (): Promise<void> => {
      const fh = await open(flat, 'r+')
      const b = Buffer.alloc(1)
      await fh.read(b, 0, 1, 9 * 256 * 1024 + 5)
      b[0] = (b[0] as number) ^ 0xa5
      await fh.write(b, 0, 1, 9 * 256 * 1024 + 5)
      await fh.close()
    }
    const c3 = await cycle(dir, vm, rx, 'c3', counted({ afterCommit: tamper }))
    t.equal(c3.v.ok, false, 'the cycle is not ok')
    t.match(c3.v.disks[0]?.scrub, { ok: false, from: 8, to: 12, mismatched: 1 }, 'the tampered block is found')
    t.equal(c3.v.disks[0]?.error?.code, 'E_CHECK')
    t.equal(reads.count, 0, 'still no read of the frozen view after the commit')
    t.equal(ready(c3), true, 'with the digests taken while shipping')
    // the next cycle resyncs the diverged disk; the first slice of the new rotation is digested as it compares
    const c4 = await cycle(dir, vm, rx, 'c4', counted({}))
    t.equal(c4.v.disks[0]?.mode, 'resync', 'the next cycle resyncs')
    t.ok(c4.v.ok, `and is ok ${JSON.stringify(c4.v.disks[0]?.error)}`)
    t.match(c4.v.disks[0]?.scrub, { ok: true, from: 0, to: 4 }, 'a new rotation from block 0')
    t.ok(c4.v.disks[0]?.scrub?.provenAt !== undefined, 'proven whole by the resync')
    t.equal(reads.count, 0, 'no read of the frozen view after the resync commit')
    t.equal(ready(c4), true, "the slice's digests kept by the resync")
    t.equal(await firstDifference(flat, c4.raw), -1, 'the mirror equals the frozen source again')
    // with a trivial check: the scrub's BlockChecks go behind it unanswered, both answers read in order
    const c5 = await cycle(dir, vm, rx, 'c5', { driver, scrub: 4, trivialMiB: 1 })
    t.ok(c5.v.ok, `incremental with a trivial check ok ${JSON.stringify(c5.v.disks[0]?.error)}`)
    t.match(c5.v.disks[0]?.trivial, { ok: true, prefixBytes: MiB }, 'the trivial check passes')
    t.match(c5.v.disks[0]?.scrub, { ok: true, from: 4, to: 8 }, 'and the scrub')
    t.equal(ready(c5), true, 'with digests taken while shipping')
  },
)
