import t from 'tap'
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { openChain, parseSparseExtentHeader, parseDescriptor } from '../src/index.ts'
import { collect } from './helpers.ts'

// Committed tiny real files (made once with qemu-img 7.2 / qemu-io; see README "Tests"):
//  tiny-sparse.vmdk  — monolithicSparse, 1 MiB, zeroed grains on; 0x42 at 4096+4096, write -z 512K+64K
//  tiny-2gbflat.vmdk — descriptor of a 3 MiB twoGbMaxExtentFlat disk (NUL-padded as QEMU writes it)
const fixtures = join(dirname(fileURLToPath(import.meta.url)), '../../test/fixtures')

t.test('golden KDMV header', async (t) => {
  const h = parseSparseExtentHeader(readFileSync(join(fixtures, 'tiny-sparse.vmdk')).subarray(0, 512))
  t.same(
    { ...h },
    {
      version: 2,
      flags: 7,
      capacity: 2048,
      grainSize: 128,
      descriptorOffset: 1,
      descriptorSize: 20,
      numGTEsPerGT: 512,
      rgdOffset: 21,
      gdOffset: 26,
      overHead: 128,
      uncleanShutdown: 0,
      compressAlgorithm: 0,
    },
  )
})

t.test('golden KDMV content and map (as qemu-img map printed it)', async (t) => {
  const c = await openChain(join(fixtures, 'tiny-sparse.vmdk'))
  t.same(await collect(c.map()), [
    { start: 0, length: 65536, depth: 0, present: true, zero: false, data: true, offset: 65536 },
    { start: 65536, length: 458752, depth: 0, present: false, zero: true, data: false },
    { start: 524288, length: 65536, depth: 0, present: true, zero: true, data: false },
    { start: 589824, length: 458752, depth: 0, present: false, zero: true, data: false },
  ])
  t.same(await collect(c.changedRanges(0)), [
    { offset: 0, length: 65536, zero: false },
    { offset: 524288, length: 65536, zero: true },
  ])
  const b = await c.read(0, 65536)
  t.ok(b.subarray(0, 4096).every((x) => x === 0))
  t.ok(b.subarray(4096, 8192).every((x) => x === 0x42))
  t.ok(b.subarray(8192).every((x) => x === 0))
  t.equal(c.layers[0]?.descriptorKind, 'embedded')
  t.equal(c.layers[0]?.createType, 'monolithicSparse')
  await c.close()
})

t.test('golden descriptor-only twoGbMaxExtentFlat', async (t) => {
  const raw = readFileSync(join(fixtures, 'tiny-2gbflat.vmdk'), 'utf8')
  const text = raw.slice(0, raw.indexOf('\0'))
  const d = parseDescriptor(text)
  t.equal(d.toString(), text)
  t.equal(d.createType, 'twoGbMaxExtentFlat')
  t.same(d.extents, [{ access: 'RW', sectors: 6144, type: 'FLAT', file: 'tiny-2gbflat-f001.vmdk', offset: 0 }])
  t.equal(d.cid, 'aedbb1c3')
  // with its extent made here, it opens as a 3 MiB disk
  const dir = t.testdir()
  copyFileSync(join(fixtures, 'tiny-2gbflat.vmdk'), join(dir, 'tiny-2gbflat.vmdk'))
  writeFileSync(join(dir, 'tiny-2gbflat-f001.vmdk'), Buffer.alloc(3 * 1024 * 1024, 7))
  const c = await openChain(join(dir, 'tiny-2gbflat.vmdk'))
  t.equal(c.capacity, 3 * 1024 * 1024)
  t.same([...(await c.read(3 * 1024 * 1024 - 2, 2))], [7, 7])
  await c.close()
})
