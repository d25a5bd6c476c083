#!/usr/bin/env node
// Receiver apply benchmark: raw sequential write (dd conv=fdatasync) vs. a
// seed (new sparse flat, data only) and a journaled in-place incremental
// (undo journal: read old + write journal + fsync + write + fsync) of the same
// size, in the same run, on the same file system, over a real TLS WebSocket.
// Frames (digest xxh64, no compression) are built before timing so that the
// figures measure the receiver, not the scripted agent.
//
//   node scripts/bench-receiver.mjs            # 1024 MiB, dir ./bench-out
//   BENCH_MIB=256 BENCH_DIR=/mnt/x node scripts/bench-receiver.mjs
import { execFileSync } from 'node:child_process'
import { mkdirSync, rmSync, readFileSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { randomFillSync } from 'node:crypto'
import { once } from 'node:events'
import WebSocket from 'ws'
import { CycleDigest, MessageKind, PROTOCOL_VERSION, SUBPROTOCOL, createDigest, cycleIdentity, decodeMessage, encodeMessage, initDigests } from '@grainline/protocol'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { receiverMain } from '@grainline/test-utils'

const MiB = 1024 * 1024
const N = Number(process.env.BENCH_MIB ?? 1024)
const EXT = 4 * MiB
const dir = resolve(process.env.BENCH_DIR ?? 'bench-out', 'receiver')
rmSync(dir, { recursive: true, force: true })
mkdirSync(dir, { recursive: true })

function dd() {
  const f = join(dir, 'dd.raw')
  const t0 = process.hrtime.bigint()
  execFileSync('dd', ['if=/dev/zero', `of=${f}`, 'bs=1M', `count=${N}`, 'conv=fdatasync'], { stdio: 'ignore' })
  const s = Number(process.hrtime.bigint() - t0) / 1e9
  rmSync(f)
  return N / s
}

await initDigests()
execFileSync(
  'openssl',
  [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-subj',
    '/CN=localhost',
    '-addext',
    'subjectAltName=IP:127.0.0.1',
    '-days',
    '2',
    '-keyout',
    join(dir, 'k.pem'),
    '-out',
    join(dir, 'c.pem'),
  ],
  { stdio: 'ignore' },
)
const token = 'bench-token-0123456789abcdef'
writeFileSync(join(dir, 'tokens.json'), JSON.stringify({ tokens: [{ name: 'bench', token, vms: ['*'] }] }))
// the receiver runs as its own process (as in production), so that the
// scripted agent's TLS and masking do not share its CPU
const child = spawn(
  process.execPath,
  [
    ...(process.env.BENCH_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROF}`] : []),
    receiverMain(),
    '--listen',
    '127.0.0.1:0',
    '--store',
    join(dir, 'store'),
    '--tokens',
    join(dir, 'tokens.json'),
    '--tls-cert',
    join(dir, 'c.pem'),
    '--tls-key',
    join(dir, 'k.pem'),
    '--log-level',
    process.env.BENCH_LOG ?? 'warn',
    '--batch-bytes',
    String(32 * MiB),
  ],
  { stdio: ['ignore', 'pipe', 'inherit'] },
)
process.on('exit', () => child.kill('SIGKILL'))
const [line] = await once(createInterface({ input: child.stdout }), 'line')
const { port } = JSON.parse(line)

function frames(disk, seedByte) {
  const out = []
  const cd = new CycleDigest('xxh64')
  const buf = Buffer.alloc(EXT)
  for (let seq = 0, off = 0; off < N * MiB; seq++, off += EXT) {
    randomFillSync(buf)
    buf[0] = seedByte
    const digest = createDigest('xxh64').update(buf).digest()
    cd.add({ offset: off, length: EXT, zero: false, digest })
    out.push(encodeMessage({ kind: MessageKind.Extent, disk, seq, offset: off, length: EXT, zero: false, compression: 'none', data: buf, digest }))
  }
  return { out, end: { kind: MessageKind.DiskEnd, disk, extents: out.length, dataBytes: N * MiB, zeroBytes: 0, digest: cd.digest() } }
}

async function cycle(cycle, mode, f) {
  const ws = new WebSocket(`wss://127.0.0.1:${port}/`, SUBPROTOCOL, { headers: { Authorization: `Bearer ${token}` }, ca: readFileSync(join(dir, 'c.pem')), perMessageDeflate: false })
  await once(ws, 'open')
  const inbox = []
  let wake
  ws.on('message', (d) => {
    inbox.push(decodeMessage(d))
    wake?.()
  })
  const next = async () => {
    while (inbox.length === 0)
      await new Promise((r) => {
        wake = r
      })
    return inbox.shift()
  }
  ws.send(
    encodeMessage({
      kind: MessageKind.Hello,
      versions: [PROTOCOL_VERSION],
      software: 'bench',
      digests: ['xxh64'],
      compressions: ['none'],
      limits: { maxMessageBytes: EXT + 65536, maxExtentBytes: EXT, windowBytes: 64 * MiB },
    }),
  )
  await next()
  ws.send(encodeMessage({ kind: MessageKind.VmOpen, vm: 'bench', cycle, compat: { hwVersion: 14, datastoreType: 'local', guestOS: 'x' }, files: [], disks: ['bench.vmdk'] }))
  const baseGeneration = mode === 'seed' ? '' : (await next()).generation
  const source = { layers: [{ file: cycle === 1 ? 'bench.vmdk' : `bench-00000${cycle - 1}.vmdk`, cid: '00000001', parentCid: 'ffffffff' }], successor: `bench-00000${cycle}.vmdk` }
  ws.send(
    encodeMessage({
      kind: MessageKind.DiskOpen,
      disk: 0,
      name: 'bench.vmdk',
      capacity: N * MiB,
      cycle,
      mode,
      baseCycle: cycle - 1,
      baseGeneration,
      source,
      cycleId: cycleIdentity({ vm: 'bench', name: 'bench.vmdk', cycle, mode, baseCycle: cycle - 1, baseGeneration, source }),
      ddb: {},
      totalBytes: N * MiB,
      totalExtents: f.out.length,
    }),
  )
  const ds = await next()
  if (!ds.accepted) throw new Error(`refused ${ds.reason}`)
  const t0 = process.hrtime.bigint()
  let acked = -1
  const window = (64 * MiB) / EXT
  for (let seq = 0; seq < f.out.length; seq++) {
    while (seq - acked > window) {
      const m = await next()
      if (m.kind === MessageKind.ExtentAck) acked = m.seq
      else throw new Error(JSON.stringify(m))
    }
    ws.send(f.out[seq])
  }
  ws.send(encodeMessage(f.end))
  for (;;) {
    const m = await next()
    if (m.kind === MessageKind.DiskEnded) break
    if (m.kind !== MessageKind.ExtentAck) throw new Error(JSON.stringify(m))
  }
  ws.send(encodeMessage({ kind: MessageKind.Commit, vm: 'bench', cycle }))
  const c = await next()
  if (c.kind !== MessageKind.Committed) throw new Error(JSON.stringify(c))
  const s = Number(process.hrtime.bigint() - t0) / 1e9
  ws.close()
  return N / s
}

// Apply path alone (no network): the receiver's own store code, digest check
// included, 32 MiB durable batches — what the disk path costs.
async function applyOnly(cycle, mode, seedByte) {
  const { VmMirror } = await import(new URL('../packages/receiver/dist/src/mirror-store.js', import.meta.url).href)
  const log = (await import('pino')).pino({ level: 'warn' })
  const m = await VmMirror.acquire(join(dir, 'store2'), 'bench', log)
  const source = { layers: [{ file: cycle === 1 ? 'bench.vmdk' : `bench-00000${cycle - 1}.vmdk`, cid: '00000001', parentCid: 'ffffffff' }], successor: `bench-00000${cycle}.vmdk` }
  const baseGeneration = mode === 'seed' ? '' : m.state.generation
  const r = await m.openDisk({
    name: 'bench.vmdk',
    capacity: N * MiB,
    cycle,
    mode,
    baseCycle: cycle - 1,
    baseGeneration,
    source,
    cycleId: cycleIdentity({ vm: 'bench', name: 'bench.vmdk', cycle, mode, baseCycle: cycle - 1, baseGeneration, source }),
    ddb: {},
    algorithm: 'xxh64',
  })
  const a = r.apply
  const bufs = Array.from({ length: 24 }, () => randomFillSync(Buffer.alloc(EXT)))
  const t0 = process.hrtime.bigint()
  let batch = []
  let writing
  for (let seq = 0, off = 0; off < N * MiB; seq++, off += EXT) {
    const data = bufs[seq % 24]
    data[0] = seedByte
    const digest = createDigest('xxh64').update(data).digest()
    a.cycleDigest.add({ offset: off, length: EXT, zero: false, digest })
    batch.push({ seq, offset: off, length: EXT, zero: false, data, digest })
    if (batch.length * EXT >= 32 * MiB) {
      // pipelined like a session: journal batch n+1 while batch n is written
      await a.prepareBatch(batch)
      await writing
      writing = a.writeBatch(batch)
      batch = []
    }
  }
  await a.prepareBatch(batch)
  await writing
  await a.writeBatch(batch)
  await a.seal(a.cycleDigest.digest())
  await m.commit(cycle, [a], '')
  m.release()
  return N / (Number(process.hrtime.bigint() - t0) / 1e9)
}

const raw0 = dd()
const seedApply = await applyOnly(1, 'seed', 1)
const incApplyFirst = await applyOnly(2, 'incremental', 2)
const incApply = await applyOnly(3, 'incremental', 3)
rmSync(join(dir, 'store2'), { recursive: true, force: true })
const raw1 = dd()
const seed = await cycle(1, 'seed', frames(0, 1))
const raw2 = dd()
const incFirst = await cycle(2, 'incremental', frames(0, 2))
const inc = await cycle(3, 'incremental', frames(0, 3))
const raw3 = dd()
child.kill('SIGTERM')
await once(child, 'exit')
rmSync(join(dir, 'store'), { recursive: true, force: true })
const raw = (raw0 + raw1 + raw2 + raw3) / 4
const r = {
  mib: N,
  rawMiBs: +raw.toFixed(0),
  rawRuns: [raw0, raw1, raw2, raw3].map((x) => +x.toFixed(0)),
  applySeedMiBs: +seedApply.toFixed(0),
  applySeedPctOfRaw: +((100 * seedApply) / raw).toFixed(1),
  applyIncrementalFirstMiBs: +incApplyFirst.toFixed(0),
  applyIncrementalMiBs: +incApply.toFixed(0),
  applyIncrementalPctOfRaw: +((100 * incApply) / raw).toFixed(1),
  wireSeedMiBs: +seed.toFixed(0),
  wireSeedPctOfRaw: +((100 * seed) / raw).toFixed(1),
  wireIncrementalFirstMiBs: +incFirst.toFixed(0),
  wireIncrementalMiBs: +inc.toFixed(0),
  wireIncrementalPctOfRaw: +((100 * inc) / raw).toFixed(1),
}
console.log(JSON.stringify(r))
