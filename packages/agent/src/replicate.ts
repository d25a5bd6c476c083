/**
 * `replicate()` and `replicateMany()`: VM cycles with resolved options,
 * returning one JSON-able report. Several VMs run concurrently (`parallel`),
 * with one bandwidth budget for all their streams and at most one snapshot
 * operation at a time per hypervisor host; the progress of all of them goes
 * to one view. The CLI (`grainline replicate`) and the job runner
 * (job-runner.ts) are thin wrappers over this.
 */
import { readFile } from 'node:fs/promises'
import type { Logger } from 'pino'
import { DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, type CompressionAlgorithm, type DigestAlgorithm, type RetentionSpec } from '@grainline/protocol'
import type { HypervisorDriver, VmHandle } from './driver.ts'
import { defaultStateDir } from './agent-state.ts'
import { AgentError } from './errors.ts'
import { canonicalReceiverUrl, checkReceiverUrl } from './receiver-url.ts'
import { createLocalDriver, pinLocalRoots, type PinnedRoot } from './local-driver.ts'
import { pinEsxiDatastores } from './esxi/pin-datastores.ts'
import type { EsxiDriverInit } from './esxi/esxi-driver.ts'
import { runVmCycle } from './cycle.ts'
import { HostLocks, withHostLock } from './host-lock.ts'
import { JobProgress, type ProgressView } from './job-progress.ts'
import { createRateLimiter, type RateLimiter } from './rate-limiter.ts'
import { describeBandwidth, parseBandwidth, type Bandwidth, type RateSchedule } from './rate-schedule.ts'
import type { ProgressEvent, ProgressSink } from './progress.ts'
import { LogProgressView } from './progress-log.ts'
import { TtyProgressView } from './progress-tty.ts'
import type { DeltaFormat } from '@grainline/vmdk'
import { emptyVmReport, errorInfo, type ReplicationReport, type VmReport } from './report.ts'

/** Options of a replication run. */
export interface ReplicateInit {
  /** the VM: a .vmx path (local driver) or a VM name/id (esxi driver) */
  readonly vm: string
  /** receiver URL, wss://HOST:PORT (ws:// only on loopback unless `insecurePlaintext`) */
  readonly to: string
  /** bearer token (the CLI reads it from --token-file) */
  readonly token: string
  /** which hypervisor driver, or a driver instance. @default 'local' */
  readonly driver?: 'local' | 'esxi' | HypervisorDriver
  /**
   * folder of the agent's durable record per VM (the last committed point, its
   * generation and snapshot; the snapshot of a cycle in flight). Losing it
   * makes the next cycle of every VM a full resync.
   * @default /var/lib/grainline as root, else $XDG_STATE_HOME/grainline (~/.local/state/grainline)
   */
  readonly stateDir?: string
  /** esxi driver settings (required with driver 'esxi') */
  readonly esxi?: EsxiDriverInit
  /** delta format of local snapshots. @default 'sesparse' */
  readonly deltaFormat?: DeltaFormat
  /**
   * local driver: more folders the VM's files may be read from (its other
   * datastores: absolute paths of existing folders, pinned — their real
   * paths resolved once — when the VM's cycle starts; a {@link PinnedRoot}
   * from `pinLocalRoots`, as `loadJob` gives them, stays pinned where it
   * was); the folder that holds the VM's folder is
   * always one. A missing, relative or non-folder root fails the VM with
   * `E_CONFIG` before anything is read. With the esxi driver (its
   * `datastores` map the folders it reads): `E_CONFIG`, never ignored.
   * @default none: only the folder that holds the VM's folder
   */
  readonly datastoreRoots?: readonly (string | PinnedRoot)[]
  /**
   * the agent's own files besides `stateDir`, `caFile` and the esxi key —
   * the job file, the token file, esxi settings files, notification
   * secrets (`loadJob` lists every one its job names). A local driver's
   * datastore root or an esxi driver's local datastore mount (`esxi.datastores`)
   * that contains one (by name or real path) fails the VM with `E_CONFIG`
   * before anything is read: a hostile .vmx could name it as a disk and ship
   * its contents to the receiver. `token` holds only the token's contents:
   * give its file here.
   * @default none
   */
  readonly ownFiles?: readonly string[]
  /** full-digest verification after commit. @default 'none' */
  readonly certify?: DigestAlgorithm | 'none'
  /** MiB of the disk prefix compared by the trivial check (0 = off). @default 16 */
  readonly trivialMiB?: number
  /** bandwidth limit in bytes/s (or "10M"); 0 = unlimited. @default 0 */
  readonly bwlimit?: number | string | RateSchedule
  /** preferred compression ('none' disables). @default 'lz4' */
  readonly compress?: CompressionAlgorithm
  /** digest algorithms offered, most preferred first. @default ['xxh64', 'sha256'] */
  readonly digests?: readonly DigestAlgorithm[]
  /** remove pre-existing foreign snapshots first instead of refusing. @default false */
  readonly consolidateExisting?: boolean
  /** PEM CA certificate(s) (or a path to read) trusted for wss:// */
  readonly ca?: string | Buffer
  /** path of a PEM CA file (alternative to `ca`) */
  readonly caFile?: string
  /** skip TLS verification (testing only). @default false */
  readonly insecure?: boolean
  /** allow a plain ws:// URL to a non-loopback host, sending the token in clear (SPEC §1.2 forbids it otherwise). @default false */
  readonly insecurePlaintext?: boolean
  /** give up after the receiver stayed unreachable (or acknowledged nothing new) this long, ms. @default 600000 */
  readonly giveUpMs?: number
  /** largest reconnect back-off, ms. @default 30000 */
  readonly maxBackoffMs?: number
  /** the longest the agent stays silent on a connection: it pings when idle (connection.ts `keepAliveMs`), ms; 0: off. @default 30000 */
  readonly keepAliveMs?: number
  /** the agent's own window of unacknowledged bytes (the receiver's limit also applies). @default 64 MiB */
  readonly windowBytes?: number
  /** largest data extent, bytes. @default 1 MiB */
  readonly maxExtentBytes?: number
  /**
   * resync every disk whose mirror exists by comparing block digests (SPEC
   * §5.9), even when an incremental would be safe (`--resync`); a resync is
   * chosen on its own whenever an incremental is not safe
   * @default false
   */
  readonly resync?: boolean
  /**
   * `changed`: after the commit both sides compare the digests of every block
   * the cycle wrote (the agent from the frozen source, the receiver read back
   * from the mirror); a mismatch marks the disk diverged and the next cycle
   * resyncs it. Cost O(changed blocks)
   * @default 'none'
   */
  readonly verify?: 'none' | 'changed'
  /**
   * also compare 1/N of every disk with the mirror each cycle, in rotation
   * (the position is kept in the agent's record), so the whole mirror is
   * proven every N cycles; a mismatch marks the disk diverged and the next
   * cycle resyncs it (0: off)
   * @default 0
   */
  readonly scrub?: number
  /**
   * restore-point retention this job asks of the receiver for the VM (SPEC
   * §5.5); the receiver applies it within its limits and answers what it
   * applied (the report's `retention`)
   * @default null: the receiver's own policy
   */
  readonly retention?: RetentionSpec | null
  /**
   * resync block size, bytes: a power of two from 4 KiB to 64 MiB (halved
   * until it fits the negotiated maxExtentBytes)
   * @default 1 MiB
   */
  readonly resyncBlockBytes?: number
  /** progress callback (replaces the default sink) */
  readonly onProgress?: (ev: ProgressEvent) => void
  /** where the default progress goes: a TTY line on this stream, else pino logs. @default process.stderr */
  readonly progressStream?: NodeJS.WriteStream
  /** 'auto' (TTY line when the stream is a TTY, else logs), 'tty', 'log' or 'none'. @default 'auto' */
  readonly progress?: 'auto' | 'tty' | 'log' | 'none'
  readonly signal?: AbortSignal
  /** test hook: runs after the snapshot, before shipping */
  readonly afterSnapshot?: (vm: VmHandle) => Promise<void>
  /** test hook: runs after the commit, before the checks */
  readonly afterCommit?: (vm: VmHandle) => Promise<void>
  /** test/demo hook: runs after commit and checks, before older snapshots are removed */
  readonly beforeRemove?: (vm: VmHandle) => Promise<void>
  /** test hook: runs after each extent is handed to the socket */
  readonly onExtentSent?: (info: { disk: string; seq: number; wireBytes: number }) => void
  /** share one rate limiter across several VMs (replicateMany does) */
  readonly rateLimiter?: RateLimiter
  /** serialise snapshot operations per host with these locks (replicateMany shares one set) */
  readonly hostLocks?: HostLocks
  /** where the token came from, for messages (`--token-file /etc/grainline/proxy-a.token`) */
  readonly tokenSource?: string
  /** where the CA came from, for messages (`--ca /etc/grainline/receiver.crt`) */
  readonly caSource?: string
  /** where `datastoreRoots` came from, for messages (`--datastore-root`, `job.vms[1].datastoreRoots`; `loadJob` sets it). @default 'datastoreRoots' */
  readonly datastoreRootsSource?: string
  /**
   * where each esxi datastore's mount came from, for messages: the settings
   * file and key (`/etc/grainline/esxi.json: datastores.ds1`) or the job's
   * key (`job.esxi.datastores.ds1`); `loadJob` names every one.
   * @default `esxi.datastores.<name>`
   */
  readonly esxiDatastoreSources?: Readonly<Record<string, string>>
}

/** Options of a run of several VMs. */
export interface ReplicateManyOptions {
  /** VMs replicated at once. @default 2 */
  readonly parallel?: number
  /**
   * bandwidth limit of the whole run in bytes/s (or `"20M"`, or a timetable
   * `"08:00,512k 18:00,off"`, rate-schedule.ts), one token bucket shared by
   * every stream; 0 = unlimited. @default each init's own `bwlimit`
   * (inits with the same value share one bucket)
   */
  readonly bwlimit?: number | string | RateSchedule
  /** one bucket shared with other runs (wins over `bwlimit`) */
  readonly rateLimiter?: RateLimiter
  /** stops the run: VMs not started are reported as not run, running ones abandon at their next step */
  readonly signal?: AbortSignal
  /** where progress goes: a view, or 'auto' (a redrawn block on a TTY stream, pino lines otherwise), 'tty', 'log', 'none'. @default the first init's `progress`, else 'auto' */
  readonly view?: ProgressView | 'auto' | 'tty' | 'log' | 'none'
  /** the stream of a TTY view. @default the first init's `progressStream`, else process.stderr */
  readonly stream?: NodeJS.WriteStream
  /** the snapshot locks (shared with other runs in this process). @default a fresh set */
  readonly hostLocks?: HostLocks
  /** called when a VM finishes (the job runner's hooks) */
  readonly onVmFinished?: (vm: VmReport, index: number) => void
}

/**
 * One VM's cycle with a shared rate limiter, host locks and progress sink.
 * Never throws for a failed cycle; throws `E_CONFIG` for unusable options.
 */
async function replicateVm(
  components: { logger: Logger },
  init: ReplicateInit,
  shared: { rateLimiter: RateLimiter; hostLocks: HostLocks; progress: ProgressSink; signal?: AbortSignal },
): Promise<VmReport> {
  const logger = components.logger
  const signal = shared.signal ?? init.signal
  // before anything else (a driver, a snapshot, a connection): never send the token in clear
  checkReceiverUrl(init.to, init.insecurePlaintext === true ? { insecurePlaintext: true } : {})
  let driver: HypervisorDriver
  let ownDriver = false
  // a folder the VM's files are read from that holds the agent's own state, CA, token, key, job file… would let a
  // .vmx or descriptor name and ship them: the local driver's roots and the esxi driver's local mounts alike
  const protect = [init.stateDir ?? defaultStateDir(), ...(init.caFile === undefined ? [] : [init.caFile]), ...(init.ownFiles ?? [])]
  if (init.driver === undefined || init.driver === 'local') {
    // the roots checked and their links resolved now: a bad one fails the VM before its snapshot or any read. The
    // driver checks the folder that holds the VM's folder against the same files when it pins it (at openVm)
    const roots = await pinLocalRoots(init.datastoreRoots, init.datastoreRootsSource ?? 'datastoreRoots', protect)
    driver = createLocalDriver({ deltaFormat: init.deltaFormat ?? 'sesparse', ...(roots.length === 0 ? {} : { roots }), protect })
  } else if (init.driver === 'esxi') {
    if (init.esxi === undefined) throw new AgentError('E_CONFIG', 'driver "esxi" needs esxi settings (host, user, key, fingerprint, datastores)')
    if (init.datastoreRoots !== undefined) {
      throw new AgentError(
        'E_CONFIG',
        `VM ${init.vm}: datastoreRoots are the local driver's, refused with driver "esxi", which reads only the datastores its esxi settings map: map the datastore in esxi.datastores and leave datastoreRoots out`,
      )
    }
    // the local mounts checked and pinned now (those loadJob pinned keep their real paths): one that holds an
    // agent file fails the VM before any connection, snapshot or read. One missing now (loadJob refuses that, a
    // direct caller may not have checked) is not read in this run: a file of the VM's on it fails the VM then
    const key = init.esxi.ssh.privateKeyFile
    const sources = init.esxiDatastoreSources ?? {}
    const datastores = await pinEsxiDatastores(init.esxi.datastores, key === undefined ? protect : [...protect, key], (name) => sources[name] ?? `esxi.datastores.${name}`, {
      missing: 'defer',
    })
    // loaded here: ssh2 and the esxi driver cost every local-driver run ~0.1 s of CPU for nothing
    const { createEsxiDriver } = await import('./esxi/esxi-driver.ts')
    // the stop reaches the SFTP reads too (a hung sftp-server would otherwise hold it until their deadline)
    driver = createEsxiDriver({ logger: logger.child({ driver: 'esxi' }), ...(signal === undefined ? {} : { signal }) }, { ...init.esxi, datastores })
    ownDriver = true
  } else {
    driver = init.driver
  }
  const certify = init.certify ?? 'none'
  const compression = init.compress ?? 'lz4'
  let ca = init.ca
  if (ca === undefined && init.caFile !== undefined) ca = await readFile(init.caFile)
  const trivialMiB = init.trivialMiB ?? 16
  if (!Number.isSafeInteger(trivialMiB) || trivialMiB < 0) throw new AgentError('E_CONFIG', `bad trivialMiB ${trivialMiB}`)
  const blockSize = init.resyncBlockBytes ?? DEFAULT_BLOCK_SIZE
  if (!Number.isSafeInteger(blockSize) || blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE || (blockSize & (blockSize - 1)) !== 0) {
    throw new AgentError('E_CONFIG', `bad resync block size ${blockSize}: a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE} bytes`)
  }
  if (init.scrub !== undefined && (!Number.isSafeInteger(init.scrub) || init.scrub < 0)) throw new AgentError('E_CONFIG', `bad scrub ${init.scrub}: a whole number of cycles per rotation (0 = off)`)
  try {
    return await runVmCycle(
      { logger },
      {
        ref: init.vm,
        connect: {
          url: canonicalReceiverUrl(init.to),
          token: init.token,
          ...(ca !== undefined ? { ca } : {}),
          ...(init.insecure === true ? { insecure: true } : {}),
          ...(init.insecurePlaintext === true ? { insecurePlaintext: true } : {}),
          ...(init.tokenSource !== undefined ? { tokenSource: init.tokenSource } : {}),
          ...(init.caSource !== undefined ? { caSource: init.caSource } : {}),
          ...(init.keepAliveMs !== undefined ? { keepAliveMs: init.keepAliveMs } : {}),
        },
        driver: withHostLock(driver, shared.hostLocks, signal),
        stateDir: init.stateDir ?? defaultStateDir(),
        certify,
        trivialMiB,
        rateLimiter: shared.rateLimiter,
        compressions: compression === 'none' ? ['none'] : [compression, 'none'],
        digests: init.digests ?? ['xxh64', 'sha256'],
        consolidateExisting: init.consolidateExisting ?? false,
        giveUpMs: init.giveUpMs ?? 600_000,
        maxBackoffMs: init.maxBackoffMs ?? 30_000,
        windowBytes: init.windowBytes ?? 64 * 1024 * 1024,
        maxExtentBytes: init.maxExtentBytes ?? 1024 * 1024,
        resync: init.resync ?? false,
        verify: init.verify ?? 'none',
        scrub: init.scrub ?? 0,
        retention: init.retention ?? null,
        blockSize,
        progress: shared.progress,
        ...(signal !== undefined ? { signal } : {}),
        ...(init.afterSnapshot !== undefined ? { afterSnapshot: init.afterSnapshot } : {}),
        ...(init.afterCommit !== undefined ? { afterCommit: init.afterCommit } : {}),
        ...(init.beforeRemove !== undefined ? { beforeRemove: init.beforeRemove } : {}),
        ...(init.onExtentSent !== undefined ? { onExtentSent: init.onExtentSent } : {}),
      },
    )
  } finally {
    if (ownDriver) await driver.close?.()
  }
}

/**
 * Run one replication cycle of one VM.
 * Never throws for a failed cycle: the report says what happened (`ok`, `error.code`).
 * @throws AgentError E_CONFIG for unusable options, E_INSECURE for a plain ws:// URL to a non-loopback host
 */
export async function replicate(components: { logger: Logger }, init: ReplicateInit): Promise<ReplicationReport> {
  return await replicateMany(components, [init], { parallel: 1, ...(init.signal === undefined ? {} : { signal: init.signal }) })
}

/** The bandwidth limit: bytes/s (Infinity = unlimited; `0` and unset mean unlimited) or a timetable. @throws AgentError E_CONFIG */
function bandwidthOf(v: number | string | RateSchedule | undefined, what: string): Bandwidth {
  if (typeof v === 'object') return v
  try {
    return parseBandwidth(v ?? 0, what)
  } catch (err) {
    throw new AgentError('E_CONFIG', (err as Error).message, { cause: err })
  }
}

/** The view of a run from its options. */
function viewOf(components: { logger: Logger }, inits: readonly ReplicateInit[], opts: ReplicateManyOptions): ProgressView | undefined {
  const v = opts.view ?? inits[0]?.progress ?? 'auto'
  if (typeof v !== 'string') return v
  if (v === 'none') return undefined
  const stream = opts.stream ?? inits[0]?.progressStream ?? process.stderr
  if (v === 'tty' || (v === 'auto' && stream.isTTY)) return new TtyProgressView(stream)
  return new LogProgressView(components.logger)
}

/** Why a run stopped, from its signal's reason. */
function reasonOf(signal: AbortSignal): string {
  const r = signal.reason as unknown
  return r instanceof Error ? r.message : typeof r === 'string' ? r : 'aborted'
}

/**
 * Replicate several VMs, `parallel` at a time (one bandwidth budget, one
 * snapshot operation at a time per host), into one report in the order of
 * `inits`. A VM not started because the run was stopped is reported with
 * `E_ABORTED`; so is one that stopped at its next step.
 * @throws AgentError E_INSECURE before any VM runs when one names a plain ws:// URL to a non-loopback host
 */
export async function replicateMany(components: { logger: Logger }, inits: readonly ReplicateInit[], opts: ReplicateManyOptions = {}): Promise<ReplicationReport> {
  const startedAt = new Date().toISOString()
  // refuse the whole run before any VM starts: a plain ws:// URL to another host would send the token in clear
  for (const init of inits) checkReceiverUrl(init.to, init.insecurePlaintext === true ? { insecurePlaintext: true } : {})
  const parallel = opts.parallel ?? 2
  if (!Number.isSafeInteger(parallel) || parallel < 1) throw new AgentError('E_CONFIG', `parallel must be a whole number ≥ 1, got ${parallel}`)
  // one bucket for the run, or (without a run-wide limit) one per distinct per-VM limit
  const jobRate = opts.rateLimiter ?? (opts.bwlimit === undefined ? undefined : createRateLimiter({ rate: bandwidthOf(opts.bwlimit, 'bwlimit') }))
  const buckets = new Map<string, RateLimiter>()
  const limiterOf = (init: ReplicateInit): RateLimiter => {
    if (init.rateLimiter !== undefined) return init.rateLimiter
    if (jobRate !== undefined) return jobRate
    const rate = bandwidthOf(init.bwlimit, 'bwlimit')
    let rl = buckets.get(describeBandwidth(rate))
    if (rl === undefined) {
      rl = createRateLimiter({ rate })
      buckets.set(describeBandwidth(rate), rl)
    }
    return rl
  }
  const limiters = inits.map(limiterOf)
  for (const rl of new Set(limiters)) {
    if (typeof rl.bandwidth === 'object') components.logger.info({ bwlimit: rl.bandwidth.text, inForce: rl.rate === Infinity ? 'unlimited' : rl.rate }, 'bandwidth timetable')
  }
  const hostLocks = opts.hostLocks ?? new HostLocks()
  const view = inits.some((i) => i.onProgress !== undefined) ? undefined : viewOf(components, inits, opts)
  const progress =
    view === undefined
      ? undefined
      : new JobProgress(
          inits.map((i) => i.vm),
          view,
        )
  const signal = opts.signal
  const vms: Array<VmReport | undefined> = inits.map(() => undefined)
  let next = 0
  const worker = async (): Promise<void> => {
    for (;;) {
      if (signal?.aborted === true) return
      const index = next++
      const init = inits[index]
      if (init === undefined) return
      if (init.signal?.aborted === true) continue
      progress?.vmStarted(index)
      const sink: ProgressSink =
        init.onProgress ??
        ((ev: ProgressEvent) => {
          progress?.event(index, ev)
        })
      let r: VmReport
      try {
        r = await replicateVm(components, init, { rateLimiter: limiters[index] as RateLimiter, hostLocks, progress: sink, ...(signal === undefined ? {} : { signal }) })
      } catch (err) {
        // unusable options of this VM: it fails, the others go on
        r = emptyVmReport(init.vm)
        r.error = errorInfo(err)
        components.logger.error({ vm: init.vm, err, code: r.error.code }, 'VM not started')
      }
      vms[index] = r
      progress?.vmFinished(index, r)
      opts.onVmFinished?.(r, index)
    }
  }
  try {
    await Promise.all(Array.from({ length: Math.min(parallel, Math.max(1, inits.length)) }, worker))
  } finally {
    progress?.close()
  }
  const stopped = signal?.aborted === true ? signal : inits.find((i) => i.signal?.aborted === true)?.signal
  const reports = vms.map((r, i) => {
    if (r !== undefined) return r
    const skipped = emptyVmReport(inits[i]?.vm ?? '')
    skipped.error = { code: 'E_ABORTED', message: `not started: the run was stopped (${stopped === undefined ? 'aborted' : reasonOf(stopped)})` }
    return skipped
  })
  const report: ReplicationReport = { ok: reports.length > 0 && reports.every((v) => v.ok), startedAt, finishedAt: new Date().toISOString(), vms: reports }
  if (stopped !== undefined) report.interrupted = reasonOf(stopped)
  return report
}
