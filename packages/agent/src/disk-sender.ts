/**
 * Ships one accepted disk (SPEC §5): extents from the receiver's resume point
 * through the window (SPEC §5.3) and the rate limit, the cycle digest over
 * every extent in seq order (the acknowledged prefix replayed from the digest
 * log or re-read from the frozen view), then DiskEnd → DiskEnded.
 */
import type { Logger } from 'pino'
import { createDigest, CycleDigest, windowCost, type CompressionAlgorithm, type DigestAlgorithm, type DiskStateMessage } from '@grainline/protocol'
import { startScrubDigests, startWrittenDigests, type ScrubPlan } from './block-check.ts'
import { ConnectionLost } from './connection.ts'
import { bytesToRead, DataWindow } from './data-window.ts'
import { DigestLog } from './digest-log.ts'
import type { DiskWork } from './disk-work.ts'
import { AgentError } from './errors.ts'
import { planExtents } from './extent-plan.ts'
import { READ_BUFFERS, readPlannedExtents, ViewDigester } from './extent-source.ts'
import type { RateLimiter } from './rate-limiter.ts'
import { refusalError, type ReceiverClient } from './receiver-client.ts'
import type { SendWindow } from './window.ts'

/** A receiver that acknowledges nothing for this long while the window is full is treated as gone. */
export const STALL_MS = 120_000

/** Options of {@link sendDisk}. */
export interface SendDiskOptions {
  readonly client: ReceiverClient
  readonly work: DiskWork
  /** the receiver's accepted DiskState (resume point) */
  readonly accepted: DiskStateMessage
  /** the connection's window (reset here for this disk) */
  readonly window: SendWindow
  /** negotiated in Welcome */
  readonly digest: DigestAlgorithm
  readonly compression: CompressionAlgorithm
  /** prefix of the trivial check, bytes (0 = off; capped at the disk's capacity) */
  readonly trivialBytes: number
  /** full-view digest for certify, if asked */
  readonly certify: DigestAlgorithm | undefined
  readonly rateLimiter: RateLimiter
  readonly log: Logger
  readonly signal?: AbortSignal
  /** called after every extent handed to the socket (tests: cut the link) */
  readonly onExtentSent?: (info: { disk: string; seq: number; wireBytes: number }) => void
  /**
   * `--verify changed` with this block size (an incremental: the option's; a
   * resync checks its map blocks): the digests of the blocks written are taken
   * while the disk ships, so that after the commit only the BlockChecks go.
   * Undefined: no `--verify changed`.
   */
  readonly verifyBlockSize?: number | undefined
  /**
   * `--scrub N`: the slice this cycle's scrub compares follows from the
   * disk's rotation, known before it ships: its frozen-view digests are taken
   * while the disk ships (an incremental reads the slice alongside, a resync
   * keeps the digests of the slice's blocks as it compares them), so that
   * after the commit only the BlockChecks go. Undefined: no `--scrub`.
   */
  readonly scrubPlan?: ScrubPlan | undefined
}

/** Ship the disk `opts.work` from `opts.accepted.resumeSeq` to DiskEnded. */
export async function sendDisk(opts: SendDiskOptions): Promise<void> {
  const { client, work: w, window, signal, log } = opts
  const total = w.plan.totalExtents
  const resumeSeq = opts.accepted.resumeSeq
  if (resumeSeq > total) throw new AgentError('E_PROTOCOL', `receiver resume point ${resumeSeq} beyond the ${total} extents of disk ${w.name}`)
  w.report.resumedFrom.push(resumeSeq)
  if (resumeSeq > 0) log.info({ disk: w.name, resumeSeq, resumeBytes: opts.accepted.resumeBytes }, 'resuming disk')
  const cd = new CycleDigest(opts.digest)
  let dataBytes = 0
  let zeroBytes = 0
  const account = (offset: number, length: number, zero: boolean, digest: Uint8Array): void => {
    cd.add({ offset, length, zero, digest })
    if (zero) zeroBytes += length
    else dataBytes += length
  }
  const dlog = w.records ?? new DigestLog(createDigest(opts.digest).digest().length)
  w.records = dlog
  // a seed reads only what may hold data (data-window.ts); a certify reads every byte of the view it proves
  const holeStats = { skippedBytes: 0, holeExtents: 0, questions: 0, unknownBytes: 0 }
  const skipHoles = w.mode === 'seed' && opts.certify === undefined
  const read = { depth: w.depth, digest: opts.digest, skipHoles, holeStats, ...(signal === undefined ? {} : { signal }) }
  if (resumeSeq > 0) {
    // the cycle digest covers every extent in seq order: replay the acknowledged prefix from the
    // digest log, reading from the frozen view what the log does not hold (another process, or past its bound)
    const fromLog = Math.min(dlog.length, resumeSeq)
    // the receiver applied `resumeBytes` in its first `resumeSeq` extents: this plan's must cover as much,
    // else the cycle was planned with other extents and resuming would leave holes or overlaps
    let planned = 0
    for await (const p of planExtents(w.plan, 0)) {
      if (p.seq >= resumeSeq) break
      planned += p.length
      if (p.seq < fromLog) account(p.offset, p.length, dlog.isZero(p.seq), dlog.digest(p.seq))
    }
    if (planned !== opts.accepted.resumeBytes) {
      throw new AgentError(
        'E_PROTOCOL',
        `disk ${w.name}: the receiver resumes after ${resumeSeq} extents covering ${opts.accepted.resumeBytes} bytes, this run's first ${resumeSeq} extents cover ${planned}: the in-flight cycle was planned with other extents; roll it back (grainline mirror rollback on the receiver) and run again`,
      )
    }
    if (fromLog < resumeSeq) {
      for await (const e of readPlannedExtents(w.chain, w.plan, { ...read, compression: 'none', fromSeq: fromLog, toSeq: resumeSeq })) {
        account(e.offset, e.length, e.zero, e.digest)
        dlog.record(e.seq, e.zero, e.digest)
        e.release?.()
      }
    }
  }
  const inPass = startViewDigest(opts, resumeSeq)
  // `--verify changed`: the written blocks' digests from the frozen view, while the extents ship (awaited after the commit)
  if (opts.verifyBlockSize !== undefined) startWrittenDigests(w, { blockSize: opts.verifyBlockSize, digest: opts.digest, signal, log })
  // `--scrub N`: the slice's digests from the frozen view, while the extents ship (awaited after the commit)
  if (opts.scrubPlan !== undefined) startScrubDigests(w, { plan: opts.scrubPlan, digest: opts.digest, signal, log })
  window.reset(resumeSeq)
  client.onAck = (ack) => {
    if (ack.disk !== w.handle || !window.ack(ack.seq)) {
      client.abort(new AgentError('E_PROTOCOL', `unexpected ack disk ${ack.disk} seq ${ack.seq}`))
      return
    }
    w.progress.update('send')
  }
  w.progress.doneBytes = dataBytes + zeroBytes
  // the ETA of a seed that skips holes follows the bytes it reads, counted beside the shipping (progress.ts)
  w.progress.workMode = skipHoles
  w.progress.workDoneBytes = 0
  w.progress.workTotalBytes = undefined
  // the count ends with this pass (a failed or finished ship asks no further questions)
  const counted = new AbortController()
  if (skipHoles) {
    const chain = w.chain
    const counting = new DataWindow((o, l) => chain.dataRanges(o, l, { depth: w.depth }), chain.capacity)
    const progress = w.progress
    bytesToRead(planExtents(w.plan, resumeSeq), counting, signal === undefined ? counted.signal : AbortSignal.any([signal, counted.signal])).then(
      (n) => {
        progress.workTotalBytes = n
      },
      (err: unknown) => log.debug({ disk: w.name, err: (err as Error).message }, 'the bytes to read were not counted: the ETA follows the bytes covered'),
    )
  }
  w.progress.update('send', true)
  const failed = client.failed()
  const onStall = (): Error => {
    client.terminate()
    return new ConnectionLost(`no acknowledgement from the receiver for ${STALL_MS / 1000} s`, 1006)
  }
  const shipStart = performance.now()
  const cpu0 = process.cpuUsage()
  const faults0 = process.resourceUsage().minorPageFault
  const fresh0 = READ_BUFFERS.fresh
  const reused0 = READ_BUFFERS.reused
  try {
    for await (const e of readPlannedExtents(w.chain, w.plan, { ...read, compression: opts.compression, fromSeq: resumeSeq })) {
      account(e.offset, e.length, e.zero, e.digest)
      dlog.record(e.seq, e.zero, e.digest)
      if (inPass && w.view !== undefined && w.view.position === e.offset) w.view.feed(e.offset, e.length, e.raw)
      // the read buffer is read into again once nothing reads it: compressed, now; sent as it is, once the socket wrote it
      const sentRaw = e.raw !== undefined && e.data === e.raw
      if (!sentRaw) e.release?.()
      const cost = windowCost(e)
      // await the window only when it is full (issue #17: hundreds of extents per cycle); every extent's
      // bytes pass through the rate limiter, even an unlimited one (a job's VMs share it)
      if (!window.fits(cost)) await window.reserve(cost, failed, STALL_MS, onStall)
      await opts.rateLimiter.take(e.data.length + 64, signal === undefined ? {} : { signal })
      await client.sendExtent(
        { disk: w.handle, seq: e.seq, offset: e.offset, length: e.length, zero: e.zero, compression: e.compression, data: e.data, digest: e.digest },
        sentRaw ? e.release : undefined,
      )
      window.sent(e.seq, cost)
      w.report.wireBytes += e.data.length
      w.progress.wireBytes += e.data.length
      w.progress.doneBytes += e.length
      w.progress.workDoneBytes += e.readBytes
      w.progress.update('send')
      opts.onExtentSent?.({ disk: w.name, seq: e.seq, wireBytes: e.data.length })
    }
  } finally {
    counted.abort()
  }
  w.report.dataBytes = dataBytes
  w.report.zeroBytes = zeroBytes
  if (skipHoles) {
    w.report.holesSkippedBytes = (w.report.holesSkippedBytes ?? 0) + holeStats.skippedBytes
    if (holeStats.unknownBytes > 0) {
      log.info(
        { disk: w.name, unknownBytes: holeStats.unknownBytes },
        'the seed read the base whole where its holes could not be asked for (no python3 on this proxy, or a datastore over SFTP): holes cost as much as data there',
      )
    }
  }
  if (cd.count !== total) throw new AgentError('E_PROTOCOL', `internal: ${cd.count} extents digested, plan has ${total}`)
  w.progress.update('end', true)
  const handedMs = performance.now() - shipStart
  const ended = await client.endDisk({ disk: w.handle, extents: total, dataBytes, zeroBytes, digest: cd.digest() })
  if (!ended.ok) throw refusalError(`DiskEnd of ${w.name}`, ended.refusal)
  // where a ship lap goes: handing the extents to the socket, then the receiver making the last of them durable
  const cpu = process.cpuUsage(cpu0)
  log.debug(
    {
      disk: w.name,
      extents: total - resumeSeq,
      handedMs: Math.round(handedMs),
      endedMs: Math.round(performance.now() - shipStart - handedMs),
      cpuMs: { user: Math.round(cpu.user / 1000), system: Math.round(cpu.system / 1000) },
      // page faults of the process over both (fresh memory's first touch: ~10–25 µs each on the development VM)
      minorFaults: process.resourceUsage().minorPageFault - faults0,
      readBuffers: { fresh: READ_BUFFERS.fresh - fresh0, reused: READ_BUFFERS.reused - reused0 },
      ...(skipHoles ? { holes: holeStats } : {}),
    },
    'disk shipped',
  )
}

/**
 * The view digests (trivial prefix, certify) ride along with a seed sent whole
 * from its first byte; otherwise the frozen view is read once in the
 * background while the extents ship. Returns whether they ride along.
 */
function startViewDigest(opts: SendDiskOptions, resumeSeq: number): boolean {
  const w = opts.work
  const inPass = w.mode === 'seed' && resumeSeq === 0 && w.plan.firstOffset === 0
  const prefixBytes = Math.min(w.chain.capacity, opts.trivialBytes)
  if (inPass) {
    w.view = new ViewDigester(w.chain.capacity, opts.digest, prefixBytes, opts.certify)
  } else if (w.viewTask === undefined) {
    // the frozen view does not change with the plan or the connection: digest it once, overlapping the shipping
    const view = new ViewDigester(w.chain.capacity, opts.digest, prefixBytes, opts.certify)
    w.view = view
    w.viewTask = view.finishFrom(w.chain, w.depth, opts.signal)
    w.viewTask.catch(() => {})
  }
  return inPass
}
