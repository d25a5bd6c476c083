import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { gunzipSync } from 'node:zlib'
import type { DiskChain, MapEntry } from '../src/index.ts'

/** Run qemu-img and return stdout. */
export function qemuImg(...args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}

/** Run qemu-io commands against a vmdk image. */
export function qemuIo(image: string, cmds: string[]): void {
  const args = ['-f', 'vmdk']
  for (const c of cmds) args.push('-c', c)
  args.push(image)
  execFileSync('qemu-io', args, { stdio: ['ignore', 'pipe', 'pipe'] })
}

/** `qemu-img map --output=json` parsed. */
export function qemuMap(image: string): MapEntry[] {
  // keep the fields of qemu 7.2's output (newer versions add e.g. "compressed")
  return (JSON.parse(qemuImg('map', '--output=json', '-f', 'vmdk', image)) as MapEntry[]).map((e) => {
    const o: MapEntry = { start: e.start, length: e.length, depth: e.depth, present: e.present, zero: e.zero, data: e.data }
    if (e.offset !== undefined) o.offset = e.offset
    return o
  })
}

/** sha256 of `qemu-img convert -O raw image`. */
export function qemuDigest(image: string, scratch: string): string {
  const out = join(scratch, `convert-${process.pid}.raw`)
  qemuImg('convert', '-f', 'vmdk', '-O', 'raw', image, out)
  return createHash('sha256').update(readFileSync(out)).digest('hex')
}

/** sha256 of the whole disk as our reader sees it at `depth`. */
export async function chainDigest(chain: DiskChain, depth = 0): Promise<string> {
  const h = createHash('sha256')
  const step = 4 * 1024 * 1024
  for (let o = 0; o < chain.capacity; o += step) h.update(await chain.read(o, Math.min(step, chain.capacity - o), { depth }))
  return h.digest('hex')
}

export async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const x of it) out.push(x)
  return out
}

/**
 * Node has no lseek(SEEK_DATA), so we cannot see holes inside flat extents the way
 * QEMU's file-posix driver does (README "Deviations"). Compare maps with entries of
 * flat layers normalized: zero flag cleared and file-contiguous entries merged.
 */
export function normalizeFlat(entries: readonly MapEntry[], flatDepths: ReadonlySet<number>): MapEntry[] {
  const out: MapEntry[] = []
  for (const e0 of entries) {
    const e: MapEntry = { ...e0 }
    if (flatDepths.has(e.depth) && e.present && e.data) e.zero = false
    const last = out[out.length - 1]
    if (
      last !== undefined &&
      last.depth === e.depth &&
      last.present === e.present &&
      last.zero === e.zero &&
      last.data === e.data &&
      (last.offset === undefined) === (e.offset === undefined) &&
      (last.offset === undefined || last.offset + last.length === e.offset) &&
      last.start + last.length === e.start
    ) {
      last.length += e.length
      continue
    }
    out.push(e)
  }
  return out
}

export function flatDepths(chain: DiskChain): Set<number> {
  const s = new Set<number>()
  chain.layers.forEach((l, i) => {
    if (!l.sparse) s.add(i)
  })
  return s
}

/** This package's committed test fixtures (`test/fixtures/`). */
export const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '../../test/fixtures')

/** Path of a committed fixture. */
export function fixture(rel: string): string {
  return join(FIXTURES, rel)
}

/**
 * The team's shared samples folder (files that may not be committed, e.g. the
 * AGPL ESXi SEsparse extent): `$GRAINLINE_SHARED_DIR/samples` when that variable
 * is set (point it at a missing folder to run as on a fresh clone), else the
 * nearest `shared/samples` above this package. Undefined when absent.
 */
export function sharedSamplesDir(): string | undefined {
  const env = process.env.GRAINLINE_SHARED_DIR
  if (env !== undefined && env !== '') {
    const c = join(env, 'samples')
    return existsSync(c) ? c : undefined
  }
  let d = dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 10; i++) {
    const c = join(d, 'shared', 'samples')
    if (existsSync(c)) return c
    d = dirname(d)
  }
  return undefined
}

/** A file of the shared samples, or undefined when the shared folder (or the file) is absent. */
export function sharedSample(rel: string): string | undefined {
  const dir = sharedSamplesDir()
  if (dir === undefined) return undefined
  const p = join(dir, rel)
  return existsSync(p) ? p : undefined
}

/** Copy (gunzip when `.gz`) a file into `dir` as `name` (default: its name without `.gz`) and return the new path. */
export function unpackTo(src: string, dir: string, name?: string): string {
  const out = join(dir, name ?? src.split('/').pop()?.replace(/\.gz$/, '') ?? 'sample')
  writeFileSync(out, src.endsWith('.gz') ? gunzipSync(readFileSync(src)) : readFileSync(src))
  return out
}

/** Unpack a committed fixture into `dir`. */
export function unpackFixture(rel: string, dir: string, name?: string): string {
  return unpackTo(fixture(rel), dir, name)
}

/** A small seeded PRNG (mulberry32) so failures reproduce. */
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
