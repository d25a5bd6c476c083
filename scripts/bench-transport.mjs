#!/usr/bin/env node
// Benchmark: the bare transport (issue #17, target ≥ 85 %). The agent's own
// connection (packages/agent ReceiverClient → Connection → ws over TLS, its
// real send path: encodeMessageParts, fragments, the zero mask over wss://,
// the bufferedAmount high-water mark, a 64 MiB ack window) shipping 1 MiB
// extents to a sink that acknowledges each one, vs a plain Node TLS socket
// writing the same number of bytes in the same chunk sizes to a sink that
// counts them — both sinks in a separate process (as a receiver is), both on
// loopback with the same certificate and the receiver's TLS settings
// (packages/receiver/src/tls-options.ts: AES-128-GCM preferred).
//
//   npx tsc -b && node scripts/bench-transport.mjs [MiBPerRound] [rounds] [extentKiB]
//
// Rounds run interleaved (agent, tls, agent, tls, …; with `--masked` also a ws
// client with ws's default per-byte masking, the path before the zero mask;
// with `--pooled-sink` also the agent's connection into a sink that receives as
// the receiver does since perf7: payloads read into reused frames,
// packages/receiver/src/frame-pool.ts — the main ws sink is plain ws);
// reported are the median MiB/s of each, the median of the per-pair ratios
// agent/tls, and the load average before and after.
//
// `--sinks`: the receiving side alone, interleaved: a bare ws-over-TLS sink
// (the receiver's ws server options, discarding each message) vs a bare TLS sink
// counting bytes, fed by the same kind of sender (ws: one-frame messages of
// `extentKiB`, zero mask; TLS: the same bytes), each once with Node's default
// TLS 1.3 preference (AES-256-GCM) and once with the receiver's (AES-128-GCM
// first, see packages/receiver/src/tls-options.ts); and the ws sink once more with
// each message sent in three fragments as the agent sends an Extent (ws joins
// them: one more copy of the payload at the receiver).
import { execFileSync, fork } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer as createHttpsServer } from 'node:https'
import { cpus, loadavg, tmpdir } from 'node:os'
import { isIP } from 'node:net'
import { join } from 'node:path'
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls'
import WebSocket, { WebSocketServer } from 'ws'
import { DEFAULT_LIMITS, decodeMessage, encodeMessage, encodeMessageParts, MessageKind, maxMessageBytesFor, PROTOCOL_VERSION, SUBPROTOCOL } from '../protocol/dist/src/index.js'

const MiB = 1024 * 1024
const args = process.argv.slice(2).filter((a) => !a.startsWith('--'))
const withMasked = process.argv.includes('--masked')
const withPooled = process.argv.includes('--pooled-sink')
// --only=agent / --only=tls: one side only (for profiling with --cpu-prof)
const only = process.argv.find((a) => a.startsWith('--only='))?.slice(7)
const sinksMode = process.argv.includes('--sinks')
const { RECEIVER_TLS_OPTIONS } = await import('../packages/receiver/dist/src/tls-options.js')

if (process.argv[2] === 'sink') await sink(process.argv[3])
else await main()

/** The sink process: a ws server over https (the receiver's ws options) that acks every extent, and a plain TLS server that counts bytes. */
async function sink(dir) {
  const cert = readFileSync(join(dir, 'c.pem'))
  const key = readFileSync(join(dir, 'k.pem'))
  // the receiver's TLS settings (its cipher order) on both sinks
  const https = createHttpsServer({ cert, key, ...RECEIVER_TLS_OPTIONS })
  // the receiver's ws receive path (its session.ts since perf7): large payloads read from the TLS chunks into
  // reused frames, messages as fragments joined around them; the frame goes back once the message is handled
  const { FramePool, consumeIntoPool, joinFragments } = await import('../packages/receiver/dist/src/frame-pool.js')
  const pooledHttps = createHttpsServer({ cert, key, ...RECEIVER_TLS_OPTIONS })
  const wsOptions = { maxPayload: DEFAULT_LIMITS.maxMessageBytes, perMessageDeflate: false, handleProtocols: (p) => (p.has(SUBPROTOCOL) ? SUBPROTOCOL : false) }
  new WebSocketServer({ server: pooledHttps, ...wsOptions }).on('connection', (ws) => {
    const pool = new FramePool(() => 128 * MiB)
    ws.binaryType = 'fragments'
    if (!consumeIntoPool(ws._receiver, pool)) console.error('bench-transport: ws internals differ, the pooled sink reads as plain ws does')
    ws.on('message', (d) => {
      const frame = joinFragments(Array.isArray(d) ? d : [d], pool)
      handle(ws, frame)
      pool.give(frame)
    })
  })
  const wss = new WebSocketServer({ server: https, ...wsOptions })
  wss.on('connection', (ws) => {
    ws.on('message', (d) => handle(ws, d))
  })
  function handle(ws, d) {
    {
      const m = decodeMessage(d, { maxMessageBytes: DEFAULT_LIMITS.maxMessageBytes })
      if (m.kind === MessageKind.Extent) ws.send(encodeMessage({ kind: MessageKind.ExtentAck, disk: m.disk, seq: m.seq }))
      else if (m.kind === MessageKind.Hello)
        ws.send(encodeMessage({ kind: MessageKind.Welcome, version: PROTOCOL_VERSION, software: 'sink', digest: 'xxh64', compression: 'none', limits: m.limits, session: 's' }))
      else if (m.kind === MessageKind.VmOpen) ws.send(encodeMessage({ kind: MessageKind.VmState, vm: m.vm, exists: false, committedCycle: 0, inflightCycle: 0, compatible: true, generation: '' }))
      else if (m.kind === MessageKind.DiskOpen)
        ws.send(
          encodeMessage({
            kind: MessageKind.DiskState,
            disk: m.disk,
            accepted: true,
            reason: '',
            committedCycle: 0,
            committedSource: null,
            mirrorCid: '',
            modified: false,
            resumeSeq: 0,
            resumeBytes: 0,
          }),
        )
      else if (m.kind === MessageKind.DiskEnd) ws.send(encodeMessage({ kind: MessageKind.DiskEnded, disk: m.disk }))
    }
  }
  const tls = createTlsServer({ cert, key, ...RECEIVER_TLS_OPTIONS }, (s) => {
    let want = -1
    let got = 0
    let head = Buffer.alloc(0)
    s.on('data', (d) => {
      if (want < 0) {
        // 8-byte length prefix, then that many bytes
        head = Buffer.concat([head, d])
        if (head.length < 8) return
        want = Number(head.readBigUInt64BE(0))
        got = head.length - 8
      } else got += d.length
      if (got >= want) {
        s.write(Buffer.from([1]))
        want = -1
        head = Buffer.alloc(0)
      }
    })
  })
  /** a bare sink: the first 8 bytes say how many follow; one byte back once they are all in */
  const counter = (send) => {
    let want = -1
    let got = 0
    let head = Buffer.alloc(0)
    return (d) => {
      if (want < 0) {
        head = Buffer.concat([head, d])
        if (head.length < 8) return
        want = Number(head.readBigUInt64BE(0))
        got = head.length - 8
      } else got += d.length
      if (got >= want) {
        send()
        want = -1
        head = Buffer.alloc(0)
      }
    }
  }
  const servers = { https, tls, pooled: pooledHttps }
  if (process.argv.includes('--sinks')) {
    for (const [name, opts] of [
      ['Default', {}],
      ['Receiver', RECEIVER_TLS_OPTIONS],
    ]) {
      const h = createHttpsServer({ cert, key, ...opts })
      new WebSocketServer({ server: h, maxPayload: DEFAULT_LIMITS.maxMessageBytes, perMessageDeflate: false }).on('connection', (ws) => {
        ws.on(
          'message',
          counter(() => ws.send(Buffer.from([1]))),
        )
      })
      servers[`ws${name}`] = h
      servers[`tls${name}`] = createTlsServer({ cert, key, ...opts }, (s) =>
        s.on(
          'data',
          counter(() => s.write(Buffer.from([1]))),
        ),
      )
    }
  }
  for (const srv of Object.values(servers)) srv.listen(0, '127.0.0.1')
  await Promise.all(Object.values(servers).map((srv) => once(srv, 'listening')))
  process.on('message', () => process.send({ cpu: process.cpuUsage() }))
  process.send({ ws: https.address().port, tls: tls.address().port, ...Object.fromEntries(Object.entries(servers).map(([k, v]) => [k, v.address().port])) })
}

async function main() {
  const perRound = Number(args[0] ?? 512)
  const rounds = Math.max(3, Number(args[1] ?? 9))
  const extent = Number(args[2] ?? 1024) * 1024
  const dir = mkdtempSync(join(tmpdir(), 'bench-transport-'))
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
  const ca = readFileSync(join(dir, 'c.pem'))
  // BENCH_SINK_ENV='K=V …': variables of the sink process (e.g. the receiver unit's GLIBC_TUNABLES)
  const sinkEnv = { ...process.env }
  for (const kv of (process.env.BENCH_SINK_ENV ?? '').split(/\s+/).filter(Boolean)) sinkEnv[kv.slice(0, kv.indexOf('='))] = kv.slice(kv.indexOf('=') + 1)
  const child = fork(new URL(import.meta.url).pathname, ['sink', dir, ...(sinksMode ? ['--sinks'] : [])], { stdio: 'inherit', env: sinkEnv })
  process.on('exit', () => child.kill('SIGKILL'))
  const [ports] = await once(child, 'message')
  const { ReceiverClient } = await import('../packages/agent/dist/src/receiver-client.js')
  const { SendWindow } = await import('../packages/agent/dist/src/window.js')
  const count = Math.max(1, Math.floor((perRound * MiB) / extent))
  const payloads = Array.from({ length: 8 }, () => randomBytes(extent))
  const digest = randomBytes(8)
  const msg = (seq) => ({ disk: 0, seq, offset: seq * extent, length: extent, zero: false, compression: 'none', data: payloads[seq % payloads.length], digest })
  // the bytes the agent puts on the wire per extent (message parts), which the TLS baseline writes as well
  const partSizes = encodeMessageParts({ kind: MessageKind.Extent, ...msg(0) }).map((p) => p.length)
  const wireBytes = count * partSizes.reduce((a, b) => a + b, 0)
  let cipher = ''

  async function agentRound(port = ports.ws) {
    const c = await ReceiverClient.connect({ url: `wss://127.0.0.1:${port}/`, token: 'bench', ca })
    await c.hello({
      versions: [PROTOCOL_VERSION],
      software: 'bench',
      digests: ['xxh64'],
      compressions: ['none'],
      limits: { maxMessageBytes: maxMessageBytesFor(extent), maxExtentBytes: extent, windowBytes: 64 * MiB },
    })
    await c.vmOpen({ vm: 'bench', cycle: 1, compat: { hwVersion: 14, datastoreType: 'local', guestOS: '' }, files: [], disks: ['d.vmdk'] })
    const source = { layers: [{ file: 'd.vmdk', cid: '00000001', parentCid: 'ffffffff' }], successor: 'd-000001.vmdk' }
    const o = await c.openDisk({
      disk: 0,
      name: 'd.vmdk',
      capacity: count * extent,
      cycle: 1,
      mode: 'seed',
      baseCycle: 0,
      baseGeneration: '',
      source,
      cycleId: '00'.repeat(32),
      ddb: {},
      totalBytes: count * extent,
      totalExtents: count,
      blockSize: 0,
    })
    if (!o.ok) throw new Error(JSON.stringify(o))
    const window = new SendWindow(64 * MiB)
    window.reset(0)
    c.onAck = (a) => window.ack(a.seq)
    const failed = c.failed()
    const t0 = process.hrtime.bigint()
    for (let seq = 0; seq < count; seq++) {
      await window.reserve(extent, failed)
      await c.sendExtent(msg(seq))
      window.sent(seq, extent)
    }
    const r = await c.endDisk({ disk: 0, extents: count, dataBytes: count * extent, zeroBytes: 0, digest })
    const s = Number(process.hrtime.bigint() - t0) / 1e9
    if (!r.ok) throw new Error(JSON.stringify(r))
    c.terminate()
    return wireBytes / MiB / s
  }

  /** ws's own client with its default masking (the agent's path before the zero mask), same window */
  async function maskedRound() {
    const ws = new WebSocket(`wss://127.0.0.1:${ports.ws}/`, SUBPROTOCOL, { ca, perMessageDeflate: false })
    await once(ws, 'open')
    let acked = -1
    let wake
    let ended = false
    ws.on('message', (d) => {
      const m = decodeMessage(d)
      if (m.kind === MessageKind.ExtentAck) acked = m.seq
      if (m.kind === MessageKind.DiskEnded) ended = true
      wake?.()
    })
    const next = () =>
      new Promise((r) => {
        wake = r
      })
    const hello = {
      kind: MessageKind.Hello,
      versions: [PROTOCOL_VERSION],
      software: 'bench',
      digests: ['xxh64'],
      compressions: ['none'],
      limits: { maxMessageBytes: maxMessageBytesFor(extent), maxExtentBytes: extent, windowBytes: 64 * MiB },
    }
    ws.send(encodeMessage(hello))
    await next()
    const t0 = process.hrtime.bigint()
    const inWindow = (64 * MiB) / extent
    for (let seq = 0; seq < count; seq++) {
      while (seq - acked > inWindow) await next()
      const parts = encodeMessageParts({ kind: MessageKind.Extent, ...msg(seq) })
      for (let i = 0; i < parts.length; i++) ws.send(parts[i], { binary: true, fin: i === parts.length - 1 })
    }
    ws.send(encodeMessage({ kind: MessageKind.DiskEnd, disk: 0, extents: count, dataBytes: count * extent, zeroBytes: 0, digest }))
    while (!ended) await next()
    const s = Number(process.hrtime.bigint() - t0) / 1e9
    ws.terminate()
    return wireBytes / MiB / s
  }

  async function tlsRound() {
    const s = tlsConnect({ host: '127.0.0.1', port: ports.tls, ca, servername: 'localhost' })
    await once(s, 'secureConnect')
    cipher = `${s.getProtocol()} ${s.getCipher().name}`
    const done = once(s, 'data')
    const head = Buffer.alloc(8)
    head.writeBigUInt64BE(BigInt(wireBytes))
    const t0 = process.hrtime.bigint()
    s.write(head)
    const small = partSizes.map((n) => Buffer.alloc(n))
    for (let seq = 0; seq < count; seq++) {
      // the same writes as the agent's parts: a small head, the payload, a small tail
      let ok = true
      for (let i = 0; i < partSizes.length; i++) ok = s.write(partSizes[i] === extent ? payloads[seq % payloads.length] : small[i])
      if (!ok) await once(s, 'drain')
    }
    await done
    const sec = Number(process.hrtime.bigint() - t0) / 1e9
    s.destroy()
    return wireBytes / MiB / sec
  }

  /** a TLS socket whose queued writes go to TLS one by one: no `_writev`, so Node does not join them into a new buffer */
  const tlsNoJoin = (opts) => {
    // as ws's own tlsConnect
    opts.path = undefined
    if (!opts.servername && opts.servername !== '') opts.servername = isIP(opts.host) ? '' : opts.host
    const s = tlsConnect(opts)
    s._writev = null
    return s
  }
  /** --sinks: a bare ws client (zero mask, one frame per message) into a sink that discards */
  async function wsSinkRound(port, fragments = 1, noJoin = false) {
    const ws = new WebSocket(`wss://127.0.0.1:${port}/`, { ca, perMessageDeflate: false, generateMask: (m) => m.fill(0), ...(noJoin ? { createConnection: tlsNoJoin } : {}) })
    await once(ws, 'open')
    cipher = `${ws._socket.getProtocol()} ${ws._socket.getCipher().name}`
    const done = once(ws, 'message')
    const head = Buffer.alloc(8)
    head.writeBigUInt64BE(BigInt(count * extent))
    const t0 = process.hrtime.bigint()
    ws.send(head)
    for (let seq = 0; seq < count; seq++) {
      const p = payloads[seq % payloads.length]
      if (fragments === 1) ws.send(p)
      else {
        // as the agent sends an Extent: a small head, the payload, a small tail, one message
        ws.send(p.subarray(0, 64), { fin: false })
        ws.send(p.subarray(64, p.length - 16), { fin: false })
        ws.send(p.subarray(p.length - 16), { fin: true })
      }
      if (ws.bufferedAmount > 4 * MiB) await new Promise((r) => ws.send(Buffer.alloc(0), r))
    }
    await done
    const sec = Number(process.hrtime.bigint() - t0) / 1e9
    ws.terminate()
    return (count * extent) / MiB / sec
  }
  /** --sinks: a plain TLS socket writing the same payload bytes into a counting sink */
  async function tlsSinkRound(port) {
    const s = tlsConnect({ host: '127.0.0.1', port, ca, servername: 'localhost' })
    await once(s, 'secureConnect')
    cipher = `${s.getProtocol()} ${s.getCipher().name}`
    const done = once(s, 'data')
    const head = Buffer.alloc(8)
    head.writeBigUInt64BE(BigInt(count * extent))
    const t0 = process.hrtime.bigint()
    s.write(head)
    for (let seq = 0; seq < count; seq++) if (!s.write(payloads[seq % payloads.length])) await once(s, 'drain')
    await done
    const sec = Number(process.hrtime.bigint() - t0) / 1e9
    s.destroy()
    return (count * extent) / MiB / sec
  }

  const sinkCpu = async () => {
    child.send('cpu')
    const [m] = await once(child, 'message')
    return m.cpu.user + m.cpu.system
  }
  /** one timed round, with the CPU seconds per GiB spent by this process and by the sink */
  const timed = async (fn, into) => {
    const s0 = await sinkCpu()
    const c0 = process.cpuUsage()
    const mibs = await fn()
    const c = process.cpuUsage(c0)
    const gib = wireBytes / 1024 / MiB
    into.cpu.push({ sender: (c.user + c.system) / 1e6 / gib, sink: ((await sinkCpu()) - s0) / 1e6 / gib })
    into.push(mibs)
  }
  if (sinksMode) {
    const kinds = [
      ['tls, default ciphers', () => tlsSinkRound(ports.tlsDefault)],
      ['tls, receiver ciphers', () => tlsSinkRound(ports.tlsReceiver)],
      ['ws, default ciphers', () => wsSinkRound(ports.wsDefault)],
      ['ws, receiver ciphers', () => wsSinkRound(ports.wsReceiver)],
      ['ws 3 fragments, rcv c.', () => wsSinkRound(ports.wsReceiver, 3)],
      ['ws 3 fr., no writev join', () => wsSinkRound(ports.wsReceiver, 3, true)],
    ]
    const gib = (count * extent) / 1024 / MiB
    const out = kinds.map(() => Object.assign([], { cpu: [], sender: [], cipher: '' }))
    for (const [, fn] of kinds) await fn() // warm-up
    const load0 = loadavg()
    for (let i = 0; i < rounds; i++) {
      for (let k = 0; k < kinds.length; k++) {
        const s0 = await sinkCpu()
        const c0 = process.cpuUsage()
        const mibs = await kinds[k][1]()
        const c = process.cpuUsage(c0)
        out[k].cipher = cipher
        out[k].cpu.push(((await sinkCpu()) - s0) / 1e6 / gib)
        out[k].sender.push((c.user + c.system) / 1e6 / gib)
        out[k].push(mibs)
      }
    }
    const load1 = loadavg()
    child.kill('SIGTERM')
    rmSync(dir, { recursive: true, force: true })
    const med = (xs) => {
      const s = [...xs].sort((a, b) => a - b)
      const n = s.length
      return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
    }
    console.log(`sinks: ${count} messages of ${extent / 1024} KiB per round (${((count * extent) / MiB).toFixed(0)} MiB), ${rounds} interleaved rounds, ${cpus().length} cores`)
    console.log(`load average before ${load0.map((x) => x.toFixed(2)).join(' ')}, after ${load1.map((x) => x.toFixed(2)).join(' ')}; sink env: ${process.env.BENCH_SINK_ENV ?? '(none)'}`)
    for (const [k, [name]] of kinds.entries()) {
      console.log(
        `${name.padEnd(22)} ${out[k].cipher.padEnd(28)} median ${med(out[k]).toFixed(0)} MiB/s  [${out[k].map((x) => x.toFixed(0)).join(' ')}]  sink CPU ${med(out[k].cpu).toFixed(2)} s/GiB, sender ${med(out[k].sender).toFixed(2)} s/GiB`,
      )
    }
    const pr = (a, b) => med(out[a].map((x, i) => x / out[b][i]))
    console.log(`ratio ws sink / tls sink (median of pairs): default ciphers ${(100 * pr(2, 0)).toFixed(1)} %, receiver ciphers ${(100 * pr(3, 1)).toFixed(1)} %`)
    console.log(`ratio receiver ciphers / default (median of pairs): tls ${(100 * pr(1, 0)).toFixed(1)} %, ws ${(100 * pr(3, 2)).toFixed(1)} %`)
    console.log(`ratio ws messages in 3 fragments (the agent's Extent) / in one frame (median of pairs): ${(100 * pr(4, 3)).toFixed(1)} %`)
    console.log(`ratio ws 3 fragments without the writev join / with it (median of pairs): ${(100 * pr(5, 4)).toFixed(1)} %`)
    return
  }
  const load0 = loadavg()
  const res = { agent: Object.assign([], { cpu: [] }), tls: Object.assign([], { cpu: [] }), masked: Object.assign([], { cpu: [] }), pooled: Object.assign([], { cpu: [] }) }
  // one warm-up pair, not counted
  await agentRound()
  await tlsRound()
  if (withPooled) await agentRound(ports.pooled)
  for (let i = 0; i < rounds; i++) {
    if (only !== 'tls') await timed(agentRound, res.agent)
    if (only !== 'agent') await timed(tlsRound, res.tls)
    if (withMasked) await timed(maskedRound, res.masked)
    if (withPooled) await timed(() => agentRound(ports.pooled), res.pooled)
  }
  const load1 = loadavg()
  child.kill('SIGTERM')
  rmSync(dir, { recursive: true, force: true })
  const median = (xs) => {
    const s = [...xs].sort((a, b) => a - b)
    const n = s.length
    return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
  }
  const ratios = res.agent.map((a, i) => a / res.tls[i])
  const ratio = median(ratios)
  const f = (x) => x.toFixed(0)
  const cpu = (r) => `CPU s/GiB: sender ${median(r.cpu.map((c) => c.sender)).toFixed(2)}, sink ${median(r.cpu.map((c) => c.sink)).toFixed(2)}`
  console.log(`transport: ${count} extents of ${extent / 1024} KiB per round (${(wireBytes / MiB).toFixed(0)} MiB on the wire), ${rounds} interleaved rounds, ${cpus().length} cores, ${cipher}`)
  console.log(`load average before ${load0.map((x) => x.toFixed(2)).join(' ')}, after ${load1.map((x) => x.toFixed(2)).join(' ')}; sink env: ${process.env.BENCH_SINK_ENV ?? '(none)'}`)
  console.log(`agent connection (ws over TLS): median ${f(median(res.agent))} MiB/s  [${res.agent.map(f).join(' ')}]  ${cpu(res.agent)}`)
  console.log(`baseline plain TLS socket:      median ${f(median(res.tls))} MiB/s  [${res.tls.map(f).join(' ')}]  ${cpu(res.tls)}`)
  if (withMasked)
    console.log(
      `ws client, default masking:     median ${f(median(res.masked))} MiB/s  [${res.masked.map(f).join(' ')}] (${((100 * median(res.masked)) / median(res.tls)).toFixed(1)} % of TLS)  ${cpu(res.masked)}`,
    )
  if (withPooled) {
    const pr = res.pooled.map((a, i) => a / res.tls[i])
    console.log(
      `agent into the receiver's pooled ws path: median ${f(median(res.pooled))} MiB/s  [${res.pooled.map(f).join(' ')}]  ${cpu(res.pooled)}; ratio pooled/tls (median of pairs) ${(100 * median(pr)).toFixed(1)} %  [${pr.map((r) => (100 * r).toFixed(0)).join(' ')}]`,
    )
  }
  console.log(`ratio agent/tls (median of pairs): ${(100 * ratio).toFixed(1)} %  [${ratios.map((r) => (100 * r).toFixed(0)).join(' ')}]  target ≥ 85 %: ${ratio >= 0.85 ? 'met' : 'missed'}`)
  console.log(
    JSON.stringify({
      extentBytes: extent,
      rounds,
      agentMiBs: +median(res.agent).toFixed(0),
      tlsMiBs: +median(res.tls).toFixed(0),
      ...(withMasked ? { maskedMiBs: +median(res.masked).toFixed(0) } : {}),
      ...(withPooled ? { pooledMiBs: +median(res.pooled).toFixed(0), pooledRatio: +median(res.pooled.map((a, i) => a / res.tls[i])).toFixed(3) } : {}),
      ratio: +ratio.toFixed(3),
      load: [load0, load1].map((l) => +l[0].toFixed(2)),
    }),
  )
}
