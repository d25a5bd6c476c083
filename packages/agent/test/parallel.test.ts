/** Many VMs per proxy: VMs in parallel, one snapshot operation at a time per host, one bandwidth bucket, one report; a stop keeps what it must. */
import t, { type Test } from 'tap'
import { join } from 'node:path'
import { memoryLogger } from '@grainline/test-utils'
import { AgentStateStore } from '../src/agent-state.ts'
import type { HypervisorDriver, SnapshotRef } from '../src/driver.ts'
import { AgentError } from '../src/errors.ts'
import { HostLocks, hostLockKey, withHostLock } from '../src/host-lock.ts'
import { createLocalDriver } from '../src/local-driver.ts'
import { createRateLimiter, type RateLimiter } from '../src/rate-limiter.ts'
import { replicateMany } from '../src/replicate.ts'
import { createSampleVm } from '../src/sample-vm.ts'
import { removeOtherSnapshots } from '../src/vm-snapshots.ts'
import { haveReceiver, MiB, scratch, startReceiver, TOKEN } from './helpers.ts'

if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')

t.test('HostLocks: operations on one key run one at a time, in order; other keys do not wait', async (t) => {
  const locks = new HostLocks()
  const order: string[] = []
  let releaseA!: () => void
  const a = locks.run('esxi:h1', async () => {
    order.push('a start')
    await new Promise<void>((r) => {
      releaseA = r
    })
    order.push('a end')
  })
  const waited = new Promise<string>((r) => {
    locks.onWait = r
  })
  const b = locks.run('esxi:h1', async () => {
    order.push('b')
  })
  const c = locks.run('esxi:h2', async () => {
    order.push('c')
  })
  t.equal(await waited, 'esxi:h1', 'the second operation on h1 waits')
  await c
  t.same(order, ['a start', 'c'], 'h2 did not wait for h1; b did')
  releaseA()
  await Promise.all([a, b])
  t.same(order, ['a start', 'c', 'a end', 'b'])
  t.match(locks.stats.get('esxi:h1'), { runs: 2, maxConcurrent: 1, active: 0, waiting: 0 })
  await t.rejects(
    locks.run('esxi:h1', async () => {
      throw new Error('boom')
    }),
    { message: 'boom' },
  )
  await locks.run('esxi:h1', async () => {
    order.push('after a failure')
  })
  t.equal(order[order.length - 1], 'after a failure', 'a failed operation releases the lock')
})

t.test('withHostLock: a driver without a host is left alone; other methods pass through bound', async (t) => {
  const local = createLocalDriver()
  const locks = new HostLocks()
  t.equal(withHostLock(local, locks), local)
  t.equal(hostLockKey(local), undefined)
  const hosted = { ...local, host: 'h', name: 'esxi' as const, resolvePath: local.resolvePath.bind(local) }
  const wrapped = withHostLock(hosted, locks)
  t.not(wrapped, hosted)
  t.equal(wrapped.host, 'h')
  t.equal(hostLockKey(wrapped), 'esxi:h')
})

t.test('withHostLock: a stop lets the operation in flight finish; the ones queued behind it on the host do not start', async (t) => {
  const local = createLocalDriver()
  const ran: string[] = []
  let releaseFirst!: () => void
  const first = new Promise<void>((resolve) => {
    releaseFirst = resolve
  })
  const stop = new AbortController()
  const locks = new HostLocks()
  const hosted = (vm: string): HypervisorDriver => ({
    ...local,
    name: 'esxi',
    host: 'esx-shared',
    resolvePath: local.resolvePath.bind(local),
    removeSnapshot: async () => {
      ran.push(`remove ${vm}`)
      if (vm === 'a') await first
    },
  })
  const a = withHostLock(hosted('a'), locks, stop.signal)
  const b = withHostLock(hosted('b'), locks, stop.signal)
  const vm = { name: 'x' } as Parameters<HypervisorDriver['removeSnapshot']>[0]
  const snap = { name: 's', id: '1' } as Parameters<HypervisorDriver['removeSnapshot']>[1]
  const inFlight = a.removeSnapshot(vm, snap)
  const queued = b.removeSnapshot(vm, snap)
  stop.abort(new Error('interrupted by SIGTERM'))
  releaseFirst()
  await inFlight
  await t.rejects(queued, { code: 'E_ABORTED', message: 'interrupted by SIGTERM' })
  t.same(ran, ['remove a'], 'the queued operation never ran')
  t.match(locks.stats.get('esxi:esx-shared'), { active: 0, waiting: 0 })
})

t.test('removeOtherSnapshots: a stop met while a removal waits for the host stays a stop; a failed removal is E_SNAPSHOT', async (t) => {
  const snap = (id: string): SnapshotRef => ({ id, name: `grainline-${id}`, grainline: true, cycle: Number(id), disks: [] })
  const driverThrowing = (err: Error): HypervisorDriver =>
    ({
      listSnapshots: async () => [snap('1'), snap('2')],
      openVm: async () => ({}),
      removeSnapshot: async () => {
        throw err
      },
    }) as unknown as HypervisorDriver
  const vm = {} as Parameters<typeof removeOtherSnapshots>[1]
  const log = memoryLogger({ level: 'info' })
  const opts = { log: log.logger, onRemoved: () => {} }
  await t.rejects(removeOtherSnapshots(driverThrowing(new AgentError('E_ABORTED', 'interrupted by SIGTERM')), vm, snap('2'), opts), { code: 'E_ABORTED', message: 'interrupted by SIGTERM' })
  t.notOk(
    log.lines.some((l) => /removing an older snapshot failed/.test(String(l['msg']))),
    'a stop is not logged as a failed removal',
  )
  const timedOut = Object.assign(new Error('task timed out'), { code: 'E_TIMEOUT' })
  await t.rejects(removeOtherSnapshots(driverThrowing(timedOut), vm, snap('2'), opts), { code: 'E_SNAPSHOT', message: /removing snapshot grainline-1 failed \[E_TIMEOUT\]/ })
})

/**
 * A local driver posing as one ESXi host: its snapshot operations record how
 * many run at once. The first creation waits until another VM is queued
 * behind it on the host lock — so the test knows the operations really
 * competed — then lets it go.
 */
function sharedHost(locks: HostLocks): { driver: () => HypervisorDriver; maxActive: () => number; ops: () => number } {
  let active = 0
  let max = 0
  let ops = 0
  let release!: () => void
  let contended: Promise<void> | undefined = new Promise<void>((resolve) => {
    release = resolve
  })
  // the lock queued a second operation behind the first (or, were there no lock, a second one entered)
  locks.onWait = () => release()
  const driver = (): HypervisorDriver => {
    const local = createLocalDriver()
    const track =
      <A extends unknown[], R>(fn: (...a: A) => Promise<R>) =>
      async (...a: A): Promise<R> => {
        active++
        ops++
        max = Math.max(max, active)
        if (active > 1) release()
        try {
          if (contended !== undefined) {
            const c = contended
            contended = undefined
            await c
          }
          return await fn(...a)
        } finally {
          active--
        }
      }
    return {
      name: 'esxi',
      host: 'esx-shared',
      openVm: local.openVm.bind(local),
      listSnapshots: local.listSnapshots.bind(local),
      resolvePath: local.resolvePath.bind(local),
      createSnapshot: track(local.createSnapshot.bind(local)),
      removeSnapshot: track(local.removeSnapshot.bind(local)),
    }
  }
  return { driver, maxActive: () => max, ops: () => ops }
}

t.test('VMs run in parallel with one snapshot operation at a time per host, one shared bucket, one report in job order', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vms = await Promise.all([0, 1, 2, 3].map((i) => createSampleVm(join(dir, 'src'), { name: `vm-${i}`, disks: [{ sizeBytes: 2 * MiB }], seed: i + 1 })))
  const log = memoryLogger({ level: 'info' })
  const locks = new HostLocks()
  const host = sharedHost(locks)
  // the run's one bucket, seen through a spy: every VM's bytes pass through it
  const bucket = createRateLimiter({ rate: 0 })
  let taken = 0
  const spy: RateLimiter = {
    rate: bucket.rate,
    bandwidth: bucket.bandwidth,
    take: async (n, o) => {
      taken += n
      await bucket.take(n, o)
    },
  }
  const common = { to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'state'), trivialMiB: 1 }
  let running = 0
  let maxRunning = 0
  const report = await replicateMany(
    { logger: log.logger },
    vms.map((v) => ({
      ...common,
      vm: v.vmxPath,
      driver: host.driver(),
      afterSnapshot: async () => {
        running++
        maxRunning = Math.max(maxRunning, running)
      },
      beforeRemove: async () => {
        running--
      },
    })),
    { parallel: 2, rateLimiter: spy, hostLocks: locks, view: 'none' },
  )
  t.ok(report.ok, JSON.stringify(report.vms.map((v) => v.error)))
  t.same(
    report.vms.map((v) => v.vm),
    ['vm-0', 'vm-1', 'vm-2', 'vm-3'],
    'one report, in job order',
  )
  t.equal(host.maxActive(), 1, 'never two snapshot operations on the host at once')
  t.ok(host.ops() >= 4, `${host.ops()} snapshot operations went through the lock`)
  t.ok((locks.stats.get('esxi:esx-shared')?.runs ?? 0) >= 4)
  t.equal(maxRunning, 2, 'two VMs were between snapshot and removal at once: parallel 2')
  const wire = report.vms.reduce((s, v) => s + v.disks.reduce((x, d) => x + d.wireBytes, 0), 0)
  t.ok(taken >= wire, `every VM's ${wire} wire bytes went through the one bucket (${taken} taken)`)
})

t.test('a stop: the VM in flight keeps its snapshot and resumes next run, VMs not started say so, the report says why', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vms = await Promise.all([0, 1, 2].map((i) => createSampleVm(join(dir, 'src'), { name: `stop-${i}`, disks: [{ sizeBytes: 4 * MiB }], seed: i + 7 })))
  const log = memoryLogger({ level: 'info' })
  const stateDir = join(dir, 'state')
  const common = { to: rx.url, token: TOKEN, ca: rx.ca, stateDir, trivialMiB: 1 }
  const stop = new AbortController()
  const report = await replicateMany(
    { logger: log.logger },
    vms.map((v, i) => ({
      ...common,
      vm: v.vmxPath,
      // the operator presses Ctrl-C once the first VM's snapshot exists
      ...(i === 0 ? { afterSnapshot: async () => stop.abort(new AgentError('E_ABORTED', 'interrupted by SIGINT')) } : {}),
    })),
    { parallel: 1, signal: stop.signal, view: 'none' },
  )
  t.notOk(report.ok)
  t.equal(report.interrupted, 'interrupted by SIGINT')
  t.match(report.vms[0]?.error, { code: 'E_ABORTED', message: 'interrupted by SIGINT: snapshot grainline-1 is kept and the next run resumes from it' })
  t.equal(report.vms[0]?.snapshot, 'grainline-1')
  t.equal(report.vms[0]?.timings['plan'], undefined, 'the disks were not planned after the stop')
  for (const i of [1, 2]) t.match(report.vms[i]?.error, { code: 'E_ABORTED', message: /^not started: the run was stopped \(interrupted by SIGINT\)/ })
  const state = await new AgentStateStore(stateDir).load('stop-0', `local::${vms[0]?.vmxPath}`)
  t.equal(state.state.inflight?.snapshot.name, 'grainline-1', 'the agent recorded the in-flight snapshot')
  const again = await replicateMany(
    { logger: log.logger },
    vms.map((v) => ({ ...common, vm: v.vmxPath })),
    { parallel: 3, view: 'none' },
  )
  t.ok(again.ok, JSON.stringify(again.vms.map((v) => v.error)))
  t.equal(again.vms[0]?.reusedSnapshot, true, 'the next run resumed with the kept snapshot')
  t.equal(again.vms[0]?.cycle, 1)
})

/** One VM seeded to a fresh receiver with `afterCommit` as its hook and a stop the hook can fire. */
async function runStoppedAfterCommit(t: Test, name: string, seed: number, afterCommit: (stop: AbortController) => Promise<void>) {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes: 4 * MiB }], seed })
  const log = memoryLogger({ level: 'info' })
  const common = { to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'state'), trivialMiB: 1, vm: vm.vmxPath }
  const stop = new AbortController()
  const report = await replicateMany({ logger: log.logger }, [{ ...common, afterCommit: async () => await afterCommit(stop) }], {
    parallel: 1,
    signal: stop.signal,
    view: 'none',
  })
  return { report, log, common }
}

t.test('a stop right after the commit: the checks are not run and the report says so; the next run is a plain incremental', async (t) => {
  const { report, log, common } = await runStoppedAfterCommit(t, 'late', 11, async (stop) => {
    stop.abort(new AgentError('E_ABORTED', 'interrupted by SIGTERM'))
  })
  t.match(report.vms[0]?.error, { code: 'E_ABORTED', message: 'interrupted by SIGTERM: cycle 1 was committed, its checks were not run; the older snapshot is removed by the next run' })
  t.equal(report.vms[0]?.disks[0]?.trivial, undefined, 'no trivial check result')
  t.ok(
    log.lines.some((l) => l['msg'] === 'cycle stopped' && l['level'] === 40),
    'logged at warn as a stop, not as a failure',
  )
  t.notOk(
    log.lines.some((l) => l['msg'] === 'cycle failed'),
    'no "cycle failed"',
  )
  const again = await replicateMany({ logger: log.logger }, [common], { parallel: 1, view: 'none' })
  t.ok(again.ok, JSON.stringify(again.vms[0]?.error))
  t.equal(again.vms[0]?.cycle, 2)
  t.equal(again.vms[0]?.disks[0]?.mode, 'incremental')
})

t.test('an error that comes with a stop is reported beside it and logged with its stack', async (t) => {
  const { report, log } = await runStoppedAfterCommit(t, 'both', 12, async (stop) => {
    stop.abort(new AgentError('E_ABORTED', 'interrupted by SIGTERM'))
    throw new AgentError('E_STATE', 'the record could not be saved')
  })
  t.match(report.vms[0]?.error, { code: 'E_ABORTED', message: /^interrupted by SIGTERM: cycle 1 was committed, .* \(and E_STATE: the record could not be saved\)$/ })
  t.ok(
    log.lines.some((l) => l['msg'] === 'cycle stopped with an error' && l['level'] === 50 && (l['err'] as { message?: string } | undefined)?.message === 'the record could not be saved'),
    'logged at error with the error that came with the stop',
  )
})

t.test('a VM whose options cannot work fails alone; the others run', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'fine', disks: [{ sizeBytes: 1 * MiB }] })
  const log = memoryLogger({ level: 'info' })
  const common = { to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'state'), trivialMiB: 1 }
  const r = await replicateMany(
    { logger: log.logger },
    [
      { ...common, vm: 'esx-vm', driver: 'esxi' },
      { ...common, vm: vm.vmxPath, trivialMiB: -1 },
      { ...common, vm: vm.vmxPath },
    ],
    { view: 'none', parallel: 1 },
  )
  t.equal(r.vms[0]?.error?.code, 'E_CONFIG')
  t.equal(r.vms[1]?.error?.code, 'E_CONFIG')
  t.equal(r.vms[2]?.ok, true)
  t.ok(log.find('VM not started'))
  await t.rejects(replicateMany({ logger: log.logger }, [{ ...common, vm: vm.vmxPath }], { parallel: 0 }), { code: 'E_CONFIG' })
  await t.rejects(replicateMany({ logger: log.logger }, [{ ...common, vm: vm.vmxPath }], { bwlimit: 'fast' }), { code: 'E_CONFIG' })
})

t.test('two runs of one VM at once (a cron entry firing while the last run goes on): one replicates, the other leaves the VM alone (E_BUSY)', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'twice', disks: [{ sizeBytes: 4 * MiB }], seed: 9 })
  const log = memoryLogger({ level: 'info' })
  const run = async (): Promise<Awaited<ReturnType<typeof replicateMany>>> =>
    await replicateMany({ logger: log.logger }, [{ vm: vm.vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, stateDir: join(dir, 'state'), trivialMiB: 1 }], { parallel: 1, view: 'none' })
  const reports = await Promise.all([run(), run()])
  const codes = reports.map((r) => r.vms[0]?.error?.code ?? 'ok').sort()
  t.same(codes, ['E_BUSY', 'ok'], 'one run replicated, the other was refused')
  const busy = reports.find((r) => r.vms[0]?.error?.code === 'E_BUSY')?.vms[0]
  t.match(busy?.error?.message, /VM twice is being replicated by another grainline run \(pid \d+ on .*\): this run leaves the VM alone/)
  t.same(busy?.removedSnapshots, [], 'the refused run removed nothing')
  const snaps = (await createLocalDriver().listSnapshots(await createLocalDriver().openVm(vm.vmxPath))).filter((s) => s.name.startsWith('grainline-'))
  t.equal(snaps.length, 1, 'one grainline snapshot: the one of the run that replicated')
  // the lock goes with its run: the next one is an ordinary incremental
  const next = await run()
  t.ok(next.ok, JSON.stringify(next.vms[0]?.error))
  t.equal(next.vms[0]?.disks[0]?.mode, 'incremental')
})
