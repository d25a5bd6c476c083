import t, { type Test } from 'tap'
import { chmodSync, readFileSync, readdirSync, existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createFlatDisk, createDelta, openWriter, openChain, consolidate, describeChain, parseDescriptor, parseSeSparseHeader, parseCowdHeader, type DeltaFormat } from '../src/index.ts'
import { chainDigest, collect, flatDepths, normalizeFlat, prng, qemuDigest, qemuImg, qemuMap } from './helpers.ts'

const MiB = 1024 * 1024

/** A reference model of the disk: what every byte should read as. */
class Model {
  readonly bytes: Buffer
  constructor(size: number) {
    this.bytes = Buffer.alloc(size)
  }
  write(off: number, data: Uint8Array): void {
    this.bytes.set(data, off)
  }
  zero(off: number, len: number): void {
    this.bytes.fill(0, off, off + len)
  }
}

async function randomGuestWrites(path: string, model: Model, rand: () => number, n: number): Promise<void> {
  const w = await openWriter(path)
  const size = model.bytes.length
  for (let i = 0; i < n; i++) {
    const len = 1 + Math.floor(rand() * (rand() < 0.2 ? 300000 : 9000))
    const off = Math.floor(rand() * (size - len))
    if (rand() < 0.2) {
      await w.writeZeroes(off, len)
      model.zero(off, len)
    } else {
      const data = Buffer.alloc(len)
      for (let k = 0; k < len; k += 512) data[k] = Math.floor(rand() * 256)
      data.fill(Math.floor(1 + rand() * 255), 1, Math.min(len, 100))
      await w.write(off, data)
      model.write(off, data)
    }
  }
  // the last sector, and a write spanning a grain-table boundary (16 MiB SEsparse / 2 MiB COWD / 32 MiB KDMV)
  const tail = Buffer.alloc(700, 0xee)
  await w.write(size - 700, tail)
  model.write(size - 700, tail)
  const span = Buffer.alloc(10000, 0x77)
  await w.write(16 * MiB - 5000, span)
  model.write(16 * MiB - 5000, span)
  await w.close()
}

async function checkAgainstQemu(t: Test, top: string, model: Model, dir: string): Promise<void> {
  const chain = await openChain(top)
  try {
    const fd = flatDepths(chain)
    t.same(normalizeFlat(await collect(chain.map()), fd), normalizeFlat(qemuMap(top), fd), `map of ${top} equals qemu-img map`)
    const expected = (await import('node:crypto')).createHash('sha256').update(model.bytes).digest('hex')
    t.equal(await chainDigest(chain), expected, 'our reader sees the model')
    t.equal(qemuDigest(top, dir), expected, 'qemu-img convert sees the model')
  } finally {
    await chain.close()
  }
  const check = qemuImg('check', '-f', 'vmdk', top)
  t.match(check, /No errors were found/, 'qemu-img check')
}

t.test('createFlatDisk writes an ESXi-style vmfs disk', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'disk.vmdk')
  await createFlatDisk(p, 10 * MiB, { ddb: { adapterType: 'pvscsi', 'ddb.custom': 'x' } })
  const d = parseDescriptor(readFileSync(p, 'utf8'))
  t.equal(d.createType, 'vmfs')
  t.same(d.extents, [{ access: 'RW', sectors: 20480, type: 'VMFS', file: 'disk-flat.vmdk' }])
  t.equal(d.ddb.get('ddb.adapterType'), 'pvscsi')
  t.equal(d.ddb.get('ddb.custom'), 'x')
  t.equal(d.ddb.get('ddb.longContentID')?.slice(24), d.cid)
  t.equal(readFileSync(join(dir, 'disk-flat.vmdk')).length, 10 * MiB)
  const info = JSON.parse(qemuImg('info', '--output=json', p)) as { 'virtual-size': number }
  t.equal(info['virtual-size'], 10 * MiB)
  t.same(qemuMap(p), [{ start: 0, length: 10 * MiB, depth: 0, present: true, zero: true, data: true, offset: 0 }], 'sparse flat file: a hole to qemu')
  const fc = await openChain(p)
  t.same(await collect(fc.map()), qemuMap(p), 'and to us')
  await fc.close()
  await t.rejects(createFlatDisk(p, 10 * MiB), { code: 'E_EXISTS' })
  await t.rejects(createFlatDisk(join(dir, 'odd.vmdk'), 1000), { code: 'E_RANGE' })
  const mf = join(dir, 'mf.vmdk')
  await createFlatDisk(mf, MiB, { createType: 'monolithicFlat' })
  t.same(parseDescriptor(readFileSync(mf, 'utf8')).extents[0], { access: 'RW', sectors: 2048, type: 'FLAT', file: 'mf-flat.vmdk', offset: 0 })
  qemuImg('check', mf)
})

t.test('SEsparse and COWD headers are laid out like ESXi', async (t) => {
  const dir = t.testdir()
  await createFlatDisk(join(dir, 'b.vmdk'), 512 * MiB)
  await createDelta(join(dir, 'b.vmdk'), join(dir, 'b-000001.vmdk'), { format: 'sesparse' })
  const h = parseSeSparseHeader(readFileSync(join(dir, 'b-000001-sesparse.vmdk')).subarray(0, 512))
  // the real 512 MiB ESXi sample's regions (VMDK.md §3.1)
  t.match(h, {
    capacity: 1048576,
    grainSize: 8,
    grainTableSize: 64,
    volatileHeaderOffset: 1,
    volatileHeaderSize: 1,
    journalHeaderOffset: 2,
    journalHeaderSize: 2,
    journalOffset: 2048,
    journalSize: 2048,
    grainDirOffset: 4096,
    grainDirSize: 2048,
    grainTablesOffset: 6144,
    grainTablesSize: 2048,
    freeBitmapOffset: 8192,
    freeBitmapSize: 2048,
    backmapOffset: 10240,
    backmapSize: 2048,
    grainsOffset: 12288,
    grainsSize: 1048576,
  })
  const d = parseDescriptor(readFileSync(join(dir, 'b-000001.vmdk'), 'utf8'))
  const base = parseDescriptor(readFileSync(join(dir, 'b.vmdk'), 'utf8'))
  t.equal(d.createType, 'seSparse')
  t.equal(d.parentCid, base.cid)
  t.equal(d.cid, base.cid, 'a fresh ESXi delta starts with its parent CID')
  t.equal(d.parentFileNameHint, 'b.vmdk')
  t.equal(d.ddb.get('ddb.grain'), '8')
  await createDelta(join(dir, 'b-000001.vmdk'), join(dir, 'b-000002.vmdk'), { format: 'vmfssparse' })
  const c = parseCowdHeader(readFileSync(join(dir, 'b-000002-delta.vmdk')).subarray(0, 2048))
  t.match(c, { version: 1, flags: 3, numSectors: 1048576, grainSize: 1, gdOffset: 4, numGDEntries: 256, freeSector: 6 })
  t.equal(parseDescriptor(readFileSync(join(dir, 'b-000002.vmdk'), 'utf8')).createType, 'vmfsSparse')
  await t.rejects(createDelta(join(dir, 'b.vmdk'), join(dir, 'b-000001.vmdk'), { format: 'sesparse' }), { code: 'E_EXISTS' })
})

t.test('vmfssparse with its grain tables laid out up front (points open for QEMU): directory, tables, our writer and QEMU agree', async (t) => {
  const dir = t.testdir()
  const size = 20 * MiB + 3 * 512
  const base = join(dir, 'p.vmdk')
  await createFlatDisk(base, size)
  const model = new Model(size)
  const rand = prng(77)
  await randomGuestWrites(base, model, rand, 4)
  const child = join(dir, 'p-000001.vmdk')
  await createDelta(base, child, { format: 'vmfssparse', preallocateGrainTables: true })
  const ext = readFileSync(join(dir, 'p-000001-delta.vmdk'))
  const h = parseCowdHeader(ext.subarray(0, 2048))
  // 11 grain tables (2 MiB each, the last one partly used) of 32 sectors after a one-sector directory at sector 4
  t.match(h, { version: 1, flags: 3, grainSize: 1, gdOffset: 4, numGDEntries: 11, freeSector: 5 + 11 * 32 })
  const gd = Array.from({ length: 11 }, (_, i) => ext.readUInt32LE(4 * 512 + i * 4))
  t.same(
    gd,
    Array.from({ length: 11 }, (_, i) => 5 + i * 32),
    'the directory names every table, in order',
  )
  t.equal(ext.length, (5 + 11 * 32) * 512, 'the file ends after the last table')
  t.ok(
    ext.subarray(5 * 512).every((b) => b === 0),
    'the tables are empty: nothing in the delta',
  )
  t.match((await describeChain(child)).layers[0], { ranges: 0, allocatedBytes: 0 }, 'nothing in the delta')
  await checkAgainstQemu(t, child, model, dir)
  await randomGuestWrites(child, model, rand, 25)
  await checkAgainstQemu(t, child, model, dir)
})

for (const formats of [
  ['sesparse', 'sesparse'],
  ['vmfssparse', 'vmfssparse'],
  ['hosted', 'hosted'],
  ['sesparse', 'vmfssparse', 'hosted', 'sesparse'],
] as DeltaFormat[][]) {
  t.test(`deltas ${formats.join(' → ')} on a flat base: QEMU reads what we wrote`, async (t) => {
    const dir = t.testdir()
    const size = 40 * MiB + 3 * 512
    const rand = prng(formats.length * 1000 + formats[0]!.length)
    const model = new Model(size)
    const base = join(dir, 'vm disk.vmdk')
    await createFlatDisk(base, size)
    await randomGuestWrites(base, model, rand, 6)
    await checkAgainstQemu(t, base, model, dir)
    let parent = base
    let i = 0
    for (const format of formats) {
      i++
      const child = join(dir, `vm disk-00000${i}.vmdk`)
      await createDelta(parent, child, { format })
      const before = (await describeChain(child)).layers[0]?.cid
      await randomGuestWrites(child, model, rand, 25)
      const after = await describeChain(child)
      t.not(after.layers[0]?.cid, before, 'new CID after the first write')
      t.equal(after.layers[0]?.parentCid, after.layers[1]?.cid, 'parentCID still matches')
      await checkAgainstQemu(t, child, model, dir)
      parent = child
    }
    // consolidate from the bottom up: the top's content never changes
    for (let k = 1; k < formats.length; k++) {
      const res = await consolidate(join(dir, `vm disk-00000${k}.vmdk`))
      t.equal(res.repointed.length, 1, 'grandchild re-pointed')
      t.notOk(existsSync(join(dir, `vm disk-00000${k}.vmdk`)), 'child descriptor deleted')
      await checkAgainstQemu(t, parent, model, dir)
      const info = await describeChain(parent)
      t.equal(info.layers.length, formats.length - k + 1)
    }
    await consolidate(parent)
    await checkAgainstQemu(t, base, model, dir)
    t.same(
      readdirSync(dir)
        .filter((f) => !f.startsWith('convert-'))
        .sort(),
      ['vm disk-flat.vmdk', 'vm disk.vmdk'],
      'only the base is left',
    )
  })
}

t.test('consolidate reports the data bytes it copied apart from the zero ranges it wrote', async (t) => {
  const dir = t.testdir()
  const base = join(dir, 'b.vmdk')
  qemuImg('create', '-q', '-f', 'vmdk', base, String(4 * MiB))
  await createDelta(base, join(dir, 'c.vmdk'), { format: 'sesparse' })
  const w = await openWriter(join(dir, 'c.vmdk'))
  await w.write(1000, Buffer.alloc(5000, 9))
  await w.writeZeroes(64 * 1024, 1 * MiB)
  await w.write(2 * MiB, Buffer.alloc(3 * 4096, 7))
  await w.close()
  let data = 0
  let zero = 0
  const chain = await openChain(join(dir, 'c.vmdk'))
  try {
    for await (const r of chain.changedRanges(0)) {
      if (r.zero) zero += r.length
      else data += r.length
    }
  } finally {
    await chain.close()
  }
  t.ok(data > 0 && zero >= MiB, `the child holds data (${data}) and zero ranges (${zero})`)
  const events: Array<{ step: string; bytes?: number; dataBytes?: number }> = []
  await consolidate(join(dir, 'c.vmdk'), { onProgress: (e) => events.push({ ...e }) })
  const copied = events.filter((e) => e.step === 'copied')
  t.ok(copied.length >= 2, 'copied is reported per range')
  t.ok(
    copied.every((e, i) => i === 0 || ((e.dataBytes ?? 0) >= (copied[i - 1]?.dataBytes ?? 0) && (e.bytes ?? 0) > (copied[i - 1]?.bytes ?? 0))),
    'both counts only go forward',
  )
  t.ok(
    copied.every((e) => (e.dataBytes ?? -1) <= (e.bytes ?? 0)),
    'data bytes never exceed all bytes',
  )
  const flushed = events.find((e) => e.step === 'parent-flushed')
  t.equal(flushed?.dataBytes, data, 'parent-flushed: the data bytes, zero ranges left out')
  t.equal(flushed?.bytes, data + zero, 'parent-flushed: all bytes, zero ranges at their length')
  const model = new Model(4 * MiB)
  model.write(1000, Buffer.alloc(5000, 9))
  model.write(2 * MiB, Buffer.alloc(3 * 4096, 7))
  await checkAgainstQemu(t, base, model, dir)
})

t.test('consolidate into a sparse parent keeps siblings in other folders alone and refuses a base', async (t) => {
  const dir = t.testdir()
  const base = join(dir, 'b.vmdk')
  qemuImg('create', '-q', '-f', 'vmdk', base, String(4 * MiB))
  await createDelta(base, join(dir, 'c.vmdk'), { format: 'sesparse' })
  const w = await openWriter(join(dir, 'c.vmdk'))
  await w.write(1000, Buffer.alloc(5000, 9))
  await w.writeZeroes(8192, 4096 * 3)
  await w.close()
  await createDelta(join(dir, 'c.vmdk'), join(dir, 'd.vmdk'), { format: 'hosted' })
  const model = new Model(4 * MiB)
  model.write(1000, Buffer.alloc(5000, 9))
  const oldCid = (await describeChain(base)).layers[0]?.cid
  await consolidate(join(dir, 'c.vmdk'))
  const info = await describeChain(join(dir, 'd.vmdk'))
  t.equal(info.layers[0]?.parentFileNameHint, 'b.vmdk')
  t.not(info.layers[1]?.cid, oldCid, 'the parent got a new CID')
  t.equal(info.layers[0]?.parentCid, info.layers[1]?.cid)
  await checkAgainstQemu(t, join(dir, 'd.vmdk'), model, dir)
  await t.rejects(consolidate(base), { code: 'E_CHAIN_MISSING' })
})

t.test('writer edge cases', async (t) => {
  const dir = t.testdir()
  const base = join(dir, 'b.vmdk')
  await createFlatDisk(base, MiB)
  await createDelta(base, join(dir, 'c.vmdk'), { format: 'sesparse' })
  const w = await openWriter(join(dir, 'c.vmdk'))
  await t.rejects(w.write(MiB - 1, Buffer.alloc(2)), { code: 'E_RANGE' })
  await t.rejects(w.writeZeroes(-1, 2), { code: 'E_RANGE' })
  await w.write(0, Buffer.alloc(0))
  await w.close()
  await t.rejects(w.write(0, Buffer.alloc(1)), { code: 'E_IO' })
  const so = join(dir, 'so.vmdk')
  qemuImg('convert', '-f', 'vmdk', '-O', 'vmdk', '-o', 'subformat=streamOptimized', base, so)
  const sw = await openWriter(so).catch((e: unknown) => e)
  t.match(sw, { code: 'E_READONLY' }, 'streamOptimized is read-only')
})

t.test('KDMV without a grain table for a range gets one appended (both copies)', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'k.vmdk')
  qemuImg('create', '-q', '-f', 'vmdk', p, String(64 * MiB))
  // drop the second GT from GD and RGD, as a VMware writer may leave it
  const b = readFileSync(p)
  const gd = Number(b.readBigUInt64LE(56))
  const rgd = Number(b.readBigUInt64LE(48))
  b.writeUInt32LE(0, gd * 512 + 4)
  b.writeUInt32LE(0, rgd * 512 + 4)
  writeFileSync(p, b)
  const model = new Model(64 * MiB)
  const w = await openWriter(p)
  for (const [o, l, v] of [
    [40 * MiB + 1, 100, 5],
    [33 * MiB, 200000, 6],
    [MiB, 512, 7],
  ] as const) {
    await w.write(o, Buffer.alloc(l, v))
    model.write(o, Buffer.alloc(l, v))
  }
  await w.close()
  await checkAgainstQemu(t, p, model, dir)
  const after = readFileSync(p)
  t.not(after.readUInt32LE(gd * 512 + 4), 0, 'GD entry set')
  t.not(after.readUInt32LE(rgd * 512 + 4), 0, 'RGD entry set')
})

t.test('concurrent writes are serialized; a read-only descriptor file is still replaced atomically', async (t) => {
  const dir = t.testdir()
  const base = join(dir, 'b.vmdk')
  await createFlatDisk(base, 8 * MiB)
  const top = join(dir, 'c.vmdk')
  await createDelta(base, top, { format: 'sesparse' })
  chmodSync(top, 0o444)
  const model = new Model(8 * MiB)
  const w = await openWriter(top)
  const rand = prng(99)
  const ops: Array<Promise<void>> = []
  for (let i = 0; i < 200; i++) {
    const len = 1 + Math.floor(rand() * 20000)
    const off = Math.floor(rand() * (8 * MiB - len))
    const data = Buffer.alloc(len, i + 1)
    model.write(off, data)
    ops.push(w.write(off, data))
  }
  await Promise.all(ops)
  await w.close()
  await checkAgainstQemu(t, top, model, dir)
})
