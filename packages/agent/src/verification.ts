/**
 * Verification after a commit (ARCHITECTURE §1): the trivial check (disk size
 * + digest of the first N MiB) and, when asked, certify (a full digest of the
 * mirror) — both compared with the same digests of the frozen source view.
 * A failed check is recorded in the disk's report (`E_CHECK`); it does not
 * throw.
 */
import type { Logger } from 'pino'
import type { DigestAlgorithm, TrivialResultMessage } from '@grainline/protocol'
import type { DiskWork } from './disk-work.ts'
import { ViewDigester } from './extent-source.ts'
import { refusalError, type ReceiverClient, type Reply } from './receiver-client.ts'
import { checkChangedBlocks, readyDigests, scrubDisk, scrubReady, verifyBlockSize } from './block-check.ts'
import type { ScrubRecord } from './agent-state.ts'

/** Options of {@link verifyDisks}. */
export interface VerifyOptions {
  readonly client: ReceiverClient
  /** the negotiated digest (trivial check) */
  readonly digest: DigestAlgorithm
  /** prefix of the trivial check, bytes (0 = off; capped at each disk's capacity) */
  readonly trivialBytes: number
  /** full digest algorithm, or undefined for no certify */
  readonly certify: DigestAlgorithm | undefined
  /** `--verify changed`: compare every block the cycle wrote (SPEC §5.6 BlockCheck). @default false */
  readonly verifyChanged?: boolean
  /** block size of the block check (a power of two). @default 1 MiB */
  readonly blockSize?: number
  /** the negotiated frame size (bounds a BlockCheck). @default 16 MiB + 64 KiB */
  readonly maxMessageBytes?: number
  /** `--scrub N`: compare 1/N of each disk per cycle (0: off), continuing each disk's rotation in `scrubState`. @default 0 */
  readonly scrub?: number
  /** the scrub rotations by disk name (updated in place) */
  readonly scrubState?: Record<string, ScrubRecord>
  readonly log: Logger
  readonly signal?: AbortSignal
}

/** Certify waits for the receiver to digest the whole mirror: the idle timeout plus a slow disk (20 MB/s). */
export function certifyTimeoutMs(capacity: number): number {
  return 120_000 + Math.ceil(capacity / 20_000)
}

/** Run the checks of every committed disk (opened in this connection) and record them in the reports. */
export async function verifyDisks(works: readonly DiskWork[], opts: VerifyOptions): Promise<void> {
  const { client, log } = opts
  for (const w of works) {
    w.progress.update('check', true)
    if (w.viewTask !== undefined) await w.viewTask
    const size = w.chain.capacity
    const prefixBytes = Math.min(size, opts.trivialBytes)
    const view = w.view ?? new ViewDigester(size, opts.digest, prefixBytes, opts.certify)
    if (!view.complete) await view.finishFrom(w.chain, w.depth, opts.signal)
    const trivial = opts.trivialBytes > 0 ? { disk: w.handle, prefixBytes, algorithm: opts.digest, size, digest: view.prefixDigest as Uint8Array } : undefined
    const scrub = opts.scrub ?? 0
    const scrubbing = scrub > 0 && opts.scrubState !== undefined
    // the digests of the first BlockChecks are ready (`--verify changed`'s written blocks, else an incremental's scrub
    // slice): they follow the trivial check without waiting for its answer (answers come in the order asked), so the
    // receiver goes on to the blocks as soon as it has digested the prefix. Not a seed's or resync's scrub: whether it
    // starts a new rotation (proven whole) depends on the trivial check's answer
    const pipelined =
      trivial !== undefined &&
      opts.certify === undefined &&
      (opts.verifyChanged === true
        ? readyDigests(w, opts.digest, verifyBlockSize(w, opts)) !== undefined
        : scrubbing && w.mode === 'incremental' && scrubReady(w, { ...opts, scrub }, opts.scrubState?.[w.name]))
    let trivialAnswer: (() => Promise<void>) | undefined
    if (pipelined) {
      await client.sendTrivialCheck(trivial)
      trivialAnswer = async () => {
        noteTrivial(w, trivial, await client.trivialResult(w.handle), log)
      }
    } else {
      if (trivial !== undefined) noteTrivial(w, trivial, await client.trivialCheck(trivial), log)
      if (opts.certify !== undefined) {
        const digest = view.fullDigest as Uint8Array
        const r = await client.certify({ disk: w.handle, algorithm: opts.certify, digest }, certifyTimeoutMs(size))
        if (!r.ok) throw refusalError(`certify of ${w.name}`, r.refusal)
        const ok = r.value.ok && Buffer.from(r.value.digest).equals(Buffer.from(digest))
        w.report.certify = { ok, algorithm: opts.certify, digest: Buffer.from(digest).toString('hex') }
        if (!ok) {
          w.report.error = {
            code: 'E_CHECK',
            message: `certify (${opts.certify}) failed on ${w.name}: source ${Buffer.from(digest).toString('hex')}, mirror ${Buffer.from(r.value.digest).toString('hex')}`,
          }
          log.error({ disk: w.name }, 'certify failed')
        }
      }
    }
    if (opts.verifyChanged === true) {
      await checkChangedBlocks(w, opts, trivialAnswer)
      trivialAnswer = undefined
    }
    if (scrubbing) {
      const state = opts.scrubState as Record<string, ScrubRecord>
      state[w.name] = await scrubDisk(w, { ...opts, scrub }, state[w.name], trivialAnswer)
      trivialAnswer = undefined
    }
  }
}

/** Record a trivial check's answer in the disk's report. */
function noteTrivial(w: DiskWork, asked: { readonly prefixBytes: number; readonly algorithm: DigestAlgorithm; readonly size: number }, r: Reply<TrivialResultMessage>, log: Logger): void {
  if (!r.ok) throw refusalError(`trivial check of ${w.name}`, r.refusal)
  w.report.trivial = { ok: r.value.ok && r.value.size === asked.size, prefixBytes: asked.prefixBytes, algorithm: asked.algorithm }
  if (!w.report.trivial.ok) {
    w.report.error = { code: 'E_CHECK', message: `trivial check failed on ${w.name}: mirror size ${r.value.size}, digest ${Buffer.from(r.value.digest).toString('hex')}` }
    log.error({ disk: w.name, mirrorSize: r.value.size }, 'trivial check failed')
  }
}
