/**
 * The block map kept with the mirror between cycles (kept-map.ts,
 * kept-map-update.ts): the file round-trips; truncated, overlong, foreign,
 * torn or hostile files (link, FIFO, folder) are discarded, never trusted;
 * against a real receiver the first resync reads the whole mirror and leaves
 * a map, an incremental marks the blocks it wrote stale, the next resync
 * reads only the stale blocks and still sends the mirror's true digests;
 * a modified mirror, a failed block check and a hold each make the next
 * resync read the whole mirror again.
 */
import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { execFileSync } from 'node:child_process'
import { mkdirSync, readFileSync, statSync, symlinkSync, truncateSync, writeFileSync, appendFileSync, existsSync } from 'node:fs'
import { open as openFile } from 'node:fs/promises'
import { join } from 'node:path'
import { pino } from 'pino'
import { initDigests } from '@grainline/protocol'
import { HEAD_BYTES, KeptMap, TouchedBlocks, decodeKeptHeader, encodeKeptHeader, keptMapLength, writeKeptMap, type KeptHeader } from '../src/kept-map.ts'
import { checkBlocks } from '../src/block-check.ts'
import { VmMirror } from '../src/vm-mirror.ts'
import { Agent, TOKEN, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, type LogLine } from './helpers.ts'
import { ALG, BLOCKS, BS, LEN, NAME, SIZE, VM, flat, mapOf, resyncCycle } from './resync-helpers.ts'

const HEADER: KeptHeader = { blockSize: 4096, algorithm: 'xxh64', capacity: 10 * 4096 + 512, generation: 'ab'.repeat(16), mirrorCid: '1234abcd', size: 10 * 4096 + 512 }
const WANT = { generation: HEADER.generation, mirrorCid: HEADER.mirrorCid, size: HEADER.size, capacity: HEADER.capacity }

/** A kept map of HEADER written through writeKeptMap: digest of block b = 8 bytes of value b. */
async function writeSample(dir: string, touched?: TouchedBlocks): Promise<string> {
  const src = join(dir, 'digests')
  writeFileSync(src, Buffer.concat([Buffer.alloc(100, 0xee), ...Array.from({ length: 11 }, (_, b) => Buffer.alloc(8, b))]))
  const fh = await openFile(src, 'r')
  const path = join(dir, 'disk.map')
  try {
    await writeKeptMap(path, HEADER, { fh, offset: 100 }, touched)
  } finally {
    await fh.close()
  }
  return path
}

t.test('a kept map round-trips: header, stale bits, digests; an incremental advances it in place', async (t) => {
  const dir = scratchDir(t)
  const touched = new TouchedBlocks(HEADER.capacity, HEADER.blockSize)
  touched.mark(4096 * 2 + 100, 10)
  touched.mark(4096 * 10, 512)
  touched.mark(0, 0)
  t.equal(touched.count, 2, 'blocks 2 and 10 (the short last one) touched; an empty range touches nothing')
  const path = await writeSample(dir, touched)
  t.equal(statSync(path).size, keptMapLength(HEADER), 'exactly header + bitmap + digests')
  t.same(decodeKeptHeader(encodeKeptHeader(HEADER)), HEADER)
  const k = await KeptMap.open(path, WANT, 'update')
  if (typeof k === 'string') throw new Error(k)
  const r = await k.read(1, 10)
  t.same([...r.stale], [0, 1, 0, 0, 0, 0, 0, 0, 0, 1], 'stale bits of blocks 1 … 10')
  t.same(r.digests, Buffer.concat(Array.from({ length: 10 }, (_, i) => Buffer.alloc(8, i + 1))), 'digests of blocks 1 … 10')
  const more = new TouchedBlocks(HEADER.capacity, HEADER.blockSize)
  more.mark(4096 * 5, 4096 * 2)
  await k.advance(more, { ...HEADER, generation: 'cd'.repeat(16), mirrorCid: '99999999' })
  await k.close()
  t.equal(await KeptMap.open(path, WANT), 'written for another commit', 'the old commit no longer matches')
  const k2 = await KeptMap.open(path, { ...WANT, generation: 'cd'.repeat(16), mirrorCid: '99999999' })
  if (typeof k2 === 'string') throw new Error(k2)
  t.same([...(await k2.read(0, 11)).stale], [0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1], 'the new commit: old stale bits kept, blocks 5 and 6 added')
  await k2.close()
  mkdirSync(join(dir, 'x'))
  const none = await writeSample(join(dir, 'x'))
  const k3 = await KeptMap.open(none, WANT)
  if (typeof k3 === 'string') throw new Error(k3)
  t.same([...(await k3.read(0, 11)).stale], Array(11).fill(1), 'without a record of touched blocks every block is stale')
  await k3.close()
})

t.test('corrupt, foreign and hostile kept maps are discarded with a reason, never trusted', async (t) => {
  const dir = scratchDir(t)
  const cases: Array<[string, (p: string) => void, RegExp, Partial<typeof WANT & { blockSize: number }>?]> = [
    ['truncated by one byte', (p) => truncateSync(p, statSync(p).size - 1), /truncated/],
    ['one byte too long', (p) => appendFileSync(p, Buffer.alloc(1)), /overlong/],
    ['cut inside the header', (p) => truncateSync(p, 100), /truncated header/],
    ['empty', (p) => truncateSync(p, 0), /truncated header/],
    ['wrong magic', (p) => writeFileSync(p, Buffer.from('GLBMAP1\n'), { flag: 'r+' }), /not a kept block map/],
    [
      'a header byte flipped',
      (p) => {
        const b = readFileSync(p)
        b[30] = (b[30] as number) ^ 1
        writeFileSync(p, b)
      },
      /checksum/,
    ],
    [
      'a header length beyond the header',
      (p) => {
        const b = readFileSync(p)
        b.writeUInt32LE(HEAD_BYTES, 8)
        writeFileSync(p, b)
      },
      /header length/,
    ],
    ['a block size that is no power of two', (p) => writeFileSync(p, encodeKeptHeader({ ...HEADER, blockSize: 5000 }), { flag: 'r+' }), /block size/],
    ['an unknown algorithm', (p) => writeFileSync(p, encodeKeptHeader({ ...HEADER, algorithm: 'crc1' as 'xxh64' }), { flag: 'r+' }), /algorithm/],
    ['too many blocks', (p) => writeFileSync(p, encodeKeptHeader({ ...HEADER, capacity: 2 ** 45 }), { flag: 'r+' }), /too many blocks/],
    ['another commit', (p) => writeFileSync(p, encodeKeptHeader({ ...HEADER, generation: 'ff'.repeat(16) }), { flag: 'r+' }), /another commit/],
    ['another mirror CID', (p) => writeFileSync(p, encodeKeptHeader({ ...HEADER, mirrorCid: 'fffffffe' }), { flag: 'r+' }), /mirror changed/],
    ['another block size wanted', () => {}, /another block size/, { blockSize: 8192 }],
    ['another capacity wanted', () => {}, /another capacity/, { capacity: 4096 }],
    ['an empty generation wanted (a record older than generations)', () => {}, /another commit/, { generation: '' }],
  ]
  for (const [i, [what, spoil, why, want]] of cases.entries()) {
    const sub = join(dir, `c${i}`)
    mkdirSync(sub)
    const p = await writeSample(sub)
    spoil(p)
    const k = await KeptMap.open(p, { ...WANT, ...want })
    t.match(k, why, what)
  }
  // entries that are not regular files are never opened as maps
  mkdirSync(join(dir, 'good'))
  const good = await writeSample(join(dir, 'good'))
  symlinkSync(good, join(dir, 'link.map'))
  t.match(await KeptMap.open(join(dir, 'link.map'), WANT), /symbolic link/, 'a symbolic link to a valid map')
  execFileSync('mkfifo', [join(dir, 'fifo.map')])
  t.match(await KeptMap.open(join(dir, 'fifo.map'), WANT), /FIFO/, 'a FIFO (no hang)')
  mkdirSync(join(dir, 'dir.map'))
  t.match(await KeptMap.open(join(dir, 'dir.map'), WANT), /folder/, 'a folder')
  t.equal(await KeptMap.open(join(dir, 'none.map'), WANT), 'none', 'no map')
})

const sealedLines = (lines: LogLine[]): LogLine[] => lines.filter((l) => l.msg === 'disk sealed')
const state = (store: string): { generation: string; disks: Record<string, { generation: string; mirrorCid: string; proven?: { kind: string; cycle: number } }> } =>
  JSON.parse(readFileSync(join(store, VM, '.grainline', 'state.json'), 'utf8'))
const mapPath = (store: string): string => join(store, VM, '.grainline', 'vm-r.map')

t.test('against a receiver: a second resync reads only the blocks written since the first; what may have changed the mirror drops the map', async (t) => {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const rx = await startReceiver(env)
  t.teardown(() => rx.receiver.close())
  let img = pattern(SIZE, 1)
  const a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, VM, 1, [seedPlan(0, NAME, img, '01'.repeat(8))], { alg: ALG })
  a.close()
  await a.whenClosed()
  t.notOk(existsSync(mapPath(env.store)), 'a seed leaves no map')

  // resync 1: the source changed blocks 4 and 30; no map yet, the whole mirror is read
  img = Buffer.from(img)
  img.fill(0x11, 4 * BS, 5 * BS)
  img.fill(0x22, 30 * BS + 100, 30 * BS + 200)
  let r = await resyncCycle(env, rx.url, 2, img)
  t.same(r.sent, [4, 30], 'only the differing blocks travel')
  t.match(sealedLines(rx.logs.lines).at(-1), { mapMirrorBytes: SIZE, mapKeptBlocks: 0 }, 'the first resync reads the whole mirror')
  t.ok(readFileSync(flat(env)).equals(img), 'mirror equals the source')
  t.match(state(env.store).disks[NAME]?.proven, { kind: 'resync', cycle: 2 }, 'a resync that read every block proves the disk')
  const rec = state(env.store).disks[NAME]
  const k = await KeptMap.open(mapPath(env.store), { generation: rec?.generation ?? '', mirrorCid: rec?.mirrorCid ?? '', size: SIZE, capacity: SIZE })
  if (typeof k === 'string') throw new Error(`no kept map after the resync: ${k}`)
  t.same(
    [...(await k.read(0, BLOCKS)).stale].flatMap((s, b) => (s === 1 ? [b] : [])),
    [4, 30],
    'kept: the written blocks stale',
  )
  await k.close()

  // an incremental writes block 12 (and 13 partly)
  const prev = img
  img = Buffer.from(img)
  pattern(BS + 4096, 77).copy(img, 12 * BS)
  const b = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(b, VM, 3, [incPlan(0, NAME, img, 2, 'inc3', [{ offset: 12 * BS, length: BS + 4096 }], 'vm-r-000001.vmdk', 'vm-r-000002.vmdk')], { alg: ALG })
  b.close()
  await b.whenClosed()
  t.notOk(readFileSync(flat(env)).equals(prev), 'the incremental changed the mirror')

  // resync 2: the source changed block 20; only blocks 4, 12, 13 and 30 are read, and the map sent is the mirror's
  const mirror = readFileSync(flat(env))
  img = Buffer.from(img)
  img.fill(0x33, 20 * BS, 21 * BS)
  r = await resyncCycle(env, rx.url, 4, img)
  t.same(r.map, mapOf(mirror), "the map sent is the mirror's true digests")
  t.same(r.sent, [20], 'only the differing block travels')
  t.match(sealedLines(rx.logs.lines).at(-1), { mapMirrorBytes: 4 * BS, mapKeptBlocks: BLOCKS - 4 }, 'the second resync reads only the 4 stale blocks')
  t.ok(readFileSync(flat(env)).equals(img), 'mirror equals the source')
  t.match(state(env.store).disks[NAME]?.proven, { kind: 'resync', cycle: 2 }, 'a resync from the kept map does not claim a new proof')

  // the mirror modified behind the receiver's back (its descriptor CID): the next resync reads it whole
  const desc = join(env.store, VM, 'vm-r.vmdk')
  writeFileSync(desc, readFileSync(desc, 'utf8').replace(/^CID=.*$/m, 'CID=0badc0de'))
  r = await resyncCycle(env, rx.url, 5, img)
  t.same(r.sent, [], 'nothing differs')
  t.match(sealedLines(rx.logs.lines).at(-1), { mapMirrorBytes: SIZE, mapKeptBlocks: 0 }, 'a modified mirror is read whole')
  t.ok(
    rx.logs.lines.some((l) => l.msg === 'no kept block map: the resync reads the whole mirror' && /modified/.test(String(l.why))),
    'and why is logged',
  )
  t.match(state(env.store).disks[NAME]?.proven, { kind: 'resync', cycle: 5 })
  await rx.receiver.close()

  // a failed block check drops the map; a passing one keeps it
  t.ok(existsSync(mapPath(env.store)), 'the whole-read resync left a map')
  const vm = await VmMirror.acquire(env.store, VM, pino({ level: 'silent' }))
  const u64 = (b: number): Uint8Array => {
    const x = new Uint8Array(8)
    new DataView(x.buffer).setBigUint64(0, BigInt(b), true)
    return x
  }
  const good = mapOf(img)
  let c = await checkBlocks(vm, NAME, { blockSize: BS, blocks: u64(7), digests: good.subarray(7 * LEN, 8 * LEN), algorithm: ALG })
  t.equal(c.ok, true)
  t.ok(existsSync(mapPath(env.store)), 'a clean block check keeps the map')
  c = await checkBlocks(vm, NAME, { blockSize: BS, blocks: u64(7), digests: Buffer.alloc(LEN), algorithm: ALG })
  t.equal(c.ok, false)
  t.notOk(existsSync(mapPath(env.store)), 'a failed block check (E_DIVERGED) drops the map')
  vm.release()
})

t.test('a hold on the mirror (a failover may boot it) drops the kept maps', async (t) => {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const rx = await startReceiver(env)
  const img = pattern(SIZE, 3)
  const a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, VM, 1, [seedPlan(0, NAME, img, '01'.repeat(8))], { alg: ALG })
  a.close()
  await a.whenClosed()
  await resyncCycle(env, rx.url, 2, img)
  await rx.receiver.close()
  t.ok(existsSync(mapPath(env.store)))
  const vm = await VmMirror.acquire(env.store, VM, pino({ level: 'silent' }))
  t.teardown(() => vm.release())
  await vm.setHolds([{ id: 'h1', cycle: 2, dir: join(env.dir, 'fo'), kind: 'failover', createdAt: new Date().toISOString() }])
  t.notOk(existsSync(mapPath(env.store)), 'gone with the hold')
})
