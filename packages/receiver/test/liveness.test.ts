import t from 'tap'
import { once } from 'node:events'
import WebSocket from 'ws'
import { SUBPROTOCOL } from '@grainline/protocol'
import { Agent, TOKEN, makeEnv, startReceiver } from './helpers.ts'

t.test('a peer that stops answering pings is terminated; one that answers stays', async (t) => {
  const env = makeEnv(t.testdir())
  const { receiver, url } = await startReceiver(env, { pingIntervalMs: 100 })
  t.teardown(() => receiver.close())
  const live = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const mute = new WebSocket(url, SUBPROTOCOL, { headers: { Authorization: `Bearer ${TOKEN}` }, ca: env.tls.ca, autoPong: false })
  await once(mute, 'open')
  const [code] = await once(mute, 'close') as [number]
  t.equal(code, 1006, 'terminated without a close frame')
  t.equal(live.closed, undefined, 'the answering peer is still connected')
  // the terminated session's clean-up is asynchronous
  for (let i = 0; i < 100 && receiver.sessions !== 1; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(receiver.sessions, 1, 'its session was released')
  live.close()
  await live.whenClosed()
})

t.test('maxConnections: one more gets 503 before the upgrade', async (t) => {
  const env = makeEnv(t.testdir())
  const { receiver, url } = await startReceiver(env, { maxConnections: 1 })
  t.teardown(() => receiver.close())
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const err = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca }).then(() => 'connected', (e: { status?: number }) => e.status)
  t.equal(err, 503)
  a.close()
})
