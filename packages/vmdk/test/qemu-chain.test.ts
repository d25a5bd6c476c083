import t, { type Test } from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { deflateSync } from 'node:zlib'
import { join } from 'node:path'
import { openChain, describeChain, type MapEntry, type Range } from '../src/index.ts'
import { chainDigest, collect, flatDepths, normalizeFlat, prng, qemuDigest, qemuImg, qemuIo, qemuMap } from './helpers.ts'

const MiB = 1024 * 1024

/** Random qemu-io writes (pattern and zero) over a disk of `size` bytes. */
function randomWrites(rand: () => number, size: number, n: number): string[] {
  const cmds: string[] = []
  for (let i = 0; i < n; i++) {
    const unit = rand() < 0.5 ? 512 : 4096
    const len = unit * (1 + Math.floor(rand() * (rand() < 0.2 ? 600 : 40)))
    const off = Math.floor((rand() * (size - len)) / unit) * unit
    if (rand() < 0.25) cmds.push(`write -z ${off} ${len}`)
    else cmds.push(`write -P 0x${Math.floor(1 + rand() * 254).toString(16)} ${off} ${len}`)
  }
  return cmds
}

/** The depth-0 entries of a qemu map as changed ranges (merged by zero flag only). */
function topRanges(entries: readonly MapEntry[]): Range[] {
  const out: Range[] = []
  for (const e of entries) {
    if (e.depth !== 0 || !e.present) continue
    const zero = !e.data
    const last = out[out.length - 1]
    if (last !== undefined && last.zero === zero && last.offset + last.length === e.start) {
      last.length += e.length
      continue
    }
    out.push({ offset: e.start, length: e.length, zero })
  }
  return out
}

async function compare(t: Test, image: string, scratch: string): Promise<void> {
  const chain = await openChain(image)
  try {
    const fd = flatDepths(chain)
    const mine = await collect(chain.map())
    const theirs = qemuMap(image)
    t.same(normalizeFlat(mine, fd), normalizeFlat(theirs, fd), `map of ${image}`)
    if (fd.size === 0) t.same(mine, theirs, 'map identical (no flat layer)')
    t.equal(await chainDigest(chain), qemuDigest(image, scratch), `content of ${image}`)
    if (chain.layers[0]?.sparse === true) t.same(await collect(chain.changedRanges(0)), topRanges(theirs), 'changedRanges(0) = depth-0 entries of qemu map')
    // each parent as seen by its own map
    for (let d = 1; d < chain.layers.length; d++) {
      const layer = chain.layers[d]
      if (layer === undefined) continue
      t.same(normalizeFlat(await collect(chain.map({ depth: d })), new Set([...fd].map((x) => x - d))), normalizeFlat(qemuMap(layer.path), new Set([...fd].map((x) => x - d))), `map at depth ${d}`)
    }
  } finally {
    await chain.close()
  }
}

for (const [name, createOpts, size] of [
  ['monolithicSparse', [], 24 * MiB],
  ['zeroed-grain sparse', ['-o', 'zeroed_grain=on'], 24 * MiB + 512 * 3],
  ['monolithicFlat', ['-o', 'subformat=monolithicFlat'], 20 * MiB],
  ['twoGbMaxExtentSparse', ['-o', 'subformat=twoGbMaxExtentSparse'], 40 * MiB],
  ['twoGbMaxExtentFlat', ['-o', 'subformat=twoGbMaxExtentFlat'], 16 * MiB],
] as const) {
  t.test(`qemu-made chain on a ${name} base`, async (t) => {
    const dir = t.testdir()
    const rand = prng(name.length * 7919 + size)
    const base = join(dir, 'base disk.vmdk')
    qemuImg('create', '-q', '-f', 'vmdk', ...createOpts, base, String(size))
    qemuIo(base, randomWrites(rand, size, 12))
    await compare(t, base, dir)
    let parent = base
    for (let i = 1; i <= 3; i++) {
      const child = join(dir, `child-${i}.vmdk`)
      qemuImg('create', '-q', '-f', 'vmdk', '-o', i === 2 ? 'zeroed_grain=on' : 'zeroed_grain=off', '-b', parent.split('/').pop() ?? '', '-F', 'vmdk', child)
      qemuIo(child, randomWrites(rand, size, 15))
      await compare(t, child, dir)
      parent = child
    }
    const info = await describeChain(parent)
    t.equal(info.layers.length, 4)
    t.equal(info.layers[0]?.createType, 'monolithicSparse')
    t.equal(info.layers[0]?.grainSize, 65536)
    t.equal(info.layers[3]?.file, 'base disk.vmdk')
    t.ok((info.layers[0]?.allocatedBytes ?? 0) + (info.layers[0]?.zeroBytes ?? 0) > 0)
    t.same(JSON.parse(JSON.stringify(info)), info, 'json-able')
  })
}

t.test('streamOptimized (compressed grains) reads like qemu', async (t) => {
  const dir = t.testdir()
  const src = join(dir, 'src.vmdk')
  qemuImg('create', '-q', '-f', 'vmdk', src, String(8 * MiB))
  qemuIo(src, ['write -P 0x5a 0 100k', 'write -P 0x11 3M 1M', 'write -P 0x22 8380416 4096'])
  const so = join(dir, 'so.vmdk')
  qemuImg('convert', '-f', 'vmdk', '-O', 'vmdk', '-o', 'subformat=streamOptimized', src, so)
  await compare(t, so, dir)
})

t.test('streamOptimized: a grain that inflates short is a corrupt file (E_FORMAT), as QEMU refuses it; a partial last grain reads', async (t) => {
  const dir = t.testdir()
  const src = join(dir, 'src.vmdk')
  // the capacity is not a multiple of the 64 KiB grain: the last grain is partial
  const capacity = 8 * MiB + 4096
  qemuImg('create', '-q', '-f', 'vmdk', src, String(capacity))
  qemuIo(src, ['write -P 0x5a 0 64k', `write -P 0x33 ${8 * MiB} 4096`])
  const so = join(dir, 'so.vmdk')
  qemuImg('convert', '-f', 'vmdk', '-O', 'vmdk', '-o', 'subformat=streamOptimized', src, so)
  await compare(t, so, dir)
  // the first grain's record: a sector holding LBA 0, its size, then a zlib stream
  const bytes = readFileSync(so)
  let at = -1
  for (let s = 512; s + 512 <= bytes.length && at < 0; s += 512) {
    if (bytes.readBigUInt64LE(s) === 0n && bytes.readUInt32LE(s + 8) > 0 && bytes.readUInt32LE(s + 8) < 4096 && bytes[s + 12] === 0x78) at = s
  }
  t.ok(at > 0, 'found the first grain')
  const short = deflateSync(Buffer.alloc(60 * 1024, 0x5a))
  t.ok(short.length <= bytes.readUInt32LE(at + 8), 'fits where the grain was')
  bytes.writeUInt32LE(short.length, at + 8)
  short.copy(bytes, at + 12)
  writeFileSync(so, bytes)
  t.throws(() => qemuImg('convert', '-f', 'vmdk', '-O', 'raw', so, join(dir, 'oracle.raw')), 'qemu-img refuses it')
  const chain = await openChain(so)
  t.teardown(() => chain.close())
  await t.rejects(chain.read(0, 4096), { code: 'E_FORMAT', message: /compressed grain at byte \d+ \(disk bytes 0–65536\) inflates to 61440 bytes, not 65536: the file is corrupt/ })
  t.same([...(await chain.read(capacity - 4096, 4))], [0x33, 0x33, 0x33, 0x33], 'the partial last grain still reads')
})

t.test('read at any depth and odd offsets', async (t) => {
  const dir = t.testdir()
  const base = join(dir, 'b.vmdk')
  qemuImg('create', '-q', '-f', 'vmdk', base, String(4 * MiB))
  qemuIo(base, ['write -P 0x01 0 4M'])
  const c = join(dir, 'c.vmdk')
  qemuImg('create', '-q', '-f', 'vmdk', '-b', 'b.vmdk', '-F', 'vmdk', c)
  qemuIo(c, ['write -P 0x02 65536 65536'])
  const chain = await openChain(c)
  const a = await chain.read(65536 - 3, 7)
  t.same([...a], [1, 1, 1, 2, 2, 2, 2])
  const b = await chain.read(65536 - 3, 7, { depth: 1 })
  t.same([...b], [1, 1, 1, 1, 1, 1, 1])
  await t.rejects(chain.read(4 * MiB - 1, 2), { code: 'E_RANGE' })
  await t.rejects(chain.read(0, 1, { depth: 2 }), { code: 'E_RANGE' })
  await chain.close()
})
