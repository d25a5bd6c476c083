/**
 * The cycle engine (ARCHITECTURE §1, issue #5 "The cycle"): brings one VM's
 * mirror forward to a new point in time.
 *
 *   snapshot → plan (changed ranges of the frozen deltas, or the whole frozen
 *   view for a seed) → ship through the window → DiskEnd → Commit → trivial
 *   check / certify → remove the older grainline snapshot(s).
 *
 * Connection loss anywhere before Committed reconnects with backoff and
 * resumes from the receiver's durable point with the same cycle identity.
 */
import { readFile, stat } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import type { Logger } from 'pino'
import { formatCid } from '@grainline/vmdk'
import { vmdk, type VmdkChain } from './vmdk-api.ts'
import {
  CycleDigest, createDigest, cycleIdentity, initDigests, MessageKind, PROTOCOL_VERSION,
  type ChainLayer, type CompressionAlgorithm, type DigestAlgorithm, type DiskOpenMessage, type DiskStateMessage,
  type Message, type SourceIdentity, type VmFile, type VmStateMessage, type WelcomeMessage,
} from '@grainline/protocol'
import type { HypervisorDriver, SnapshotRef, VmDisk, VmHandle } from './driver.ts'
import { grainlineSnapshotName } from './driver.ts'
import { AgentError } from './errors.ts'
import { Connection, ConnectionLost, isRetryable, type ConnectOptions } from './connection.ts'
import { buildPlan, arraySource, coalesceSource, planExtents, unionSource, type ExtentPlan, type PlanRange, type RangeSource } from './extent-plan.ts'
import { DigestLog } from './digest-log.ts'
import { readPlannedExtents, ViewDigester } from './extent-source.ts'
import { SendWindow } from './window.ts'
import { createRateLimiter, type RateLimiter } from './rate-limiter.ts'
import { DiskProgress, type ProgressSink } from './progress.ts'
import { vmxHardwareVersion } from './vmx.ts'

type Chain = VmdkChain

/** Options of one VM cycle (resolved; see ReplicateInit for the documented defaults). */
export interface CycleOptions {
  readonly ref: string
  readonly connect: Omit<ConnectOptions, 'signal'>
  readonly driver: HypervisorDriver
  readonly certify: DigestAlgorithm | 'none'
  readonly trivialMiB: number
  readonly rateLimiter: RateLimiter
  readonly compressions: readonly CompressionAlgorithm[]
  readonly digests: readonly DigestAlgorithm[]
  readonly consolidateExisting: boolean
  readonly giveUpMs: number
  readonly maxBackoffMs: number
  readonly windowBytes: number
  readonly maxExtentBytes: number
  readonly progress: ProgressSink
  readonly signal?: AbortSignal
  /** called after the snapshot is taken and before shipping starts (tests: guest writes) */
  readonly afterSnapshot?: (vm: VmHandle) => Promise<void>
  /**
   * called after the commit and checks, before older snapshots are removed
   * (demo/tests: a guest writing concurrently with shipping settles here, the
   * way a hypervisor serializes guest I/O with a snapshot removal)
   */
  readonly beforeRemove?: (vm: VmHandle) => Promise<void>
  /** called after every extent handed to the socket (tests: cut the link) */
  readonly onExtentSent?: (info: { disk: string, seq: number, wireBytes: number }) => void
}

/** The result of one disk. */
export interface DiskReport {
  /** base disk name (the mirror's disk name) */
  readonly name: string
  readonly node: string
  ok: boolean
  mode: 'seed' | 'incremental' | 'none'
  /** why an incremental fell back to a seed */
  fallbackReason?: string
  capacity: number
  extents: number
  /** bytes covered by data extents / zero extents (the whole plan, including resumed parts) */
  dataBytes: number
  zeroBytes: number
  /** payload bytes actually sent by this run (after compression) */
  wireBytes: number
  /** first seq sent after each (re)open: [0] for a clean run */
  resumedFrom: number[]
  /** frozen layers shipped, bottom first */
  layers: ChainLayer[]
  trivial?: { ok: boolean, prefixBytes: number, algorithm: DigestAlgorithm }
  certify?: { ok: boolean, algorithm: DigestAlgorithm, digest: string }
  error?: { code: string, message: string }
}

/** The result of one VM cycle. */
export interface VmReport {
  readonly ref: string
  vm: string
  ok: boolean
  cycle: number
  /** snapshot shipped (name) */
  snapshot?: string
  reusedSnapshot: boolean
  reconnects: number
  disks: DiskReport[]
  removedSnapshots: string[]
  durationMs: number
  /** where the time went, ms: connect, snapshot, plan, ship (to DiskEnded), commit, check, remove */
  timings: Record<string, number>
  error?: { code: string, message: string, remoteCode?: string }
}

interface DiskWork {
  readonly handle: number
  readonly disk: VmDisk
  readonly name: string
  chain: Chain
  readonly report: DiskReport
  /** chain depth of the newest frozen layer */
  readonly depth: number
  mode: 'seed' | 'incremental'
  /** depth of the oldest frozen layer shipped (incremental) */
  fromDepth: number
  baseCycle: number
  /** SPEC §5.8: the generation the incremental was planned against ("" for a seed) */
  baseGeneration: string
  cycleNo: number
  source: SourceIdentity
  plan: ExtentPlan
  cycleId: string
  /** per-seq digests for replaying the cycle digest after a reconnect (bounded) */
  records: DigestLog | undefined
  view: ViewDigester | undefined
  /** the view digests computed by reading, in the background while extents ship */
  viewTask: Promise<void> | undefined
  progress: DiskProgress
}

/** A receiver that acknowledges nothing for this long while the window is full is treated as gone. */
const STALL_MS = 120_000

/** A refused DiskOpen was re-planned: reconnect at once with the new plan. */
class Replan extends Error {}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> => new Promise((resolve, reject) => {
  const t = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve() }, ms)
  const onAbort = (): void => { clearTimeout(t); reject(new AgentError('E_ABORTED', 'aborted')) }
  signal?.addEventListener('abort', onAbort, { once: true })
})

function errInfo (err: unknown): { code: string, message: string, remoteCode?: string } {
  const e = err as { code?: unknown, message?: unknown, remoteCode?: unknown }
  const out: { code: string, message: string, remoteCode?: string } = {
    code: typeof e.code === 'string' ? e.code : 'E_INTERNAL',
    message: typeof e.message === 'string' ? e.message : String(err),
  }
  if (typeof e.remoteCode === 'string') out.remoteCode = e.remoteCode
  return out
}

/** Receive the next message of `kind`; an Error message throws. */
async function expect<K extends Message['kind']> (conn: Connection, kind: K, signal?: AbortSignal, timeoutMs?: number): Promise<Extract<Message, { kind: K }>> {
  const m = await conn.receive({ ...(signal === undefined ? {} : { signal }), ...(timeoutMs === undefined ? {} : { timeoutMs }) })
  if (m.kind === kind) return m as Extract<Message, { kind: K }>
  if (m.kind === MessageKind.Error) {
    const retry = m.code === 'E_BUSY' || m.code === 'E_SHUTDOWN'
    if (retry) throw new ConnectionLost(`receiver: ${m.code} ${m.message}`, m.code === 'E_BUSY' ? 4429 : 1001)
    throw new AgentError('E_REMOTE', `receiver error ${m.code}: ${m.message}`, { remoteCode: m.code })
  }
  throw new AgentError('E_PROTOCOL', `expected message 0x${kind.toString(16)}, got 0x${m.kind.toString(16)}`)
}

// SPEC: CIDs travel as 8 lowercase hex digits; QEMU writes them without leading zeros
const layerOf = (l: Chain['layers'][number]): ChainLayer => ({ file: l.file, cid: formatCid(l.cid), parentCid: formatCid(l.parentCid) })

/** Run one cycle of one VM. Never throws: the report carries the error. */
export async function runVmCycle (components: { logger: Logger }, opts: CycleOptions): Promise<VmReport> {
  const started = performance.now()
  const report: VmReport = { ref: opts.ref, vm: opts.ref, ok: false, cycle: 0, reusedSnapshot: false, reconnects: 0, disks: [], removedSnapshots: [], durationMs: 0, timings: {} }
  let log = components.logger.child({ vmRef: opts.ref })
  const works: DiskWork[] = []
  const opened = new Set<Connection>()
  try {
    await initDigests()
    await cycle(opts, report, works, opened, (l) => { log = l }, () => log, components.logger)
    report.ok = report.disks.length > 0 && report.disks.every((d) => d.ok)
  } catch (err) {
    const info = errInfo(err)
    report.error = info
    log.error({ err, code: info.code, remoteCode: info.remoteCode }, 'cycle failed')
    for (const d of report.disks) if (d.error === undefined && !d.ok) d.error = { code: info.code, message: info.message }
  } finally {
    // a failed cycle must not leave a connection (and the receiver's VM lock) behind
    for (const c of opened) c.terminate()
    for (const w of works) await w.chain.close().catch(() => {})
    report.durationMs = Math.round(performance.now() - started)
  }
  return report
}

async function cycle (opts: CycleOptions, report: VmReport, works: DiskWork[], opened: Set<Connection>, setLog: (l: Logger) => void, getLog: () => Logger, root: Logger): Promise<void> {
  const { driver, signal } = opts
  let mark = performance.now()
  const lap = (phase: string): void => {
    const t = performance.now()
    report.timings[phase] = Math.round((report.timings[phase] ?? 0) + t - mark)
    mark = t
  }
  let vm = await driver.openVm(opts.ref, signal === undefined ? {} : { signal })
  report.vm = vm.name
  setLog(root.child({ vm: vm.name }))
  const log = (): Logger => getLog()
  if (vm.disks.length === 0) throw new AgentError('E_VMX', `${vm.vmxPath}: no hard disk`)

  // 1. snapshots: foreign ones are refused or consolidated first
  let snaps = await driver.listSnapshots(vm)
  const foreign = snaps.filter((s) => !s.grainline)
  if (foreign.length > 0) {
    if (!opts.consolidateExisting) {
      throw new AgentError('E_FOREIGN_SNAPSHOTS', `VM ${vm.name} has snapshots grainline did not make (${foreign.map((s) => JSON.stringify(s.name)).join(', ')}); remove them or use --consolidate-existing`)
    }
    for (const s of foreign) {
      log().warn({ snapshot: s.name, id: s.id }, 'removing a pre-existing snapshot (consolidateExisting)')
      await driver.removeSnapshot(vm, s)
      vm = await driver.openVm(opts.ref)
    }
    snaps = await driver.listSnapshots(vm)
  }
  const ours = snaps.filter((s) => s.grainline).sort((a, b) => a.cycle - b.cycle)
  const newest = ours[ours.length - 1]

  // 2. first connection: learn the mirror's state
  const connOpts: ConnectOptions = { ...opts.connect, ...(signal === undefined ? {} : { signal }) }
  let proposal = newest === undefined ? 1 : newest.cycle + 1
  let conn: Connection | undefined
  let welcome: WelcomeMessage
  let state: VmStateMessage
  const files = await vmFiles(vm)
  const baseNames = await Promise.all(vm.disks.map(async (d) => {
    const c = await (await vmdk()).openChain(d.path, driver.pathMap === undefined ? {} : { pathMap: { ...driver.pathMap } })
    try { return (c.layers[c.layers.length - 1] as Chain['layers'][number]).file } finally { await c.close() }
  }))
  // two disks on different datastores may share a basename: the mirror needs distinct names
  for (let i = 0; i < baseNames.length; i++) {
    if (baseNames.indexOf(baseNames[i] as string) !== i) baseNames[i] = `${(vm.disks[i] as VmDisk).node.replace(/:/g, '-')}_${baseNames[i] as string}`
  }
  const hello = {
    kind: MessageKind.Hello,
    versions: [PROTOCOL_VERSION],
    software: 'grainline-agent/0.1.0',
    digests: [...opts.digests],
    compressions: [...opts.compressions],
    limits: { maxMessageBytes: opts.maxExtentBytes + 65536, maxExtentBytes: opts.maxExtentBytes, windowBytes: opts.windowBytes },
  } as const
  const vmOpen = (cycleNo: number): Message => ({
    kind: MessageKind.VmOpen,
    vm: vm.name,
    cycle: cycleNo,
    compat: { hwVersion: vmxHardwareVersion(vm.config), datastoreType: vm.datastoreType, guestOS: vm.config.get('guestOS') ?? '' },
    files,
    disks: baseNames,
  })
  const handshake = async (cycleNo: number): Promise<{ conn: Connection, welcome: WelcomeMessage, state: VmStateMessage }> => {
    const c = await Connection.open(connOpts)
    opened.add(c)
    try {
      await c.send(hello)
      const w = await expect(c, MessageKind.Welcome, signal)
      await c.send(vmOpen(cycleNo))
      const s = await expect(c, MessageKind.VmState, signal)
      lastConnected = performance.now()
      return { conn: c, welcome: w, state: s }
    } catch (err) {
      c.terminate()
      throw err
    }
  }
  // an outage starts at the first failure after the last successful handshake
  let lastConnected = 0
  const retrying = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    let n = 0
    let outageStart: number | undefined
    for (;;) {
      try {
        return await fn()
      } catch (err) {
        if (!isRetryable(err)) throw err
        const t = performance.now()
        if (outageStart === undefined || lastConnected > outageStart) { outageStart = t; n = 0 }
        if (t - outageStart > opts.giveUpMs) {
          throw new AgentError('E_GAVE_UP', `${what}: receiver unreachable for ${Math.round((t - outageStart) / 1000)} s (${(err as Error).message}); the snapshot chain is left for the next run`, { cause: err })
        }
        const base = Math.min(2 ** n * 100, opts.maxBackoffMs)
        const delay = base + Math.random() * base * 0.5
        log().warn({ err: (err as Error).message, attempt: n + 1, delayMs: Math.round(delay) }, 'connection lost, reconnecting')
        n++
        report.reconnects++
        await sleep(delay, signal)
      }
    }
  }
  ;({ conn, welcome, state } = await retrying('connect', () => handshake(proposal)))
  let cycleNo = state.committedCycle + 1
  if (cycleNo !== proposal) {
    log().info({ proposal, committed: state.committedCycle }, 'mirror is at another cycle than the snapshots suggest; reopening')
    await conn.close()
    proposal = cycleNo
    ;({ conn, welcome, state } = await retrying('connect', () => handshake(proposal)))
    cycleNo = state.committedCycle + 1
    if (cycleNo !== proposal) throw new AgentError('E_PROTOCOL', `receiver committed cycle moved during connect (${state.committedCycle})`)
  }
  report.cycle = cycleNo
  lap('connect')
  if (state.exists && !state.compatible) {
    // SPEC §4.2: no incremental on an incompatible mirror; a new seed needs the operator
    throw new AgentError('E_REFUSED', `the mirror of ${vm.name} was made from another virtual hardware version or datastore type; move it away to seed a new one`, { remoteCode: 'E_INCOMPATIBLE' })
  }
  log().info({ cycle: cycleNo, committed: state.committedCycle, inflight: state.inflightCycle, exists: state.exists, compatible: state.compatible, digest: welcome.digest, compression: welcome.compression, limits: welcome.limits }, 'mirror state')
  if (state.inflightCycle !== 0 && state.inflightCycle !== cycleNo) {
    await rollback(conn, vm.name, signal)
    log().warn({ inflight: state.inflightCycle }, 'rolled back an abandoned in-flight cycle')
  }

  // 3. the snapshot: reuse our own un-committed one, else take a new one
  let shipped: SnapshotRef
  if (newest !== undefined && newest.cycle === cycleNo) {
    shipped = newest
    report.reusedSnapshot = true
    log().info({ snapshot: newest.name }, 'resuming with the un-committed snapshot of an earlier run')
  } else {
    shipped = await driver.createSnapshot(vm, grainlineSnapshotName(cycleNo), signal === undefined ? {} : { signal })
    log().info({ snapshot: shipped.name, id: shipped.id }, 'snapshot taken')
  }
  report.snapshot = shipped.name
  lap('snapshot')
  vm = await driver.openVm(opts.ref)
  if (opts.afterSnapshot !== undefined) await opts.afterSnapshot(vm)

  // 4. per-disk plan
  const maxExtent = Math.max(512, Math.floor(Math.min(welcome.limits.maxExtentBytes, opts.maxExtentBytes) / 512) * 512)
  const rateChunk = opts.rateLimiter.rate === Infinity ? maxExtent : Math.max(64 * 1024, Math.floor(opts.rateLimiter.rate / 8 / 512) * 512)
  const chunkBytes = Math.min(maxExtent, rateChunk)
  for (let i = 0; i < vm.disks.length; i++) {
    const disk = vm.disks[i] as VmDisk
    const chain = await (await vmdk()).openChain(disk.path, driver.pathMap === undefined ? {} : { pathMap: { ...driver.pathMap } })
    const L = chain.layers.length
    if (L < 2) { await chain.close(); throw new AgentError('E_SNAPSHOT', `${disk.fileName}: no frozen layer below the running disk after the snapshot`) }
    const name = baseNames[i] ?? (chain.layers[L - 1] as Chain['layers'][number]).file
    if (!name.endsWith((chain.layers[L - 1] as Chain['layers'][number]).file)) {
      await chain.close()
      throw new AgentError('E_SNAPSHOT', `${disk.node}: the base disk changed during the cycle (${(chain.layers[L - 1] as Chain['layers'][number]).file}, expected ${name})`)
    }
    const rep: DiskReport = { name, node: disk.node, ok: false, mode: 'none', capacity: chain.capacity, extents: 0, dataBytes: 0, zeroBytes: 0, wireBytes: 0, resumedFrom: [], layers: [] }
    report.disks.push(rep)
    const w: DiskWork = {
      handle: i, disk, name, chain, report: rep, depth: 1, mode: 'seed', fromDepth: L - 1, baseCycle: 0, baseGeneration: '', cycleNo,
      source: { layers: [], successor: '' }, plan: await buildPlan(arraySource([]), { chunkBytes }), cycleId: '', records: undefined, view: undefined, viewTask: undefined,
      progress: new DiskProgress(vm.name, name, opts.progress),
    }
    works.push(w)
    const canIncrement = state.exists && state.committedCycle > 0 && L >= 3
    // issue #10: the agent does not yet keep its own record of the generation
    // beside its snapshot; until it does it plans against the receiver's
    if (canIncrement) await planIncremental(w, L - 2, state.committedCycle, state.generation, chunkBytes)
    else {
      if (state.exists && state.committedCycle > 0) {
        rep.fallbackReason = 'no frozen delta above the base (the mirror\'s successor is gone)'
        log().warn({ disk: name, reason: rep.fallbackReason }, 'falling back to a full resync')
      }
      await planSeed(w, chunkBytes)
    }
    setIdentity(w, vm.name, cycleNo)
  }

  lap('plan')
  // 5. ship, with reconnect and resume. The receiver allows one DiskOpen per disk and
  // connection, so a refused open is answered on a NEW connection with a new plan.
  let needRollback = false
  let rolledBack = false
  let replans = 0
  let first = true
  let committed = false
  const certifyAlg = opts.certify === 'none' ? undefined : opts.certify
  const attempt = async (): Promise<void> => {
    if (!first) {
      ;({ conn, welcome, state } = await handshake(cycleNo))
      if (state.committedCycle === cycleNo) { committed = true; return }
      if (state.committedCycle + 1 !== cycleNo) throw new AgentError('E_PROTOCOL', `receiver moved to committed cycle ${state.committedCycle} during the cycle`)
    }
    first = false
    const c = conn as Connection
    if (needRollback) {
      await rollback(c, vm.name, signal)
      needRollback = false
      rolledBack = true
      for (const x of works) x.records?.clear()
      log().warn('rolled back the receiver\'s in-flight cycle of another identity')
    }
    const window = new SendWindow(Math.min(welcome.limits.windowBytes, opts.windowBytes))
    let ackError: Error | undefined
    let current: DiskWork | undefined
    c.onAck = (ack) => {
      if (current === undefined || ack.disk !== current.handle || !window.ack(ack.seq)) {
        ackError = new AgentError('E_PROTOCOL', `unexpected ack disk ${ack.disk} seq ${ack.seq}`)
        c.terminate()
        return
      }
      current.progress.update('send')
    }
    for (const w of works) {
      current = w
      const ds = await openDisk(c, w, signal)
      if (!ds.accepted) {
        if (++replans > 2 * works.length + 2) throw new AgentError('E_REFUSED', `receiver keeps refusing disk ${w.name}: ${ds.reason}`, { remoteCode: ds.reason })
        if (ds.reason === 'E_CYCLE_MISMATCH' && !rolledBack) {
          needRollback = true
        } else if (w.mode === 'incremental') {
          const succ = ds.committedSource?.successor
          const j = succ === undefined ? -1 : w.chain.layers.findIndex((l, k) => k >= 1 && k <= w.chain.layers.length - 2 && l.file === succ)
          if (ds.reason === 'E_CHAIN_MISMATCH' && j >= 1 && j !== w.fromDepth && !ds.modified && ds.committedCycle === w.baseCycle) {
            log().info({ disk: w.name, successor: succ, depth: j }, 'shipping from the mirror\'s recorded successor')
            await planIncremental(w, j, w.baseCycle, w.baseGeneration, chunkBytes)
          } else {
            w.report.fallbackReason = `${ds.reason}${ds.modified ? ' (mirror modified)' : ''}${succ !== undefined ? ` (mirror successor ${succ})` : ''}`
            log().warn({ disk: w.name, reason: w.report.fallbackReason }, 'incremental refused; falling back to a full resync')
            await planSeed(w, chunkBytes)
          }
          setIdentity(w, vm.name, cycleNo)
        } else {
          throw new AgentError('E_REFUSED', `receiver refused disk ${w.name}: ${ds.reason}`, { remoteCode: ds.reason })
        }
        await c.close().catch(() => {})
        throw new Replan()
      }
      await sendDisk(c, w, ds, window, () => ackError, opts, welcome, certifyAlg, log)
      current = undefined
    }
    lap('ship')
    await c.send({ kind: MessageKind.Commit, vm: vm.name, cycle: cycleNo })
    await expect(c, MessageKind.Committed, signal)
    committed = true
    for (const w of works) { w.progress.update('commit', true) }
    lap('commit')
    log().info({ cycle: cycleNo }, 'committed')
    await checks(c, works, welcome, opts, certifyAlg, log, signal)
    lap('check')
  }
  for (;;) {
    try {
      await retrying('cycle', async () => {
        try {
          await attempt()
        } catch (err) {
          if (isRetryable(err)) (conn as Connection | undefined)?.terminate()
          throw err
        }
      })
      break
    } catch (err) {
      if (err instanceof Replan) { first = false; continue }
      throw err
    }
  }
  await (conn as Connection).close().catch(() => {})
  if (!committed) throw new AgentError('E_PROTOCOL', 'cycle ended without commit')
  for (const w of works) {
    if (w.report.trivial === undefined && opts.trivialMiB > 0 && w.report.error === undefined) {
      w.report.error = { code: 'E_CHECK', message: 'commit confirmed after a reconnect; trivial check not run' }
    }
    w.report.ok = w.report.error === undefined && (w.report.trivial?.ok ?? true) && (w.report.certify?.ok ?? true)
    w.progress.update('done', true)
  }

  lap('check')
  if (opts.beforeRemove !== undefined) await opts.beforeRemove(vm)
  // 6. remove the older grainline snapshots: their deltas consolidate into the base
  const now = await driver.listSnapshots(vm)
  for (const s of now) {
    if (!s.grainline || s.id === shipped.id) continue
    try {
      await driver.removeSnapshot(vm, s)
      report.removedSnapshots.push(s.name)
      vm = await driver.openVm(opts.ref)
      log().info({ snapshot: s.name }, 'older snapshot removed')
    } catch (err) {
      log().error({ err, snapshot: s.name }, 'removing an older snapshot failed; the next cycle retries')
      // keep the driver's own code (E_CONSOLIDATION_NEEDED, E_TIMEOUT, …) in front of the operator
      const code = (err as { code?: unknown }).code
      throw new AgentError('E_SNAPSHOT', `removing snapshot ${s.name} failed${typeof code === 'string' ? ` [${code}]` : ''}: ${(err as Error).message}`, { cause: err })
    }
  }
  lap('remove')
}

async function rollback (conn: Connection, vm: string, signal?: AbortSignal): Promise<void> {
  await conn.send({ kind: MessageKind.Rollback, vm })
  await expect(conn, MessageKind.RolledBack, signal)
}

async function openDisk (conn: Connection, w: DiskWork, signal?: AbortSignal): Promise<DiskStateMessage> {
  const msg: DiskOpenMessage = {
    kind: MessageKind.DiskOpen,
    disk: w.handle,
    name: w.name,
    capacity: w.chain.capacity,
    cycle: w.cycleNo,
    mode: w.mode,
    baseCycle: w.baseCycle,
    baseGeneration: w.baseGeneration,
    source: w.source,
    cycleId: w.cycleId,
    ddb: Object.fromEntries((w.chain.layers[w.chain.layers.length - 1] as Chain['layers'][number]).descriptor.ddb),
    totalBytes: w.plan.totalBytes,
    totalExtents: w.plan.totalExtents,
  }
  await conn.send(msg)
  const ds = await expect(conn, MessageKind.DiskState, signal)
  if (ds.disk !== w.handle) throw new AgentError('E_PROTOCOL', `DiskState for disk ${ds.disk}, expected ${w.handle}`)
  return ds
}

async function planSeed (w: DiskWork, chunkBytes: number): Promise<void> {
  const chain = w.chain
  const depth = w.depth
  const mapped: RangeSource = async function * () {
    for await (const e of chain.map({ depth })) yield { offset: e.start, length: e.length, zero: !e.present || e.zero }
  }
  w.mode = 'seed'
  w.baseCycle = 0
  w.baseGeneration = ''
  w.fromDepth = w.chain.layers.length - 1
  w.plan = await buildPlan(coalesceSource(mapped), { chunkBytes })
  w.records?.clear()
}

/** Largest zero extent of an incremental cycle. */
const INCREMENTAL_ZERO_CHUNK = 16 * 1024 * 1024

async function planIncremental (w: DiskWork, fromDepth: number, baseCycle: number, baseGeneration: string, chunkBytes: number): Promise<void> {
  const chain = w.chain
  const layers: RangeSource[] = []
  for (let d = fromDepth; d >= w.depth; d--) layers.push(() => chain.changedRanges(d))
  w.mode = 'incremental'
  w.baseCycle = baseCycle
  w.baseGeneration = baseGeneration
  w.fromDepth = fromDepth
  // An incremental zero range overwrites mirror data in place, and the receiver
  // journals the old contents first: keep each such extent small (a seed's zero
  // ranges stay 1 GiB — they become holes in a fresh file and are not journalled).
  w.plan = await buildPlan(unionSource(layers), { chunkBytes, zeroChunkBytes: INCREMENTAL_ZERO_CHUNK })
  w.records?.clear()
}

function setIdentity (w: DiskWork, vm: string, cycleNo: number): void {
  const frozen: ChainLayer[] = []
  for (let d = w.fromDepth; d >= w.depth; d--) frozen.push(layerOf(w.chain.layers[d] as Chain['layers'][number]))
  w.source = { layers: frozen, successor: (w.chain.layers[0] as Chain['layers'][number]).file }
  w.cycleNo = cycleNo
  w.cycleId = cycleIdentity({ vm, name: w.name, cycle: cycleNo, mode: w.mode, baseCycle: w.baseCycle, baseGeneration: w.baseGeneration, source: w.source })
  w.report.mode = w.mode
  w.report.layers = frozen
  w.report.extents = w.plan.totalExtents
  w.progress.totalBytes = w.plan.totalBytes
}

async function sendDisk (conn: Connection, w: DiskWork, ds: DiskStateMessage, window: SendWindow, ackError: () => Error | undefined,
  opts: CycleOptions, welcome: WelcomeMessage, certifyAlg: DigestAlgorithm | undefined, log: () => Logger): Promise<void> {
  const signal = opts.signal
  const total = w.plan.totalExtents
  const resumeSeq = ds.resumeSeq
  if (resumeSeq > total) throw new AgentError('E_PROTOCOL', `receiver resume point ${resumeSeq} beyond the ${total} extents of disk ${w.name}`)
  w.report.resumedFrom.push(resumeSeq)
  if (resumeSeq > 0) log().info({ disk: w.name, resumeSeq, resumeBytes: ds.resumeBytes }, 'resuming disk')
  // the cycle digest covers every extent in seq order: replay the acknowledged prefix from the
  // digest log, reading from the frozen view what the log does not hold (another process, or past its bound)
  const dlog = w.records ?? new DigestLog(createDigest(welcome.digest).digest().length)
  w.records = dlog
  const cd = new CycleDigest(welcome.digest)
  let dataBytes = 0
  let zeroBytes = 0
  let covered = 0
  const account = (offset: number, length: number, zero: boolean, digest: Uint8Array): void => {
    cd.add({ offset, length, zero, digest })
    if (zero) zeroBytes += length
    else dataBytes += length
  }
  if (resumeSeq > 0) {
    const fromLog = Math.min(dlog.length, resumeSeq)
    for await (const p of planExtents(w.plan, 0)) {
      if (p.seq >= fromLog) break
      account(p.offset, p.length, dlog.isZero(p.seq), dlog.digest(p.seq))
    }
    if (fromLog < resumeSeq) {
      for await (const e of readPlannedExtents(w.chain, w.plan, { depth: w.depth, digest: welcome.digest, compression: 'none', fromSeq: fromLog, toSeq: resumeSeq, ...(signal === undefined ? {} : { signal }) })) {
        account(e.offset, e.length, e.zero, e.digest)
        dlog.record(e.seq, e.zero, e.digest)
      }
    }
    covered = dataBytes + zeroBytes
  }
  // view digests ride along with a seed sent whole from its first byte
  const prefixBytes = Math.min(w.chain.capacity, opts.trivialMiB * 1024 * 1024)
  const inPass = w.mode === 'seed' && resumeSeq === 0 && w.plan.firstOffset === 0
  if (inPass) {
    w.view = new ViewDigester(w.chain.capacity, welcome.digest, prefixBytes, certifyAlg)
  } else if (w.viewTask === undefined) {
    // the frozen view does not change with the plan or the connection: digest it once, overlapping the shipping
    const view = new ViewDigester(w.chain.capacity, welcome.digest, prefixBytes, certifyAlg)
    w.view = view
    w.viewTask = view.finishFrom(w.chain, w.depth, signal)
    w.viewTask.catch(() => {})
  }
  window.reset(resumeSeq)
  w.progress.doneBytes = covered
  w.progress.update('send', true)
  const failed = conn.failed()
  for await (const e of readPlannedExtents(w.chain, w.plan, { depth: w.depth, digest: welcome.digest, compression: welcome.compression, fromSeq: resumeSeq, ...(signal === undefined ? {} : { signal }) })) {
    const err = ackError()
    if (err !== undefined) throw err
    account(e.offset, e.length, e.zero, e.digest)
    dlog.record(e.seq, e.zero, e.digest)
    if (inPass && w.view !== undefined && w.view.position === e.offset) w.view.feed(e.offset, e.length, e.raw)
    // SPEC §5.3 "Window": data-extent length (uncompressed), plus 512 per zero extent
    const cost = e.zero ? 512 : e.length
    await window.reserve(cost, failed, STALL_MS, () => { conn.terminate(); return new ConnectionLost(`no acknowledgement from the receiver for ${STALL_MS / 1000} s`, 1006) })
    await opts.rateLimiter.take(e.data.length + 64, signal === undefined ? {} : { signal })
    await conn.send({ kind: MessageKind.Extent, disk: w.handle, seq: e.seq, offset: e.offset, length: e.length, zero: e.zero, compression: e.compression, data: e.data, digest: e.digest })
    window.sent(e.seq, cost)
    w.report.wireBytes += e.data.length
    w.progress.wireBytes += e.data.length
    w.progress.doneBytes += e.length
    w.progress.update('send')
    opts.onExtentSent?.({ disk: w.name, seq: e.seq, wireBytes: e.data.length })
  }
  w.report.dataBytes = dataBytes
  w.report.zeroBytes = zeroBytes
  if (cd.count !== total) throw new AgentError('E_PROTOCOL', `internal: ${cd.count} extents digested, plan has ${total}`)
  await conn.send({ kind: MessageKind.DiskEnd, disk: w.handle, extents: total, dataBytes, zeroBytes, digest: cd.digest() })
  w.progress.update('end', true)
  const ended = await expect(conn, MessageKind.DiskEnded, signal)
  if (ended.disk !== w.handle) throw new AgentError('E_PROTOCOL', `DiskEnded for disk ${ended.disk}, expected ${w.handle}`)
  const err = ackError()
  if (err !== undefined) throw err
}

async function checks (conn: Connection, works: DiskWork[], welcome: WelcomeMessage, opts: CycleOptions, certifyAlg: DigestAlgorithm | undefined, log: () => Logger, signal?: AbortSignal): Promise<void> {
  for (const w of works) {
    w.progress.update('check', true)
    if (w.viewTask !== undefined) await w.viewTask
    const view = w.view ?? new ViewDigester(w.chain.capacity, welcome.digest, Math.min(w.chain.capacity, opts.trivialMiB * 1024 * 1024), certifyAlg)
    if (!view.complete) await view.finishFrom(w.chain, w.depth, signal)
    if (opts.trivialMiB > 0) {
      const prefixBytes = Math.min(w.chain.capacity, opts.trivialMiB * 1024 * 1024)
      await conn.send({ kind: MessageKind.TrivialCheck, disk: w.handle, prefixBytes, algorithm: welcome.digest, size: w.chain.capacity, digest: view.prefixDigest as Uint8Array })
      const r = await expect(conn, MessageKind.TrivialResult, signal)
      w.report.trivial = { ok: r.ok && r.size === w.chain.capacity, prefixBytes, algorithm: welcome.digest }
      if (!w.report.trivial.ok) {
        w.report.error = { code: 'E_CHECK', message: `trivial check failed on ${w.name}: mirror size ${r.size}, digest ${Buffer.from(r.digest).toString('hex')}` }
        log().error({ disk: w.name, mirrorSize: r.size }, 'trivial check failed')
      }
    }
    if (certifyAlg !== undefined) {
      const digest = view.fullDigest as Uint8Array
      await conn.send({ kind: MessageKind.Certify, disk: w.handle, algorithm: certifyAlg, digest })
      // the receiver digests the whole mirror: allow for a slow disk (20 MB/s) on top of the idle timeout
      const r = await expect(conn, MessageKind.CertifyResult, signal, 120_000 + Math.ceil(w.chain.capacity / 20_000))
      const ok = r.ok && Buffer.from(r.digest).equals(Buffer.from(digest))
      w.report.certify = { ok, algorithm: certifyAlg, digest: Buffer.from(digest).toString('hex') }
      if (!ok) {
        w.report.error = { code: 'E_CHECK', message: `certify (${certifyAlg}) failed on ${w.name}: source ${Buffer.from(digest).toString('hex')}, mirror ${Buffer.from(r.digest).toString('hex')}` }
        log().error({ disk: w.name }, 'certify failed')
      }
    }
  }
}

async function vmFiles (vm: VmHandle): Promise<VmFile[]> {
  const out: VmFile[] = [{ name: basename(vm.vmxPath), data: await readFile(vm.vmxPath) }]
  const stem = basename(vm.vmxPath).replace(/\.vmx$/i, '')
  const nvram = vm.config.get('nvram') ?? `${stem}.nvram`
  const p = join(dirname(vm.vmxPath), basename(nvram))
  try {
    const st = await stat(p)
    if (st.isFile() && st.size <= 4 * 1024 * 1024) out.push({ name: basename(p), data: await readFile(p) })
  } catch { /* no nvram */ }
  return out
}
