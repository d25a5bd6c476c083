import t, { type Test } from 'tap'
import fc from 'fast-check'
import { readFileSync, writeFileSync, copyFileSync, truncateSync } from 'node:fs'
import { join } from 'node:path'
import { openChain, createFlatDisk, createDelta, openWriter, isVmdkError, parseDescriptor, parseSparseExtentHeader, parseCowdHeader, parseSeSparseHeader, type DiskChain } from '../src/index.ts'
import { qemuImg, qemuIo } from './helpers.ts'

const MiB = 1024 * 1024

/** Patch bytes of a file in place. */
function patch(path: string, at: number, bytes: Uint8Array): void {
  const b = readFileSync(path)
  b.set(bytes, at)
  writeFileSync(path, b)
}
const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(v >>> 0)
  return b
}
const u64 = (v: bigint): Buffer => {
  const b = Buffer.alloc(8)
  b.writeBigUInt64LE(v)
  return b
}

/** Open, map, list changes and read a little: what every consumer does first. */
async function exercise(path: string): Promise<void> {
  let chain: DiskChain | undefined
  try {
    chain = await openChain(path)
    let n = 0
    for await (const _ of chain.map()) {
      if (++n > 2000) break
    }
    n = 0
    for await (const _ of chain.changedRanges(0)) {
      if (++n > 2000) break
    }
    await chain.read(0, Math.min(chain.capacity, MiB))
    if (chain.capacity > MiB) await chain.read(chain.capacity - 4096, 4096)
  } finally {
    await chain?.close()
  }
}

async function expectCode(t: Test, path: string, code: string, file?: RegExp): Promise<void> {
  const err = await exercise(path).then(
    () => undefined,
    (e: unknown) => e,
  )
  t.ok(isVmdkError(err), `VmdkError for ${code}: ${String(err)}`)
  t.match(err, { name: 'VmdkError', code, ...(file !== undefined ? { file } : {}) }, code)
}

/** A small fixture of each kind, made by qemu-img or by our writers. */
async function fixtures(dir: string): Promise<Record<'kdmv' | 'cowd' | 'sesparse' | 'flat', { top: string; ext: string }>> {
  const kdmv = join(dir, 'k.vmdk')
  qemuImg('create', '-q', '-f', 'vmdk', '-o', 'zeroed_grain=on', kdmv, String(4 * MiB))
  qemuIo(kdmv, ['write -P 0x33 64k 200k', 'write -z 1M 128k', 'write -P 0x44 3M 4k'])
  const flat = join(dir, 'f.vmdk')
  await createFlatDisk(flat, 4 * MiB)
  const mk = async (name: string, format: 'sesparse' | 'vmfssparse'): Promise<void> => {
    await createDelta(flat, join(dir, `${name}.vmdk`), { format })
    const w = await openWriter(join(dir, `${name}.vmdk`))
    await w.write(4096, Buffer.alloc(20000, 1))
    await w.write(3 * MiB + 512, Buffer.alloc(9000, 2))
    await w.writeZeroes(2 * MiB, 64 * 1024)
    await w.close()
  }
  await mk('s', 'sesparse')
  await mk('c', 'vmfssparse')
  return {
    kdmv: { top: kdmv, ext: kdmv },
    cowd: { top: join(dir, 'c.vmdk'), ext: join(dir, 'c-delta.vmdk') },
    sesparse: { top: join(dir, 's.vmdk'), ext: join(dir, 's-sesparse.vmdk') },
    flat: { top: flat, ext: join(dir, 'f-flat.vmdk') },
  }
}

t.test('header and table corruption gives the documented codes', async (t) => {
  const dir = t.testdir()
  const fx = await fixtures(dir)
  for (const k of Object.keys(fx) as Array<keyof typeof fx>) copyFileSync(fx[k].ext, `${fx[k].ext}.orig`)
  const reset = (): void => {
    for (const k of Object.keys(fx) as Array<keyof typeof fx>) copyFileSync(`${fx[k].ext}.orig`, fx[k].ext)
  }
  const k = fx.kdmv
  const cases: Array<[string, () => void, string, string]> = [
    [
      'KDMV version 4',
      () => {
        patch(k.ext, 4, u32(4))
      },
      'kdmv',
      'E_VERSION',
    ],
    [
      'KDMV unknown incompatible flag',
      () => {
        patch(k.ext, 8, u32(0x00040003))
      },
      'kdmv',
      'E_UNSUPPORTED',
    ],
    [
      'KDMV absurd capacity',
      () => {
        patch(k.ext, 12, u64(1n << 50n))
      },
      'kdmv',
      'E_RANGE',
    ],
    [
      'KDMV grainSize not a power of 2',
      () => {
        patch(k.ext, 20, u64(3n))
      },
      'kdmv',
      'E_FORMAT',
    ],
    [
      'KDMV GD past EOF',
      () => {
        patch(k.ext, 56, u64(1000000n))
      },
      'kdmv',
      'E_TRUNCATED',
    ],
    [
      'KDMV GD into header',
      () => {
        patch(k.ext, 56, u64(0n))
      },
      'kdmv',
      'E_FORMAT',
    ],
    [
      'KDMV GD entry past EOF',
      () => {
        const gd = readFileSync(k.ext).readBigUInt64LE(56)
        patch(k.ext, Number(gd) * 512, u32(0xffffff))
      },
      'kdmv',
      'E_FORMAT',
    ],
    [
      'KDMV GT entry into metadata',
      () => {
        const b = readFileSync(k.ext)
        const gt = b.readUInt32LE(Number(b.readBigUInt64LE(56)) * 512)
        patch(k.ext, gt * 512, u32(5))
      },
      'kdmv',
      'E_FORMAT',
    ],
    [
      'KDMV truncated',
      () => {
        truncateSync(k.ext, 300)
      },
      'kdmv',
      'E_TRUNCATED',
    ],
    [
      'COWD version 2',
      () => {
        patch(fx.cowd.ext, 4, u32(2))
      },
      'cowd',
      'E_VERSION',
    ],
    [
      'COWD VMDK3 flags',
      () => {
        patch(fx.cowd.ext, 8, u32(0x1b))
      },
      'cowd',
      'E_UNSUPPORTED',
    ],
    [
      'COWD GD count vs capacity',
      () => {
        patch(fx.cowd.ext, 24, u32(99999))
      },
      'cowd',
      'E_FORMAT',
    ],
    [
      'COWD GD into header',
      () => {
        patch(fx.cowd.ext, 20, u32(1))
      },
      'cowd',
      'E_FORMAT',
    ],
    [
      'COWD GD entry past EOF',
      () => {
        patch(fx.cowd.ext, 2048, u32(0x7fffffff))
      },
      'cowd',
      'E_FORMAT',
    ],
    [
      'COWD GT entry into header',
      () => {
        const gt = readFileSync(fx.cowd.ext).readUInt32LE(2048)
        patch(fx.cowd.ext, gt * 512 + 8 * 4, u32(2))
      },
      'cowd',
      'E_FORMAT',
    ],
    [
      'COWD truncated',
      () => {
        truncateSync(fx.cowd.ext, 1000)
      },
      'cowd',
      'E_TRUNCATED',
    ],
    [
      'SEsparse dirty journal',
      () => {
        patch(fx.sesparse.ext, 512 + 24, u64(1n))
      },
      'sesparse',
      'E_DIRTY',
    ],
    [
      'SEsparse version',
      () => {
        patch(fx.sesparse.ext, 8, u64(0x300000001n))
      },
      'sesparse',
      'E_VERSION',
    ],
    [
      'SEsparse grain size',
      () => {
        patch(fx.sesparse.ext, 24, u64(16n))
      },
      'sesparse',
      'E_UNSUPPORTED',
    ],
    [
      'SEsparse flags',
      () => {
        patch(fx.sesparse.ext, 40, u64(1n))
      },
      'sesparse',
      'E_UNSUPPORTED',
    ],
    [
      'SEsparse absurd capacity',
      () => {
        patch(fx.sesparse.ext, 16, u64(1n << 52n))
      },
      'sesparse',
      'E_RANGE',
    ],
    [
      'SEsparse GD entry type',
      () => {
        patch(fx.sesparse.ext, 4096 * 512 + 4, u32(0x20000000))
      },
      'sesparse',
      'E_FORMAT',
    ],
    [
      'SEsparse GT entry type 5',
      () => {
        patch(fx.sesparse.ext, 6144 * 512 + 8 * 1 + 4, u32(0x50000000))
      },
      'sesparse',
      'E_FORMAT',
    ],
    [
      'SEsparse GT slot past the grain region',
      () => {
        patch(fx.sesparse.ext, 6144 * 512 + 8 * 1, u32(0xffffffff))
      },
      'sesparse',
      'E_FORMAT',
    ],
    [
      'SEsparse truncated',
      () => {
        truncateSync(fx.sesparse.ext, 100000)
      },
      'sesparse',
      'E_TRUNCATED',
    ],
    [
      'flat extent shorter than its extent line reads zeros past EOF (as QEMU)',
      () => {
        truncateSync(fx.flat.ext, 1000)
      },
      'flat',
      'OK',
    ],
  ]
  for (const [name, mutate, kind, code] of cases) {
    reset()
    mutate()
    if (code === 'OK') {
      await exercise(fx[kind as keyof typeof fx].top)
      t.pass(name)
      continue
    }
    await t.test(name, async (t) => {
      await expectCode(t, fx[kind as keyof typeof fx].top, code, /\.vmdk$/)
    })
  }
  reset()
})

t.test('chain errors name both files', async (t) => {
  const dir = t.testdir()
  await createFlatDisk(join(dir, 'a.vmdk'), MiB, { cid: '11111111' })
  await createFlatDisk(join(dir, 'other.vmdk'), 2 * MiB, { cid: '22222222' })
  await createDelta(join(dir, 'a.vmdk'), join(dir, 'b.vmdk'), { format: 'sesparse' })
  const bText = readFileSync(join(dir, 'b.vmdk'), 'utf8')
  writeFileSync(join(dir, 'b.vmdk'), bText.replace('parentCID=11111111', 'parentCID=12345678'))
  const e1 = await openChain(join(dir, 'b.vmdk')).catch((e: unknown) => e)
  t.match(e1, { code: 'E_CHAIN_CID', message: /b\.vmdk.*12345678.*a\.vmdk.*11111111/ })
  writeFileSync(join(dir, 'b.vmdk'), bText.replace('"a.vmdk"', '"other.vmdk"').replace('parentCID=11111111', 'parentCID=22222222'))
  t.match(await openChain(join(dir, 'b.vmdk')).catch((e: unknown) => e), { code: 'E_CHAIN_CAPACITY' })
  writeFileSync(join(dir, 'b.vmdk'), bText.replace('"a.vmdk"', '"gone.vmdk"'))
  t.match(await openChain(join(dir, 'b.vmdk')).catch((e: unknown) => e), { code: 'E_CHAIN_MISSING', message: /gone\.vmdk/ })
  writeFileSync(join(dir, 'b.vmdk'), bText.replace('"a.vmdk"', '"b.vmdk"').replace('parentCID=11111111', `parentCID=${parseDescriptor(bText).cid}`))
  t.match(await openChain(join(dir, 'b.vmdk')).catch((e: unknown) => e), { code: 'E_CHAIN_LOOP' })
  // absolute ESXi datastore hint through a path map
  writeFileSync(join(dir, 'b.vmdk'), bText.replace('"a.vmdk"', '"/vmfs/volumes/5f1e-ds1/vm/a.vmdk"'))
  t.match(await openChain(join(dir, 'b.vmdk')).catch((e: unknown) => e), { code: 'E_CHAIN_MISSING' })
  const c = await openChain(join(dir, 'b.vmdk'), { pathMap: { '/vmfs/volumes/5f1e-ds1/vm/': dir } })
  t.equal(c.layers[1]?.file, 'a.vmdk')
  await c.close()
  t.match(await openChain(join(dir, 'nope.vmdk')).catch((e: unknown) => e), { code: 'E_NOT_FOUND' })
  writeFileSync(join(dir, 'sesparse-bare.vmdk'), readFileSync(join(dir, 'b-sesparse.vmdk')).subarray(0, 4096))
  t.match(await openChain(join(dir, 'sesparse-bare.vmdk')).catch((e: unknown) => e), { code: 'E_DESCRIPTOR' })
  writeFileSync(join(dir, 'b.vmdk'), bText)
  t.match(await openChain(join(dir, 'b.vmdk'), { maxDepth: 1 }).catch((e: unknown) => e), { code: 'E_CHAIN_LOOP' })
})

t.test('pure header parsers reject short and foreign buffers', async (t) => {
  t.throws(() => parseSparseExtentHeader(Buffer.alloc(100)), { code: 'E_TRUNCATED' })
  t.throws(() => parseSparseExtentHeader(Buffer.alloc(512)), { code: 'E_FORMAT' })
  t.throws(() => parseCowdHeader(Buffer.alloc(2048)), { code: 'E_FORMAT' })
  t.throws(() => parseSeSparseHeader(Buffer.alloc(512)), { code: 'E_FORMAT' })
})

t.test('property: mutated headers, directories and tables only ever throw VmdkError', async (t) => {
  const dir = t.testdir()
  const fx = await fixtures(dir)
  const orig = Object.fromEntries(Object.entries(fx).map(([k, v]) => [k, readFileSync(v.ext)])) as Record<keyof typeof fx, Buffer>
  // metadata areas worth hitting: headers, GD, first GTs (by format)
  const areas: Record<keyof typeof fx, Array<[number, number]>> = {
    kdmv: [
      [0, 512],
      [512 * 21, 512 * 40],
    ],
    cowd: [
      [0, 2048],
      [2048, 4096],
      [4096, 4096 + 16384 * 2],
    ],
    sesparse: [
      [0, 1024],
      [4096 * 512, 4096 * 512 + 64],
      [6144 * 512, 6144 * 512 + 32768 * 2],
    ],
    flat: [],
  }
  const descText = readFileSync(fx.sesparse.top, 'utf8')
  const kinds = ['kdmv', 'cowd', 'sesparse'] as const
  let vmdkErrors = 0
  let ok = 0
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(...kinds),
      fc.array(fc.record({ area: fc.nat(), pos: fc.nat(), value: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0, 0xff, 0x10, 0x30, 1)), wide: fc.boolean() }), {
        minLength: 1,
        maxLength: 8,
      }),
      async (kind, muts) => {
        const b = Buffer.from(orig[kind])
        const as = areas[kind]
        for (const m of muts) {
          const [s, e] = as[m.area % as.length] ?? [0, 512]
          const at = s + (m.pos % (e - s))
          if (m.wide) b.fill(m.value, at, Math.min(b.length, at + 4))
          else b[at] = m.value
        }
        writeFileSync(fx[kind].ext, b)
        try {
          await exercise(fx[kind].top)
          ok++
        } catch (err) {
          if (!isVmdkError(err)) throw err
          vmdkErrors++
        }
      },
    ),
    { numRuns: 300, seed: 20261126 },
  )
  t.ok(vmdkErrors > 0 && ok > 0, `both outcomes seen (${ok} ok, ${vmdkErrors} VmdkError)`)
  // mutated descriptor text
  await fc.assert(
    fc.asyncProperty(fc.nat({ max: descText.length - 1 }), fc.string({ maxLength: 6 }), async (pos, s) => {
      writeFileSync(fx.sesparse.top, descText.slice(0, pos) + s + descText.slice(pos + s.length))
      writeFileSync(fx.sesparse.ext, orig.sesparse)
      try {
        await exercise(fx.sesparse.top)
      } catch (err) {
        if (!isVmdkError(err)) throw err
      }
    }),
    { numRuns: 200, seed: 7 },
  )
})
