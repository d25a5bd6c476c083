/**
 * Ships one accepted resync disk (SPEC §5.9): asks the receiver for the
 * mirror's block digests (contiguous BlockMapRequests, at most
 * `MAX_MAP_REQUESTS` unanswered, so the receiver hashes while the agent
 * reads), digests the frozen view in large spans ahead of the maps
 * (view-block-digests.ts: the reading never waits for the receiver), and
 * sends every block whose digests differ — read again, one block — as one
 * extent (a zero extent when it reads as zeros), in block order, never ahead
 * of the map received. The extent sequence is a function of the two maps: a
 * resume recomputes it and sends from the receiver's `resumeSeq`. The
 * trivial-check and certify digests of the view ride along (the whole view
 * is read in order anyway).
 *
 * Memory: the read buffers, the window, the digests computed ahead (at most
 * `MAX_MAP_REQUESTS` maps' worth) and at most `MAX_MAP_REQUESTS` map
 * messages — never a whole map.
 */
import { blockCount, blockDigest, CycleDigest, compress, DigestLengths, MAX_MAP_REQUESTS, mapBlocksPerMessage, windowCost, type CompressionAlgorithm } from '@grainline/protocol'
import { isAllZero } from '@grainline/vmdk'
import { ConnectionLost } from './connection.ts'
import { STALL_MS, type SendDiskOptions } from './disk-sender.ts'
import { AgentError } from './errors.ts'
import { CompressionGate, ViewDigester } from './extent-source.ts'
import { scrubSlice } from './block-check.ts'
import { ScrubSliceDigests } from './scrub-slice-digests.ts'
import { ViewBlockDigests } from './view-block-digests.ts'
import { WrittenBlockDigests } from './written-block-digests.ts'
import { refusalError } from './receiver-client.ts'

/** Options of {@link sendResync}: those of a disk, and the negotiated frame size (bounds the map messages). */
export interface SendResyncOptions extends SendDiskOptions {
  readonly maxMessageBytes: number
  /**
   * most bytes of blocks one BlockMapRequest covers (the receiver digests that
   * much of the mirror per answer, and makes it durable with one fdatasync:
   * with holes not read, 256 MiB requests left a 16 GiB resync waiting on 64
   * fdatasyncs of the receiver's map file)
   * @default 1 GiB
   */
  readonly mapRequestBytes?: number
  /**
   * bytes of the frozen view per read (several in flight, buffers reused)
   * @default 2 MiB
   */
  readonly readSpanBytes?: number
  /** called with the blocks mapped so far (from block 0) after each BlockMap answer: the reconnect rule's progress */
  readonly onMapped?: (blocks: number) => void
}

/** Map answers wait for the receiver to digest a run of the mirror: the idle timeout plus a slow disk (20 MB/s). */
function mapTimeoutMs(bytes: number): number {
  return 120_000 + Math.ceil(bytes / 20_000)
}

/** Ship the resync disk `opts.work` from `opts.accepted.resumeSeq` to DiskEnded. */
export async function sendResync(opts: SendResyncOptions): Promise<void> {
  const { client, work: w, window, signal, log } = opts
  const blockSize = w.blockSize
  const capacity = w.chain.capacity
  const blocks = blockCount(capacity, blockSize)
  const len = DigestLengths[opts.digest]
  const per = Math.max(1, Math.min(mapBlocksPerMessage(opts.maxMessageBytes, len), Math.floor((opts.mapRequestBytes ?? 1024 * 1024 * 1024) / blockSize)))
  const resumeSeq = opts.accepted.resumeSeq
  w.report.resumedFrom.push(resumeSeq)
  if (resumeSeq > 0) log.info({ disk: w.name, resumeSeq, resumeBytes: opts.accepted.resumeBytes }, 'resuming resync')
  const stats = { blockSize, blocks, differing: 0, mapBytes: 0 }
  w.report.resync = stats
  const cd = new CycleDigest(opts.digest)
  let dataBytes = 0
  let zeroBytes = 0
  const prefixBytes = Math.min(capacity, opts.trivialBytes)
  const view = new ViewDigester(capacity, opts.digest, prefixBytes, opts.certify)
  w.view = view
  w.viewTask = undefined
  // the blocks this cycle writes, for `--verify changed`: a bitmap (2 MiB for 16 M blocks)
  const touched = new Uint8Array(Math.ceil(blocks / 8))
  w.touched = touched
  // and their digests (taken here anyway, each differing block is read again): after the commit only the BlockChecks go
  const written = opts.verifyBlockSize === undefined ? undefined : new WrittenBlockDigests(blockSize, opts.digest)
  w.written = written
  w.writtenTask = undefined
  // `--scrub N`: a resync without error starts a new rotation, whose first slice's digests are taken here too
  // (unless an incremental attempt of this disk is still reading its own slice: that one is read after the commit)
  const slice = scrubSliceDigests(opts, w.scrubTask === undefined, blockSize, capacity)
  if (slice !== undefined) w.scrubSlice = slice
  window.reset(resumeSeq)
  client.onAck = (ack) => {
    if (ack.disk !== w.handle || !window.ack(ack.seq)) {
      client.abort(new AgentError('E_PROTOCOL', `unexpected ack disk ${ack.disk} seq ${ack.seq}`))
      return
    }
    w.progress.update('send')
  }
  w.progress.doneBytes = 0
  // a resync's ETA follows the bytes it compares (the whole disk), not a seed's bytes read
  w.progress.workMode = false
  w.progress.update('send', true)
  const failed = client.failed()
  const onStall = (): Error => {
    client.terminate()
    return new ConnectionLost(`no acknowledgement from the receiver for ${STALL_MS / 1000} s`, 1006)
  }
  const gate = new CompressionGate()
  const compression: CompressionAlgorithm = opts.compression
  // the map pipeline: contiguous requests from block 0, at most MAX_MAP_REQUESTS unanswered
  const requested: Array<{ first: number; count: number }> = []
  let nextFirst = 0
  const request = async (): Promise<void> => {
    while (requested.length < MAX_MAP_REQUESTS && nextFirst < blocks) {
      const count = Math.min(per, blocks - nextFirst)
      await client.requestBlockMap({ disk: w.handle, first: nextFirst, count })
      requested.push({ first: nextFirst, count })
      nextFirst += count
    }
  }
  const source = new ViewBlockDigests({
    chain: w.chain,
    depth: w.depth,
    blockSize,
    algorithm: opts.digest,
    view,
    ...(opts.readSpanBytes === undefined ? {} : { spanBytes: opts.readSpanBytes }),
    // the digests may run ahead of the comparison by the maps requested (and one span)
    aheadBlocks: MAX_MAP_REQUESTS * per,
    signal,
    onUnknownHoles: (bytes) => {
      log.info({ disk: w.name, bytes }, 'the holes of this disk cannot be found here (no SEEK_DATA: python3 missing, a remote or unsupported file system): every byte is read')
    },
  })
  source.start()
  let seq = 0
  /** bytes of the extents below the resume point: the receiver's `resumeBytes` must be the same */
  let resumedBytes = 0
  // where the time goes (logged): waiting for the receiver's maps, for the source reads, for the window
  const waits = { mapMs: 0, readMs: 0, sendMs: 0 }
  try {
    await request()
    while (requested.length > 0) {
      const run = requested[0] as { first: number; count: number }
      let t0 = performance.now()
      const r = await client.blockMap(w.handle, run.first, mapTimeoutMs(run.count * blockSize))
      waits.mapMs += performance.now() - t0
      if (!r.ok) throw refusalError(`block map of ${w.name}`, r.refusal)
      requested.shift()
      const mirror = r.value.digests
      if (mirror.length !== run.count * len) throw new AgentError('E_PROTOCOL', `BlockMap of ${w.name} at block ${run.first}: ${mirror.length} bytes for ${run.count} ${opts.digest} digests`)
      opts.onMapped?.(run.first + run.count)
      stats.mapBytes += mirror.length
      await request()
      for (let i = 0; i < run.count; i++) {
        t0 = performance.now()
        const own = await source.next()
        waits.readMs += performance.now() - t0
        const bi = run.first + i
        if (slice !== undefined && bi >= slice.from && bi < slice.to) slice.set(bi, own)
        const offset = bi * blockSize
        const length = Math.min(blockSize, capacity - offset)
        w.progress.doneBytes = offset + length
        if (Buffer.compare(own, mirror.subarray(i * len, (i + 1) * len)) === 0) continue
        // a differing block: read again for its data (the view is frozen: the same bytes)
        const b = { offset, length, raw: await w.chain.read(offset, length, { depth: w.depth }) }
        const digest = blockDigest(opts.digest, b.raw)
        if (Buffer.compare(digest, own) !== 0) throw new AgentError('E_CHAIN', `block ${bi} of ${w.name} read twice gave two digests: the frozen view changed while it was read; run the cycle again`)
        stats.differing++
        touched[bi >> 3] = (touched[bi >> 3] as number) | (1 << (bi & 7))
        written?.add(bi, digest)
        const zero = isAllZero(b.raw)
        const extentDigest = zero ? new Uint8Array(0) : digest
        cd.add({ offset: b.offset, length: b.length, zero, digest: extentDigest })
        if (zero) zeroBytes += b.length
        else dataBytes += b.length
        if (seq++ < resumeSeq) {
          resumedBytes += b.length
          continue
        }
        let data: Uint8Array = new Uint8Array(0)
        let used: CompressionAlgorithm = 'none'
        if (!zero) {
          data = b.raw
          if (compression !== 'none' && gate.shouldTry()) {
            const c = compress(compression, b.raw)
            const paid = c.length < b.raw.length * 0.9
            gate.result(paid)
            if (paid) {
              data = c
              used = compression
            }
          }
        }
        const e = { disk: w.handle, seq: seq - 1, offset: b.offset, length: b.length, zero, compression: used, data, digest: extentDigest }
        const cost = windowCost(e)
        t0 = performance.now()
        await window.reserve(cost, failed, STALL_MS, onStall)
        waits.sendMs += performance.now() - t0
        await opts.rateLimiter.take(data.length + 64, signal === undefined ? {} : { signal })
        await client.sendExtent(e)
        window.sent(e.seq, cost)
        w.report.wireBytes += data.length
        w.progress.wireBytes += data.length
        w.progress.update('send')
        opts.onExtentSent?.({ disk: w.name, seq: e.seq, wireBytes: data.length })
      }
      w.progress.update('send')
    }
  } finally {
    await source.close()
  }
  if (resumeSeq > 0 && resumedBytes !== opts.accepted.resumeBytes) {
    throw new AgentError(
      'E_PROTOCOL',
      `the receiver applied ${opts.accepted.resumeBytes} bytes before seq ${resumeSeq} of ${w.name}, the block maps give ${resumedBytes}: roll the receiver's cycle back (grainline mirror rollback) and run again`,
    )
  }
  if (seq < resumeSeq) throw new AgentError('E_PROTOCOL', `receiver resume point ${resumeSeq} beyond the ${seq} differing blocks of disk ${w.name}`)
  if (!view.complete) throw new AgentError('E_PROTOCOL', `internal: the view of ${w.name} was not read whole`)
  written?.complete()
  slice?.complete()
  w.report.extents = seq
  w.report.dataBytes = dataBytes
  w.report.zeroBytes = zeroBytes
  log.info(
    {
      disk: w.name,
      blocks,
      differing: stats.differing,
      blockSize,
      mapBytes: stats.mapBytes,
      holeBytes: source.holeBytes,
      wireBytes: w.report.wireBytes,
      waitMs: Object.fromEntries(Object.entries(waits).map(([k, v]) => [k, Math.round(v)])),
    },
    'resync compared',
  )
  w.progress.update('end', true)
  const ended = await client.endDisk({ disk: w.handle, extents: seq, dataBytes, zeroBytes, digest: cd.digest() })
  if (!ended.ok) throw refusalError(`DiskEnd of ${w.name}`, ended.refusal)
}

/** The store of the first scrub slice of the rotation a resync starts (`--scrub N` with the resync's block size), or undefined. */
function scrubSliceDigests(opts: SendResyncOptions, free: boolean, blockSize: number, capacity: number): ScrubSliceDigests | undefined {
  const plan = opts.scrubPlan
  if (plan === undefined || !free || plan.blockSize !== blockSize) return undefined
  const { from, to } = scrubSlice(capacity, plan, true)
  return ScrubSliceDigests.fits(from, to) ? new ScrubSliceDigests(from, to, blockSize, opts.digest) : undefined
}
