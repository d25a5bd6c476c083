/**
 * The sparse writer keeps changed grain tables (and an SEsparse delta's free
 * bitmap and backmap) in memory until its flush: one write each per flush,
 * not one per write call. What QEMU reads back is unchanged; the number of
 * writes is what this saves (a reverse increment of a point took ~6 file
 * operations per 64 KiB extent before).
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { createDelta, createFlatDisk, type FileAccess, localFileAccess, openWriter, parseSeSparseHeader } from '../src/index.ts'
import { PENDING_TABLES_MAX } from '../src/writer.ts'
import { seSparseDataEntry } from '../src/sparse-allocator.ts'
import { qemuDigest, qemuImg } from './helpers.ts'

const MiB = 1024 * 1024
const KiB = 1024

/** A local FileAccess that counts the writes (and their sizes) into files whose name ends with `suffix`. */
function countingAccess(suffix: string): { files: FileAccess; writes: number[] } {
  const writes: number[] = []
  const files: FileAccess = {
    stat: async (p) => await localFileAccess.stat(p),
    open: async (p, m) => {
      const f = await localFileAccess.open(p, m)
      if (!p.endsWith(suffix) || f.write === undefined) return f
      const write = f.write.bind(f)
      const counted = async (data: Uint8Array, offset: number, length: number, position: number): Promise<number> => {
        writes.push(length)
        return await write(data, offset, length, position)
      }
      // every other member as it is, bound to the real file (it has private fields)
      return new Proxy(f, {
        get: (target, prop) => {
          if (prop === 'write') return counted
          const v = Reflect.get(target, prop, target) as unknown
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v
        },
      })
    },
  }
  return { files, writes }
}

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len)
  for (let i = 0; i < len; i += 512) b.writeUInt32LE((seed * 2654435761 + i) >>> 0, i)
  return b
}

t.test('100 scattered writes into one SEsparse table: the table, bitmap and backmap are written once, at the flush', async (t) => {
  const dir = t.testdir()
  const size = 64 * MiB
  await createFlatDisk(join(dir, 'd.vmdk'), size)
  await createDelta(join(dir, 'd.vmdk'), join(dir, 'd-000001.vmdk'), { format: 'sesparse' })
  const { files, writes } = countingAccess('-sesparse.vmdk')
  const model = Buffer.alloc(size)
  const w = await openWriter(join(dir, 'd-000001.vmdk'), { files })
  for (let i = 0; i < 100; i++) {
    // every other 64 KiB of the first 13 MiB: one grain table (16 MiB), 100 runs of fresh grains
    const off = i * 128 * KiB
    const data = pattern(64 * KiB, i + 1)
    await w.write(off, data)
    data.copy(model, off)
  }
  const beforeFlush = writes.length
  await w.flush()
  const atFlush = writes.length - beforeFlush
  await w.close()
  // per write: its data (and the new table once); at the flush: the table, the GD entry, bitmap, backmap, counter
  t.ok(beforeFlush <= 100 + 1, `${beforeFlush} writes for 100 data writes before the flush (was ~400: table, bitmap read-modify-write and backmap each time)`)
  t.ok(atFlush >= 3 && atFlush <= 6, `${atFlush} metadata writes at the flush`)
  t.equal(qemuDigest(join(dir, 'd-000001.vmdk'), dir), createHash('sha256').update(model).digest('hex'), 'QEMU reads what was written')

  // the free bitmap marks the 1600 slots, the backmap names each slot's grain (VMDK.md §3.5)
  const file = readFileSync(join(dir, 'd-000001-sesparse.vmdk'))
  const h = parseSeSparseHeader(file.subarray(0, 512))
  const bm = file.subarray(h.freeBitmapOffset * 512, h.freeBitmapOffset * 512 + 201)
  t.same([...bm.subarray(0, 200)], new Array(200).fill(0xff), 'slots 0..1599 allocated')
  t.equal(bm[200], 0, 'slot 1600 free')
  const back = (slot: number): [number, number] => [file.readUInt32LE(h.backmapOffset * 512 + slot * 8), file.readUInt32LE(h.backmapOffset * 512 + slot * 8 + 4)]
  for (const [slot, grain] of [
    [0, 0],
    [15, 15],
    [16, 32],
    [1599, 99 * 32 + 15],
  ] as const) {
    const [lo, hi] = seSparseDataEntry(grain)
    t.same(back(slot), [lo, ((hi & 0x0fffffff) | 0x10000000) >>> 0], `backmap of slot ${slot} names grain ${grain}`)
  }
  t.match(qemuImg('check', '-f', 'vmdk', join(dir, 'd-000001.vmdk')), /No errors were found/)
})

t.test(`more than ${PENDING_TABLES_MAX} changed tables are written out before the flush, and the disk stays right`, async (t) => {
  const dir = t.testdir()
  // one 4 KiB write per 16 MiB table: PENDING_TABLES_MAX + 20 tables
  const tables = PENDING_TABLES_MAX + 20
  const size = tables * 16 * MiB
  await createFlatDisk(join(dir, 'big.vmdk'), size)
  await createDelta(join(dir, 'big.vmdk'), join(dir, 'big-000001.vmdk'), { format: 'sesparse' })
  const { files, writes } = countingAccess('-sesparse.vmdk')
  const w = await openWriter(join(dir, 'big-000001.vmdk'), { files })
  for (let i = 0; i < tables; i++) await w.write(i * 16 * MiB + 8 * MiB, pattern(4 * KiB, i + 7))
  const tableWrites = writes.filter((n) => n === 32 * KiB).length
  // each new table is zeroed when it is made (one 32 KiB write each); the spill wrote PENDING_TABLES_MAX + 1 more
  t.ok(tableWrites > tables, `${tableWrites} table-sized writes before the flush for ${tables} new tables: the waiting ones were written out`)
  await w.close()
  for (const i of [0, PENDING_TABLES_MAX, tables - 1]) {
    const out = qemuIo(join(dir, 'big-000001.vmdk'), `read -v ${i * 16 * MiB + 8 * MiB} 512`)
    const first = pattern(512, i + 7).readUInt32LE(0)
    const shown = Buffer.alloc(4)
    shown.writeUInt32LE(first)
    t.match(out, new RegExp(`^[0-9a-f]+:\\s+${[...shown].map((b) => b.toString(16).padStart(2, '0')).join(' ')}`, 'm'), `QEMU reads table ${i}'s write`)
  }
  t.match(qemuImg('check', '-f', 'vmdk', join(dir, 'big-000001.vmdk')), /No errors were found/)
})

t.test('more than 65536 new SEsparse slots before a flush: bitmap and backmap written out as they fill, all of them right', async (t) => {
  const dir = t.testdir()
  const size = 272 * MiB
  await createFlatDisk(join(dir, 's.vmdk'), size)
  await createDelta(join(dir, 's.vmdk'), join(dir, 's-000001.vmdk'), { format: 'sesparse' })
  const model = Buffer.alloc(size)
  const w = await openWriter(join(dir, 's-000001.vmdk'))
  // 264 MiB in 8 MiB writes, top down: slots hold grains in reverse order of 8 MiB pieces
  const pieces = 33
  for (let p = pieces - 1; p >= 0; p--) {
    const data = pattern(8 * MiB, p + 3)
    await w.write(p * 8 * MiB, data)
    data.copy(model, p * 8 * MiB)
  }
  await w.close()
  t.equal(qemuDigest(join(dir, 's-000001.vmdk'), dir), createHash('sha256').update(model).digest('hex'), 'QEMU reads what was written')
  const file = readFileSync(join(dir, 's-000001-sesparse.vmdk'))
  const h = parseSeSparseHeader(file.subarray(0, 512))
  const slots = pieces * 2048
  const bm = file.subarray(h.freeBitmapOffset * 512, h.freeBitmapOffset * 512 + slots / 8 + 1)
  t.ok(
    bm.subarray(0, slots / 8).every((b) => b === 0xff),
    `all ${slots} slots marked allocated`,
  )
  t.equal(bm[slots / 8], 0, 'the next slot is free')
  for (const slot of [0, 2047, 2048, 65535, 65536, slots - 1]) {
    // slot s belongs to piece (pieces - 1 - floor(s / 2048)), grain s % 2048 of it
    const grain = (pieces - 1 - Math.floor(slot / 2048)) * 2048 + (slot % 2048)
    const [lo, hi] = seSparseDataEntry(grain)
    const at = h.backmapOffset * 512 + slot * 8
    t.same([file.readUInt32LE(at), file.readUInt32LE(at + 4)], [lo, ((hi & 0x0fffffff) | 0x10000000) >>> 0], `backmap of slot ${slot} names grain ${grain}`)
  }
})

function qemuIo(image: string, cmd: string): string {
  return execFileSync('qemu-io', ['-r', '-f', 'vmdk', '-c', cmd, image], { encoding: 'utf8' })
}
