import t from 'tap'
import { once } from 'node:events'
import { connect, createServer, type Socket } from 'node:net'
import { startSlowLink } from '../src/index.ts'

/** A server that counts what it receives and answers each chunk with one byte. */
async function sink(t: { teardown: (fn: () => unknown) => void }): Promise<{ port: number; received: () => number; conns: Socket[] }> {
  let received = 0
  const conns: Socket[] = []
  const server = createServer((s) => {
    conns.push(s)
    s.on('data', (d: Buffer) => {
      received += d.length
      s.write(Buffer.from([1]))
    })
    s.on('error', () => {})
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const c of conns) c.destroy()
        server.close(() => resolve())
      }),
  )
  return { port: (server.address() as { port: number }).port, received: () => received, conns }
}

t.test('the client’s bytes reach the server at the link’s rate; the answers come back; close ends both sides', async (t) => {
  const s = await sink(t)
  const link = await startSlowLink({ target: s.port, bytesPerSecond: 1024 * 1024 })
  const c = connect(link.port, '127.0.0.1')
  await once(c, 'connect')
  let answers = 0
  c.on('data', (d: Buffer) => {
    answers += d.length
  })
  const t0 = performance.now()
  c.write(Buffer.alloc(512 * 1024, 7))
  while (s.received() < 512 * 1024) await new Promise((r) => setTimeout(r, 10))
  const ms = performance.now() - t0
  t.ok(ms >= 400, `512 KiB at 1 MiB/s took ${Math.round(ms)} ms (≥ 400)`)
  t.equal(link.carried, 512 * 1024, 'carried counts the bytes')
  while (answers === 0) await new Promise((r) => setTimeout(r, 10))
  t.ok(answers > 0, 'the way back is open')
  const closed = once(c, 'close')
  await link.close()
  await closed
  t.pass('closing the link closes the client')
})
