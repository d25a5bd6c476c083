import t from 'tap'
import { readFileSync, writeFileSync, truncateSync } from 'node:fs'
import { join } from 'node:path'
import { openChain, describeChain, openWriter, resolveVmdkPath, createFlatDisk, createDelta } from '../src/index.ts'
import { chainDigest, collect, qemuDigest, qemuImg, qemuIo } from './helpers.ts'

const MiB = 1024 * 1024

t.test('multi-extent descriptor with FLAT, ZERO and NOACCESS lines', async (t) => {
  const dir = t.testdir()
  writeFileSync(join(dir, 'a.raw'), Buffer.alloc(MiB, 1))
  writeFileSync(join(dir, 'b c.raw'), Buffer.concat([Buffer.alloc(512, 9), Buffer.alloc(MiB, 2)]))
  writeFileSync(
    join(dir, 'd.vmdk'),
    [
      '# Disk DescriptorFile',
      'version=1',
      'CID=12345678',
      'parentCID=ffffffff',
      'createType="twoGbMaxExtentFlat"',
      '',
      '# Extent description',
      'RW 2048 FLAT "a.raw" 0',
      'RW 2048 ZERO',
      'RW 2048 FLAT "b c.raw" 1',
      'NOACCESS 1024 FLAT "a.raw" 0',
      '',
    ].join('\n'),
  )
  const c = await openChain(join(dir, 'd.vmdk'))
  t.equal(c.capacity, 7 * 512 * 1024)
  const all = await c.read(0, c.capacity)
  t.ok(all.subarray(0, MiB).every((b) => b === 1))
  t.ok(all.subarray(MiB, 2 * MiB).every((b) => b === 0))
  t.ok(
    all.subarray(2 * MiB, 3 * MiB).every((b) => b === 2),
    'FLAT offset honoured',
  )
  t.ok(
    all.subarray(3 * MiB).every((b) => b === 0),
    'NOACCESS reads as zeros',
  )
  t.same(await collect(c.changedRanges(0)), [
    { offset: 0, length: MiB, zero: false },
    { offset: MiB, length: MiB, zero: true },
    { offset: 2 * MiB, length: MiB, zero: false },
    { offset: 3 * MiB, length: MiB / 2, zero: true },
  ])
  t.same(await collect(c.map()), [
    { start: 0, length: MiB, depth: 0, present: true, zero: false, data: true, offset: 0 },
    { start: MiB, length: MiB, depth: 0, present: true, zero: true, data: false },
    { start: 2 * MiB, length: MiB, depth: 0, present: true, zero: false, data: true, offset: 512 },
    { start: 3 * MiB, length: MiB / 2, depth: 0, present: true, zero: true, data: false },
  ])
  const info = await describeChain(join(dir, 'd.vmdk'))
  t.same(
    info.layers[0]?.extents.map((e) => e.format),
    ['flat', 'zero', 'flat', 'zero'],
  )
  // a flat top is written in place; ZERO extents refuse writes
  const w = await openWriter(join(dir, 'd.vmdk'))
  await w.write(MiB - 2, Buffer.from([7, 7]))
  await t.rejects(w.write(MiB + 5, Buffer.from([1])), { code: 'E_READONLY' })
  await w.close()
  await c.close()
  const c2 = await openChain(join(dir, 'd.vmdk'))
  t.same([...(await c2.read(MiB - 3, 3))], [1, 7, 7])
  t.not(c2.layers[0]?.cid, '12345678', 'new CID')
  await c2.close()
})

t.test('abort signals stop long walks', async (t) => {
  const dir = t.testdir()
  await createFlatDisk(join(dir, 'b.vmdk'), 64 * MiB)
  await createDelta(join(dir, 'b.vmdk'), join(dir, 'c.vmdk'), { format: 'vmfssparse' })
  const w = await openWriter(join(dir, 'c.vmdk'))
  for (let i = 0; i < 3000; i++) await w.write(i * 2048, Buffer.alloc(512, 1))
  await w.close()
  const c = await openChain(join(dir, 'c.vmdk'))
  const ac = new AbortController()
  ac.abort()
  await t.rejects(collect(c.changedRanges(0, { signal: ac.signal })), { code: 'E_ABORTED' })
  await t.rejects(collect(c.map({ signal: ac.signal })), { code: 'E_ABORTED' })
  t.equal((await collect(c.changedRanges(0))).length, 3000)
  await c.close()
  t.equal(qemuDigest(join(dir, 'c.vmdk'), dir).length, 64)
})

t.test('path resolution', async (t) => {
  t.equal(resolveVmdkPath('/a/b/c.vmdk', 'd.vmdk'), '/a/b/d.vmdk')
  t.equal(resolveVmdkPath('/a/b/c.vmdk', '../x/d.vmdk'), '/a/x/d.vmdk')
  t.equal(resolveVmdkPath('/a/b/c.vmdk', '/vmfs/volumes/ds1/vm/d.vmdk', { '/vmfs/volumes/ds1': '/mnt/ds1' }), '/mnt/ds1/vm/d.vmdk')
  t.equal(resolveVmdkPath('/a/b/c.vmdk', '/vmfs/volumes/ds1/vm/d.vmdk', { '/vmfs/volumes/ds1': '/mnt/ds1', '/vmfs/volumes/ds1/vm': '/mnt/vm' }), '/mnt/vm/d.vmdk', 'longest prefix wins')
  t.equal(resolveVmdkPath('/a/b/c.vmdk', '/vmfs/volumes/ds10/d.vmdk', { '/vmfs/volumes/ds1': '/mnt/ds1' }), '/vmfs/volumes/ds10/d.vmdk', 'prefix must end at a path separator')
})

t.test('a flat extent shorter than its line reads zeros past EOF', async (t) => {
  const dir = t.testdir()
  await createFlatDisk(join(dir, 'b.vmdk'), MiB)
  const w = await openWriter(join(dir, 'b.vmdk'))
  await w.write(0, Buffer.alloc(MiB, 3))
  await w.close()
  truncateSync(join(dir, 'b-flat.vmdk'), 1000)
  const c = await openChain(join(dir, 'b.vmdk'))
  const b = await c.read(990, 20)
  t.same([...b], [...Buffer.alloc(10, 3), ...Buffer.alloc(10, 0)])
  await c.close()
})

t.test('streamOptimized with the grain directory at the end (footer)', async (t) => {
  const dir = t.testdir()
  const src = join(dir, 'src.vmdk')
  qemuImg('create', '-q', '-f', 'vmdk', src, String(4 * MiB))
  qemuIo(src, ['write -P 0x5a 0 100k', 'write -P 0x11 3M 64k'])
  const so = join(dir, 'so.vmdk')
  qemuImg('convert', '-f', 'vmdk', '-O', 'vmdk', '-o', 'subformat=streamOptimized', src, so)
  const want = qemuDigest(so, dir)
  const b = readFileSync(so)
  const header = Buffer.from(b.subarray(0, 512))
  // a true stream: header says GD_AT_END, footer marker + footer (real gdOffset) + EOS marker at the end
  b.writeBigUInt64LE(0xffffffffffffffffn, 56)
  const footerMarker = Buffer.alloc(512)
  footerMarker.writeBigUInt64LE(1n, 0)
  footerMarker.writeUInt32LE(3, 12)
  writeFileSync(so, Buffer.concat([b, footerMarker, header, Buffer.alloc(512)]))
  const c = await openChain(so)
  t.equal(await chainDigest(c), want)
  await c.close()
})
