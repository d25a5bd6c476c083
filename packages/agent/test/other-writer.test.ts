/**
 * A Commit whose Committed is lost with the connection, against the real
 * receiver process (SPEC §4.2, §5.10, protocol v8). The agent reconnects and
 * opens its cycle again; the VmState says that cycle is committed:
 *
 * - by another writer of the same mirror name (a VM of the same name on
 *   another proxy, a job configured twice) that rolled back this run's
 *   in-flight cycle and committed its own while this run was away: the run
 *   fails E_OTHER_WRITER, records no commit and removes no snapshot, and the
 *   next run resyncs the mirror. Before, the agent took that commit for its
 *   own (VmState named only the cycle and its generation): it recorded the
 *   other writer's generation and removed its older snapshot, and its next
 *   incremental went onto the other VM's mirror unless the receiver's chain
 *   check refused it (here it does, E_CHAIN_MISMATCH: the two sample VMs'
 *   CIDs differ; sources whose chains it cannot tell apart are patched — a
 *   mirror silently wrong). On the old code this case fails: no error, the
 *   snapshot grainline-1 removed;
 * - by this run (its Commit went through, the Committed was lost): the
 *   commit is recorded as before.
 *
 * A WebSocket proxy between the agent and the receiver drops the Commit (or
 * the Committed) and holds the agent's reconnection while the other writer
 * runs.
 *
 * Across runs (the run stopped at the cut, as a process killed right after
 * its Commit): the next run adopts the Commit it finds recorded as pending
 * when the receiver names that cycle with its identity — an incremental on
 * the adopted snapshot, where the old code resynced every disk; another
 * writer's identity fails E_OTHER_WRITER, and "" or version 7 resync as
 * before.
 */
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { WebSocket, WebSocketServer } from 'ws'
import { decodeMessage, encodeMessage, MessageKind, SUBPROTOCOL, type Message } from '@grainline/protocol'
import { createLocalDriver } from '../src/local-driver.ts'
import { replicate, type ReplicateInit } from '../src/replicate.ts'
import type { VmReport } from '../src/report.ts'
import { createSampleVm, simulateGuestWrites, type SampleVm } from '../src/sample-vm.ts'
import { firstDifference, haveReceiver, memoryLogger, MiB, qemuRaw, scratch, startReceiver, TOKEN, type ReceiverEnv } from './helpers.ts'

if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')

interface CommitProxy {
  readonly url: string
  /** the next frame of this kind is dropped and the connection cut (both sides) */
  cut: 'commit' | 'committed' | undefined
  cuts: number
  /** called when the cut happens, before the agent can reconnect */
  onCut: (() => void) | undefined
  /** new connections wait for this before they reach the receiver */
  gate: Promise<void>
  /** when set, every Hello and VmState passes through it (re-encoded) */
  rewrite: ((m: Message) => Message) | undefined
}

/** A plain-WebSocket proxy on loopback in front of the receiver (wss), passing every frame as it is but the one `cut` names. */
async function commitProxy(t: Test, rx: ReceiverEnv): Promise<CommitProxy> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, maxPayload: 256 * MiB, handleProtocols: (p) => (p.has(SUBPROTOCOL) ? SUBPROTOCOL : false) })
  await once(wss, 'listening')
  const sockets = new Set<WebSocket>()
  const proxy: CommitProxy = { url: `ws://127.0.0.1:${(wss.address() as { port: number }).port}`, cut: undefined, cuts: 0, onCut: undefined, gate: Promise.resolve(), rewrite: undefined }
  const pass = (d: Buffer): Buffer => {
    if (proxy.rewrite === undefined || (d[0] !== MessageKind.Hello && d[0] !== MessageKind.VmState)) return d
    return encodeMessage(proxy.rewrite(decodeMessage(d)))
  }
  wss.on('connection', (client, req) => {
    sockets.add(client)
    const early: Buffer[] = []
    let upstream: WebSocket | undefined
    const cutBoth = (): void => {
      client.terminate()
      upstream?.terminate()
    }
    const cutHere = (): void => {
      proxy.cut = undefined
      proxy.cuts++
      proxy.onCut?.()
      cutBoth()
    }
    client.on('message', (d: Buffer) => {
      if (proxy.cut === 'commit' && d[0] === MessageKind.Commit) return cutHere()
      if (upstream?.readyState === WebSocket.OPEN) upstream.send(pass(d))
      else early.push(pass(d))
    })
    client.on('close', () => upstream?.terminate())
    client.on('error', cutBoth)
    const gate = proxy.gate
    void gate.then(() => {
      if (client.readyState !== WebSocket.OPEN) return
      const up = new WebSocket(rx.url, SUBPROTOCOL, { headers: { Authorization: req.headers.authorization ?? '' }, ca: rx.ca, perMessageDeflate: false, maxPayload: 256 * MiB })
      upstream = up
      sockets.add(up)
      up.on('open', () => {
        for (const d of early.splice(0)) up.send(d)
      })
      up.on('message', (d: Buffer) => {
        if (proxy.cut === 'committed' && d[0] === MessageKind.Committed) return cutHere()
        client.send(pass(d))
      })
      up.on('close', () => client.terminate())
      up.on('error', cutBoth)
    })
  })
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.terminate()
        wss.close(() => resolve())
      }),
  )
  return proxy
}

async function snapshotNames(vm: SampleVm): Promise<string[]> {
  const d = createLocalDriver()
  return (await d.listSnapshots(await d.openVm(vm.vmxPath))).map((s) => s.name).sort()
}

/** One run of `vm` to `url`; `raw` (if given) receives the frozen view of the cycle (qemu-img), taken right after the snapshot. */
async function run(vm: SampleVm, url: string, stateDir: string, rx: ReceiverEnv, raw?: string, over: Partial<ReplicateInit> = {}): Promise<VmReport> {
  const { logger } = memoryLogger()
  const r = await replicate(
    { logger },
    {
      vm: vm.vmxPath,
      to: url,
      token: TOKEN,
      ...(url.startsWith('wss:') ? { ca: rx.ca } : {}),
      stateDir,
      progress: 'none',
      trivialMiB: 0,
      compress: 'none',
      maxBackoffMs: 200,
      afterSnapshot: async (h) => {
        if (raw === undefined) return
        const { openChain } = await import('@grainline/vmdk')
        const chain = await openChain(h.disks[0]?.path as string)
        const frozen = chain.layers[1]?.path as string
        await chain.close()
        await qemuRaw(frozen, raw)
      },
      ...over,
    },
  )
  return r.vms[0] as VmReport
}

t.test("another writer commits this run's cycle while its Commit goes unanswered: E_OTHER_WRITER, no commit recorded, no snapshot removed; the next run resyncs", async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const proxy = await commitProxy(t, rx)
  // two VMs of one name on two proxies (their own state folders), one token: one mirror name
  const a = await createSampleVm(join(dir, 'a'), { name: 'twin', disks: [{ sizeBytes: 2 * MiB, fill: 'random' }], seed: 11 })
  const b = await createSampleVm(join(dir, 'b'), { name: 'twin', disks: [{ sizeBytes: 2 * MiB, fill: 'random' }], seed: 12 })
  const stateA = join(dir, 'state-a')
  const stateB = join(dir, 'state-b')
  const first = await run(a, proxy.url, stateA, rx)
  t.ok(first.ok, `A seeds cycle 1 ${JSON.stringify(first.error)}`)
  await simulateGuestWrites(a.vmxPath, { bytes: 256 * 1024, writeSize: 64 * 1024, seed: 3 })
  // A's Commit of cycle 2 is lost with its connection; B, meanwhile, rolls A's cycle 2 back and commits its own
  let other: Promise<VmReport> | undefined
  let release = (): void => {}
  proxy.cut = 'commit'
  proxy.onCut = () => {
    proxy.gate = new Promise<void>((resolve) => {
      release = resolve
    })
    other = run(b, rx.url, stateB, rx).finally(() => release())
  }
  const second = await run(a, proxy.url, stateA, rx)
  t.equal(proxy.cuts, 1, 'the Commit was cut')
  const theirs = await (other as Promise<VmReport>)
  t.ok(theirs.ok, `B committed its own cycle 2 ${JSON.stringify(theirs.error)}`)
  t.equal(theirs.cycle, 2)
  t.match(second.error, {
    code: 'E_OTHER_WRITER',
    message:
      /^another writer committed cycle 2 of twin to the receiver ws:\/\/127\.0\.0\.1:\d+ while this run's Commit of that cycle went unanswered .*committed cycle identity [0-9a-f]{64}\), not this run's \([0-9a-f]{64}\)\. No commit was recorded and no snapshot removed\. Check that one job, on one proxy, protects this VM under the name twin/,
  })
  t.notOk(second.ok)
  t.same(second.removedSnapshots, [], 'no snapshot removed')
  t.same(await snapshotNames(a), ['grainline-1', 'grainline-2'], "A keeps its committed snapshot and this cycle's")
  // the next run of A finds the mirror at B's cycle 2: not proven to continue A's commit, so a resync (never an incremental onto B's data)
  const raw = join(dir, 'frozen-a3.raw')
  const third = await run(a, rx.url, stateA, rx, raw)
  t.ok(third.ok, `A's next run ${JSON.stringify(third.error)}`)
  t.equal(third.cycle, 3)
  t.equal(third.disks[0]?.mode, 'resync', String(third.disks[0]?.fallbackReason))
  t.equal(await firstDifference(join(rx.store, 'twin', 'twin-flat.vmdk'), raw), -1, "the mirror is A's frozen view again")
  t.same(await snapshotNames(a), ['grainline-3'])
})

t.test("this run's own Commit went through and its Committed was lost: the reconnect finds its own cycle identity and records the commit, as before", async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const proxy = await commitProxy(t, rx)
  const a = await createSampleVm(join(dir, 'a'), { name: 'solo', disks: [{ sizeBytes: 2 * MiB, fill: 'random' }], seed: 21 })
  const stateA = join(dir, 'state-a')
  t.ok((await run(a, proxy.url, stateA, rx)).ok, 'seed')
  await simulateGuestWrites(a.vmxPath, { bytes: 256 * 1024, writeSize: 64 * 1024, seed: 4 })
  proxy.cut = 'committed'
  const raw = join(dir, 'frozen-2.raw')
  const second = await run(a, proxy.url, stateA, rx, raw)
  t.equal(proxy.cuts, 1, 'the Committed was cut')
  t.ok(second.ok, `committed ${JSON.stringify(second.error)}`)
  t.equal(second.cycle, 2)
  t.ok(second.reconnects >= 1, `reconnected (${second.reconnects})`)
  t.same(await snapshotNames(a), ['grainline-2'], 'the older snapshot removed')
  t.equal(await firstDifference(join(rx.store, 'solo', 'solo-flat.vmdk'), raw), -1)
  // the commit is recorded as its own: the next run is an incremental
  const third = await run(a, rx.url, stateA, rx)
  t.ok(third.ok)
  t.equal(third.disks[0]?.mode, 'incremental', String(third.disks[0]?.fallbackReason))
})

t.test('a receiver that does not know the identity ("", a commit an older receiver recorded) or speaks version 7: a lost Committed is taken as before', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const proxy = await commitProxy(t, rx)
  const a = await createSampleVm(join(dir, 'a'), { name: 'older', disks: [{ sizeBytes: MiB, fill: 'random' }], seed: 31 })
  const stateA = join(dir, 'state-a')
  t.ok((await run(a, proxy.url, stateA, rx)).ok, 'seed')
  const cases: Array<[string, (m: Message) => Message, (m: Message) => void]> = [
    ['committedCycleId ""', (m) => (m.kind === MessageKind.VmState ? { ...m, committedCycleId: '' } : m), () => {}],
    // the Hello offers 7 at most: no committedCycleId on the wire
    [
      'version 7',
      (m) => (m.kind === MessageKind.Hello ? { ...m, versions: [7, 6, 5, 4, 3, 2] } : m),
      (m) => t.notOk(m.kind === MessageKind.VmState && 'committedCycleId' in m, 'no field on version 7'),
    ],
  ]
  let cycle = 1
  for (const [what, rewrite, check] of cases) {
    cycle++
    await simulateGuestWrites(a.vmxPath, { bytes: 128 * 1024, writeSize: 64 * 1024, seed: cycle })
    proxy.rewrite = (m) => {
      const out = rewrite(m)
      check(out)
      return out
    }
    proxy.cut = 'committed'
    const r = await run(a, proxy.url, stateA, rx)
    proxy.rewrite = undefined
    t.equal(proxy.cuts, cycle - 1, `${what}: the Committed was cut`)
    t.ok(r.ok, `${what}: committed ${JSON.stringify(r.error)}`)
    t.equal(r.cycle, cycle)
    t.same(await snapshotNames(a), [`grainline-${cycle}`], `${what}: recorded as its own, the older snapshot removed`)
  }
})

/** The agent's state record of `dir` (one VM per state folder here). */
async function stateRecord(dir: string): Promise<Record<string, unknown>> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.json'))
  if (files.length !== 1) throw new Error(`expected one state file in ${dir}: ${files.join(', ')}`)
  return JSON.parse(await readFile(join(dir, files[0] as string), 'utf8')) as Record<string, unknown>
}

/**
 * A run of `vm` through `proxy` that ends right after its Commit: the frame `cut` names is dropped, the connection
 * cut and the run stopped at that moment (no reconnect reaches the receiver), as a process killed there would be.
 */
async function runDyingAfterCommit(vm: SampleVm, proxy: CommitProxy, stateDir: string, rx: ReceiverEnv, cut: 'commit' | 'committed', raw?: string): Promise<VmReport> {
  const stop = new AbortController()
  proxy.cut = cut
  proxy.onCut = () => {
    proxy.gate = new Promise<void>(() => {})
    stop.abort(new Error('killed after the Commit'))
  }
  try {
    return await run(vm, proxy.url, stateDir, rx, raw, { signal: stop.signal })
  } finally {
    proxy.onCut = undefined
    proxy.gate = Promise.resolve()
  }
}

t.test('a run that ends right after its Commit (the Committed lost): the next run adopts the commit as its own — an incremental on its snapshot, not a resync', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const proxy = await commitProxy(t, rx)
  const a = await createSampleVm(join(dir, 'a'), { name: 'adopt', disks: [{ sizeBytes: 2 * MiB, fill: 'random' }], seed: 41 })
  const stateA = join(dir, 'state-a')
  t.ok((await run(a, proxy.url, stateA, rx)).ok, 'seed')
  await simulateGuestWrites(a.vmxPath, { bytes: 256 * 1024, writeSize: 64 * 1024, seed: 5 })
  const raw2 = join(dir, 'frozen-2.raw')
  const second = await runDyingAfterCommit(a, proxy, stateA, rx, 'committed', raw2)
  t.equal(proxy.cuts, 1, 'the Committed was cut')
  t.notOk(second.ok)
  t.equal(second.error?.code, 'E_ABORTED')
  t.same(await snapshotNames(a), ['grainline-1', 'grainline-2'], 'both snapshots kept')
  t.equal(await firstDifference(join(rx.store, 'adopt', 'adopt-flat.vmdk'), raw2), -1, 'the receiver committed cycle 2')
  const rec = await stateRecord(stateA)
  t.match(
    rec,
    {
      committed: { cycle: 1 },
      inflight: { cycle: 2, snapshot: { name: 'grainline-2' } },
      pendingCommit: { cycle: 2, committedCycleId: /^[0-9a-f]{64}$/, snapshot: { name: 'grainline-2' }, replaces: { name: 'grainline-1' } },
    },
    'the Commit recorded as pending',
  )
  await simulateGuestWrites(a.vmxPath, { bytes: 256 * 1024, writeSize: 64 * 1024, seed: 6 })
  const raw3 = join(dir, 'frozen-3.raw')
  const third = await run(a, rx.url, stateA, rx, raw3)
  t.ok(third.ok, `next run ${JSON.stringify(third.error)}`)
  t.equal(third.cycle, 3)
  t.equal(third.disks[0]?.mode, 'incremental', `an incremental on grainline-2, not a resync (${String(third.disks[0]?.fallbackReason)})`)
  t.same([...third.removedSnapshots].sort(), ['grainline-1', 'grainline-2'])
  t.same(await snapshotNames(a), ['grainline-3'])
  t.equal(await firstDifference(join(rx.store, 'adopt', 'adopt-flat.vmdk'), raw3), -1, "the mirror is cycle 3's frozen view")
  const after = await stateRecord(stateA)
  t.match(after, { committed: { cycle: 3, snapshot: { name: 'grainline-3' } }, inflight: null })
  t.notOk('pendingCommit' in after, 'nothing pending after Committed')
})

t.test('a run that ends after sending its Commit, and another writer commits that cycle: the next run fails E_OTHER_WRITER (nothing taken or removed), the one after resyncs', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const proxy = await commitProxy(t, rx)
  const a = await createSampleVm(join(dir, 'a'), { name: 'twin', disks: [{ sizeBytes: 2 * MiB, fill: 'random' }], seed: 51 })
  const b = await createSampleVm(join(dir, 'b'), { name: 'twin', disks: [{ sizeBytes: 2 * MiB, fill: 'random' }], seed: 52 })
  const stateA = join(dir, 'state-a')
  t.ok((await run(a, proxy.url, stateA, rx)).ok, 'A seeds cycle 1')
  await simulateGuestWrites(a.vmxPath, { bytes: 256 * 1024, writeSize: 64 * 1024, seed: 7 })
  // A's Commit of cycle 2 never reaches the receiver and A ends; B rolls A's cycle 2 back and commits its own
  const second = await runDyingAfterCommit(a, proxy, stateA, rx, 'commit')
  t.equal(proxy.cuts, 1, 'the Commit was cut')
  t.notOk(second.ok)
  t.match(await stateRecord(stateA), { pendingCommit: { cycle: 2 } })
  const theirs = await run(b, rx.url, join(dir, 'state-b'), rx)
  t.ok(theirs.ok, `B committed cycle 2 ${JSON.stringify(theirs.error)}`)
  t.equal(theirs.cycle, 2)
  // through the proxy again: the receiver URL A's Commit went to (another URL proves no second writer), spelt
  // another way (a trailing slash, the host in capitals: one receiver)
  const third = await run(a, `${proxy.url.replace('ws://', 'WS://')}/`, stateA, rx)
  t.notOk(third.ok)
  t.match(third.error, {
    code: 'E_OTHER_WRITER',
    message:
      /^another writer committed cycle 2 of twin to the receiver .* after a former run sent the Commit of that cycle and ended unanswered: .*No commit was recorded, no snapshot taken or removed\./,
  })
  t.same(third.removedSnapshots, [])
  t.same(await snapshotNames(a), ['grainline-1', 'grainline-2'], 'no snapshot taken or removed')
  const rec = await stateRecord(stateA)
  t.match(rec, { committed: { cycle: 1 } })
  t.notOk('pendingCommit' in rec, 'the pending Commit dropped')
  const raw = join(dir, 'frozen-a3.raw')
  const fourth = await run(a, rx.url, stateA, rx, raw)
  t.ok(fourth.ok, `A's next run ${JSON.stringify(fourth.error)}`)
  t.equal(fourth.cycle, 3)
  t.equal(fourth.disks[0]?.mode, 'resync', String(fourth.disks[0]?.fallbackReason))
  t.equal(await firstDifference(join(rx.store, 'twin', 'twin-flat.vmdk'), raw), -1, "the mirror is A's frozen view again")
  t.same(await snapshotNames(a), ['grainline-3'])
})

t.test('a run that ends right after its Commit, and the next run\'s receiver does not name the identity ("", version 7): nothing proves the commit is its own, a resync as before', async (t) => {
  const cases: Array<[string, (m: Message) => Message]> = [
    ['committedCycleId ""', (m) => (m.kind === MessageKind.VmState ? { ...m, committedCycleId: '' } : m)],
    ['version 7', (m) => (m.kind === MessageKind.Hello ? { ...m, versions: [7, 6, 5, 4, 3, 2] } : m)],
  ]
  for (const [what, rewrite] of cases) {
    const dir = scratch(t)
    const rx = await startReceiver(join(dir, 'rx'))
    t.teardown(() => rx.stop())
    const proxy = await commitProxy(t, rx)
    const a = await createSampleVm(join(dir, 'a'), { name: 'older', disks: [{ sizeBytes: MiB, fill: 'random' }], seed: 61 })
    const stateA = join(dir, 'state-a')
    t.ok((await run(a, proxy.url, stateA, rx)).ok, `${what}: seed`)
    await simulateGuestWrites(a.vmxPath, { bytes: 128 * 1024, writeSize: 64 * 1024, seed: 8 })
    const second = await runDyingAfterCommit(a, proxy, stateA, rx, 'committed')
    t.equal(second.error?.code, 'E_ABORTED', `${what}: the run ended after its Commit`)
    proxy.rewrite = rewrite
    const raw = join(dir, 'frozen-3.raw')
    const third = await run(a, proxy.url, stateA, rx, raw)
    proxy.rewrite = undefined
    t.ok(third.ok, `${what}: ${JSON.stringify(third.error)}`)
    t.equal(third.cycle, 3)
    t.equal(third.disks[0]?.mode, 'resync', `${what}: ${String(third.disks[0]?.fallbackReason)}`)
    t.equal(await firstDifference(join(rx.store, 'older', 'older-flat.vmdk'), raw), -1)
    t.same(await snapshotNames(a), ['grainline-3'])
    t.notOk('pendingCommit' in (await stateRecord(stateA)), `${what}: nothing pending`)
  }
})
