/**
 * A receiver that accepts every connection, Hello, VmOpen and DiskOpen and
 * then ends the session before acknowledging anything (a hostile or broken
 * peer with a valid token, or one that times every session out) must not hold
 * the agent, and the VM's snapshot, forever: a handshake is not progress, so
 * the outage clock runs on and the run ends in E_GAVE_UP after giveUpMs.
 */
import t from 'tap'
import { once } from 'node:events'
import { join } from 'node:path'
import { WebSocketServer } from 'ws'
import { decodeMessage, encodeMessage, MessageKind, PROTOCOL_VERSION, SUBPROTOCOL } from '@grainline/protocol'
import { replicate } from '../src/replicate.ts'
import { createSampleVm } from '../src/sample-vm.ts'
import { memoryLogger, MiB, scratch } from './helpers.ts'

t.test('a receiver that ends every session before its first ack: E_GAVE_UP after giveUpMs, no endless loop', async (t) => {
  const dir = scratch(t)
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (p) => (p.has(SUBPROTOCOL) ? SUBPROTOCOL : false) })
  await once(wss, 'listening')
  let sessions = 0
  let extents = 0
  wss.on('connection', (ws) => {
    sessions++
    ws.on('message', (d: Buffer) => {
      const m = decodeMessage(d)
      const reply = (r: Parameters<typeof encodeMessage>[0]): void => {
        ws.send(encodeMessage(r))
      }
      if (m.kind === MessageKind.Hello) reply({ kind: MessageKind.Welcome, version: PROTOCOL_VERSION, software: 'hostile', digest: 'xxh64', compression: 'none', limits: m.limits, session: 's' })
      if (m.kind === MessageKind.VmOpen) reply({ kind: MessageKind.VmState, vm: m.vm, exists: false, committedCycle: 0, inflightCycle: 0, compatible: true, generation: '' })
      if (m.kind === MessageKind.DiskOpen)
        reply({ kind: MessageKind.DiskState, disk: m.disk, accepted: true, reason: '', committedCycle: 0, committedSource: null, mirrorCid: '', modified: false, resumeSeq: 0, resumeBytes: 0 })
      if (m.kind === MessageKind.Extent) {
        extents++
        ws.close(4408, 'E_TIMEOUT')
      }
    })
  })
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate()
        wss.close(() => resolve())
      }),
  )
  const vm = await createSampleVm(dir, { name: 'held', disks: [{ sizeBytes: 2 * MiB, fill: 'random' }], seed: 5 })
  const { logger } = memoryLogger()
  const run = replicate(
    { logger },
    {
      vm: vm.vmxPath,
      to: `ws://127.0.0.1:${(wss.address() as { port: number }).port}`,
      token: 't',
      progress: 'none',
      giveUpMs: 1500,
      maxBackoffMs: 100,
      maxExtentBytes: 64 * 1024,
      stateDir: join(dir, 'agent-state'),
    },
  )
  let watchdog: NodeJS.Timeout | undefined
  const hung = new Promise<never>((_r, reject) => {
    watchdog = setTimeout(() => reject(new Error(`replicate still running after 60 s (${sessions} sessions)`)), 60_000)
  })
  const r = await Promise.race([run, hung])
  clearTimeout(watchdog)
  t.equal(r.vms[0]?.error?.code, 'E_GAVE_UP', String(r.vms[0]?.error?.message))
  t.match(r.vms[0]?.error?.message ?? '', /receiver unreachable or acknowledging nothing for \d+ s .*4408/)
  // the first attempt runs on the connect phase's session: at least one retry (8 sessions on a quiet machine)
  t.ok(sessions >= 2, `the agent retried (${sessions} sessions, each accepted through DiskOpen)`)
  t.ok(extents >= 2, `and sent extents in each attempt (${extents}), none acknowledged`)
})
