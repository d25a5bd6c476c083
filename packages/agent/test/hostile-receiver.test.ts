/**
 * Receivers that accept every connection, Hello, VmOpen and DiskOpen and then
 * confirm nothing: a hostile or broken peer with a valid token, or one that
 * times every session out.
 *
 * - One that ends each session before acknowledging anything must not hold the
 *   agent, and the VM's snapshot, forever: a handshake is not progress, so the
 *   outage clock runs on and the run ends in E_GAVE_UP after giveUpMs.
 * - A stop (SIGINT, SIGTERM, a job's stop) while the send window waits for acks
 *   that never come, or while the socket waits for a receiver that reads
 *   nothing, ends the run at once (E_ABORTED, the snapshot kept), not after the
 *   2-minute stall timeout.
 * - One that reports a committed cycle so large that the next one's snapshot
 *   name would not parse as grainline's is refused before any snapshot.
 */
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { join } from 'node:path'
import { WebSocketServer, type WebSocket } from 'ws'
import { decodeMessage, encodeMessage, MessageKind, PROTOCOL_VERSION, SUBPROTOCOL, type Message } from '@grainline/protocol'
import { createLocalDriver } from '../src/local-driver.ts'
import { replicate, type ReplicateInit } from '../src/replicate.ts'
import { createSampleVm } from '../src/sample-vm.ts'
import { memoryLogger, MiB, scratch } from './helpers.ts'

/** A receiver that answers the handshake (VmState: `state`) and DiskOpen and hands every Extent to `onExtent`; never acknowledges. */
async function confirmingNothing(
  t: Test,
  onExtent: (ws: WebSocket, m: Extract<Message, { kind: typeof MessageKind.Extent }>) => void,
  state: { exists: boolean; committedCycle: number; generation: string } = { exists: false, committedCycle: 0, generation: '' },
): Promise<{ url: string; sessions: () => number }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (p) => (p.has(SUBPROTOCOL) ? SUBPROTOCOL : false) })
  await once(wss, 'listening')
  let sessions = 0
  wss.on('connection', (ws) => {
    sessions++
    ws.on('message', (d: Buffer) => {
      const m = decodeMessage(d)
      const reply = (r: Parameters<typeof encodeMessage>[0]): void => {
        ws.send(encodeMessage(r))
      }
      if (m.kind === MessageKind.Hello) reply({ kind: MessageKind.Welcome, version: PROTOCOL_VERSION, software: 'hostile', digest: 'xxh64', compression: 'none', limits: m.limits, session: 's' })
      if (m.kind === MessageKind.VmOpen) reply({ kind: MessageKind.VmState, vm: m.vm, inflightCycle: 0, compatible: true, ...state })
      if (m.kind === MessageKind.DiskOpen)
        reply({ kind: MessageKind.DiskState, disk: m.disk, accepted: true, reason: '', committedCycle: 0, committedSource: null, mirrorCid: '', modified: false, resumeSeq: 0, resumeBytes: 0 })
      if (m.kind === MessageKind.Extent) onExtent(ws, m)
    })
  })
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate()
        wss.close(() => resolve())
      }),
  )
  return { url: `ws://127.0.0.1:${(wss.address() as { port: number }).port}`, sessions: () => sessions }
}

/** Replicate a sample VM of `diskBytes` random bytes to `url`, failing the test when the run outlasts `watchdogMs`. */
async function replicateTo(t: Test, url: string, diskBytes: number, init: Partial<ReplicateInit>, watchdogMs = 60_000) {
  const dir = scratch(t)
  const vm = await createSampleVm(dir, { name: 'held', disks: [{ sizeBytes: diskBytes, fill: 'random' }], seed: 5 })
  const { logger } = memoryLogger()
  const t0 = performance.now()
  const run = replicate({ logger }, { vm: vm.vmxPath, to: url, token: 't', progress: 'none', maxExtentBytes: 64 * 1024, stateDir: join(dir, 'agent-state'), ...init })
  let watchdog: NodeJS.Timeout | undefined
  const hung = new Promise<never>((_r, reject) => {
    watchdog = setTimeout(() => reject(new Error(`replicate still running after ${watchdogMs / 1000} s`)), watchdogMs)
  })
  try {
    const r = await Promise.race([run, hung])
    return { r, ms: performance.now() - t0 }
  } finally {
    clearTimeout(watchdog)
  }
}

t.test('a receiver that ends every session before its first ack: E_GAVE_UP after giveUpMs, no endless loop', async (t) => {
  let extents = 0
  const rx = await confirmingNothing(t, (ws) => {
    extents++
    ws.close(4408, 'E_TIMEOUT')
  })
  const { r } = await replicateTo(t, rx.url, 2 * MiB, { giveUpMs: 1500, maxBackoffMs: 100 })
  t.equal(r.vms[0]?.error?.code, 'E_GAVE_UP', String(r.vms[0]?.error?.message))
  t.match(r.vms[0]?.error?.message ?? '', /receiver unreachable or acknowledging nothing for \d+ s .*4408/)
  // the first attempt runs on the connect phase's session: at least one retry (8 sessions on a quiet machine)
  t.ok(rx.sessions() >= 2, `the agent retried (${rx.sessions()} sessions, each accepted through DiskOpen)`)
  t.ok(extents >= 2, `and sent extents in each attempt (${extents}), none acknowledged`)
})

t.test('a stop while the send window waits for acks that never come ends the run at once', async (t) => {
  const stop = new AbortController()
  let extents = 0
  // a 256 KiB window holds four 64 KiB extents: the fifth waits for an ack
  const rx = await confirmingNothing(t, () => {
    if (++extents === 4) setTimeout(() => stop.abort(new Error('interrupted by SIGTERM')), 200)
  })
  const { r, ms } = await replicateTo(t, rx.url, 2 * MiB, { windowBytes: 256 * 1024, signal: stop.signal })
  t.equal(extents, 4, 'the window held the fifth extent back')
  t.match(r.vms[0]?.error, { code: 'E_ABORTED', message: /^interrupted by SIGTERM: snapshot grainline-1 is kept and the next run resumes from it/ })
  // the old agent waited out the 120 s stall timeout
  t.ok(ms < 20_000, `stopped in ${Math.round(ms)} ms`)
  t.equal(rx.sessions(), 1, 'and did not reconnect')
})

t.test('a stop while the socket waits for a receiver that reads nothing ends the run at once', async (t) => {
  const stop = new AbortController()
  let paused = false
  const rx = await confirmingNothing(t, (ws) => {
    if (paused) return
    paused = true
    // the receiver stops reading (ws's own pause: a paused raw socket is resumed by ws's parser on its next
    // drain): the agent's socket buffer fills and its sends wait for a drain
    ws.pause()
    setTimeout(() => stop.abort(new Error('interrupted by SIGINT')), 1000)
  })
  const { r, ms } = await replicateTo(t, rx.url, 64 * MiB, { signal: stop.signal })
  t.match(r.vms[0]?.error, { code: 'E_ABORTED', message: /^interrupted by SIGINT: snapshot grainline-1 is kept/ })
  // the old agent waited out the connection's 120 s idle timeout
  t.ok(ms < 20_000, `stopped in ${Math.round(ms)} ms`)
})

t.test('a receiver reporting a committed cycle with no room for the next snapshot name: E_PROTOCOL, no snapshot taken', async (t) => {
  // grainline-1000000000000000 would be foreign to the agent's own parser (15 digits): every later run would refuse the VM
  for (const committedCycle of [999_999_999_999_999, Number.MAX_SAFE_INTEGER]) {
    const rx = await confirmingNothing(t, () => {}, { exists: true, committedCycle, generation: 'ab'.repeat(16) })
    const dir = scratch(t)
    const vm = await createSampleVm(dir, { name: 'nines', disks: [{ sizeBytes: MiB, fill: 'random' }], seed: 6 })
    const { logger } = memoryLogger()
    const r = await replicate({ logger }, { vm: vm.vmxPath, to: rx.url, token: 't', progress: 'none', stateDir: join(dir, 'agent-state') })
    t.match(r.vms[0]?.error, { code: 'E_PROTOCOL', message: new RegExp(`committed cycle ${committedCycle} for nines: the next cycle would exceed 999999999999999`) }, String(committedCycle))
    const d = createLocalDriver()
    t.same(await d.listSnapshots(await d.openVm(vm.vmxPath)), [], `${committedCycle}: no snapshot taken`)
  }
})
