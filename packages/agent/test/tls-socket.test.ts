/**
 * The agent's wss:// socket writes its queued chunks joined into one buffer
 * it keeps (at most JOINED_WRITE_BYTES a write), a chunk at least that long
 * from its own buffer: several Extents (head, 64 KiB payload, digest) leave
 * in one write — one system call and one run of TLS records — instead of two
 * or three writes each, and never through fresh memory as Node's own TLS
 * socket joins them. A real TLS server on loopback sees the records.
 */
import t from 'tap'
import { once } from 'node:events'
import { createServer, type TLSSocket } from 'node:tls'
import { readFile } from 'node:fs/promises'
import { tlsFixture } from '@grainline/test-utils'
import { connectTlsJoined, groupChunks, JOINED_WRITE_BYTES } from '../src/tls-socket.ts'

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

/** Count the writes the socket's Writable hands TLS. */
function countWrites(s: TLSSocket): { writes: number[] } {
  const w = s as unknown as { _write: (chunk: Buffer, enc: string, cb: () => void) => void }
  const orig = w._write
  const seen = { writes: [] as number[] }
  w._write = function (this: unknown, chunk, enc, cb) {
    seen.writes.push(chunk.length)
    orig.call(this, chunk, enc, cb)
  }
  return seen
}

t.test('Extents corked behind each other leave in writes of at most JOINED_WRITE_BYTES, from a kept buffer', async (t) => {
  // per Extent: head frame (2 + 40), payload frame header (4), payload, digest frame (2 + 9)
  const extent = (k: number): Buffer[] => [Buffer.alloc(2, 1), Buffer.alloc(40, k), Buffer.alloc(4, 3), Buffer.alloc(64 * 1024, k), Buffer.alloc(2, 5), Buffer.alloc(9, k)]
  const chunks = [0, 1, 2, 3, 4, 5].flatMap((k) => extent(10 + k))
  const total = chunks.reduce((a, c) => a + c.length, 0)
  const { port, reads } = await recordServer(t, total + 3)
  const s = connectTlsJoined({ host: '127.0.0.1', port, ca: tlsFixture().ca, path: '/' })
  t.teardown(() => s.destroy())
  await once(s, 'secureConnect')
  const seen = countWrites(s)
  s.cork()
  // a string as the HTTP request writes it
  s.write('GET', 'latin1')
  for (const c of chunks) s.write(c)
  s.uncork()
  const got = await reads
  const perExtent = 2 + 40 + 4 + 64 * 1024 + 2 + 9
  // three Extents fit in one joined write: two writes instead of twelve to eighteen
  // the first run ends where the fourth Extent's payload would pass the bound
  t.same(seen.writes, [3 + 3 * perExtent + 46, 3 * perExtent - 46], 'two writes for six Extents (twelve to eighteen before)')
  t.ok(
    seen.writes.every((n) => n <= JOINED_WRITE_BYTES),
    'none above the bound',
  )
  // a TLS record holds at most 16 KiB: each write arrives as full records and its rest
  t.equal(
    got.reduce((a, b) => a + b, 0),
    total + 3,
  )
  t.equal(got.filter((n) => n !== 16384).length, 2, 'one short record per write')
})

t.test('the bytes arrive exactly, in order, while the kept buffer is filled again write after write', async (t) => {
  // chunks of many sizes, some at the bound (written from their own buffer), each with its own pattern
  const sizes = [1, 7, 4096, 65536, 3, JOINED_WRITE_BYTES, 100_000, 200_000, 2, JOINED_WRITE_BYTES - 1, 0, 9, 300_000, 65536, 65536, 65536, 65536, 5]
  const chunks = sizes.map((n, k) => {
    const b = Buffer.allocUnsafe(n)
    for (let i = 0; i < n; i++) b[i] = (i * 31 + k * 7) & 0xff
    return b
  })
  const want = Buffer.concat(chunks)
  // twice, corked: the second queue refills the kept buffer the first used
  const twice = Buffer.concat([want, want])
  const { cert, key } = tlsFixture()
  const srv = createServer({ cert: await readFile(cert), key: await readFile(key) })
  const received: Buffer[] = []
  let got = 0
  const done = new Promise<void>((resolve) => {
    srv.on('secureConnection', (c: TLSSocket) => {
      c.on('data', (d: Buffer) => {
        received.push(Buffer.from(d))
        got += d.length
        if (got >= twice.length) resolve()
      })
    })
  })
  srv.listen(0, '127.0.0.1')
  await once(srv, 'listening')
  t.teardown(() => new Promise<void>((r) => srv.close(() => r())))
  const s = connectTlsJoined({ host: '127.0.0.1', port: (srv.address() as { port: number }).port, ca: tlsFixture().ca, path: '/' })
  t.teardown(() => s.destroy())
  await once(s, 'secureConnect')
  const seen = countWrites(s)
  for (let round = 0; round < 2; round++) {
    s.cork()
    for (const c of chunks) s.write(c)
    s.uncork()
  }
  await done
  t.ok(Buffer.concat(received).equals(twice), 'every byte as written')
  t.ok(
    seen.writes.every((n) => n <= JOINED_WRITE_BYTES || sizes.includes(n)),
    'joined writes stay within the bound; longer ones are single chunks',
  )
})

t.test('groupChunks: runs of short chunks joined up to the bound, long ones alone, empty ones dropped', async (t) => {
  t.same(groupChunks([2, 1, 10, 0, 1, 10, 10], 10), [
    [0, 2],
    [2, 3],
    [4, 5],
    [5, 6],
    [6, 7],
  ])
  t.same(groupChunks([3, 3, 3, 3, 0], 10), [
    [0, 3],
    [3, 5],
  ])
  t.same(groupChunks([0, 0]), [])
  t.same(groupChunks([]), [])
  t.same(groupChunks([5, 5], 10), [[0, 2]], 'exactly the bound fits')
})
