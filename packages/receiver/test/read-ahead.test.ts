/**
 * readAhead (the journaling stage's old-content reads): contents in the order
 * given, whatever order the reads complete in; at most the given number of
 * pieces and bytes in flight; zero-length ranges read nothing; a failed read
 * rejects at its turn, with the reads after it settled, not left unhandled.
 */
import t from 'tap'
import { open, type FileHandle } from 'node:fs/promises'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { readAhead } from '../src/read-ahead.ts'
import { pattern } from './helpers.ts'

/** The real handle, counting reads in flight (and failing the read at `failAt`, when given). */
function counting(fh: FileHandle, stats: { inflight: number; max: number; maxBytes: number; bytes: number; calls: number }, failAt?: number): FileHandle {
  return new Proxy(fh, {
    get(target, prop, receiver) {
      if (prop !== 'read') return Reflect.get(target, prop, receiver)
      return async (buf: Buffer, off: number, len: number, pos: number) => {
        const call = stats.calls++
        stats.inflight++
        stats.bytes += len
        stats.max = Math.max(stats.max, stats.inflight)
        stats.maxBytes = Math.max(stats.maxBytes, stats.bytes)
        try {
          // later reads finish first: the order of completion is not the order of the ranges
          await new Promise((r) => setImmediate(r))
          if (call === failAt) throw Object.assign(new Error('EIO'), { code: 'EIO' })
          return await target.read(buf, off, len, pos)
        } finally {
          stats.inflight--
          stats.bytes -= len
        }
      }
    },
  })
}

t.test('contents in order, within the limits', async (t) => {
  const dir = t.testdir()
  const file = pattern(1 << 20, 7)
  writeFileSync(join(dir, 'f'), file)
  const fh = await open(join(dir, 'f'), 'r')
  t.teardown(() => fh.close())
  const ranges = Array.from({ length: 40 }, (_, i) => ({ pos: (i * 24_571) % (1 << 19), n: i % 7 === 0 ? 0 : 1000 + i * 97 }))
  const stats = { inflight: 0, max: 0, maxBytes: 0, bytes: 0, calls: 0 }
  let k = 0
  for await (const { range, data } of readAhead(counting(fh, stats), ranges, { limits: { pieces: 4, bytes: 6000 } })) {
    t.equal(range, ranges[k], `range ${k} in its turn`)
    if (range.n === 0) t.equal(data, undefined, 'a zero-length range reads nothing')
    else t.ok(data?.equals(file.subarray(range.pos, range.pos + range.n)), `range ${k}'s bytes`)
    k++
  }
  t.equal(k, ranges.length)
  t.ok(stats.max > 1, 'reads overlapped')
  t.ok(stats.max <= 4, 'at most 4 reads in flight')
  t.ok(stats.maxBytes <= 6000, 'at most 6000 bytes in flight')
  t.equal(stats.calls, ranges.filter((r) => r.n > 0).length, 'one read per non-empty range')
})

t.test('a failed read rejects at its turn; the others settle', async (t) => {
  const dir = t.testdir()
  writeFileSync(join(dir, 'f'), pattern(65_536, 3))
  const fh = await open(join(dir, 'f'), 'r')
  t.teardown(() => fh.close())
  const ranges = Array.from({ length: 10 }, (_, i) => ({ pos: i * 4096, n: 4096 }))
  const stats = { inflight: 0, max: 0, maxBytes: 0, bytes: 0, calls: 0 }
  const got: number[] = []
  await t.rejects(async () => {
    for await (const { range } of readAhead(counting(fh, stats, 3), ranges)) got.push(range.pos)
  }, /EIO/)
  t.same(got, [0, 4096, 8192], 'the ranges before the failed one were yielded')
  t.equal(stats.inflight, 0, 'no read left in flight')
})

t.test('an aborted signal stops before the next read', async (t) => {
  const dir = t.testdir()
  writeFileSync(join(dir, 'f'), pattern(65_536, 4))
  const fh = await open(join(dir, 'f'), 'r')
  t.teardown(() => fh.close())
  const ac = new AbortController()
  ac.abort()
  await t.rejects(async () => {
    for await (const _ of readAhead(fh, [{ pos: 0, n: 10 }], { signal: ac.signal })) t.fail('nothing read')
  })
})
