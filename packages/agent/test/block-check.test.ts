/**
 * `--verify changed` and `--scrub N` on the agent side (SPEC §5.6) against a
 * real receiver process: the blocks a cycle wrote are compared after commit;
 * a scrub rotation covers the whole disk in N cycles and then reports it
 * proven; a block tampered with in the mirror under an unchanged CID is found
 * by the rotation (E_CHECK, the disk marked diverged) and the next cycle
 * resyncs exactly the differing block, after which the mirror equals the
 * frozen source again.
 */
import t from 'tap'
import { open } from 'node:fs/promises'
import { join } from 'node:path'
import { openChain } from '@grainline/vmdk'
import { replicate, type ReplicateInit } from '../src/replicate.ts'
import type { VmReport } from '../src/report.ts'
import { createSampleVm, simulateGuestWrites, type SampleVm } from '../src/sample-vm.ts'
import { firstDifference, haveReceiver, memoryLogger, MiB, qemuRaw, scratch, startReceiver, TOKEN, type ReceiverEnv } from './helpers.ts'

if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')

async function cycle(dir: string, vm: SampleVm, rx: ReceiverEnv, tag: string, over: Partial<ReplicateInit>): Promise<{ v: VmReport; raw: string }> {
  const raw = join(dir, `frozen-${tag}.raw`)
  const { logger } = memoryLogger()
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
  return { v: r.vms[0] as VmReport, raw }
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
    seen.push([s?.from ?? -1, s?.to ?? -1])
    last = r.v
  }
  t.equal(seen[0]?.[0], 0, 'the rotation starts at block 0')
  for (let i = 1; i < seen.length; i++) t.equal(seen[i]?.[0], seen[i - 1]?.[1], 'each cycle continues where the last stopped')
  t.equal(last?.disks[0]?.scrub?.rotationComplete, true, 'the rotation is complete after 4 cycles')
  t.ok(last?.disks[0]?.scrub?.provenAt !== undefined, 'and the disk is reported proven')
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
