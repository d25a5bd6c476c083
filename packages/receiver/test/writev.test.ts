/**
 * writevFully (the apply path's vectored write of a run of extents): every
 * byte lands at its place in a real file, across short writes (the kernel may
 * write less than asked; here the real FileHandle's writev is held to a few
 * KiB per call), empty buffers, and more buffers than one pwritev takes.
 */
import t from 'tap'
import { open, type FileHandle } from 'node:fs/promises'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { writevFully } from '../src/fs-util.ts'
import { pattern } from './helpers.ts'

/** The real handle, with each writev cut to its first `cap` bytes (as a short pwritev(2) would be). */
function capped(fh: FileHandle, cap: number, calls: number[]): FileHandle {
  return new Proxy(fh, {
    get(target, prop, receiver) {
      if (prop !== 'writev') return Reflect.get(target, prop, receiver)
      return async (bufs: NodeJS.ArrayBufferView[], pos: number) => {
        const out: Uint8Array[] = []
        let left = cap
        for (const b of bufs) {
          if (left === 0) break
          const u = new Uint8Array(b.buffer, b.byteOffset, Math.min(b.byteLength, left))
          out.push(u)
          left -= u.length
        }
        calls.push(cap - left)
        return await target.writev(out, pos)
      }
    },
  })
}

t.test('a run of buffers lands back to back, across short writes and empty buffers', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'f')
  const bufs = [pattern(10_000, 1), Buffer.alloc(0), pattern(3, 2), pattern(65_536, 3), Buffer.alloc(0), pattern(7_777, 4)]
  const want = Buffer.concat(bufs)
  const fh = await open(p, 'w+')
  const calls: number[] = []
  try {
    await fh.write(Buffer.alloc(100, 0xee), 0, 100, 0)
    await writevFully(capped(fh, 4_000, calls), bufs, 100)
  } finally {
    await fh.close()
  }
  const got = readFileSync(p)
  t.equal(got.length, 100 + want.length)
  t.ok(got.subarray(0, 100).equals(Buffer.alloc(100, 0xee)), 'bytes before the offset untouched')
  t.ok(got.subarray(100).equals(want), 'every byte at its place')
  t.ok(calls.length >= Math.ceil(want.length / 4_000), 'continued after each short write')
  t.ok(
    calls.every((n) => n > 0),
    'no empty write issued',
  )
})

t.test('more buffers than one pwritev takes', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'g')
  const bufs = Array.from({ length: 2500 }, (_, i) => pattern(17 + (i % 5), i))
  const fh = await open(p, 'w+')
  const calls: number[] = []
  try {
    await writevFully(capped(fh, Number.MAX_SAFE_INTEGER, calls), bufs, 0)
  } finally {
    await fh.close()
  }
  t.ok(readFileSync(p).equals(Buffer.concat(bufs)))
  t.equal(calls.length, 3, 'IOV_MAX (1024) buffers per call')
})
