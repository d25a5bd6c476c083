/**
 * Inbound frames in reused memory (frame-pool.ts): ws's own `Receiver`,
 * fed a message's bytes in chunks of random sizes (as TLS hands them over),
 * reads a large payload into a pooled buffer and the message comes out
 * exactly, whatever the split; the fragments of a message are joined around
 * the pooled payload without copying it again; the pool reuses what is given
 * back, never what is lent or forgotten, and stays within its bound. The
 * pipeline gives a frame back only once its batch's bytes are written: a
 * scribbler takes every buffer the pool hands out while batches are in
 * flight and overwrites it, and the mirror must still be exact.
 */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import type { Writable } from 'node:stream'
import * as wsModule from 'ws'
import { CycleDigest, MessageKind, createDigest, decodeMessage, encodeMessageParts, initDigests, type ExtentMessage } from '@grainline/protocol'
import { prng, scratchDir } from '@grainline/test-utils'
import { FRAME_ROOM, FramePool, POOL_MIN_BYTES, consumeIntoPool, joinFragments } from '../src/frame-pool.ts'
import { ApplyPipeline, type PipelineDisk } from '../src/apply-pipeline.ts'
import type { ApplyExtent } from '../src/disk-apply.ts'
import { openSeed, pattern, TEST_COMPAT } from './helpers.ts'

/** ws's own frame parser (ws exports `Receiver`; not in its type definitions) */
type WsReceiver = Writable & { on(event: 'message', fn: (data: Buffer[]) => void): void }
const Receiver = (wsModule as unknown as { Receiver: new (opts: object) => WsReceiver }).Receiver

const KiB = 1024
const MiB = 1024 * KiB

t.before(async () => {
  await initDigests()
})

/** One unmasked WebSocket frame (a server's frame, as a client's Receiver reads it). */
function wsFrame(payload: Uint8Array, opcode: number, fin: boolean): Buffer {
  const n = payload.length
  const head = n < 126 ? Buffer.from([0, n]) : n <= 0xffff ? Buffer.alloc(4) : Buffer.alloc(10)
  if (n >= 126 && n <= 0xffff) {
    head[1] = 126
    head.writeUInt16BE(n, 2)
  } else if (n > 0xffff) {
    head[1] = 127
    head.writeBigUInt64BE(BigInt(n), 2)
  }
  head[0] = (fin ? 0x80 : 0) | opcode
  return Buffer.concat([head, payload])
}

/** A message as fragments: the first binary, the others continuations. */
function wsMessage(parts: readonly Uint8Array[]): Buffer {
  return Buffer.concat(parts.map((p, i) => wsFrame(p, i === 0 ? 2 : 0, i === parts.length - 1)))
}

/** Write `bytes` to `r` in chunks of 1 .. `max` bytes, each a fresh buffer (as a socket delivers them). */
function feed(r: WsReceiver, bytes: Buffer, rnd: () => number, max: number): void {
  for (let at = 0; at < bytes.length; ) {
    const n = Math.min(bytes.length - at, 1 + Math.floor(rnd() * max))
    r.write(Buffer.from(bytes.subarray(at, at + n)))
    at += n
  }
}

function extent(seq: number, length: number, fill: number): ExtentMessage {
  const data = pattern(length, fill)
  return { kind: MessageKind.Extent, disk: 0, seq, offset: seq * length, length, zero: false, compression: 'none', data, digest: createDigest('sha256').update(data).digest() }
}

t.test('a pool: reuses what is given back, never what is lent or forgotten, within its bound', async (t) => {
  // a frame of 100 KiB with its room takes 104 KiB: buffers come in steps of a page
  const S = 104 * KiB
  const pool = new FramePool(() => 4 * S)
  const a = pool.take(100 * KiB, FRAME_ROOM) as Buffer
  t.equal(a.length, 100 * KiB)
  t.equal(a.byteOffset, FRAME_ROOM, 'room before the view')
  t.equal(a.buffer.byteLength, S, 'and after it, in a buffer of the next page step')
  t.ok(pool.owns(a) && pool.owns(a.subarray(10, 20)), 'a view and views of it are the pool’s')
  const b = pool.take(100 * KiB, FRAME_ROOM) as Buffer
  t.not(b.buffer, a.buffer, 'a lent buffer is not lent again')
  pool.give(a)
  t.notOk(pool.owns(a), 'given back: no longer lent')
  const c = pool.take(100 * KiB - 1000, FRAME_ROOM) as Buffer
  t.equal(c.buffer, a.buffer, 'a buffer given back is reused for a frame of its size step')
  pool.give(a)
  pool.give(c)
  pool.give(c)
  const d1 = pool.take(100 * KiB, FRAME_ROOM) as Buffer
  const d2 = pool.take(100 * KiB, FRAME_ROOM) as Buffer
  t.not(d1.buffer, d2.buffer, 'a buffer given twice is lent once')
  t.equal(pool.ownedBytes, 3 * S)
  pool.forget(b)
  t.equal(pool.ownedBytes, 2 * S, 'a forgotten buffer leaves the count')
  pool.give(b)
  const e = pool.take(100 * KiB, FRAME_ROOM) as Buffer
  t.not(e.buffer, b.buffer, 'a forgotten buffer is never reused, even if given back later')
  t.equal(pool.take(200 * KiB), undefined, 'beyond the bound: nothing')
  t.equal(pool.refused, 1)
  pool.give(d1)
  pool.give(d2)
  // a larger frame: the free buffers of another size are dropped to make room
  const f = pool.take(200 * KiB) as Buffer
  t.equal(f.length, 200 * KiB)
  t.ok(pool.ownedBytes <= 4 * S, 'within the bound')
  pool.give(new Uint8Array(10))
  t.notOk(pool.owns(new Uint8Array(10)), 'a foreign buffer is not the pool’s, and giving it is a no-op')
})

t.test('buffers in page steps: a 64 KiB payload with its room takes 68 KiB; a reused one is lent as exactly the frame', async (t) => {
  const pool = new FramePool(() => 64 * MiB)
  const a = pool.take(64 * KiB, FRAME_ROOM) as Buffer
  // what consumeIntoPool does: every byte of the view is written
  a.fill(0xab)
  pool.give(a)
  const b = pool.take(64 * KiB, FRAME_ROOM) as Buffer
  t.equal(b.buffer, a.buffer, 'reused')
  t.equal(b.length, 64 * KiB, 'the view is exactly the frame: the old bytes beyond it are not part of it')
  t.equal(a.buffer.byteLength, 68 * KiB, 'a 64 KiB payload with its room: 68 KiB, not 128')
})

t.test('borrowers share one pool: what a session gave back another reuses; what it still held at its end is forgotten', async (t) => {
  const S = 68 * KiB
  const pool = new FramePool(() => 8 * S)
  const s1 = pool.borrower()
  const x = s1.take(64 * KiB, FRAME_ROOM) as Buffer
  const y = s1.take(64 * KiB, FRAME_ROOM) as Buffer
  const z = s1.take(64 * KiB, FRAME_ROOM) as Buffer
  t.ok(s1.owns(x) && pool.owns(x), 'lent through the borrower')
  s1.give(x)
  s1.forget(y)
  t.equal(s1.held, 1, 'one still held (say, left in an inbox)')
  t.equal(pool.ownedBytes, 2 * S)
  s1.release()
  t.equal(s1.held, 0)
  t.equal(pool.ownedBytes, S, 'the held one left the count: only the free one is owned')
  t.notOk(pool.owns(z), 'and it is no longer lent')
  t.equal(s1.take(64 * KiB, FRAME_ROOM), undefined, 'a released borrower lends nothing (ws allocates)')
  s1.give(z)
  const s2 = pool.borrower()
  const w = s2.take(64 * KiB, FRAME_ROOM) as Buffer
  t.equal(w.buffer, x.buffer, 'the next session reuses what the first gave back')
  const v = s2.take(64 * KiB, FRAME_ROOM) as Buffer
  t.ok(v.buffer !== z.buffer && v.buffer !== y.buffer, 'never one the first still held or forgot')
  t.notOk(s2.owns(z), 'a borrower owns only what it was lent')
  s2.forget(z)
  s2.give(undefined)
  t.equal(pool.ownedBytes, 2 * S)
})

t.test('ws reads large payloads into the pool; split into any chunks the message is exact', async (t) => {
  const rnd = prng(7)
  for (const max of [1, 700, 16 * KiB, 70 * KiB]) {
    const pool = new FramePool(() => 64 * MiB)
    const r = new Receiver({ binaryType: 'fragments', isServer: false, maxPayload: 0 })
    t.ok(consumeIntoPool(r, pool), 'installed on a ws Receiver')
    const got: Buffer[][] = []
    r.on('message', (data: Buffer[]) => got.push(data))
    // an agent's Extent in three fragments (head, payload by reference, digest), a single-frame Extent, a small message
    const big = extent(0, (max === 1 ? 96 : 1024) * KiB + 512, 0x41)
    const parts = encodeMessageParts(big)
    t.equal(parts.length, 3, 'the agent’s three fragments')
    const single = extent(1, 200 * KiB, 0x42)
    const small = extent(2, 4 * KiB, 0x43)
    const want = [Buffer.concat(parts), Buffer.concat(encodeMessageParts(single)), Buffer.concat(encodeMessageParts(small))]
    feed(r, Buffer.concat([wsMessage(parts), wsMessage([want[1] as Buffer]), wsMessage([want[2] as Buffer])]), rnd, max)
    await new Promise(setImmediate)
    t.equal(got.length, 3, `three messages (chunks up to ${max} bytes)`)
    const frames = got.map((f) => joinFragments(f, pool))
    for (const [i, w] of want.entries()) t.ok((frames[i] as Buffer).equals(w), `message ${i} exact`)
    t.ok(pool.owns(frames[0] as Buffer), 'the fragmented Extent is one view of a pooled buffer')
    t.equal(((got[0] as Buffer[])[1] as Buffer).buffer, (frames[0] as Buffer).buffer, 'joined around its payload: the payload not copied again')
    t.ok(pool.owns(frames[1] as Buffer), 'a single-frame payload is pooled')
    t.notOk(pool.owns(frames[2] as Buffer), `a payload under ${POOL_MIN_BYTES} bytes is left to ws`)
    t.equal(pool.taken, 2)
    const m = decodeMessage(frames[0] as Buffer) as ExtentMessage
    t.equal(m.data.buffer, (frames[0] as Buffer).buffer, 'the decoded payload is a view of the pooled frame')
    t.same(Buffer.from(m.data), Buffer.from(big.data))
  }
})

t.test('at the bound ws allocates as before; fragments without room are joined into the pool and given back', async (t) => {
  const pool = new FramePool(() => 0)
  const r = new Receiver({ binaryType: 'fragments', isServer: false, maxPayload: 0 })
  consumeIntoPool(r, pool)
  const got: Buffer[][] = []
  r.on('message', (data: Buffer[]) => got.push(data))
  const parts = encodeMessageParts(extent(0, 256 * KiB, 0x51))
  feed(r, wsMessage(parts), prng(3), 16 * KiB)
  await new Promise(setImmediate)
  t.equal(pool.refused, 1, 'the pool at its bound refused the payload')
  const f = joinFragments(got[0] as Buffer[], pool)
  t.ok(f.equals(Buffer.concat(parts)), 'exact')
  t.notOk(pool.owns(f))
  // two pooled fragments: joined into a pooled buffer, both fragments given back
  const p2 = new FramePool(() => 16 * MiB)
  const x = p2.take(100 * KiB) as Buffer
  const y = p2.take(100 * KiB) as Buffer
  x.fill(1)
  y.fill(2)
  const j = joinFragments([x, y], p2)
  t.ok(p2.owns(j) && j.length === 200 * KiB && j[0] === 1 && j[200 * KiB - 1] === 2, 'joined into the pool')
  t.notOk(p2.owns(x) || p2.owns(y), 'the fragments were given back')
  t.equal(joinFragments([], p2).length, 0, 'an empty message')
  t.notOk(consumeIntoPool({}, p2), 'not a ws Receiver: nothing installed')
  t.notOk(consumeIntoPool(undefined, p2))
})

t.test('the pipeline gives a frame back only once its batch is written: a scribbler on every buffer lent meanwhile changes nothing', async (t) => {
  const store = join(scratchDir(t), 's')
  const CAP = 4 * MiB
  const LEN = 128 * KiB
  const { m, a } = await openSeed(store, CAP, pino({ level: 'silent' }))
  const pool = new FramePool(() => 64 * MiB)
  const leased = new Set<ArrayBufferLike>()
  let scribbled = 0
  let reused = 0
  const p = new ApplyPipeline(
    () => 4 * LEN,
    () => {},
    undefined,
    {
      frames: pool,
      // whenever a batch starts its way, take what the pool hands out now and scribble on it
      trace: (step) => {
        if (step !== 'flushed') return
        for (let k = 0; k < 8; k++) {
          const b = pool.take(LEN, FRAME_ROOM) as Buffer
          if (leased.has(b.buffer)) reused++
          b.fill(0xee)
          scribbled++
          pool.give(b)
        }
      },
    },
  )
  const d: PipelineDisk = { handle: 0, name: 'd.vmdk', apply: a, reusePayload: true }
  const cd = new CycleDigest('sha256')
  const want = Buffer.alloc(CAP)
  for (let seq = 0; seq < CAP / LEN; seq++) {
    const frame = pool.take(LEN, FRAME_ROOM) as Buffer
    if (leased.has(frame.buffer)) reused++
    frame.set(pattern(LEN, seq + 1))
    frame.copy(want, seq * LEN)
    const digest = createDigest('sha256').update(frame).digest()
    cd.add({ offset: seq * LEN, length: LEN, zero: false, digest })
    const e: ApplyExtent = { seq, offset: seq * LEN, length: LEN, zero: false, data: frame, digest }
    await p.add(d, a.accept(e), frame)
    leased.add(frame.buffer)
  }
  await p.idle()
  t.ok(scribbled > 0, `scribbled on ${scribbled} buffers`)
  t.ok(reused > 0, `${reused} frames given back after their batch was written were lent again`)
  await a.end({ ...a.counts, digest: cd.digest() })
  await m.commit(1, [a], '', TEST_COMPAT)
  m.release()
  t.ok(readFileSync(join(store, 'vm', 'd-flat.vmdk')).equals(want), 'the mirror is exact: no frame was lent while its batch still wrote it')
})

t.test('a disk that keeps no payloads (reusePayload unset) and a discarded batch: their frames are forgotten, never reused', async (t) => {
  const store = join(scratchDir(t), 's')
  const { m, a } = await openSeed(store, MiB, pino({ level: 'silent' }))
  t.teardown(async () => {
    await a.close()
    m.release()
  })
  const pool = new FramePool(() => 64 * MiB)
  const p = new ApplyPipeline(
    () => MiB,
    () => {},
    undefined,
    { frames: pool },
  )
  const mk = (seq: number): { frame: Buffer; e: ApplyExtent } => {
    const frame = pool.take(128 * KiB) as Buffer
    frame.set(pattern(128 * KiB, seq + 1))
    return { frame, e: { seq, offset: seq * 128 * KiB, length: 128 * KiB, zero: false, data: frame, digest: createDigest('sha256').update(frame).digest() } }
  }
  const x = mk(0)
  await p.add({ handle: 0, name: 'd.vmdk', apply: a }, a.accept(x.e), x.frame)
  t.notOk(pool.owns(x.frame), 'not the folder store’s way: forgotten at once')
  const y = mk(1)
  await p.add({ handle: 0, name: 'd.vmdk', apply: a, reusePayload: true }, a.accept(y.e), y.frame)
  t.ok(pool.owns(y.frame), 'lent to the gathering batch')
  await p.discard()
  t.notOk(pool.owns(y.frame), 'discarded: forgotten')
  const z = pool.take(128 * KiB) as Buffer
  t.ok(z.buffer !== x.frame.buffer && z.buffer !== y.frame.buffer, 'neither is handed out again')
})
