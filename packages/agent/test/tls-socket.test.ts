/**
 * The agent's wss:// socket encrypts each queued chunk from its own buffer:
 * Node's default TLS socket joins a corked header and payload into one new
 * buffer (one TLS record), the agent's writes them as they are (one record
 * each). A real TLS server on loopback sees the records as separate reads.
 */
import t from 'tap'
import { once } from 'node:events'
import { connect, createServer, type TLSSocket } from 'node:tls'
import { readFile } from 'node:fs/promises'
import { tlsFixture } from '@grainline/test-utils'
import { connectTlsUnjoined } from '../src/tls-socket.ts'

/** A TLS server that reports the length of every read of each connection once `total` bytes arrived. */
async function recordServer(t: { teardown: (fn: () => unknown) => void }, total: number): Promise<{ port: number; reads: Promise<number[]> }> {
  const { cert, key } = tlsFixture()
  const srv = createServer({ cert: await readFile(cert), key: await readFile(key) })
  let resolve: (r: number[]) => void = () => {}
  const reads = new Promise<number[]>((r) => {
    resolve = r
  })
  const sockets = new Set<TLSSocket>()
  srv.on('secureConnection', (s: TLSSocket) => {
    sockets.add(s)
    const lengths: number[] = []
    s.on('data', (d: Buffer) => {
      lengths.push(d.length)
      if (lengths.reduce((a, b) => a + b, 0) >= total) resolve(lengths)
    })
  })
  srv.listen(0, '127.0.0.1')
  await once(srv, 'listening')
  t.teardown(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy()
        srv.close(() => r())
      }),
  )
  return { port: (srv.address() as { port: number }).port, reads }
}

/** Write a 14-byte head and a 3000-byte body corked, as ws writes a frame. */
async function writeFrame(s: TLSSocket): Promise<void> {
  await once(s, 'secureConnect')
  s.cork()
  s.write(Buffer.alloc(14, 1))
  s.write(Buffer.alloc(3000, 2))
  s.uncork()
}

t.test('a corked head and payload go out as two TLS records, each from its own buffer', async (t) => {
  const { port, reads } = await recordServer(t, 3014)
  // the options ws hands createConnection: an HTTP request's, whose path is the URL's
  const s = connectTlsUnjoined({ host: '127.0.0.1', port, ca: tlsFixture().ca, path: '/' })
  t.teardown(() => s.destroy())
  await writeFrame(s)
  t.same(await reads, [14, 3000])
})

t.test("Node's own TLS socket joins them into one record (what the agent's socket avoids)", async (t) => {
  const { port, reads } = await recordServer(t, 3014)
  const s = connect({ host: '127.0.0.1', port, ca: tlsFixture().ca, servername: '' })
  t.teardown(() => s.destroy())
  await writeFrame(s)
  t.same(await reads, [3014])
})
