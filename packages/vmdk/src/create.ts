import { open, unlink, type FileHandle } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { basename, dirname, relative, resolve } from 'node:path'
import { VmdkError, ioError } from './errors.ts'
import { buildDescriptor, formatCid, randomCid, type ExtentLine } from './descriptor.ts'
import { openChain } from './chain.ts'
import type { PathMap } from './layer.ts'
import { MAX_CAPACITY } from './sparse-extent.ts'
import { KDMV_MAGIC, KdmvFlags } from './hosted-sparse-extent.ts'
import { COWD_MAGIC, COWD_GT_ENTRIES } from './cowd-extent.ts'
import { SESPARSE_CONST_MAGIC, SESPARSE_VERSION, SESPARSE_VOLATILE_MAGIC } from './sesparse-extent.ts'
import { syncDir, writeNewFile } from './atomic-file.ts'

export type DeltaFormat = 'sesparse' | 'vmfssparse' | 'hosted'

export interface CreateFlatDiskOptions {
  /** @default 'vmfs' */
  createType?: 'vmfs' | 'monolithicFlat'
  /** extra or overriding DDB entries (`adapterType`, `virtualHWVersion`, … with or without `ddb.`) */
  ddb?: Readonly<Record<string, string>>
  /** @default random */
  cid?: string
}

export interface CreateDeltaOptions {
  format: DeltaFormat
  pathMap?: PathMap
  /** child CID; @default the parent's CID for ESXi formats (as ESXi does), random for hosted */
  cid?: string
  /**
   * `vmfssparse` only: lay out every grain table up front (zeroed, a hole in
   * the file; the grain directory names them) instead of leaving them to be
   * allocated on first write as ESXi does. QEMU (block/vmdk.c
   * get_cluster_offset) never allocates a COWD grain table: a write under a
   * grain-directory entry of 0 goes to offset 0 of the extent, over its
   * header, and reports success. With the tables in place it allocates grains
   * and writes correctly. Costs 16 KiB of apparent size (a hole) per 2 MiB
   * of capacity. @default false
   */
  preallocateGrainTables?: boolean
}

function stem(path: string): string {
  return basename(path).replace(/\.vmdk$/i, '')
}

function checkCapacity(capacity: number, file: string): void {
  if (!Number.isSafeInteger(capacity) || capacity <= 0 || capacity % 512 !== 0 || capacity > MAX_CAPACITY) {
    throw new VmdkError('E_RANGE', `capacity ${capacity} must be a positive multiple of 512 up to ${MAX_CAPACITY}`, file)
  }
}

function longContentId(cid: string): string {
  return randomBytes(12).toString('hex') + formatCid(cid)
}

function ddbUuid(): string {
  const h = [...randomBytes(16)].map((b) => b.toString(16).padStart(2, '0'))
  h[0] = '60'
  h[1] = '00'
  h[2] = 'C2'
  return `${h.slice(0, 8).join(' ')}-${h.slice(8).join(' ')}`
}

function geometry(capacity: number): Array<[string, string]> {
  const sectors = capacity / 512
  const [heads, spt] = capacity < 1024 ** 3 ? [64, 32] : [255, 63]
  return [
    ['ddb.geometry.cylinders', String(Math.max(1, Math.min(65535, Math.floor(sectors / (heads * spt)))))],
    ['ddb.geometry.heads', String(heads)],
    ['ddb.geometry.sectors', String(spt)],
  ]
}

async function createSparseFile(path: string, chunks: ReadonlyArray<readonly [number, Uint8Array]>, size: number): Promise<void> {
  let fh: FileHandle
  try {
    fh = await open(path, 'wx')
  } catch (err) {
    throw ioError(err, path, 'create')
  }
  try {
    await fh.truncate(size)
    for (const [off, data] of chunks) await fh.write(data, 0, data.length, off)
    await fh.sync()
  } catch (err) {
    await fh.close().catch(() => {})
    await unlink(path).catch(() => {})
    throw ioError(err, path, 'create')
  }
  await fh.close()
}

/**
 * Create a flat disk: a descriptor (createType `vmfs` by default, as ESXi writes it)
 * and a `-flat.vmdk` extent allocated sparsely (truncate), with a DDB.
 */
export async function createFlatDisk(path: string, capacity: number, opts: CreateFlatDiskOptions = {}): Promise<void> {
  checkCapacity(capacity, path)
  const createType = opts.createType ?? 'vmfs'
  const flat = `${stem(path)}-flat.vmdk`
  const cid = formatCid(opts.cid ?? randomCid())
  const ddb = new Map<string, string>([
    ['ddb.adapterType', 'lsilogic'],
    ...geometry(capacity),
    ['ddb.longContentID', longContentId(cid)],
    ['ddb.thinProvisioned', '1'],
    ['ddb.uuid', ddbUuid()],
    ['ddb.virtualHWVersion', '14'],
  ])
  for (const [k, v] of Object.entries(opts.ddb ?? {})) ddb.set(k.startsWith('ddb.') ? k : `ddb.${k}`, v)
  const extent: ExtentLine =
    createType === 'vmfs' ? { access: 'RW', sectors: capacity / 512, type: 'VMFS', file: flat } : { access: 'RW', sectors: capacity / 512, type: 'FLAT', file: flat, offset: 0 }
  const d = buildDescriptor({ cid, createType, extents: [extent], ddb: [...ddb] })
  const flatPath = resolve(dirname(path), flat)
  await createSparseFile(flatPath, [], capacity)
  try {
    await writeNewFile(path, d.toString())
  } catch (err) {
    await unlink(flatPath).catch(() => {})
    throw err
  }
  await syncDir(dirname(resolve(path)))
}

/** Region sizes in sectors, scaled from the 2048-sector minimum seen on ESXi (VMDK.md §3.1). */
function region(sectors: number): number {
  return Math.max(2048, Math.ceil(sectors / 2048) * 2048)
}

/** The layout of a new SEsparse extent for `capacity` sectors. */
export function seSparseLayout(capacity: number): Record<string, number> {
  const tables = Math.ceil(capacity / (4096 * 8))
  const slots = Math.ceil(capacity / 8)
  const l: Record<string, number> = {
    capacity,
    volatileHeaderOffset: 1,
    volatileHeaderSize: 1,
    journalHeaderOffset: 2,
    journalHeaderSize: 2,
    journalOffset: 2048,
    journalSize: 2048,
    grainDirOffset: 4096,
    grainDirSize: region(Math.ceil((tables * 8) / 512)),
  }
  l.grainTablesOffset = (l.grainDirOffset ?? 0) + (l.grainDirSize ?? 0)
  l.grainTablesSize = region(tables * 64)
  l.freeBitmapOffset = l.grainTablesOffset + l.grainTablesSize
  l.freeBitmapSize = region(Math.ceil(slots / 8 / 512))
  l.backmapOffset = l.freeBitmapOffset + l.freeBitmapSize
  l.backmapSize = region(Math.ceil((slots * 8) / 512))
  l.grainsOffset = l.backmapOffset + l.backmapSize
  l.grainsSize = capacity
  return l
}

function seSparseHeaders(capacity: number): { chunks: Array<[number, Buffer]>; size: number } {
  const l = seSparseLayout(capacity)
  const h = Buffer.alloc(512)
  h.writeBigUInt64LE(SESPARSE_CONST_MAGIC, 0)
  h.writeBigUInt64LE(SESPARSE_VERSION, 8)
  h.writeBigUInt64LE(BigInt(capacity), 16)
  h.writeBigUInt64LE(8n, 24)
  h.writeBigUInt64LE(64n, 32)
  const order = [
    'volatileHeaderOffset',
    'volatileHeaderSize',
    'journalHeaderOffset',
    'journalHeaderSize',
    'journalOffset',
    'journalSize',
    'grainDirOffset',
    'grainDirSize',
    'grainTablesOffset',
    'grainTablesSize',
    'freeBitmapOffset',
    'freeBitmapSize',
    'backmapOffset',
    'backmapSize',
    'grainsOffset',
    'grainsSize',
  ]
  order.forEach((k, i) => {
    h.writeBigUInt64LE(BigInt(l[k] ?? 0), 80 + i * 8)
  })
  const v = Buffer.alloc(512)
  v.writeBigUInt64LE(SESPARSE_VOLATILE_MAGIC, 0)
  v.writeBigUInt64LE(0n, 8) // free_gt_number
  v.writeBigUInt64LE(1n, 16) // next_txn_seq_number
  v.writeBigUInt64LE(0n, 24) // replay_journal: clean
  const j = Buffer.alloc(512)
  j.writeBigUInt64LE(0xdeafc0den, 0)
  j.writeBigUInt64LE(1n, 8)
  j.writeBigUInt64LE(1n, 16)
  return {
    chunks: [
      [0, h],
      [512, v],
      [1024, j],
    ],
    size: (l.grainsOffset ?? 0) * 512,
  }
}

function cowdHeader(capacity: number, preallocate: boolean): { chunks: Array<[number, Buffer]>; size: number } {
  const sectors = capacity / 512
  if (sectors > 0xffffffff) throw new VmdkError('E_RANGE', 'vmfsSparse (COWD) deltas are limited to 2 TiB', '')
  const gdEntries = Math.ceil(sectors / COWD_GT_ENTRIES)
  const gdSectors = Math.ceil((gdEntries * 4) / 512)
  const gtSectors = (COWD_GT_ENTRIES * 4) / 512
  // the grain tables right after the directory, in order (all zero: nothing in the delta yet)
  const free = 4 + gdSectors + (preallocate ? gdEntries * gtSectors : 0)
  const h = Buffer.alloc(2048)
  h.writeUInt32LE(COWD_MAGIC, 0)
  h.writeUInt32LE(1, 4) // version
  h.writeUInt32LE(3, 8) // flags
  h.writeUInt32LE(sectors, 12)
  h.writeUInt32LE(1, 16) // grainSize: 1 sector on every ESXi redo log
  h.writeUInt32LE(4, 20) // gdOffset
  h.writeUInt32LE(gdEntries, 24)
  h.writeUInt32LE(free, 28) // freeSector
  if (!preallocate) return { chunks: [[0, h]], size: free * 512 }
  const gd = Buffer.alloc(gdSectors * 512)
  for (let i = 0; i < gdEntries; i++) gd.writeUInt32LE(4 + gdSectors + i * gtSectors, i * 4)
  return {
    chunks: [
      [0, h],
      [4 * 512, gd],
    ],
    size: free * 512,
  }
}

/** KDMV layout exactly as `qemu-img create -f vmdk` lays it out (block/vmdk.c vmdk_init_extent). */
function hostedImage(capacity: number, descriptor: string): { chunks: Array<[number, Buffer]>; size: number } {
  const sectors = capacity / 512
  const granularity = 128
  const gtes = 512
  const grains = Math.ceil(sectors / granularity)
  const gtSize = Math.ceil((gtes * 4) / 512)
  const gtCount = Math.ceil(grains / gtes)
  const gdSectors = Math.ceil((gtCount * 4) / 512)
  const descOffset = 1
  const descSize = 20
  const rgdOffset = descOffset + descSize
  const gdOffset = rgdOffset + gdSectors + gtSize * gtCount
  const grainOffset = Math.ceil((gdOffset + gdSectors + gtSize * gtCount) / granularity) * granularity
  const h = Buffer.alloc(512)
  h.writeUInt32LE(KDMV_MAGIC, 0)
  h.writeUInt32LE(1, 4)
  h.writeUInt32LE(KdmvFlags.ValidNewlineTest | KdmvFlags.RedundantGd, 8)
  h.writeBigUInt64LE(BigInt(sectors), 12)
  h.writeBigUInt64LE(BigInt(granularity), 20)
  h.writeBigUInt64LE(BigInt(descOffset), 28)
  h.writeBigUInt64LE(BigInt(descSize), 36)
  h.writeUInt32LE(gtes, 44)
  h.writeBigUInt64LE(BigInt(rgdOffset), 48)
  h.writeBigUInt64LE(BigInt(gdOffset), 56)
  h.writeBigUInt64LE(BigInt(grainOffset), 64)
  h.set([0x0a, 0x20, 0x0d, 0x0a], 73)
  const desc = Buffer.alloc(descSize * 512)
  const dbytes = Buffer.from(descriptor, 'utf8')
  if (dbytes.length > desc.length) throw new VmdkError('E_RANGE', 'descriptor does not fit the embedded area', '')
  dbytes.copy(desc)
  const rgd = Buffer.alloc(gdSectors * 512)
  const gd = Buffer.alloc(gdSectors * 512)
  for (let i = 0; i < gtCount; i++) {
    rgd.writeUInt32LE(rgdOffset + gdSectors + i * gtSize, i * 4)
    gd.writeUInt32LE(gdOffset + gdSectors + i * gtSize, i * 4)
  }
  return {
    chunks: [
      [0, h],
      [descOffset * 512, desc],
      [rgdOffset * 512, rgd],
      [gdOffset * 512, gd],
    ],
    size: grainOffset * 512,
  }
}

/**
 * Create a delta (snapshot redo log) on top of `parentPath`, as ESXi (`sesparse`,
 * `vmfssparse`) or `qemu-img create -b` (`hosted`) would: the extent file first, then
 * the descriptor, so a descriptor never names a missing extent.
 */
export async function createDelta(parentPath: string, childPath: string, opts: CreateDeltaOptions): Promise<void> {
  const chain = await openChain(parentPath, opts.pathMap !== undefined ? { pathMap: opts.pathMap } : {})
  const parent = chain.layers[0]
  const capacity = chain.capacity
  await chain.close()
  if (parent === undefined) throw new VmdkError('E_NOT_FOUND', 'no parent layer', parentPath)
  checkCapacity(capacity, parentPath)
  const dir = dirname(resolve(childPath))
  const hint = relative(dir, resolve(parentPath))
  const parentCid = formatCid(parent.cid)
  switch (opts.format) {
    case 'sesparse':
    case 'vmfssparse': {
      const se = opts.format === 'sesparse'
      const extName = `${stem(childPath)}-${se ? 'sesparse' : 'delta'}.vmdk`
      const cid = formatCid(opts.cid ?? parentCid)
      const img = se ? seSparseHeaders(capacity / 512) : cowdHeader(capacity, opts.preallocateGrainTables === true)
      const ddb: Array<[string, string]> = se
        ? [
            ['ddb.grain', '8'],
            ['ddb.longContentID', longContentId(cid)],
            ['ddb.encoding', 'UTF-8'],
          ]
        : [['ddb.longContentID', longContentId(cid)]]
      const d = buildDescriptor({
        cid,
        parentCid,
        createType: se ? 'seSparse' : 'vmfsSparse',
        parentFileNameHint: hint,
        extents: [{ access: 'RW', sectors: capacity / 512, type: se ? 'SESPARSE' : 'VMFSSPARSE', file: extName }],
        ddb,
      })
      const extPath = resolve(dir, extName)
      await createSparseFile(extPath, img.chunks, img.size)
      try {
        await writeNewFile(childPath, d.toString())
      } catch (err) {
        await unlink(extPath).catch(() => {})
        throw err
      }
      break
    }
    case 'hosted': {
      const cid = formatCid(opts.cid ?? randomCid())
      const d = buildDescriptor({
        cid,
        parentCid,
        createType: 'monolithicSparse',
        parentFileNameHint: hint,
        extents: [{ access: 'RW', sectors: capacity / 512, type: 'SPARSE', file: basename(childPath) }],
        // the DDB `qemu-img create -f vmdk` writes (adapter ide, 16 heads, 63 sectors)
        ddb: [
          ['ddb.virtualHWVersion', '4'],
          ['ddb.geometry.cylinders', String(Math.min(16383, Math.floor(capacity / 512 / (16 * 63))))],
          ['ddb.geometry.heads', '16'],
          ['ddb.geometry.sectors', '63'],
          ['ddb.adapterType', 'ide'],
          ['ddb.toolsVersion', '2147483647'],
        ],
        encoding: null,
      })
      const img = hostedImage(capacity, d.toString())
      await createSparseFile(childPath, img.chunks, img.size)
      break
    }
    default:
      throw new VmdkError('E_UNSUPPORTED', `unknown delta format ${String(opts.format)}`, childPath)
  }
  await syncDir(dir)
}
