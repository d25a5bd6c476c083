import t from 'tap'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { openChain, describeChain, createFlatDisk, createDelta, openWriter, parseSeSparseHeader, localFileAccess, type DiskChain } from '../src/index.ts'
import { chainDigest, collect, prng } from './helpers.ts'
import { MemoryFileAccess } from './memory-file-access.ts'
import { readFileSync } from 'node:fs'

const MiB = 1024 * 1024
const GiB = 1024 * MiB

/** base (flat) ← SEsparse ← hosted, each with random writes. */
async function threeLayers(dir: string): Promise<string> {
  const rand = prng(11)
  await createFlatDisk(join(dir, 'vm.vmdk'), 64 * MiB)
  const fill = async (p: string, n: number): Promise<void> => {
    const w = await openWriter(p)
    for (let i = 0; i < n; i++) {
      const len = 512 * (1 + Math.floor(rand() * 300))
      const off = Math.floor((rand() * (64 * MiB - len)) / 512) * 512
      if (rand() < 0.2) await w.writeZeroes(off, len)
      else await w.write(off, Buffer.alloc(len, 1 + Math.floor(rand() * 250)))
    }
    await w.close()
  }
  await fill(join(dir, 'vm.vmdk'), 30)
  await createDelta(join(dir, 'vm.vmdk'), join(dir, 'vm-000001.vmdk'), { format: 'sesparse' })
  await fill(join(dir, 'vm-000001.vmdk'), 200)
  await createDelta(join(dir, 'vm-000001.vmdk'), join(dir, 'vm-000002.vmdk'), { format: 'hosted' })
  await fill(join(dir, 'vm-000002.vmdk'), 50)
  return join(dir, 'vm-000002.vmdk')
}

async function everything(c: DiskChain): Promise<unknown> {
  return {
    map: await collect(c.map()),
    changed: [await collect(c.changedRanges(0)), await collect(c.changedRanges(1)), await collect(c.changedRanges(2))],
    digest: await chainDigest(c),
  }
}

t.test('every reader goes through the FileAccess: a chain held in memory under paths no disk has', async (t) => {
  const dir = t.testdir()
  const top = await threeLayers(dir)
  const local = await openChain(top)
  const want = await everything(local)
  await local.close()
  const mem = new MemoryFileAccess()
  mem.loadFolder(dir, '/nonexistent-mem/vm')
  const c = await openChain('/nonexistent-mem/vm/vm-000002.vmdk', { files: mem })
  t.same(await everything(c), want, "map, changed ranges of every layer and the content equal the local reader's")
  t.equal(c.layers.length, 3)
  await c.close()
  t.same(
    new Set(mem.opened),
    new Set([
      '/nonexistent-mem/vm/vm-000002.vmdk',
      '/nonexistent-mem/vm/vm-000001.vmdk',
      '/nonexistent-mem/vm/vm-000001-sesparse.vmdk',
      '/nonexistent-mem/vm/vm.vmdk',
      '/nonexistent-mem/vm/vm-flat.vmdk',
    ]),
    'each file of the chain opened',
  )
  t.equal(mem.calls.close, mem.calls.open, 'and closed')
  const info = await describeChain('/nonexistent-mem/vm/vm-000002.vmdk', { files: mem })
  t.same(
    info.layers.map((l) => l.createType),
    ['monolithicSparse', 'seSparse', 'vmfs'],
  )
  t.equal(info.cidVerified, true)
})

t.test('grain tables are read in few, large, concurrent reads, once', async (t) => {
  const dir = t.testdir()
  const rand = prng(3)
  // 64 GiB: 4096 grain tables of 16 MiB; 1500 grains written in random order, so the
  // tables sit in the file in an order unrelated to the disk offsets they cover
  await createFlatDisk(join(dir, 'big.vmdk'), 64 * GiB)
  await createDelta(join(dir, 'big.vmdk'), join(dir, 'big-000001.vmdk'), { format: 'sesparse' })
  const w = await openWriter(join(dir, 'big-000001.vmdk'))
  const grains = new Set<number>()
  while (grains.size < 1500) grains.add(Math.floor(rand() * ((64 * GiB) / 4096)))
  for (const g of grains) await w.write(g * 4096, Buffer.alloc(4096, (g % 250) + 1))
  await w.close()
  const ext = join(dir, 'big-000001-sesparse.vmdk')
  const h = parseSeSparseHeader(readFileSync(ext).subarray(0, 512))
  const tableSet = new Set([...grains].map((g) => Math.floor(g / 4096)))
  const tableBytes = tableSet.size * 32768
  const gtFrom = h.grainTablesOffset * 512
  const gtTo = gtFrom + h.grainTablesSize * 512

  const mem = new MemoryFileAccess({ maxReadBytes: 256 * 1024, concurrency: 8 })
  mem.loadFolder(dir, '/m')
  const mext = '/m/big-000001-sesparse.vmdk'
  const c = await openChain('/m/big-000001.vmdk', { files: mem })
  const opening = mem.readsIn(mext)
  t.ok(opening.count <= 5, `opening reads the header, volatile header and directory in ${opening.count} reads`)
  mem.resetCounters()
  const ranges = await collect(c.changedRanges(0))
  t.equal(
    ranges.reduce((s, r) => s + r.length, 0),
    grains.size * 4096,
    'every grain found',
  )
  const walk = mem.readsIn(mext, gtFrom, gtTo)
  t.equal(walk.bytes, tableBytes, `each of the ${tableSet.size} grain tables read exactly once (${tableBytes} bytes)`)
  t.ok(walk.count <= Math.ceil(tableBytes / (256 * 1024)) + 1, `in ${walk.count} reads of up to 256 KiB (one per table would be ${tableSet.size})`)
  t.ok((mem.maxInFlight.get(mext) ?? 0) > 1 && (mem.maxInFlight.get(mext) ?? 0) <= 8, `with ${mem.maxInFlight.get(mext)} in flight (limit 8)`)

  mem.resetCounters()
  const entries = await collect(c.map())
  t.equal(
    entries.filter((e) => e.depth === 0 && e.data).reduce((s, e) => s + e.length, 0),
    grains.size * 4096,
  )
  t.equal(mem.readsIn(mext, gtFrom, gtTo).count, 0, 'map after changedRanges: the decoded tables are still in memory')
  await c.close()

  // a fresh chain: map alone also sweeps the tables in file order
  const c2 = await openChain('/m/big-000001.vmdk', { files: mem })
  mem.resetCounters()
  t.same(await collect(c2.map()), entries)
  const m2 = mem.readsIn(mext, gtFrom, gtTo)
  t.equal(m2.bytes, tableBytes, 'map reads each table once')
  t.ok(m2.count <= Math.ceil(tableBytes / (256 * 1024)) + 1, `in ${m2.count} reads`)

  // data: a 64 MiB read over scattered grains goes out as concurrent reads of at most 256 KiB
  mem.resetCounters()
  const first = Math.min(...grains)
  const span = Math.min(64 * MiB, 64 * GiB - first * 4096)
  const got = await c2.read(first * 4096, span)
  const want = Buffer.alloc(span)
  for (const g of grains) if (g * 4096 >= first * 4096 && g * 4096 < first * 4096 + span) want.fill((g % 250) + 1, g * 4096 - first * 4096, g * 4096 - first * 4096 + 4096)
  t.ok(got.equals(want), 'the bytes are right')
  t.ok((mem.maxInFlight.get(mext) ?? 0) > 1, `data reads overlap (${mem.maxInFlight.get(mext)} in flight)`)
  await c2.close()
})

t.test('large reads are split at maxReadBytes and kept concurrency-deep', async (t) => {
  const dir = t.testdir()
  await createFlatDisk(join(dir, 'f.vmdk'), 8 * MiB)
  const w = await openWriter(join(dir, 'f.vmdk'))
  const data = Buffer.alloc(8 * MiB)
  for (let i = 0; i < data.length; i += 512) data[i] = (i / 512) & 0xff
  await w.write(0, data)
  await w.close()
  const mem = new MemoryFileAccess({ maxReadBytes: 256 * 1024, concurrency: 4 })
  mem.loadFolder(dir, '/m')
  const c = await openChain('/m/f.vmdk', { files: mem })
  mem.resetCounters()
  t.ok((await c.read(0, 8 * MiB)).equals(data))
  t.same(mem.readsIn('/m/f-flat.vmdk'), { count: 32, bytes: 8 * MiB }, '32 reads of 256 KiB')
  t.equal(mem.maxInFlight.get('/m/f-flat.vmdk'), 4, '4 in flight')
  await c.close()
})

t.test('concurrent readers share grain-table loads; a failed read is E_IO and nothing hangs', async (t) => {
  const dir = t.testdir()
  await createFlatDisk(join(dir, 'b.vmdk'), 256 * MiB)
  await createDelta(join(dir, 'b.vmdk'), join(dir, 'c.vmdk'), { format: 'vmfssparse' })
  const w = await openWriter(join(dir, 'c.vmdk'))
  for (let i = 0; i < 256; i++) await w.write(i * MiB + 512, Buffer.alloc(512, i & 0xff))
  await w.close()
  const mem = new MemoryFileAccess({ maxReadBytes: 64 * 1024, concurrency: 4 })
  mem.loadFolder(dir, '/m')
  const c = await openChain('/m/c.vmdk', { files: mem })
  mem.resetCounters()
  // 32 readers of the same 2 MiB at once: its one grain table is read once
  const bufs = await Promise.all(Array.from({ length: 32 }, async () => await c.read(0, 2 * MiB)))
  for (const b of bufs) t.equal(b[512], 0)
  t.equal(mem.readsIn('/m/c-delta.vmdk').count - mem.reads.filter((r) => r.path === '/m/c-delta.vmdk' && r.length === 512).length, 1, 'one grain-table read for 32 readers')
  await c.close()
  const c2 = await openChain('/m/c.vmdk', { files: mem })
  mem.resetCounters()
  mem.failReadAt = 3
  await t.rejects(collect(c2.changedRanges(0)), { name: 'VmdkError', code: 'E_IO', file: '/m/c-delta.vmdk' })
  mem.failReadAt = 0
  t.equal((await collect(c2.changedRanges(0))).length, 256, 'the chain stays usable after the failure')
  await c2.close()
})

t.test('the local FileAccess reads what fs reads', async (t) => {
  const dir = t.testdir()
  const top = await threeLayers(dir)
  const a = await openChain(top)
  const b = await openChain(top, { files: { ...localFileAccess, maxReadBytes: 4096, concurrency: 7 } })
  t.equal(await chainDigest(b), await chainDigest(a), 'tiny reads, odd concurrency, same bytes')
  t.equal(
    createHash('sha256')
      .update(JSON.stringify(await collect(b.map())))
      .digest('hex'),
    createHash('sha256')
      .update(JSON.stringify(await collect(a.map())))
      .digest('hex'),
  )
  await a.close()
  await b.close()
})
