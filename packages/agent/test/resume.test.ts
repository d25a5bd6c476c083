/**
 * Connection loss: a TCP proxy cuts the stream at random points → the agent
 * reconnects, resumes from the receiver's durable point (resent bytes bounded
 * by the window), and the mirror ends correct. A receiver that stays away makes
 * the agent give up, leaving the snapshot; the next run resumes with it.
 */
import t from 'tap'
import { join } from 'node:path'
import { openChain } from '@grainline/vmdk'
import { replicate, type ReplicateInit } from '../src/replicate.ts'
import { createLocalDriver } from '../src/local-driver.ts'
import { createSampleVm, prng, simulateGuestWrites } from '../src/sample-vm.ts'
import type { VmHandle } from '../src/driver.ts'
import { firstDifference, haveReceiver, memoryLogger, MiB, qemuRaw, startCuttingProxy, startReceiver, TOKEN, scratch } from './helpers.ts'

if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')

async function frozenRaw(h: VmHandle, out: string): Promise<void> {
  const chain = await openChain(h.disks[0]?.path as string)
  const p = chain.layers[1]?.path as string
  await chain.close()
  await qemuRaw(p, out)
}

t.test('random cuts during seed and incremental cycles: resume, correct mirror, resent ≤ window', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const proxy = await startCuttingProxy(() => rx.port)
  t.teardown(() => proxy.close())
  const vm = await createSampleVm(dir, { name: 'cut', disks: [{ sizeBytes: 12 * MiB, fill: 'random' }], seed: 2 })
  const { logger, lines } = memoryLogger()
  // ExtentAck comes once durable and the agent never has more than a window
  // unacknowledged: a first connection cut after window + one extent + the
  // handshake has certainly left a durable point to resume from, however slow
  // the receiver is (a smaller first budget made that a race under load)
  const windowBytes = 256 * 1024
  const maxExtentBytes = 128 * 1024
  const firstBudget = windowBytes + maxExtentBytes + 200_000
  const rnd = prng(77)
  for (let cycle = 1; cycle <= 2; cycle++) {
    const sends = new Map<number, number>()
    let resent = 0
    proxy.budgets = [0, 1, 2].map((i) => Math.floor((i === 0 ? firstBudget : 200_000) + rnd() * (cycle === 1 ? 8_000_000 : 300_000)))
    proxy.cuts = 0
    const raw = join(dir, `frozen-${cycle}.raw`)
    const init: ReplicateInit = {
      vm: vm.vmxPath,
      to: `wss://127.0.0.1:${proxy.port}`,
      token: TOKEN,
      ca: rx.ca,
      stateDir: join(dir, 'agent-state'),
      certify: 'xxh64',
      progress: 'none',
      windowBytes,
      maxExtentBytes,
      maxBackoffMs: 200,
      compress: 'none',
      afterSnapshot: async (h) => {
        await frozenRaw(h, raw)
        await simulateGuestWrites(h.vmxPath, { bytes: 2 * MiB, seed: cycle })
      },
      onExtentSent: ({ seq, wireBytes }) => {
        const n = sends.get(seq) ?? 0
        if (n > 0) resent += wireBytes
        sends.set(seq, n + 1)
      },
    }
    const report = await replicate({ logger }, init)
    const v = report.vms[0]
    t.ok(report.ok, `cycle ${cycle}: ${JSON.stringify(v?.error)}`)
    t.ok(proxy.cuts >= 1, `cycle ${cycle}: the proxy cut ${proxy.cuts} times`)
    t.ok((v?.reconnects ?? 0) >= 1, `reconnected ${v?.reconnects} times`)
    t.ok(
      v?.disks[0]?.resumedFrom.some((s) => s > 0),
      `resumed from a durable point (${JSON.stringify(v?.disks[0]?.resumedFrom)})`,
    )
    t.ok(resent <= proxy.cuts * (windowBytes + maxExtentBytes), `resent ${resent} bytes ≤ ${proxy.cuts} × window`)
    t.equal(await firstDifference(join(rx.store, 'cut', 'cut-flat.vmdk'), raw), -1, `cycle ${cycle}: mirror == frozen view`)
    t.equal(v?.disks[0]?.certify?.ok, true)
  }
  t.ok(
    lines.some((l) => l['msg'] === 'connection lost, reconnecting'),
    'reconnects are logged',
  )
})

t.test('receiver gone: give up leaving the snapshot; the next run resumes the same cycle', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'away', disks: [{ sizeBytes: 8 * MiB, fill: 'random' }], seed: 4 })
  const { logger } = memoryLogger()
  const base = {
    vm: vm.vmxPath,
    to: rx.url,
    token: TOKEN,
    ca: rx.ca,
    stateDir: join(dir, 'agent-state'),
    progress: 'none' as const,
    compress: 'none' as const,
    maxExtentBytes: 64 * 1024,
    windowBytes: 512 * 1024,
  }
  t.ok((await replicate({ logger }, base)).ok, 'seed')
  // the guest writes between cycles: into the delta cycle 2 will freeze and ship
  await simulateGuestWrites(vm.vmxPath, { bytes: 2 * MiB, seed: 5, zeroFraction: 0 })
  const raw = join(dir, 'frozen.raw')
  let killed = false
  const r1 = await replicate(
    { logger },
    {
      ...base,
      giveUpMs: 1500,
      maxBackoffMs: 200,
      bwlimit: 1024 * 1024,
      afterSnapshot: async (h) => {
        await frozenRaw(h, raw)
        await simulateGuestWrites(h.vmxPath, { bytes: 256 * 1024, seed: 6 })
      },
      // the window (512 KiB) holds at most 8 extents of 64 KiB unacknowledged
      // and ExtentAck comes once durable: when extent 12 leaves, at least 4
      // are durable whatever the receiver's speed (killing at 6 raced the acks)
      onExtentSent: ({ seq }) => {
        if (seq === 12 && !killed) {
          killed = true
          void rx.kill9()
        }
      },
    },
  )
  t.notOk(r1.ok)
  t.equal(r1.vms[0]?.error?.code, 'E_GAVE_UP')
  const driver = createLocalDriver()
  t.same(
    (await driver.listSnapshots(await driver.openVm(vm.vmxPath))).map((s) => s.name),
    ['grainline-1', 'grainline-2'],
    'snapshot chain left for the next run',
  )
  await rx.restart()
  const r2 = await replicate({ logger }, { ...base, to: rx.url })
  const v = r2.vms[0]
  t.ok(r2.ok, JSON.stringify(v?.error))
  t.equal(v?.cycle, 2)
  t.equal(v?.reusedSnapshot, true, 'the un-committed snapshot of the failed run was reused')
  t.ok((v?.disks[0]?.resumedFrom[0] ?? 0) > 0, `resumed at seq ${v?.disks[0]?.resumedFrom[0]}, acknowledged data not resent`)
  t.equal(await firstDifference(join(rx.store, 'away', 'away-flat.vmdk'), raw), -1, 'mirror == the frozen view of the interrupted cycle')
  t.same(
    (await driver.listSnapshots(await driver.openVm(vm.vmxPath))).map((s) => s.name),
    ['grainline-2'],
  )
})

t.test('an interrupted cycle whose source chain is gone is rolled back, then resynced', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'rb', disks: [{ sizeBytes: 4 * MiB, fill: 'random' }], seed: 8 })
  const { logger, lines } = memoryLogger()
  const base = { vm: vm.vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'agent-state'), progress: 'none' as const, compress: 'none' as const, maxExtentBytes: 64 * 1024 }
  t.ok((await replicate({ logger }, base)).ok, 'seed')
  await simulateGuestWrites(vm.vmxPath, { bytes: 1 * MiB, seed: 3, zeroFraction: 0 })
  let killed = false
  const r1 = await replicate(
    { logger },
    {
      ...base,
      giveUpMs: 1000,
      maxBackoffMs: 100,
      bwlimit: 512 * 1024,
      onExtentSent: ({ seq }) => {
        if (seq === 3 && !killed) {
          killed = true
          void rx.kill9()
        }
      },
    },
  )
  t.equal(r1.vms[0]?.error?.code, 'E_GAVE_UP')
  // an operator deletes every snapshot: the receiver's in-flight cycle no longer matches any source chain
  const driver = createLocalDriver()
  const h = await driver.openVm(vm.vmxPath)
  for (const s of await driver.listSnapshots(h)) await driver.removeSnapshot(h, s)
  await rx.restart()
  const raw = join(dir, 'frozen.raw')
  const r2 = await replicate(
    { logger },
    {
      ...base,
      to: rx.url,
      afterSnapshot: async (x) => {
        await frozenRaw(x, raw)
      },
    },
  )
  t.ok(r2.ok, JSON.stringify(r2.vms[0]?.error))
  t.equal(r2.vms[0]?.cycle, 2)
  // the mirror of cycle 1 is still there: only the blocks that differ travel (issue #13), no full seed
  t.equal(r2.vms[0]?.disks[0]?.mode, 'resync')
  t.ok(
    lines.some((l) => /rolled back/.test(String(l['msg']))),
    'the abandoned in-flight cycle was rolled back',
  )
  t.equal(await firstDifference(join(rx.store, 'rb', 'rb-flat.vmdk'), raw), -1)
})

t.test('a cycle resumed without the rate limit it was planned under cuts the same extents (the recorded extent size)', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(dir, { name: 'rate', disks: [{ sizeBytes: 8 * MiB, fill: 'random' }], seed: 4 })
  const { logger } = memoryLogger()
  const base = { vm: vm.vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'agent-state'), progress: 'none' as const, compress: 'none' as const, windowBytes: 512 * 1024 }
  const raw = join(dir, 'frozen.raw')
  let killed = false
  // 1 MiB/s plans 128 KiB extents (8 per second of budget); the receiver dies once some are durable
  const r1 = await replicate(
    { logger },
    {
      ...base,
      giveUpMs: 1500,
      maxBackoffMs: 200,
      bwlimit: 1024 * 1024,
      afterSnapshot: async (h) => frozenRaw(h, raw),
      onExtentSent: ({ seq }) => {
        if (seq === 12 && !killed) {
          killed = true
          void rx.kill9()
        }
      },
    },
  )
  t.equal(r1.vms[0]?.error?.code, 'E_GAVE_UP')
  await rx.restart()
  // no rate limit now: a new plan would cut 1 MiB extents, and extent 9 of those is not extent 9 of the cycle in flight
  const r2 = await replicate({ logger }, { ...base, to: rx.url })
  const v = r2.vms[0]
  t.ok(r2.ok, JSON.stringify(v?.error))
  t.equal(v?.reusedSnapshot, true)
  t.ok((v?.disks[0]?.resumedFrom[0] ?? 0) > 0, `resumed at extent ${v?.disks[0]?.resumedFrom[0]}`)
  t.equal(await firstDifference(join(rx.store, 'rate', 'rate-flat.vmdk'), raw), -1, 'mirror == the frozen view')
})
