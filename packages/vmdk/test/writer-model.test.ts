import t from 'tap'
import fc from 'fast-check'
import { createHash } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { createFlatDisk, createDelta, openWriter, openChain, type DeltaFormat } from '../src/index.ts'
import { chainDigest, qemuDigest } from './helpers.ts'

const MiB = 1024 * 1024
// crosses a COWD grain-table boundary (2 MiB) and a KDMV one (32 MiB needs more: see writers.test),
// has a partial last KDMV grain and an odd number of sectors
const SIZE = 5 * MiB + 1536

const op = fc.record({
  zero: fc.boolean(),
  // offsets biased towards grain and table edges
  off: fc.oneof(fc.integer({ min: 0, max: SIZE - 1 }), fc.constantFrom(0, 511, 512, 4095, 4096, 65535, 65536, 2 * MiB - 1, 2 * MiB, SIZE - 4096, SIZE - 1)),
  len: fc.oneof(fc.integer({ min: 1, max: 70000 }), fc.constantFrom(1, 512, 4096, 65536, 300000)),
  byte: fc.integer({ min: 1, max: 255 }),
})

t.test('property: any sequence of writes and zeroes reads back like the model, in our reader and QEMU', async (t) => {
  const root = t.testdir()
  let run = 0
  for (const format of ['sesparse', 'vmfssparse', 'hosted'] as DeltaFormat[]) {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 12 }), fc.boolean(), async (ops, twoLevels) => {
        const dir = join(root, `r${run++}`)
        mkdirSync(dir)
        const model = Buffer.alloc(SIZE)
        await createFlatDisk(join(dir, 'b.vmdk'), SIZE)
        const base = await openWriter(join(dir, 'b.vmdk'))
        await base.write(0, Buffer.alloc(SIZE, 0x0b).fill(0x0c, 0, 3000))
        model.fill(0x0b).fill(0x0c, 0, 3000)
        await base.close()
        let top = join(dir, 'b.vmdk')
        for (let level = 0; level < (twoLevels ? 2 : 1); level++) {
          const child = join(dir, `c${level}.vmdk`)
          await createDelta(top, child, { format: level === 0 ? format : 'sesparse' })
          top = child
          const w = await openWriter(top)
          for (const o of ops) {
            const off = Math.min(o.off, SIZE - 1)
            const len = Math.min(o.len, SIZE - off)
            if (o.zero) {
              await w.writeZeroes(off, len)
              model.fill(0, off, off + len)
            } else {
              const d = Buffer.alloc(len, o.byte + level)
              await w.write(off, d)
              model.set(d, off)
            }
          }
          await w.close()
        }
        const want = createHash('sha256').update(model).digest('hex')
        const c = await openChain(top)
        const mine = await chainDigest(c)
        await c.close()
        if (mine !== want) throw new Error(`our reader differs from the model (${format})`)
        if (qemuDigest(top, dir) !== want) throw new Error(`QEMU differs from the model (${format})`)
      }),
      { numRuns: 40, seed: 424242 },
    )
    t.pass(`${format}: 40 random sequences`)
  }
})
