// Two writers of one mirror name, real receiver and agent processes (protocol
// v8, SPEC §5.10): the agent CLI of VM "twin" on one proxy sends the Commit of
// its cycle 2, and the connection drops before the receiver reads it (a
// TLS man-in-the-middle in front of the receiver drops it and holds the
// agent's reconnection). Meanwhile the agent CLI of another VM named "twin"
// (another proxy, its own state folder, the same token) rolls that cycle
// back and commits its own cycle 2. The first agent reconnects and finds
// cycle 2 committed with another cycle identity: its run fails E_OTHER_WRITER
// (exit 1, the report says so) with both grainline snapshots kept, and its
// next run resyncs the mirror to its own disk. Before, it took the other
// writer's commit for its own: ok, and its older snapshot removed.
//
// And the agent CLI killed (SIGKILL) right after its Commit went through,
// before the Committed reached it: the next run adopts the commit it
// recorded as pending (the receiver names its identity) and ships an
// incremental. Before, that next run resynced every disk.
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:https'
import { join } from 'node:path'
import { WebSocket, WebSocketServer } from 'ws'
import { createLocalDriver, createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { MessageKind, SUBPROTOCOL } from '@grainline/protocol'
import { expectedView, replicateCli, startSite, type Site } from '@grainline/e2e'
import { failIfLingering, firstDifference, scratchDir } from '@grainline/test-utils'

failIfLingering(t)

const MiB = 1024 * 1024

/**
 * A wss:// proxy (the site's certificate) that passes every frame to the receiver but drops the next Commit (`drop`
 * 'committed': the receiver's next Committed), cutting both sides.
 */
async function commitDroppingProxy(t: Test, site: Site): Promise<{ port: number; armed: boolean; drop: 'commit' | 'committed'; cuts: number; onCut: () => void; gate: Promise<void> }> {
  const https = createServer({ key: readFileSync(site.key), cert: readFileSync(site.cert) })
  const wss = new WebSocketServer({ server: https, perMessageDeflate: false, maxPayload: 256 * MiB, handleProtocols: (p) => (p.has(SUBPROTOCOL) ? SUBPROTOCOL : false) })
  https.listen(0, '127.0.0.1')
  await once(https, 'listening')
  const sockets = new Set<WebSocket>()
  const proxy = { port: (https.address() as { port: number }).port, armed: false, drop: 'commit' as 'commit' | 'committed', cuts: 0, onCut: () => {}, gate: Promise.resolve() }
  wss.on('connection', (client, req) => {
    sockets.add(client)
    const early: Buffer[] = []
    let upstream: WebSocket | undefined
    const cut = (): void => {
      client.terminate()
      upstream?.terminate()
    }
    const cutHere = (): void => {
      proxy.armed = false
      proxy.cuts++
      proxy.onCut()
      cut()
    }
    client.on('message', (d: Buffer) => {
      if (proxy.armed && proxy.drop === 'commit' && d[0] === MessageKind.Commit) return cutHere()
      if (upstream?.readyState === WebSocket.OPEN) upstream.send(d)
      else early.push(d)
    })
    client.on('close', () => upstream?.terminate())
    client.on('error', cut)
    void proxy.gate.then(() => {
      if (client.readyState !== WebSocket.OPEN) return
      const up = new WebSocket(`wss://127.0.0.1:${site.receiver.port}`, SUBPROTOCOL, {
        headers: { Authorization: req.headers.authorization ?? '' },
        ca: readFileSync(site.cert),
        perMessageDeflate: false,
        maxPayload: 256 * MiB,
      })
      upstream = up
      sockets.add(up)
      up.on('open', () => {
        for (const d of early.splice(0)) up.send(d)
      })
      up.on('message', (d: Buffer) => {
        if (proxy.armed && proxy.drop === 'committed' && d[0] === MessageKind.Committed) return cutHere()
        client.send(d)
      })
      up.on('close', () => client.terminate())
      up.on('error', cut)
    })
  })
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.terminate()
        wss.close()
        https.close(() => resolve())
      }),
  )
  return proxy
}

async function snapshots(vmx: string): Promise<string[]> {
  const d = createLocalDriver()
  return (await d.listSnapshots(await d.openVm(vmx))).map((s) => s.name).sort()
}

t.test("a second writer commits the agent's cycle while its Commit is lost: the agent CLI fails E_OTHER_WRITER, keeps its snapshots, and its next run resyncs", async (t) => {
  const dir = scratchDir(t)
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const proxy = await commitDroppingProxy(t, site)
  const a = await createSampleVm(join(dir, 'proxy-1'), { name: 'twin', disks: [{ sizeBytes: 2 * MiB, fill: 'random' }], seed: 41 })
  const b = await createSampleVm(join(dir, 'proxy-2'), { name: 'twin', disks: [{ sizeBytes: 2 * MiB, fill: 'random' }], seed: 42 })
  const stateA = ['--state-dir', join(dir, 'state-1'), '--trivial-mb', '0']
  const stateB = ['--state-dir', join(dir, 'state-2'), '--trivial-mb', '0']
  const seed = await replicateCli(site, a.vmxPath, stateA, { port: proxy.port })
  t.equal(seed.code, 0, seed.stderr)
  await simulateGuestWrites(a.vmxPath, { bytes: 256 * 1024, writeSize: 64 * 1024, seed: 5 })
  let other: ReturnType<typeof replicateCli> | undefined
  proxy.armed = true
  proxy.onCut = () => {
    let release = (): void => {}
    proxy.gate = new Promise<void>((resolve) => {
      release = resolve
    })
    other = replicateCli(site, b.vmxPath, stateB).finally(() => release())
  }
  const second = await replicateCli(site, a.vmxPath, stateA, { port: proxy.port, logLevel: 'error' })
  t.equal(proxy.cuts, 1, 'the Commit of cycle 2 was dropped')
  const theirs = await (other as ReturnType<typeof replicateCli>)
  t.equal(theirs.code, 0, `the other writer committed its cycle 2: ${theirs.stderr}`)
  t.equal(theirs.report?.vms[0]?.cycle, 2)
  t.not(second.code, 0, 'the first agent fails')
  t.match(second.report?.vms[0]?.error, {
    code: 'E_OTHER_WRITER',
    message: /^another writer committed cycle 2 of twin to the receiver wss:\/\/127\.0\.0\.1:\d+ .*Check that one job, on one proxy, protects this VM under the name twin/,
  })
  t.match(second.stderr, /E_OTHER_WRITER|another writer committed cycle 2/, 'and says so on stderr')
  t.same(await snapshots(a.vmxPath), ['grainline-1', 'grainline-2'], 'no snapshot removed')
  // its next run: the mirror is not proven to continue its commit, so a resync, to its own disk
  const view = await expectedView(a.vmxPath, join(dir, 'view-3.raw'))
  const third = await replicateCli(site, a.vmxPath, stateA)
  t.equal(third.code, 0, third.stderr)
  t.equal(third.report?.vms[0]?.cycle, 3)
  t.equal(third.report?.vms[0]?.disks[0]?.mode, 'resync')
  t.equal(await firstDifference(join(site.store, 'twin', 'twin-flat.vmdk'), view), -1, "the mirror is this VM's disk again")
  t.same(await snapshots(a.vmxPath), ['grainline-3'])
})

t.test('the agent CLI killed (SIGKILL) right after its Commit, before the Committed: the next run adopts the commit — an incremental, not a resync', async (t) => {
  const dir = scratchDir(t)
  const site = await startSite(join(dir, 'dr'))
  t.teardown(() => site.receiver.stop())
  const proxy = await commitDroppingProxy(t, site)
  const a = await createSampleVm(join(dir, 'proxy-1'), { name: 'killed', disks: [{ sizeBytes: 2 * MiB, fill: 'random' }], seed: 43 })
  const state = ['--state-dir', join(dir, 'state-1'), '--trivial-mb', '0']
  const seed = await replicateCli(site, a.vmxPath, state, { port: proxy.port })
  t.equal(seed.code, 0, seed.stderr)
  await simulateGuestWrites(a.vmxPath, { bytes: 256 * 1024, writeSize: 64 * 1024, seed: 6 })
  const view2 = await expectedView(a.vmxPath, join(dir, 'view-2.raw'))
  proxy.armed = true
  proxy.drop = 'committed'
  const second = await replicateCli(site, a.vmxPath, state, {
    port: proxy.port,
    logLevel: 'error',
    onSpawn: (p) => {
      proxy.onCut = () => p.kill('SIGKILL')
    },
  })
  t.equal(proxy.cuts, 1, 'the Committed of cycle 2 was dropped')
  t.equal(second.signal, 'SIGKILL', 'the agent was killed right after its Commit')
  t.equal(await firstDifference(join(site.store, 'killed', 'killed-flat.vmdk'), view2), -1, 'the receiver committed cycle 2')
  t.same(await snapshots(a.vmxPath), ['grainline-1', 'grainline-2'])
  await simulateGuestWrites(a.vmxPath, { bytes: 256 * 1024, writeSize: 64 * 1024, seed: 7 })
  const view3 = await expectedView(a.vmxPath, join(dir, 'view-3.raw'))
  const third = await replicateCli(site, a.vmxPath, state)
  t.equal(third.code, 0, third.stderr)
  t.equal(third.report?.vms[0]?.cycle, 3)
  t.equal(third.report?.vms[0]?.disks[0]?.mode, 'incremental', `adopted, not resynced: ${String(third.report?.vms[0]?.disks[0]?.fallbackReason)}`)
  t.equal(await firstDifference(join(site.store, 'killed', 'killed-flat.vmdk'), view3), -1, "the mirror is cycle 3's view")
  t.same(await snapshots(a.vmxPath), ['grainline-3'])
})
