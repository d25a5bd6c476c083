import t from 'tap'
import { copyFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { openChain, describeChain, createFlatDisk, createDelta, openWriter, consolidate } from '../src/index.ts'
import { chainDigest, collect, fixture, flatDepths, normalizeFlat, qemuDigest, qemuImg, qemuMap, sharedSample, unpackFixture, unpackTo } from './helpers.ts'

const MiB = 1024 * 1024

t.test('real ESXi SEsparse extent under a descriptor and a flat parent we write', async (t) => {
  // AGPL-3.0 test data: never committed here, read from the team's shared folder when present
  const src = sharedSample('esxi-sesparse-512m-extent.vmdk.gz')
  if (src === undefined) {
    t.comment(
      'NOT TESTED: the real ESXi SEsparse sample (esxi-sesparse-512m-extent.vmdk.gz) is absent: no ../shared/samples (or GRAINLINE_SHARED_DIR points elsewhere); SEsparse stays covered by the writer tests with QEMU as oracle',
    )
    return
  }
  const dir = t.testdir()
  const ext = unpackTo(src, dir, 'vm-000001-sesparse.vmdk')
  await createFlatDisk(join(dir, 'vm.vmdk'), 512 * MiB, { cid: '0a0b0c0d' })
  writeFileSync(
    join(dir, 'vm-000001.vmdk'),
    [
      '# Disk DescriptorFile',
      'version=1',
      'encoding="UTF-8"',
      'CID=fffffffe',
      'parentCID=0a0b0c0d',
      'isNativeSnapshot="no"',
      'createType="seSparse"',
      'parentFileNameHint="vm.vmdk"',
      '# Extent description',
      `RW 1048576 SESPARSE "${ext.split('/').pop() ?? ''}"`,
      '',
      '# The Disk Data Base',
      '#DDB',
      '',
      'ddb.grain = "8"',
      '',
    ].join('\n'),
  )
  const top = join(dir, 'vm-000001.vmdk')
  const chain = await openChain(top)
  t.same(await collect(chain.changedRanges(0)), [{ offset: 0, length: 16 * MiB, zero: false }], 'first 16 MiB, 4096 grains')
  const a = await chain.read(0, 16 * MiB)
  t.ok(
    a.every((b) => b === 0x61),
    "all 'a'",
  )
  const rest = await chain.read(16 * MiB, MiB)
  t.ok(rest.every((b) => b === 0))
  const fd = flatDepths(chain)
  t.same(normalizeFlat(await collect(chain.map()), fd), normalizeFlat(qemuMap(top), fd))
  t.equal(await chainDigest(chain), qemuDigest(top, dir))
  await chain.close()
  const info = await describeChain(top)
  t.match(info.layers[0], { createType: 'seSparse', grainSize: 4096, allocatedBytes: 16 * MiB, zeroBytes: 0, ranges: 1 })
  // write into the real ESXi file (a copy), then consolidate it into the flat base
  const w = await openWriter(top)
  await w.write(20 * MiB + 100, Buffer.alloc(10, 0x62))
  await w.writeZeroes(4096, 8192)
  await w.close()
  const want = Buffer.alloc(512 * MiB)
  want.fill(0x61, 0, 16 * MiB)
  want.fill(0, 4096, 4096 + 8192)
  want.fill(0x62, 20 * MiB + 100, 20 * MiB + 110)
  const digest = createHash('sha256').update(want).digest('hex')
  t.equal(qemuDigest(top, dir), digest, 'qemu reads our writes to the ESXi extent')
  await consolidate(top)
  t.equal(qemuDigest(join(dir, 'vm.vmdk'), dir), digest, 'consolidated base')
})

t.test('real ESXi vmfs base; snapshot descriptor without its delta', async (t) => {
  const dir = t.testdir()
  copyFileSync(fixture('vmdk-rs/esxi-vmfs-thick/vmfs_thick.vmdk'), join(dir, 'vmfs_thick.vmdk'))
  copyFileSync(fixture('vmdk-rs/esxi-vmfs-thick/vmfs_thick-000001.vmdk'), join(dir, 'vmfs_thick-000001.vmdk'))
  unpackFixture('vmdk-rs/esxi-vmfs-thick/vmfs_thick-flat.vmdk.gz', dir)
  const base = join(dir, 'vmfs_thick.vmdk')
  const chain = await openChain(base)
  t.equal(chain.capacity, 2 * MiB)
  t.equal(await chainDigest(chain), qemuDigest(base, dir))
  await chain.close()
  await t.rejects(openChain(join(dir, 'vmfs_thick-000001.vmdk')), { code: 'E_NOT_FOUND', file: /vmfs_thick-000001-delta\.vmdk$/ })
  // give the real snapshot descriptor a COWD delta we write: the chain then verifies (parentCID 0172e8a4)
  await createDelta(base, join(dir, 'mine.vmdk'), { format: 'vmfssparse' })
  const info = await describeChain(join(dir, 'mine.vmdk'))
  t.equal(info.layers[0]?.parentCid, '0172e8a4')
})

for (const name of ['monolithicSparse', 'streamOptimized', 'streamOptimizedWithMarkers', 'twoGbMaxExtentSparse']) {
  t.test(`VMware hosted sample ${name}`, async (t) => {
    const dir = t.testdir()
    const p = unpackFixture(`vmdk-rs/vmware-hosted/${name}.vmdk.gz`, dir)
    if (name === 'twoGbMaxExtentSparse') unpackFixture('vmdk-rs/vmware-hosted/twoGbMaxExtentSparse-s001.vmdk.gz', dir)
    const chain = await openChain(p)
    t.equal(chain.capacity, (JSON.parse(qemuImg('info', '--output=json', p)) as { 'virtual-size': number })['virtual-size'])
    t.equal(await chainDigest(chain), qemuDigest(p, dir))
    t.same(await collect(chain.map()), qemuMap(p))
    const info = await describeChain(p)
    t.equal(info.layers[0]?.grainSize, 65536)
    await chain.close()
    if (name.startsWith('streamOptimized')) return
    // write into the VMware-made file like a guest; QEMU must read exactly that
    const want = Buffer.from(
      await await openChain(p).then(async (c) => {
        const b = await c.read(0, c.capacity)
        await c.close()
        return b
      }),
    )
    const w = await openWriter(p)
    for (const [o, l, v] of [
      [100, 70000, 1],
      [5 * MiB + 3, 4096, 2],
      [9 * MiB, MiB, 3],
      [want.length - 10, 10, 4],
    ] as const) {
      await w.write(o, Buffer.alloc(l, v))
      want.fill(v, o, o + l)
    }
    await w.writeZeroes(2 * MiB, 300000)
    want.fill(0, 2 * MiB, 2 * MiB + 300000)
    await w.close()
    t.equal(qemuDigest(p, dir), createHash('sha256').update(want).digest('hex'), 'QEMU reads our writes')
    t.match(qemuImg('check', '-f', 'vmdk', p), /No errors were found/)
  })
}
