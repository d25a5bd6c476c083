/**
 * The agent's wss:// socket encrypts each queued chunk from its own buffer:
 * Node's default TLS socket joins a corked header and payload into one new
 * buffer (one TLS record), the agent's writes them as they are (one record
 * each), and joins only runs of short chunks (frame headers, heads, digests)
 * into one write. A real TLS server on loopback sees the records as separate reads.
 */
import t from 'tap'
import { once } from 'node:events'
import { connect, createServer, type TLSSocket } from 'node:tls'
import { readFile } from 'node:fs/promises'
import { tlsFixture } from '@grainline/test-utils'
import { connectTlsUnjoined, groupChunks, SMALL_CHUNK_BYTES } from '../src/tls-socket.ts'

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

/** Write a 14-byte head and a 5000-byte body corked, as ws writes a frame. */
async function writeFrame(s: TLSSocket): Promise<void> {
  await once(s, 'secureConnect')
  s.cork()
  s.write(Buffer.alloc(14, 1))
  s.write(Buffer.alloc(5000, 2))
  s.uncork()
}

t.test('a corked head and payload go out as two TLS records, each from its own buffer', async (t) => {
  const { port, reads } = await recordServer(t, 5014)
  // the options ws hands createConnection: an HTTP request's, whose path is the URL's
  const s = connectTlsUnjoined({ host: '127.0.0.1', port, ca: tlsFixture().ca, path: '/' })
  t.teardown(() => s.destroy())
  await writeFrame(s)
  t.same(await reads, [14, 5000])
})

t.test('an Extent corked as three frames: the short chunks around its payload go as one record each side, the payload from its own buffer', async (t) => {
  // head frame (2 + 40), payload frame header (4), payload, digest frame (2 + 9), then another message's frame (2 + 30)
  const chunks = [Buffer.alloc(2, 1), Buffer.alloc(40, 2), Buffer.alloc(4, 3), Buffer.alloc(64 * 1024, 4), Buffer.alloc(2, 5), Buffer.alloc(9, 6), Buffer.alloc(2, 7), Buffer.alloc(30, 8)]
  const total = chunks.reduce((a, c) => a + c.length, 0)
  const { port, reads } = await recordServer(t, total)
  const s = connectTlsUnjoined({ host: '127.0.0.1', port, ca: tlsFixture().ca, path: '/' })
  t.teardown(() => s.destroy())
  await once(s, 'secureConnect')
  s.cork()
  // a string as the HTTP request writes it
  s.write('GET', 'latin1')
  for (const c of chunks) s.write(c)
  s.uncork()
  // a TLS record holds at most 16 KiB: the payload's write arrives as four
  t.same(await reads, [3 + 46, 16384, 16384, 16384, 16384, 43])
})

t.test('groupChunks: runs of short chunks joined, long ones by reference, empty ones dropped', async (t) => {
  const big = Buffer.alloc(SMALL_CHUNK_BYTES, 9)
  const out = groupChunks([Buffer.from('ab'), Buffer.from('c'), big, Buffer.alloc(0), Buffer.from('d'), big, big])
  t.same(
    out.map((b) => b.length),
    [3, SMALL_CHUNK_BYTES, 1, SMALL_CHUNK_BYTES, SMALL_CHUNK_BYTES],
  )
  t.equal(out[1], big, 'a long chunk is not copied')
  t.equal(out[0]?.toString(), 'abc')
  t.same(groupChunks([]), [])
})

t.test("Node's own TLS socket joins them into one record (what the agent's socket avoids)", async (t) => {
  const { port, reads } = await recordServer(t, 5014)
  const s = connect({ host: '127.0.0.1', port, ca: tlsFixture().ca, servername: '' })
  t.teardown(() => s.destroy())
  await writeFrame(s)
  t.same(await reads, [5014])
})
