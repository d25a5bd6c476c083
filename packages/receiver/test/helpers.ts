import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdirSync, readlinkSync, writeFileSync } from 'node:fs'
import { open, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { Writable } from 'node:stream'
import { pino, type Logger } from 'pino'
import type { Test } from 'tap'
import WebSocket from 'ws'
import { VmMirror } from '../src/vm-mirror.ts'
import type { DiskApply } from '../src/disk-apply.ts'
import { patternBytes, scratchDir, tlsFixture } from '@grainline/test-utils'
import {
  CycleDigest,
  MessageKind,
  PROTOCOL_VERSION,
  SUBPROTOCOL,
  createDigest,
  compress,
  cycleIdentity,
  decodeMessage,
  encodeMessage,
  initDigests,
  type CompressionAlgorithm,
  type DigestAlgorithm,
  type CommitProgressMessage,
  type DiskProgressMessage,
  type VmProgressMessage,
  type PointsDroppedMessage,
  type DiskOpenMessage,
  type ExtentMessage,
  type Message,
  type RetentionSpec,
  type SourceIdentity,
  type VmOpenMessage,
} from '@grainline/protocol'
import { createReceiver, type Receiver, type ReceiverInit } from '../src/index.ts'

export const MiB = 1024 * 1024
export const TOKEN = 'tok-proxy-a-0123456789abcdef'
export const TOKEN_B = 'tok-proxy-b-0123456789abcdef'

/** A self-signed P-256 certificate for 127.0.0.1/localhost. */
/** The test certificate (test-utils: one per test process; `dir` is kept for the callers' signature). */
export function makeTls(_dir: string): { cert: string; key: string; ca: Buffer } {
  return tlsFixture()
}

export function writeTokens(dir: string): string {
  const file = join(dir, 'tokens.json')
  writeFileSync(
    file,
    JSON.stringify({
      tokens: [
        // parallel sessions above the default cap of 4 (cycle.test runs 6 agents at once)
        { name: 'proxy-a', token: TOKEN, vms: ['web-*', 'db01', 'vm*'], maxSessions: 16 },
        { name: 'proxy-b', token: TOKEN_B, vms: ['other-*'] },
      ],
    }),
  )
  return file
}

export type LogLine = Record<string, unknown>

/** A pino logger writing JSON lines into an array (logs asserted through a sink); `waitFor` resolves on the first matching line. */
export function memoryLogger(): { logger: Logger; lines: LogLine[]; text: () => string; waitFor: (match: (l: LogLine) => boolean) => Promise<LogLine> } {
  const lines: LogLine[] = []
  const chunks: string[] = []
  const waiters: Array<{ match: (l: LogLine) => boolean; resolve: (l: LogLine) => void }> = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const s = chunk.toString('utf8')
      chunks.push(s)
      for (const l of s.split('\n')) {
        if (l === '') continue
        const line = JSON.parse(l) as LogLine
        lines.push(line)
        for (let i = waiters.length - 1; i >= 0; i--) {
          const w = waiters[i] as (typeof waiters)[number]
          if (w.match(line)) {
            waiters.splice(i, 1)
            w.resolve(line)
          }
        }
      }
      cb()
    },
  })
  const waitFor = (match: (l: LogLine) => boolean): Promise<LogLine> => {
    const seen = lines.find(match)
    if (seen !== undefined) return Promise.resolve(seen)
    return new Promise((resolve) => waiters.push({ match, resolve }))
  }
  return { logger: pino({ level: 'debug' }, sink), lines, text: () => chunks.join(''), waitFor }
}

export interface Env {
  dir: string
  store: string
  tokensFile: string
  tls: { cert: string; key: string; ca: Buffer }
}

export function makeEnv(dir: string): Env {
  const store = join(dir, 'store')
  mkdirSync(store, { recursive: true })
  return { dir, store, tokensFile: writeTokens(dir), tls: makeTls(dir) }
}

/** In-process receiver with TLS. */
export async function startReceiver(env: Env, extra: Partial<ReceiverInit> = {}): Promise<{ receiver: Receiver; url: string; logs: ReturnType<typeof memoryLogger> }> {
  const logs = memoryLogger()
  const receiver = createReceiver(
    { logger: logs.logger },
    {
      host: '127.0.0.1',
      port: 0,
      store: env.store,
      tokensFile: env.tokensFile,
      tlsCert: env.tls.cert,
      tlsKey: env.tls.key,
      ...extra,
    },
  )
  const { port } = await receiver.listen()
  return { receiver, url: `wss://127.0.0.1:${port}/`, logs }
}

/**
 * A fresh store with VM `vm` seeded (cycle 1 committed: one 2 MiB disk `d.vmdk` of {@link pattern}(`seed`),
 * cycle id `cycleId`) by an {@link Agent} through an in-process receiver ({@link startReceiver} with `extra`),
 * closed at `t`'s end.
 */
export async function seededStore(
  t: Test,
  vm: string,
  opts: { readonly seed?: number; readonly cycleId?: string; readonly extra?: Partial<ReceiverInit> } = {},
): Promise<{ env: Env; receiver: Receiver; url: string }> {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, opts.extra)
  t.teardown(() => receiver.close())
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', pattern(2 * MiB, opts.seed ?? 4), opts.cycleId ?? 'cd01cd01cd01cd01')])
  a.close()
  return { env, receiver, url }
}

export const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url))

/** Receiver as a child process via main.ts. */
export async function startChild(
  env: Env,
  opts: { fault?: string; args?: string[]; env?: NodeJS.ProcessEnv } = {},
): Promise<{ child: ChildProcess; url: string; port: number; stderr: () => string; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> }> {
  const envVars: NodeJS.ProcessEnv = { ...process.env, ...opts.env }
  if (opts.fault !== undefined) envVars['GRAINLINE_RECEIVER_FAULT'] = opts.fault
  else delete envVars['GRAINLINE_RECEIVER_FAULT']
  const child = spawn(
    process.execPath,
    [MAIN, '--listen', '127.0.0.1:0', '--store', env.store, '--tokens', env.tokensFile, '--tls-cert', env.tls.cert, '--tls-key', env.tls.key, '--exit-with-stdin', ...(opts.args ?? [])],
    { env: envVars, stdio: ['pipe', 'pipe', 'pipe'] },
  )
  let err = ''
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString()
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream })
  const first = await Promise.race([
    once(rl, 'line').then(([l]) => l as string),
    exited.then((e) => {
      throw new Error(`receiver exited early ${JSON.stringify(e)}: ${err}`)
    }),
  ])
  const ev = JSON.parse(first) as { event: string; port: number }
  if (ev.event !== 'listening') throw new Error(`unexpected first line ${first}`)
  return { child, url: `wss://127.0.0.1:${ev.port}/`, port: ev.port, stderr: () => err, exited }
}

/** A scripted agent speaking protocol messages directly. */
export class Agent {
  readonly ws: WebSocket
  private readonly queue: Message[] = []
  private waiters: Array<(m: Message | undefined) => void> = []
  closed: { code: number; reason: string } | undefined
  /** codes of every Error message received */
  readonly errors: string[] = []
  private readonly closedP: Promise<{ code: number; reason: string }>

  private constructor(ws: WebSocket) {
    this.ws = ws
    ws.on('message', (data: Buffer) => {
      const m = decodeMessage(data)
      if (m.kind === MessageKind.Error) this.errors.push(m.code)
      const w = this.waiters.shift()
      if (w !== undefined) w(m)
      else this.queue.push(m)
    })
    this.closedP = new Promise((resolve) =>
      ws.once('close', (code: number, reason: Buffer) => {
        this.closed = { code, reason: reason.toString() }
        for (const w of this.waiters) w(undefined)
        this.waiters = []
        resolve(this.closed)
      }),
    )
  }

  static async connect(url: string, opts: { token?: string; ca?: Buffer; protocol?: string } = {}): Promise<Agent> {
    const headers: Record<string, string> = {}
    if (opts.token !== undefined) headers['Authorization'] = `Bearer ${opts.token}`
    const ws = new WebSocket(url, opts.protocol ?? SUBPROTOCOL, { headers, ca: opts.ca, perMessageDeflate: false, maxPayload: 64 * MiB })
    const a = new Agent(ws)
    await Promise.race([
      once(ws, 'open'),
      once(ws, 'unexpected-response').then(([, res]) => {
        throw Object.assign(new Error(`HTTP ${(res as { statusCode: number }).statusCode}`), { status: (res as { statusCode: number }).statusCode })
      }),
      once(ws, 'error').then(([e]) => {
        throw e as Error
      }),
    ])
    return a
  }

  send(m: Message): void {
    this.ws.send(encodeMessage(m))
  }
  sendRaw(b: Uint8Array): void {
    this.ws.send(b)
  }

  /** next message, or undefined once closed */
  next(): Promise<Message | undefined> {
    const m = this.queue.shift()
    if (m !== undefined) return Promise.resolve(m)
    if (this.closed !== undefined) return Promise.resolve(undefined)
    return new Promise((resolve) => this.waiters.push(resolve))
  }

  async expect<K extends Message['kind']>(kind: K): Promise<Extract<Message, { kind: K }>> {
    const m = await this.next()
    if (m === undefined) throw new Error(`expected kind 0x${kind.toString(16)}, connection closed ${JSON.stringify(this.closed)}`)
    if (m.kind !== kind) throw new Error(`expected kind 0x${kind.toString(16)}, got ${JSON.stringify(m, (_k, v: unknown) => (v instanceof Uint8Array ? `<${v.length} bytes>` : v))}`)
    return m as Extract<Message, { kind: K }>
  }

  /** wait for the Error message and close; returns both */
  async expectError(timeoutMs = 20000): Promise<{ code: string; closeCode: number }> {
    const timer = setTimeout(() => this.ws.terminate(), timeoutMs)
    while ((await this.next()) !== undefined) {
      /* drain */
    }
    clearTimeout(timer)
    const c = await this.closedP
    return { code: this.errors[this.errors.length - 1] ?? '(none)', closeCode: c.code }
  }

  whenClosed(): Promise<{ code: number; reason: string }> {
    return this.closedP
  }

  close(): void {
    this.ws.close(1000)
  }
  terminate(): void {
    this.ws.terminate()
  }
}

/** Deterministic pseudo-random bytes (test-utils `patternBytes`). */
export const pattern = patternBytes

export interface PlannedExtent {
  offset: number
  length: number
  zero: boolean
}

/** Split [offset, offset+length) into extents of at most `max` bytes, zero where the image is zero. */
export function planExtents(image: Buffer, ranges: ReadonlyArray<{ offset: number; length: number }>, max = MiB): PlannedExtent[] {
  const out: PlannedExtent[] = []
  for (const r of ranges) {
    for (let o = r.offset; o < r.offset + r.length; o += max) {
      const len = Math.min(max, r.offset + r.length - o)
      const zero = image.subarray(o, o + len).every((x) => x === 0)
      out.push({ offset: o, length: len, zero })
    }
  }
  return out
}

export interface DiskPlan {
  handle: number
  name: string
  capacity: number
  mode: 'seed' | 'incremental'
  baseCycle: number
  source: SourceIdentity
  /** a label only: `diskOpen` sends the real cycle identity of the plan's fields */
  cycleId: string
  image: Buffer
  extents: PlannedExtent[]
  ddb?: Record<string, string>
}

export function extentMessage(d: DiskPlan, seq: number, alg: DigestAlgorithm, compression: CompressionAlgorithm = 'none'): ExtentMessage {
  const e = d.extents[seq] as PlannedExtent
  if (e.zero) return { kind: MessageKind.Extent, disk: d.handle, seq, offset: e.offset, length: e.length, zero: true, compression: 'none', data: new Uint8Array(0), digest: new Uint8Array(0) }
  const raw = d.image.subarray(e.offset, e.offset + e.length)
  const digest = createDigest(alg).update(raw).digest()
  const packed = compress(compression, raw)
  // SPEC: send "none" when compression does not shrink
  if (packed.length >= raw.length) return { kind: MessageKind.Extent, disk: d.handle, seq, offset: e.offset, length: e.length, zero: false, compression: 'none', data: raw, digest }
  return { kind: MessageKind.Extent, disk: d.handle, seq, offset: e.offset, length: e.length, zero: false, compression, data: packed, digest }
}

/** DiskOpen of a plan; its cycleId is the cycle identity of its fields (SPEC §5.2), which the receiver recomputes. */
export function diskOpen(d: DiskPlan, cycle: number, vm: string, generation = ''): DiskOpenMessage {
  const totalBytes = d.extents.reduce((s, e) => s + e.length, 0)
  // SPEC §5.8: an incremental names the generation it was planned against (the VmState's, for these tests)
  const baseGeneration = d.mode === 'seed' ? '' : generation
  return {
    kind: MessageKind.DiskOpen,
    disk: d.handle,
    name: d.name,
    capacity: d.capacity,
    cycle,
    mode: d.mode,
    baseCycle: d.baseCycle,
    baseGeneration,
    source: d.source,
    cycleId: cycleIdentity({ vm, name: d.name, cycle, mode: d.mode, baseCycle: d.baseCycle, baseGeneration, source: d.source }),
    ddb: d.ddb ?? { 'ddb.adapterType': 'lsilogic', 'ddb.virtualHWVersion': '14' },
    totalBytes,
    totalExtents: d.extents.length,
    blockSize: 0,
  }
}

export function diskEnd(d: DiskPlan, alg: DigestAlgorithm): Message {
  const cd = new CycleDigest(alg)
  let dataBytes = 0
  let zeroBytes = 0
  d.extents.forEach((e, seq) => {
    const m = extentMessage(d, seq, alg)
    cd.add({ offset: e.offset, length: e.length, zero: e.zero, digest: m.digest })
    if (e.zero) zeroBytes += e.length
    else dataBytes += e.length
  })
  return { kind: MessageKind.DiskEnd, disk: d.handle, extents: d.extents.length, dataBytes, zeroBytes, digest: cd.digest() }
}

export function hello(alg: DigestAlgorithm = 'sha256', compression: CompressionAlgorithm = 'none', versions: readonly number[] = [PROTOCOL_VERSION]): Message {
  return {
    kind: MessageKind.Hello,
    versions,
    software: 'test-agent/0',
    digests: [alg],
    compressions: [compression, 'none'],
    limits: { maxMessageBytes: 16 * MiB + 65536, maxExtentBytes: 16 * MiB, windowBytes: 64 * MiB },
  }
}

export const VMX = (vm: string, disks: string[]): string =>
  [
    '.encoding = "UTF-8"',
    'config.version = "8"',
    'virtualHW.version = "14"',
    `displayName = "${vm}"`,
    'guestOS = "otherlinux-64"',
    `nvram = "${vm}.nvram"`,
    ...disks.map((d, i) => `scsi0:${i}.fileName = "${d}"`),
    '',
  ].join('\n')

/** VmOpen for a VM with the given disk references. */
export function vmOpen(vm: string, cycle: number, disks: string[]): Message {
  return {
    kind: MessageKind.VmOpen,
    vm,
    cycle,
    compat: { hwVersion: 14, datastoreType: 'local', guestOS: 'otherlinux-64' },
    files: [
      { name: `${vm}.vmx`, data: Buffer.from(VMX(vm, disks)) },
      { name: `${vm}.nvram`, data: pattern(8192, 7) },
    ],
    disks,
  }
}

/**
 * A session that only opens `vm` (Hello, VmOpen of cycle 1) and closes:
 * 'ok' when the receiver answers with the VM's state, else the error it
 * sent as `CODE: message`.
 */
export async function openVmOnly(url: string, token: string, ca: Buffer, vm: string): Promise<string> {
  const a = await Agent.connect(url, { token, ca })
  a.send(hello())
  await a.expect(MessageKind.Welcome)
  a.send(vmOpen(vm, 1, ['d.vmdk']))
  const m = await a.next()
  if (m?.kind === MessageKind.VmState) {
    a.close()
    await a.whenClosed()
    return 'ok'
  }
  const err = m as { code?: string; message?: string }
  await a.whenClosed()
  return `${err.code}: ${err.message}`
}

export function source(layers: string[], successor: string): SourceIdentity {
  return { layers: layers.map((f, i) => ({ file: f, cid: (0x10000000 + i).toString(16), parentCid: i === 0 ? 'ffffffff' : (0x10000000 + i - 1).toString(16) })), successor }
}

/**
 * Drive a whole VM cycle: Hello, VmOpen, per disk DiskOpen → extents from
 * resumeSeq (stop after `stopAfter` extents if given) → DiskEnd, Commit.
 */
export async function runCycle(
  agent: Agent,
  vm: string,
  cycle: number,
  disks: DiskPlan[],
  opts: {
    alg?: DigestAlgorithm
    compression?: CompressionAlgorithm
    stopAfter?: number
    rollbackFirst?: boolean
    commit?: boolean
    retention?: RetentionSpec | null
    /** the disk files the VmOpen's .vmx names (default: the cycle's disks) */
    vmxDisks?: string[]
    /** the protocol versions the Hello offers (default: [2]; 3 lets the receiver send DiskProgress, 4 CommitProgress too, 5 VmProgress too, 6 PointsDropped too) */
    versions?: readonly number[]
    /** the VmOpen's configuration files (default: `<vm>.vmx` naming the disks and `<vm>.nvram`) */
    files?: ReadonlyArray<{ name: string; data: Uint8Array }>
  } = {},
): Promise<{
  resume: number[]
  committed?: Extract<Message, { kind: typeof MessageKind.Committed }>
  progress: DiskProgressMessage[]
  commitProgress: CommitProgressMessage[]
  /** the VmProgress frames before the VmState and before the RolledBack */
  vmProgress: VmProgressMessage[]
  /** the PointsDropped before the Committed (version 6) */
  pointsDropped?: PointsDroppedMessage[]
}> {
  const alg = opts.alg ?? 'sha256'
  await initDigests()
  agent.send(hello(alg, opts.compression ?? 'none', opts.versions))
  await agent.expect(MessageKind.Welcome)
  const open = vmOpen(vm, cycle, opts.vmxDisks ?? disks.map((d) => d.name.replace(/\.vmdk$/, '-000001.vmdk'))) as VmOpenMessage
  agent.send(opts.files === undefined ? open : { ...open, files: opts.files })
  const vmProgress: VmProgressMessage[] = []
  const after = async <K extends Message['kind']>(kind: K): Promise<Extract<Message, { kind: K }>> => {
    for (;;) {
      const m = await agent.next()
      if (m?.kind === MessageKind.VmProgress) vmProgress.push(m)
      else if (m?.kind === kind) return m as Extract<Message, { kind: K }>
      else
        throw new Error(
          `expected kind 0x${kind.toString(16)}, got ${m === undefined ? `a close ${JSON.stringify(agent.closed)}` : JSON.stringify(m, (_k, v: unknown) => (v instanceof Uint8Array ? `<${v.length}>` : v))}`,
        )
    }
  }
  const st = await after(MessageKind.VmState)
  if (opts.rollbackFirst === true && st.inflightCycle !== 0) {
    agent.send({ kind: MessageKind.Rollback, vm })
    await after(MessageKind.RolledBack)
  }
  const resume: number[] = []
  const progress: DiskProgressMessage[] = []
  let sent = 0
  for (const d of disks) {
    agent.send(diskOpen(d, cycle, vm, st.generation))
    let ds = await agent.next()
    while (ds?.kind === MessageKind.DiskProgress) {
      progress.push(ds)
      ds = await agent.next()
    }
    if (ds?.kind !== MessageKind.DiskState) throw new Error(`expected DiskState, got ${ds === undefined ? `a close ${JSON.stringify(agent.closed)}` : `kind 0x${ds.kind.toString(16)}`}`)
    if (!ds.accepted) throw Object.assign(new Error(`disk refused: ${ds.reason}`), { reason: ds.reason, state: ds })
    resume.push(ds.resumeSeq)
    for (let seq = ds.resumeSeq; seq < d.extents.length; seq++) {
      if (opts.stopAfter !== undefined && sent >= opts.stopAfter) return { resume, progress, commitProgress: [], vmProgress }
      agent.send(extentMessage(d, seq, alg, opts.compression ?? 'none'))
      sent++
    }
    agent.send(diskEnd(d, alg))
    for (;;) {
      const m = await agent.next()
      if (m === undefined) throw new Error(`closed while waiting for DiskEnded ${JSON.stringify(agent.closed)}`)
      if (m.kind === MessageKind.ExtentAck) continue
      if (m.kind === MessageKind.DiskEnded) break
      throw new Error(`unexpected ${JSON.stringify(m, (_k, v: unknown) => (v instanceof Uint8Array ? `<${v.length}>` : v))}`)
    }
  }
  if (opts.commit === false) return { resume, progress, commitProgress: [], vmProgress }
  agent.send({ kind: MessageKind.Commit, vm, cycle, retention: opts.retention ?? null })
  const commitProgress: CommitProgressMessage[] = []
  const pointsDropped: PointsDroppedMessage[] = []
  let cm = await agent.next()
  while (cm?.kind === MessageKind.CommitProgress || cm?.kind === MessageKind.PointsDropped) {
    if (cm.kind === MessageKind.CommitProgress) commitProgress.push(cm)
    else pointsDropped.push(cm)
    cm = await agent.next()
  }
  if (cm?.kind !== MessageKind.Committed)
    throw new Error(`expected Committed, got ${cm === undefined ? `a close ${JSON.stringify(agent.closed)}` : JSON.stringify(cm, (_k, v: unknown) => (v instanceof Uint8Array ? `<${v.length}>` : v))}`)
  return { resume, committed: cm, progress, commitProgress, vmProgress, pointsDropped }
}

export function seedPlan(handle: number, name: string, image: Buffer, cycleId: string, max = MiB): DiskPlan {
  return {
    handle,
    name,
    capacity: image.length,
    mode: 'seed',
    baseCycle: 0,
    source: source([name], name.replace(/\.vmdk$/, '-000001.vmdk')),
    cycleId,
    image,
    extents: planExtents(image, [{ offset: 0, length: image.length }], max),
  }
}

export function incPlan(
  handle: number,
  name: string,
  image: Buffer,
  baseCycle: number,
  cycleId: string,
  ranges: Array<{ offset: number; length: number }>,
  layerFile: string,
  successor: string,
  max = MiB,
): DiskPlan {
  return {
    handle,
    name,
    capacity: image.length,
    mode: 'incremental',
    baseCycle,
    source: source([layerFile], successor),
    cycleId,
    image,
    extents: planExtents(image, ranges, max),
  }
}

/** Apply ranges of `next` onto a copy of `prev`. */
export function evolve(prev: Buffer, seed: number, ranges: Array<{ offset: number; length: number; zero?: boolean }>): Buffer {
  const out = Buffer.from(prev)
  for (const r of ranges) {
    if (r.zero === true) out.fill(0, r.offset, r.offset + r.length)
    else pattern(r.length, seed + r.offset).copy(out, r.offset)
  }
  return out
}

/** The compatibility a one-disk test mirror commits with. */
/**
 * Retry an operator action while the VM lock of a session that just closed
 * is still held (E_BUSY until the receiver has finished the session's
 * teardown): every `pause` ms, at most `tries` times. An E_BUSY whose
 * message `expected` matches is thrown at once (a refusal the test expects:
 * waiting it out took 10–30 s a case).
 */
export async function whenFree<T>(fn: () => Promise<T>, tries = 1000, pause = 10, expected?: RegExp): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await fn()
    } catch (err) {
      // an E_BUSY the test expects (`expected` matches its message) is its answer, not a lock to wait out
      if ((err as { code?: unknown }).code !== 'E_BUSY' || i > tries || expected?.test((err as Error).message) === true) throw err
      await new Promise((resolve) => setTimeout(resolve, pause))
    }
  }
}

export const TEST_COMPAT = { hwVersion: 14, datastoreType: 'local', guestOS: 'otherlinux-64' }
/** The source chain a one-disk test mirror's seed names. */
export const TEST_SOURCE = { layers: [{ file: 'd.vmdk', cid: '00000001', parentCid: 'ffffffff' }], successor: 'd-000001.vmdk' }

/** VM `vm` of a folder store with the seed (cycle 1, sha256) of its disk `d.vmdk` of `capacity` bytes open. */
export async function openSeed(store: string, capacity: number, log: Logger): Promise<{ m: VmMirror; a: DiskApply }> {
  const m = await VmMirror.acquire(store, 'vm', log)
  const r = await m.openDisk(
    { name: 'd.vmdk', capacity, cycle: 1, mode: 'seed', baseCycle: 0, baseGeneration: '', source: TEST_SOURCE, cycleId: '1'.repeat(16), ddb: {}, algorithm: 'sha256' },
    { compat: TEST_COMPAT },
  )
  if (r.apply === undefined) throw new Error('seed refused')
  return { m, a: r.apply }
}

/** Records every fsync and fdatasync of this process, by the path its descriptor names then (/proc/self/fd), until the test ends or `stop`. */
export async function watchSyncs(t: Test, dir: string): Promise<{ synced: string[]; stop: () => void }> {
  const synced: string[] = []
  const probe = await open(join(dir, 'sync-probe'), 'w')
  const proto = Object.getPrototypeOf(probe) as { sync: FileHandle['sync']; datasync: FileHandle['datasync'] }
  await probe.close()
  const { sync, datasync } = proto
  const note = (fh: FileHandle): void => {
    try {
      synced.push(readlinkSync(`/proc/self/fd/${fh.fd}`))
    } catch {
      // a descriptor closed meanwhile: nothing to name
    }
  }
  proto.sync = function (this: FileHandle) {
    note(this)
    return sync.call(this)
  }
  proto.datasync = function (this: FileHandle) {
    note(this)
    return datasync.call(this)
  }
  const stop = (): void => {
    proto.sync = sync
    proto.datasync = datasync
  }
  t.teardown(stop)
  return { synced, stop }
}
