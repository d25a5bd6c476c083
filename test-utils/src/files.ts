/** File fixtures: scratch folders, byte-for-byte comparison, deterministic data. */
import { createReadStream, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** The part of a tap `Test` the helpers need (any object with `teardown`). */
export interface Teardown {
  teardown(fn: () => unknown): void
}

/**
 * A fresh folder under the OS temp dir, removed at `t`'s teardown. Unlike
 * `t.testdir()` its name is unique per run (two runs of the suite at once
 * cannot delete each other's files), and since tap runs teardowns last
 * registered first, it is removed after every process a later teardown stops.
 */
export function scratchDir(t: Teardown, prefix = 'grainline-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  t.teardown(() => {
    rmSync(dir, { recursive: true, force: true })
  })
  return dir
}

/** First differing byte offset of two files, or -1 when they are equal (sizes included: a prefix differs at the shorter length). */
export async function firstDifference(a: string, b: string): Promise<number> {
  const ra = createReadStream(a, { highWaterMark: 4 << 20 })[Symbol.asyncIterator]()
  const rb = createReadStream(b, { highWaterMark: 4 << 20 })[Symbol.asyncIterator]()
  let bufA: Buffer = Buffer.alloc(0)
  let bufB: Buffer = Buffer.alloc(0)
  let pos = 0
  try {
    for (;;) {
      if (bufA.length === 0) {
        const n = await ra.next()
        bufA = n.done === true ? Buffer.alloc(0) : (n.value as Buffer)
      }
      if (bufB.length === 0) {
        const n = await rb.next()
        bufB = n.done === true ? Buffer.alloc(0) : (n.value as Buffer)
      }
      if (bufA.length === 0 || bufB.length === 0) return bufA.length === bufB.length ? -1 : pos
      const n = Math.min(bufA.length, bufB.length)
      if (!bufA.subarray(0, n).equals(bufB.subarray(0, n))) {
        for (let i = 0; i < n; i++) if (bufA[i] !== bufB[i]) return pos + i
      }
      pos += n
      bufA = bufA.subarray(n)
      bufB = bufB.subarray(n)
    }
  } finally {
    await ra.return?.()
    await rb.return?.()
  }
}

/** A seeded PRNG (mulberry32) returning floats in [0, 1): failures reproduce. */
export function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** `length` deterministic pseudo-random bytes (xorshift32 of `seed`): the same seed gives the same bytes. */
export function patternBytes(length: number, seed: number): Buffer {
  const b = Buffer.alloc((length + 3) & ~3)
  let x = (seed * 2654435761) >>> 0 || 1
  for (let i = 0; i < b.length; i += 4) {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    b.writeUInt32LE(x, i)
  }
  return b.length === length ? b : b.subarray(0, length)
}
