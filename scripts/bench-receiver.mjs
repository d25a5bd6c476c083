#!/usr/bin/env node
// Receiver apply benchmark: raw sequential write (dd conv=fdatasync) vs. a
// seed (new sparse flat, data only) and a journaled in-place incremental
// (undo journal: read old + write journal + fsync + write + fsync) of the same
// size, in the same run, on the same file system, over a real TLS WebSocket.
// Frames (digest xxh64, no compression) are built before timing so that the
// figures measure the receiver, not the scripted agent.
//
// Rounds are interleaved (dd, seed apply path, seed over TLS; BENCH_ROUNDS,
// default 3); medians, per-round ratios to dd and the load average are printed.
// BENCH_PROF=<dir> writes the receiver process's CPU profile there.
// BENCH_RECEIVER_DIST=<dir>: the receiver process from another build (a copy of
// packages/receiver/dist kept inside packages/receiver, for an A/B of the wire path).
// BENCH_TIMELINE=1 prints the sender's time blocked on the window and its acks;
// BENCH_LOG=debug makes the receiver log each batch flushed/written/durable.
// BENCH_RECEIVER_ENV='K=V K2=V2': variables of the receiver process;
// BENCH_RECEIVER_ENV_B='K=V …': a second receiver process with these variables,
// whose seed over TLS runs in every round right after the first one's (an
// interleaved A/B of the receiver's environment, e.g. glibc malloc tunables:
// GLIBC_TUNABLES=glibc.malloc.trim_threshold=…). Neither receiver inherits
// GLIBC_TUNABLES or MALLOC_*_ from this process (that is the sender's).
// BENCH_SENDER_B=old: see below (an A/B of the scripted sender).
// BENCH_RECEIVER_DIST_B=<dir>: a second receiver process (alternated per round as
// with BENCH_RECEIVER_ENV_B) from another build — e.g. main's receiver dist
// copied inside packages/receiver — an interleaved A/B of receiver code, with
// each one's CPU and faults per GiB from the same run; its apply path (loaded
// into this process) also runs in every round, alternated with this build's.
// Before each timed step the file system is synced (`sync -f`; BENCH_SETTLE=0:
// not), so that no step carries the previous one's deletions (discards, on a
// file system mounted with `discard`) or writeback; the settle times, and what
// the block device did during each step (/proc/diskstats: written, discarded,
// flushes), are printed. The apply path runs through the session's
// ApplyPipeline (BENCH_APPLY=serial: the old serial loop) and prints each
// batch's journal / write / sync times.

//
//   node scripts/bench-receiver.mjs            # 1024 MiB, dir ./bench-out
//   BENCH_MIB=256 BENCH_ROUNDS=5 BENCH_DIR=/mnt/x node scripts/bench-receiver.mjs
import { execFileSync } from 'node:child_process'
import { mkdirSync, rmSync, readFileSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { randomFillSync } from 'node:crypto'
import { cpus, loadavg } from 'node:os'
import { once } from 'node:events'
import { isIP } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import WebSocket from 'ws'
import { CycleDigest, MessageKind, PROTOCOL_VERSION, SUBPROTOCOL, createDigest, cycleIdentity, decodeMessage, encodeMessage, encodeMessageParts, initDigests } from '@grainline/protocol'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath, pathToFileURL } from 'node:url'

const MiB = 1024 * 1024
const N = Number(process.env.BENCH_MIB ?? 1024)
const EXT = 4 * MiB
// the agent's window and the receiver's batch (BENCH_WINDOW_MIB, BENCH_BATCH_MIB; defaults: the products' defaults)
const WINDOW = Number(process.env.BENCH_WINDOW_MIB ?? 64) * MiB
const BATCH = Number(process.env.BENCH_BATCH_MIB ?? 32) * MiB
// The scripted agent's sender sends as the agent's Connection does: it waits
// once ws's bufferedAmount is above BENCH_SENDER_HWM_MIB (default 4; 0: never,
// the whole window may queue in ws, as this script did before 2026-12-01), and
// gives ws a TLS socket without `_writev`, so Node does not join the queued
// writes into one fresh buffer before encrypting them (TLSWrap::DoWrite;
// BENCH_SENDER_NO_JOIN=0: Node's own socket, the agent before that day).
const SENDER_HWM = Number(process.env.BENCH_SENDER_HWM_MIB ?? 4) * MiB
const SENDER_NO_JOIN = process.env.BENCH_SENDER_NO_JOIN !== '0'
// BENCH_SENDER_PARTS=1: each Extent goes out as the agent sends it — one message in
// three fragments (map head, payload by reference, digest: encodeMessageParts)
// instead of one frame
const SENDER_PARTS = process.env.BENCH_SENDER_PARTS === '1'
function tlsNoJoin(opts) {
  // as ws's own tlsConnect
  opts.path = undefined
  if (!opts.servername && opts.servername !== '') opts.servername = isIP(opts.host) ? '' : opts.host
  const s = tlsConnect(opts)
  s._writev = null
  return s
}
// BENCH_WIRE_ONLY=1: dd and the seed over TLS only (profiling the wire path)
const WIRE_ONLY = process.env.BENCH_WIRE_ONLY === '1'
const dir = resolve(process.env.BENCH_DIR ?? 'bench-out', 'receiver')
rmSync(dir, { recursive: true, force: true })
mkdirSync(dir, { recursive: true })

function dd() {
  const f = join(dir, 'dd.raw')
  settle('dd')
  const io = ioMark()
  const t0 = process.hrtime.bigint()
  execFileSync('dd', ['if=/dev/zero', `of=${f}`, 'bs=1M', `count=${N}`, 'conv=fdatasync'], { stdio: 'ignore' })
  const s = Number(process.hrtime.bigint() - t0) / 1e9
  ioSteps.push(ioSince(io, 'dd'))
  rmSync(f)
  return N / s
}

// Settling between timed steps (issue #17, perf13). On a file system mounted with
// `discard` (this VM's ext4) the blocks a deletion frees are discarded by the
// journal commit that follows, and any fdatasync waits for that commit; dirty
// pages of a step (or of another process) are written back during the next.
// Every step deletes what the previous one wrote. Before each timed step the
// file system is synced (`sync -f`: the journal committed, its discards and
// writeback done), so a step carries nothing of the one before; the time that
// took is printed per step. (The apply step's openDisk fsyncs before its timer
// anyway; the dd and wire steps had no such sync.) What other processes do on
// the device during a step is printed with it (/proc/diskstats).
// BENCH_SETTLE=0: no settling (the script before 2026-12-01 19:45).
const SETTLE = process.env.BENCH_SETTLE !== '0'
const settles = []
function settle(step) {
  if (!SETTLE) return
  const t0 = process.hrtime.bigint()
  execFileSync('sync', ['-f', dir], { stdio: 'ignore' })
  settles.push([step, Number(process.hrtime.bigint() - t0) / 1e6])
}
// what the block device did during a step (/proc/diskstats of the store's device, Linux; fields after the
// name: 7 sectors written, 14 sectors discarded, 15 ms discarding, 16 flushes, 17 ms flushing)
/** /proc/diskstats, a row of fields per device */
function diskstats() {
  return readFileSync('/proc/diskstats', 'utf8')
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
}
const DEV = (() => {
  try {
    const st = execFileSync('stat', ['-c', '%d', dir], { encoding: 'utf8' }).trim()
    const major = Number(st) >> 8
    const minor = Number(st) & 0xff
    const line = diskstats().find((v) => Number(v[0]) === major && Number(v[1]) === minor)
    return line?.[2]
  } catch {
    return undefined
  }
})()
function ioMark() {
  if (DEV === undefined) return undefined
  const v = diskstats().find((x) => x[2] === DEV)
  const dirty = /Dirty:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))
  return { t: process.hrtime.bigint(), f: v.slice(3).map(Number), dirtyKiB: Number(dirty?.[1] ?? NaN) }
}
const ioSteps = []
function ioSince(m, step) {
  const n = ioMark()
  if (m === undefined || n === undefined) return { step }
  const d = (i) => n.f[i - 1] - m.f[i - 1]
  return {
    step,
    ms: Number(n.t - m.t) / 1e6,
    dirtyAtStartMiB: m.dirtyKiB / 1024,
    writtenMiB: (d(7) * 512) / MiB,
    discardedMiB: (d(14) * 512) / MiB,
    discardMs: d(15),
    flushes: d(16),
    flushMs: d(17),
  }
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
/** this process's environment without glibc malloc settings, plus `spec` ('K=V K2=V2') */
function receiverEnv(spec) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'GLIBC_TUNABLES' && !/^MALLOC_.*_$/.test(k)))
  for (const kv of (spec ?? '').split(/\s+/).filter(Boolean)) {
    const i = kv.indexOf('=')
    if (i <= 0) throw new Error(`BENCH_RECEIVER_ENV: not K=V: ${kv}`)
    env[kv.slice(0, i)] = kv.slice(i + 1)
  }
  return env
}
async function startReceiver(spec, name, dist = process.env.BENCH_RECEIVER_DIST) {
  const child = spawn(
    process.execPath,
    [
      ...(process.env.BENCH_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROF}`] : []),
      dist ? resolve(dist, 'src/main.js') : fileURLToPath(new URL('../packages/receiver/dist/src/main.js', import.meta.url)),
      '--listen',
      '127.0.0.1:0',
      '--store',
      join(dir, `store${name}`),
      '--tokens',
      join(dir, 'tokens.json'),
      '--tls-cert',
      join(dir, 'c.pem'),
      '--tls-key',
      join(dir, 'k.pem'),
      '--log-level',
      process.env.BENCH_LOG ?? 'warn',
      '--batch-bytes',
      String(BATCH),
      ...(process.env.BENCH_WINDOW_MIB ? ['--window-bytes', String(WINDOW)] : []),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'], env: receiverEnv(spec) },
  )
  process.on('exit', () => child.kill('SIGKILL'))
  const [line] = await once(createInterface({ input: child.stdout }), 'line')
  const { port } = JSON.parse(line)
  // for attaching a profiler (perf record -p, strace -c -p)
  console.error(`receiver ${name}: pid ${child.pid}, env ${spec || '(none)'}, build ${dist ?? 'packages/receiver/dist'}; this process (the sender): pid ${process.pid}`)
  return { child, port, name, spec: spec ?? '', dist: dist ?? '', cpu: [] }
}
const rxA = await startReceiver(process.env.BENCH_RECEIVER_ENV, 'A')
// BENCH_SENDER_B=old: receiver B has A's variables and is fed by the old sender
// (no high-water mark, Node's joining TLS socket): an A/B of the sender in one run
const oldSenderB = process.env.BENCH_SENDER_B === 'old'
const distB = process.env.BENCH_RECEIVER_DIST_B
const rxB =
  process.env.BENCH_RECEIVER_ENV_B === undefined && !oldSenderB && distB === undefined
    ? undefined
    : Object.assign(await startReceiver(oldSenderB || process.env.BENCH_RECEIVER_ENV_B === undefined ? process.env.BENCH_RECEIVER_ENV : process.env.BENCH_RECEIVER_ENV_B, 'B', distB), {
        oldSender: oldSenderB,
      })

// CPU seconds (user, system) the receiver process has used so far (/proc, Linux): a
// figure that the machine's load inflates far less than wall time
const TICK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim())
function receiverCpu(child) {
  try {
    const f = readFileSync(`/proc/${child.pid}/stat`, 'utf8')
    const v = f.slice(f.lastIndexOf(')') + 2).split(' ')
    return { user: Number(v[11]) / TICK, system: Number(v[12]) / TICK, faults: Number(v[7]) }
  } catch {
    return { user: NaN, system: NaN, faults: NaN }
  }
}

function frames(disk, seedByte) {
  const out = []
  const cd = new CycleDigest('xxh64')
  for (let seq = 0, off = 0; off < N * MiB; seq++, off += EXT) {
    // a buffer per extent: in parts the payload is sent by reference
    const buf = randomFillSync(Buffer.allocUnsafe(EXT))
    buf[0] = seedByte
    const digest = createDigest('xxh64').update(buf).digest()
    cd.add({ offset: off, length: EXT, zero: false, digest })
    const msg = { kind: MessageKind.Extent, disk, seq, offset: off, length: EXT, zero: false, compression: 'none', data: buf, digest }
    out.push(SENDER_PARTS ? encodeMessageParts(msg) : encodeMessage(msg))
  }
  return { out, end: { kind: MessageKind.DiskEnd, disk, extents: out.length, dataBytes: N * MiB, zeroBytes: 0, digest: cd.digest() } }
}

async function cycle(cycle, mode, f, vm = 'bench', rx = rxA) {
  const { port } = rx
  settle(`${mode} over TLS`)
  // the agent's own transport settings over wss:// (packages/agent connection.ts): no deflate, a zero
  // mask (ws then skips masking; with its default per-byte masking this client measured ~50 MiB/s)
  const ws = new WebSocket(`wss://127.0.0.1:${port}/`, SUBPROTOCOL, {
    headers: { Authorization: `Bearer ${token}` },
    ca: readFileSync(join(dir, 'c.pem')),
    perMessageDeflate: false,
    generateMask: (mask) => mask.fill(0),
    ...(SENDER_NO_JOIN && rx.oldSender !== true ? { createConnection: tlsNoJoin } : {}),
  })
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
      limits: { maxMessageBytes: EXT + 65536, maxExtentBytes: EXT, windowBytes: WINDOW },
    }),
  )
  await next()
  ws.send(encodeMessage({ kind: MessageKind.VmOpen, vm, cycle, compat: { hwVersion: 14, datastoreType: 'local', guestOS: 'x' }, files: [], disks: ['bench.vmdk'] }))
  const vmState = await next()
  const baseGeneration = mode === 'seed' ? '' : vmState.generation
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
      cycleId: cycleIdentity({ vm, name: 'bench.vmdk', cycle, mode, baseCycle: cycle - 1, baseGeneration, source }),
      ddb: {},
      totalBytes: N * MiB,
      totalExtents: f.out.length,
      blockSize: 0,
    }),
  )
  const ds = await next()
  if (!ds.accepted) throw new Error(`refused ${JSON.stringify(ds)}`)
  const t0 = process.hrtime.bigint()
  const c0 = receiverCpu(rx.child)
  const u0 = process.resourceUsage()
  const io = ioMark()
  let acked = -1
  const window = WINDOW / EXT
  // the sender's view: time blocked on a full window, and each ack (ms since the first extent, seq)
  let blocked = 0
  const acks = []
  const ms = () => Number(process.hrtime.bigint() - t0) / 1e6
  for (let seq = 0; seq < f.out.length; seq++) {
    if (seq - acked > window) {
      const b0 = ms()
      while (seq - acked > window) {
        const m = await next()
        if (m.kind === MessageKind.ExtentAck) {
          acked = m.seq
          acks.push([ms(), m.seq])
        } else throw new Error(JSON.stringify(m))
      }
      blocked += ms() - b0
    }
    if (SENDER_HWM > 0 && rx.oldSender !== true) {
      // as the agent's Connection.send: wait for this frame to leave once ws's buffer is above the mark
      const sent = new Promise((res, rej) => send(ws, f.out[seq], (e) => (e ? rej(e) : res())))
      sent.catch(() => {})
      if (ws.bufferedAmount > SENDER_HWM) await sent
    } else send(ws, f.out[seq])
  }
  const sentAt = ms()
  ws.send(encodeMessage(f.end))
  for (;;) {
    const m = await next()
    if (m.kind === MessageKind.DiskEnded) break
    if (m.kind !== MessageKind.ExtentAck) throw new Error(JSON.stringify(m))
    acks.push([ms(), m.seq])
  }
  const endedAt = ms()
  ws.send(encodeMessage({ kind: MessageKind.Commit, vm, cycle, retention: null }))
  const c = await next()
  if (c.kind !== MessageKind.Committed) throw new Error(JSON.stringify(c))
  const s = Number(process.hrtime.bigint() - t0) / 1e9
  ioSteps.push(ioSince(io, `${mode} over TLS${rx === rxA ? '' : ' B'}`))
  const c1 = receiverCpu(rx.child)
  const u1 = process.resourceUsage()
  const gib = N / 1024
  rx.cpu.push({
    user: (c1.user - c0.user) / gib,
    system: (c1.system - c0.system) / gib,
    faults: (c1.faults - c0.faults) / gib,
    // this process (the scripted agent, its TLS writes) in the same cycle
    senderUser: (u1.userCPUTime - u0.userCPUTime) / 1e6 / gib,
    senderSystem: (u1.systemCPUTime - u0.systemCPUTime) / 1e6 / gib,
    senderFaults: (u1.minorPageFault - u0.minorPageFault) / gib,
  })
  // BENCH_TIMELINE=1: the sender's side of the window, per wire cycle
  if (process.env.BENCH_TIMELINE === '1') {
    const gaps = acks.map((a, i) => a[0] - (i === 0 ? 0 : acks[i - 1][0]))
    console.log(
      `timeline ${mode} ${vm} (receiver ${rx.name}): ${(s * 1000).toFixed(0)} ms, sender blocked on the window ${blocked.toFixed(0)} ms (${((100 * blocked) / (s * 1000)).toFixed(0)} %), last extent sent at ${sentAt.toFixed(0)} ms, DiskEnded at ${endedAt.toFixed(0)} ms, ${acks.length} acks (mean ${(f.out.length / Math.max(1, acks.length)).toFixed(1)} extents each, gaps median ${median(gaps).toFixed(0)} max ${Math.max(...gaps).toFixed(0)} ms)`,
    )
    console.log(`acks [ms, seq]: ${JSON.stringify(acks.map(([t, q]) => [Math.round(t), q]))}`)
  }
  ws.close()
  return N / s
}
/** One message: a frame, or its parts as fragments (BENCH_SENDER_PARTS) */
function send(ws, frame, cb) {
  if (!Array.isArray(frame)) {
    ws.send(frame, cb)
    return
  }
  for (const [i, part] of frame.entries()) {
    if (i < frame.length - 1) ws.send(part, { binary: true, fin: false })
    else ws.send(part, { binary: true, fin: true }, cb)
  }
}
function median(xs) {
  const v = [...xs].sort((a, b) => a - b)
  const n = v.length
  return n === 0 ? NaN : n % 2 ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2
}

// Apply path alone (no network): the receiver's own store code, digest check
// included, 32 MiB durable batches — what the disk path costs. The batches go
// through the session's own ApplyPipeline, as a session drives them: a batch is
// journaled, its writes start once the previous batch's bytes are written (they
// overlap the previous batch's fdatasync), its fdatasync follows the previous
// one's (a group commit covers batches written before it started) — and the
// agent's window: an extent goes in only while at most the window (64 MiB) is
// not yet durable, as over the wire.
// BENCH_APPLY=serial: each batch written and fdatasync'ed before the next one's
// writes start (this script's loop before 2026-12-01 19:45: no overlap of
// writes with fdatasyncs, which the receiver has done since perf3).
// `dist`: another build's receiver (BENCH_RECEIVER_DIST_B), loaded in this process.
// Returns MiB/s and, per batch, the store's stages (ms): journal (prepareBatch),
// write (writeBatchData: the copy into the page cache), sync (syncBatch: the
// target's fdatasync and the resume marker), and the fdatasyncs actually run.
const APPLY_SERIAL = process.env.BENCH_APPLY === 'serial'
const compat = { hwVersion: 14, datastoreType: 'local', guestOS: 'otherlinux-64' }
async function applyOnly(cycle, mode, seedByte, dist = undefined, store = 'store2') {
  const src = dist ? `${pathToFileURL(resolve(dist, 'src')).href}/` : new URL('../packages/receiver/dist/src/', import.meta.url).href
  const { VmMirror } = await import(new URL('vm-mirror.js', src).href)
  const { ApplyPipeline } = await import(new URL('apply-pipeline.js', src).href)
  const log = (await import('pino')).pino({ level: 'warn' })
  const m = await VmMirror.acquire(join(dir, store), 'bench', log)
  const source = { layers: [{ file: cycle === 1 ? 'bench.vmdk' : `bench-00000${cycle - 1}.vmdk`, cid: '00000001', parentCid: 'ffffffff' }], successor: `bench-00000${cycle}.vmdk` }
  const baseGeneration = mode === 'seed' ? '' : m.state.generation
  const r = await m.openDisk(
    {
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
    },
    { compat },
  )
  const a = r.apply
  // each stage of each batch, timed on this instance (writeBatch calls the two stage 2 methods through it)
  const stages = { journal: [], write: [], sync: [] }
  const timed =
    (name, f) =>
    async (...args) => {
      const s0 = performance.now()
      try {
        return await f.apply(a, args)
      } finally {
        stages[name].push(performance.now() - s0)
      }
    }
  a.prepareBatch = timed('journal', a.prepareBatch)
  a.writeBatchData = timed('write', a.writeBatchData)
  a.syncBatch = timed('sync', a.syncBatch)
  const bufs = Array.from({ length: 24 }, () => randomFillSync(Buffer.alloc(EXT)))
  const cd = new CycleDigest('xxh64')
  settle(`${mode} apply`)
  const io = ioMark()
  const t0 = process.hrtime.bigint()
  if (APPLY_SERIAL) {
    let batch = []
    let writing
    for (let seq = 0, off = 0; off < N * MiB; seq++, off += EXT) {
      const data = bufs[seq % 24]
      data[0] = seedByte
      const digest = createDigest('xxh64').update(data).digest()
      cd.add({ offset: off, length: EXT, zero: false, digest })
      batch.push(a.accept({ seq, offset: off, length: EXT, zero: false, data, digest }))
      if (batch.length * EXT >= BATCH) {
        // journal batch n+1 while batch n is written and synced
        await a.prepareBatch(batch)
        await writing
        writing = a.writeBatch(batch)
        batch = []
      }
    }
    await a.prepareBatch(batch)
    await writing
    await a.writeBatch(batch)
  } else {
    // a buffer is reused three batches later: by then the pipeline has written that batch (a flush waits
    // for the previous batch's writes before it returns)
    // and the agent's window: an extent goes in only while at most WINDOW bytes are not durable (acked), as
    // over the wire — without it the writes run ahead at page-cache speed and one fdatasync covers many batches
    const disk = { handle: 0, name: 'bench.vmdk', apply: a, reusePayload: true }
    let acked = -1
    let wake
    const p = new ApplyPipeline(
      () => BATCH,
      (_d, seq) => {
        acked = seq
        wake?.()
      },
    )
    for (let seq = 0, off = 0; off < N * MiB; seq++, off += EXT) {
      while (seq - acked > WINDOW / EXT)
        await new Promise((res) => {
          wake = res
        })
      const data = bufs[seq % 24]
      data[0] = seedByte
      const digest = createDigest('xxh64').update(data).digest()
      cd.add({ offset: off, length: EXT, zero: false, digest })
      await p.add(disk, a.accept({ seq, offset: off, length: EXT, zero: false, data, digest }))
    }
    await p.idle()
  }
  await a.end({ ...a.counts, digest: cd.digest() })
  await m.commit(cycle, [a], '', compat)
  m.release()
  const mibs = N / (Number(process.hrtime.bigint() - t0) / 1e9)
  ioSteps.push(ioSince(io, `${mode} apply${dist ? ' B' : ''}`))
  return { mibs, stages, syncs: a.syncs, covered: a.coveredBatches }
}
const applyStats = []
/** MiB/s of an apply run; its batch stages kept for the summary */
function applied(kind, x) {
  applyStats.push({ kind, ...x })
  return x.mibs
}

// Interleaved rounds (ROUNDS, default 3): dd, the seed's apply path, a seed over
// TLS, each round in that order; a fresh store (apply path) and a fresh VM (wire)
// per round. Medians are reported, the ratios are per round (ours / that round's
// dd) and their medians. The incrementals follow, once, on the last round's mirrors.
const ROUNDS = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3))
const load0 = loadavg()
const rounds = []
for (let r = 0; r < ROUNDS; r++) {
  const raw = dd()
  rmSync(join(dir, 'store2'), { recursive: true, force: true })
  rmSync(join(dir, 'store2b'), { recursive: true, force: true })
  // with a receiver build B, its apply path runs in every round too, the two alternating which goes first
  let applyB = NaN
  if (!WIRE_ONLY && distB !== undefined && r % 2 === 1) applyB = applied('seed B', await applyOnly(1, 'seed', 1, distB, 'store2b'))
  const apply = WIRE_ONLY ? NaN : applied('seed', await applyOnly(1, 'seed', 1))
  if (!WIRE_ONLY && distB !== undefined && r % 2 === 0) applyB = applied('seed B', await applyOnly(1, 'seed', 1, distB, 'store2b'))
  const f = frames(0, 1)
  // with a receiver B, the two alternate which goes first
  let wireB = NaN
  if (rxB !== undefined && r % 2 === 1) wireB = await cycle(1, 'seed', f, `bench${r}`, rxB)
  const wire = await cycle(1, 'seed', f, `bench${r}`)
  if (rxB !== undefined && r % 2 === 0) wireB = await cycle(1, 'seed', f, `bench${r}`, rxB)
  rounds.push({ raw, apply, applyB, wire, wireB })
}
const incApplyFirst = WIRE_ONLY ? NaN : applied('incremental first', await applyOnly(2, 'incremental', 2))
const incApply = WIRE_ONLY ? NaN : applied('incremental steady', await applyOnly(3, 'incremental', 3))
const last = `bench${ROUNDS - 1}`
const f2 = WIRE_ONLY ? undefined : frames(0, 2)
const incFirst = WIRE_ONLY ? NaN : await cycle(2, 'incremental', f2, last)
// with a receiver B, its mirror of the last round takes the same incrementals
const incFirstB = WIRE_ONLY || rxB === undefined ? NaN : await cycle(2, 'incremental', f2, last, rxB)
const f3 = WIRE_ONLY ? undefined : frames(0, 3)
const incB = WIRE_ONLY || rxB === undefined ? NaN : await cycle(3, 'incremental', f3, last, rxB)
const inc = WIRE_ONLY ? NaN : await cycle(3, 'incremental', f3, last)
const rawEnd = dd()
const load1 = loadavg()
for (const rx of [rxA, rxB]) {
  if (rx === undefined) continue
  rx.child.kill('SIGTERM')
  await once(rx.child, 'exit')
}
for (const name of ['A', 'B']) rmSync(join(dir, `store${name}`), { recursive: true, force: true })
rmSync(join(dir, 'store2'), { recursive: true, force: true })
rmSync(join(dir, 'store2b'), { recursive: true, force: true })
const raw = median(rounds.map((x) => x.raw))
const pct = (x) => +(100 * x).toFixed(1)
const fmt = (xs) => xs.map((x) => x.toFixed(0)).join(' ')
const applyPct = median(rounds.map((x) => x.apply / x.raw))
const wirePct = median(rounds.map((x) => x.wire / x.raw))
console.log(
  `receiver: ${N} MiB of random data, 4 MiB extents${SENDER_PARTS ? ' (3 fragments each)' : ''}, window ${WINDOW / MiB} MiB, batch ${BATCH / MiB} MiB, ${ROUNDS} interleaved rounds, ${cpus().length} cores, sender high-water ${SENDER_HWM > 0 ? `${SENDER_HWM / MiB} MiB` : 'none'}${SENDER_NO_JOIN ? ', no writev join' : ''}${process.env.GLIBC_TUNABLES ? `, sender GLIBC_TUNABLES=${process.env.GLIBC_TUNABLES}` : ''}; load average before ${load0.map((x) => x.toFixed(2)).join(' ')}, after ${load1.map((x) => x.toFixed(2)).join(' ')}`,
)
console.log(`dd conv=fdatasync:         median ${raw.toFixed(0)} MiB/s  [${fmt(rounds.map((x) => x.raw))}]`)
console.log(
  `seed, apply path:          median ${median(rounds.map((x) => x.apply)).toFixed(0)} MiB/s  [${fmt(rounds.map((x) => x.apply))}]  ${pct(applyPct)} % of dd (median of rounds; target ≥ 70 %: ${applyPct >= 0.7 ? 'met' : 'missed'})`,
)
console.log(
  `seed over TLS, end to end: median ${median(rounds.map((x) => x.wire)).toFixed(0)} MiB/s  [${fmt(rounds.map((x) => x.wire))}]  ${pct(wirePct)} % of dd (median of rounds; target ≥ 60 %: ${wirePct >= 0.6 ? 'met' : 'missed'})`,
)
console.log(
  `incremental (once, vs dd ${rawEnd.toFixed(0)} MiB/s after them): apply path first/steady ${incApplyFirst.toFixed(0)}/${incApply.toFixed(0)} MiB/s, over TLS first/steady ${incFirst.toFixed(0)}/${inc.toFixed(0)} MiB/s`,
)
if (rxB !== undefined) {
  const wireBPct = median(rounds.map((x) => x.wireB / x.raw))
  console.log(
    `seed over TLS, receiver B: median ${median(rounds.map((x) => x.wireB)).toFixed(0)} MiB/s  [${fmt(rounds.map((x) => x.wireB))}]  ${pct(wireBPct)} % of dd; B/A (median of rounds) ${pct(median(rounds.map((x) => x.wireB / x.wire)))} %`,
  )
  if (!WIRE_ONLY) console.log(`incremental over TLS, receiver B: first/steady ${incFirstB.toFixed(0)}/${incB.toFixed(0)} MiB/s`)
  console.log(
    `receiver A env: ${rxA.spec || '(none)'}, build ${rxA.dist || 'packages/receiver/dist'}; receiver B env: ${rxB.spec || '(none)'}, build ${rxB.dist || 'packages/receiver/dist'}${rxB.oldSender ? '; receiver B fed by the old sender (no high-water mark, writev joined)' : ''}`,
  )
}
for (const rx of [rxA, rxB]) {
  if (rx === undefined) continue
  const tag = rxB === undefined ? 'receiver' : `receiver ${rx.name}`
  console.log(
    `${tag} CPU per GiB over TLS, per wire cycle (${rx.cpu.length > ROUNDS ? `${ROUNDS} seeds, then the incrementals` : 'seeds'}; user/system): ${rx.cpu.map((x) => `${x.user.toFixed(2)}/${x.system.toFixed(2)}`).join(' ')} s`,
  )
  console.log(`${tag} minor page faults per GiB over TLS, per wire cycle: ${rx.cpu.map((x) => x.faults.toFixed(0)).join(' ')}`)
  console.log(
    `sender (this process) with ${tag}, per GiB per wire cycle: CPU user/system ${rx.cpu.map((x) => `${x.senderUser.toFixed(2)}/${x.senderSystem.toFixed(2)}`).join(' ')} s, minor page faults ${rx.cpu.map((x) => x.senderFaults.toFixed(0)).join(' ')}`,
  )
}
if (distB !== undefined && !WIRE_ONLY) {
  console.log(
    `seed, apply path, build B: median ${median(rounds.map((x) => x.applyB)).toFixed(0)} MiB/s  [${fmt(rounds.map((x) => x.applyB))}]  ${pct(median(rounds.map((x) => x.applyB / x.raw)))} % of dd; B/A (median of rounds) ${pct(median(rounds.map((x) => x.applyB / x.apply)))} %`,
  )
}
const ms1 = (xs) => (xs.length === 0 ? '-' : median(xs).toFixed(1))
for (const kind of [...new Set(applyStats.map((x) => x.kind))]) {
  const xs = applyStats.filter((x) => x.kind === kind)
  const all = (k) => xs.flatMap((x) => x.stages[k])
  console.log(
    `${kind} apply${APPLY_SERIAL ? ' (serial)' : ''}, per 32 MiB batch, ms median [max]: journal ${ms1(all('journal'))} [${Math.max(...all('journal')).toFixed(0)}], write ${ms1(all('write'))} [${Math.max(...all('write')).toFixed(0)}], sync ${ms1(all('sync'))} [${Math.max(...all('sync')).toFixed(0)}]; fdatasyncs run / batches covered by an earlier one, per run: ${xs.map((x) => `${x.syncs}/${x.covered}`).join(' ')}`,
  )
}
if (SETTLE) {
  const kinds = [...new Set(settles.map(([k]) => k))]
  console.log(
    `settled before each step (sync -f: what the step before left to the journal, its discards and writeback), ms: ${kinds
      .map(
        (k) =>
          `${k} [${settles
            .filter(([x]) => x === k)
            .map(([, v]) => v.toFixed(0))
            .join(' ')}]`,
      )
      .join(', ')}`,
  )
}
if (DEV !== undefined) {
  for (const kind of [...new Set(ioSteps.map((x) => x.step))]) {
    const xs = ioSteps.filter((x) => x.step === kind)
    const f = (k, d = 0) => xs.map((x) => x[k].toFixed(d)).join(' ')
    console.log(
      `${DEV} during ${kind}: dirty at start [${f('dirtyAtStartMiB')}] MiB, written [${f('writtenMiB')}] MiB, discarded [${f('discardedMiB')}] MiB in [${f('discardMs')}] ms, flushes [${f('flushes')}] in [${f('flushMs')}] ms`,
    )
  }
}
const out = {
  mib: N,
  rounds: ROUNDS,
  load: [+load0[0].toFixed(2), +load1[0].toFixed(2)],
  rawMiBs: +raw.toFixed(0),
  rawRuns: [...rounds.map((x) => x.raw), rawEnd].map((x) => +x.toFixed(0)),
  applySeedMiBs: +median(rounds.map((x) => x.apply)).toFixed(0),
  applySeedPctOfRaw: pct(applyPct),
  applySerial: APPLY_SERIAL,
  settled: SETTLE,
  ...(distB === undefined || WIRE_ONLY ? {} : { applySeedBMiBs: +median(rounds.map((x) => x.applyB)).toFixed(0), applySeedBPctOfRaw: pct(median(rounds.map((x) => x.applyB / x.raw))) }),
  applyIncrementalFirstMiBs: +incApplyFirst.toFixed(0),
  applyIncrementalMiBs: +incApply.toFixed(0),
  applyIncrementalPctOfRaw: pct(incApply / median([raw, rawEnd])),
  wireSeedMiBs: +median(rounds.map((x) => x.wire)).toFixed(0),
  wireSeedPctOfRaw: pct(wirePct),
  wireIncrementalFirstMiBs: +incFirst.toFixed(0),
  wireIncrementalMiBs: +inc.toFixed(0),
  wireIncrementalPctOfRaw: pct(inc / median([raw, rawEnd])),
  receiverCpuSecPerGiB: rxA.cpu.map((x) => ({ user: +x.user.toFixed(2), system: +x.system.toFixed(2) })),
  receiverMinorFaultsPerGiB: rxA.cpu.map((x) => Math.round(x.faults)),
  ...(rxB === undefined
    ? {}
    : {
        receiverEnvB: rxB.spec,
        wireSeedBMiBs: +median(rounds.map((x) => x.wireB)).toFixed(0),
        wireSeedBPctOfRaw: pct(median(rounds.map((x) => x.wireB / x.raw))),
        receiverBCpuSecPerGiB: rxB.cpu.map((x) => ({ user: +x.user.toFixed(2), system: +x.system.toFixed(2) })),
        receiverBMinorFaultsPerGiB: rxB.cpu.map((x) => Math.round(x.faults)),
      }),
}
console.log(JSON.stringify(out))
