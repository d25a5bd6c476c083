import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { once } from 'node:events'
import { MessageKind } from '@grainline/protocol'
import { Agent, MiB, TOKEN, hello, makeEnv, startReceiver, vmOpen, type LogLine } from './helpers.ts'

/*
 * A flood of tiny frames must fill a session's inbox (and pause its socket)
 * as surely as large frames do: each frame is charged a fixed overhead
 * besides its bytes. Before, 1M frames of 70 bytes held 420 MB while the
 * inbox counted 70 MB of them. Here the session is parked on a VM lock
 * (nothing is consumed) while 40,000 frames of 70 bytes arrive: 2.8 MB of
 * bytes, but 40 MB with the overhead, above the inbox's ~32 MiB high-water
 * mark. The socket must be paused before all of them are queued.
 */

t.test('tiny frames pause the socket: memory per connection is bounded', async (t) => {
  const env = makeEnv(scratchDir(t))
  // batchBytes 1 MiB: the high-water mark is 2 × maxMessageBytes (16 MiB + 64 KiB)
  const { receiver, url, logs } = await startReceiver(env, { batchBytes: MiB, lockWaitMs: 120_000 })
  const highWater = 2 * (16 * MiB + 64 * 1024)
  const FRAME_OVERHEAD = 1024 // src/inbox.ts (not imported, so that this test also runs against the old code)

  const holder = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  holder.send(hello())
  await holder.expect(MessageKind.Welcome)
  holder.send(vmOpen('vm-t', 1, []))
  await holder.expect(MessageKind.VmState)

  const flood = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  flood.send(hello())
  await flood.expect(MessageKind.Welcome)
  flood.send(vmOpen('vm-t', 1, []))
  await logs.waitFor((l) => l['msg'] === 'vm opened' && l['vm'] === 'vm-t')
  const N = 40_000
  const tiny = Buffer.alloc(70, 0x20)
  for (let i = 0; i < N; i++) flood.sendRaw(tiny)
  // a ping is answered once the receiver has read every frame before it: on
  // the old code all 40,000 are queued and the pong comes back
  flood.ws.ping()
  const paused = await Promise.race([logs.waitFor((l) => l['msg'] === 'inbox full: socket paused'), once(flood.ws, 'pong').then(() => undefined)])
  t.ok(paused !== undefined, 'the socket was paused before all the tiny frames were queued')
  const p = paused as LogLine
  t.ok((p['frames'] as number) < N, `paused at ${String(p['frames'])} frames`)
  t.ok((p['frames'] as number) <= Math.ceil(highWater / (70 + FRAME_OVERHEAD)) + 1, 'at the high-water mark, counting the per-frame overhead')
  t.ok((p['bytes'] as number) <= highWater + 70 + FRAME_OVERHEAD, 'accounted bytes bounded by the high-water mark')
  flood.terminate()
  holder.close()
  await Promise.all([flood.whenClosed(), holder.whenClosed()])
  // the flood's session ends once it has the lock and meets a garbage frame: wait for it before the fixture goes
  await receiver.close()
})
