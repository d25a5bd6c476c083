/**
 * `replicate()`: one VM cycle (or several VMs in turn) with resolved options,
 * returning a JSON-able report. The CLI (`grainline replicate`) is a thin
 * wrapper over this.
 */
import { readFile } from 'node:fs/promises'
import type { Logger } from 'pino'
import { parseRate, type CompressionAlgorithm, type DigestAlgorithm } from '@grainline/protocol'
import type { HypervisorDriver, VmHandle } from './driver.ts'
import { defaultStateDir } from './agent-state.ts'
import { AgentError } from './errors.ts'
import { checkReceiverUrl } from './receiver-url.ts'
import { createLocalDriver } from './local-driver.ts'
import { createEsxiDriver, type EsxiDriverInit } from './esxi/esxi-driver.ts'
import { runVmCycle } from './cycle.ts'
import { createRateLimiter, type RateLimiter } from './rate-limiter.ts'
import { logProgressSink, ttyProgressSink, type ProgressEvent, type ProgressSink } from './progress.ts'
import type { DeltaFormat } from '@grainline/vmdk'
import type { ReplicationReport, VmReport } from './report.ts'


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
  /** full-digest verification after commit. @default 'none' */
  readonly certify?: DigestAlgorithm | 'none'
  /** MiB of the disk prefix compared by the trivial check (0 = off). @default 16 */
  readonly trivialMiB?: number
  /** bandwidth limit in bytes/s (or "10M"); 0 = unlimited. @default 0 */
  readonly bwlimit?: number | string
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
  /** give up after the receiver stayed unreachable this long, ms. @default 600000 */
  readonly giveUpMs?: number
  /** largest reconnect back-off, ms. @default 30000 */
  readonly maxBackoffMs?: number
  /** the agent's own window of unacknowledged bytes (the receiver's limit also applies). @default 64 MiB */
  readonly windowBytes?: number
  /** largest data extent, bytes. @default 1 MiB */
  readonly maxExtentBytes?: number
  /** progress callback (replaces the default sink) */
  readonly onProgress?: (ev: ProgressEvent) => void
  /** where the default progress goes: a TTY line on this stream, else pino logs. @default process.stderr */
  readonly progressStream?: NodeJS.WriteStream
  /** 'auto' (TTY line when the stream is a TTY, else logs), 'tty', 'log' or 'none'. @default 'auto' */
  readonly progress?: 'auto' | 'tty' | 'log' | 'none'
  readonly signal?: AbortSignal
  /** test hook: runs after the snapshot, before shipping */
  readonly afterSnapshot?: (vm: VmHandle) => Promise<void>
  /** test/demo hook: runs after commit and checks, before older snapshots are removed */
  readonly beforeRemove?: (vm: VmHandle) => Promise<void>
  /** test hook: runs after each extent is handed to the socket */
  readonly onExtentSent?: (info: { disk: string, seq: number, wireBytes: number }) => void
  /** share one rate limiter across several VMs (replicateMany does) */
  readonly rateLimiter?: RateLimiter
}

/** The bandwidth limit in bytes/s (Infinity = unlimited; `0` and unset mean unlimited). @throws AgentError E_CONFIG */
function bwlimitOf (init: ReplicateInit): number {
  try {
    return parseRate(init.bwlimit ?? 0, 'bwlimit')
  } catch (err) {
    throw new AgentError('E_CONFIG', (err as Error).message, { cause: err })
  }
}

function progressSink (logger: Logger, init: ReplicateInit): ProgressSink {
  if (init.onProgress !== undefined) return init.onProgress
  const mode = init.progress ?? 'auto'
  if (mode === 'none') return () => {}
  const stream = init.progressStream ?? process.stderr
  if (mode === 'tty' || (mode === 'auto' && stream.isTTY)) return ttyProgressSink(stream)
  return logProgressSink(logger)
}

/**
 * Run one replication cycle of one VM.
 * Never throws for a failed cycle: the report says what happened (`ok`, `error.code`).
 * @throws AgentError E_CONFIG for unusable options, E_INSECURE for a plain ws:// URL to a non-loopback host
 */
export async function replicate (components: { logger: Logger }, init: ReplicateInit): Promise<ReplicationReport> {
  const startedAt = new Date().toISOString()
  const logger = components.logger
  // before anything else (a driver, a snapshot, a connection): never send the token in clear
  checkReceiverUrl(init.to, init.insecurePlaintext === true ? { insecurePlaintext: true } : {})
  let driver: HypervisorDriver
  let ownDriver = false
  if (init.driver === undefined || init.driver === 'local') {
    driver = createLocalDriver({ deltaFormat: init.deltaFormat ?? 'sesparse' })
  } else if (init.driver === 'esxi') {
    if (init.esxi === undefined) throw new AgentError('E_CONFIG', 'driver "esxi" needs esxi settings (host, user, key, fingerprint, datastores)')
    driver = createEsxiDriver({ logger: logger.child({ driver: 'esxi' }) }, init.esxi)
    ownDriver = true
  } else {
    driver = init.driver
  }
  const certify = init.certify ?? 'none'
  const compression = init.compress ?? 'lz4'
  let ca = init.ca
  if (ca === undefined && init.caFile !== undefined) ca = await readFile(init.caFile)
  const rate = bwlimitOf(init)
  const trivialMiB = init.trivialMiB ?? 16
  if (!Number.isSafeInteger(trivialMiB) || trivialMiB < 0) throw new AgentError('E_CONFIG', `bad trivialMiB ${trivialMiB}`)
  try {
    const vmReport = await runVmCycle({ logger }, {
      ref: init.vm,
      connect: {
        url: init.to,
        token: init.token,
        ...(ca !== undefined ? { ca } : {}),
        ...(init.insecure === true ? { insecure: true } : {}),
        ...(init.insecurePlaintext === true ? { insecurePlaintext: true } : {}),
      },
      driver,
      stateDir: init.stateDir ?? defaultStateDir(),
      certify,
      trivialMiB,
      rateLimiter: init.rateLimiter ?? createRateLimiter({ rate }),
      compressions: compression === 'none' ? ['none'] : [compression, 'none'],
      digests: init.digests ?? ['xxh64', 'sha256'],
      consolidateExisting: init.consolidateExisting ?? false,
      giveUpMs: init.giveUpMs ?? 600_000,
      maxBackoffMs: init.maxBackoffMs ?? 30_000,
      windowBytes: init.windowBytes ?? 64 * 1024 * 1024,
      maxExtentBytes: init.maxExtentBytes ?? 1024 * 1024,
      progress: progressSink(logger, init),
      ...(init.signal !== undefined ? { signal: init.signal } : {}),
      ...(init.afterSnapshot !== undefined ? { afterSnapshot: init.afterSnapshot } : {}),
      ...(init.beforeRemove !== undefined ? { beforeRemove: init.beforeRemove } : {}),
      ...(init.onExtentSent !== undefined ? { onExtentSent: init.onExtentSent } : {}),
    })
    return { ok: vmReport.ok, startedAt, finishedAt: new Date().toISOString(), vms: [vmReport] }
  } finally {
    if (ownDriver) await driver.close?.()
  }
}

/**
 * Replicate several VMs one after the other (one shared rate limit); one merged report.
 * @throws AgentError E_INSECURE before any VM runs when one names a plain ws:// URL to a non-loopback host
 */
export async function replicateMany (components: { logger: Logger }, inits: readonly ReplicateInit[]): Promise<ReplicationReport> {
  const startedAt = new Date().toISOString()
  // refuse the whole run before any VM starts: a plain ws:// URL to another host would send the token in clear
  for (const init of inits) checkReceiverUrl(init.to, init.insecurePlaintext === true ? { insecurePlaintext: true } : {})
  const vms: VmReport[] = []
  const shared = new Map<number, RateLimiter>()
  for (const init of inits) {
    const rate = bwlimitOf(init)
    let rl = init.rateLimiter ?? shared.get(rate)
    if (rl === undefined) { rl = createRateLimiter({ rate }); shared.set(rate, rl) }
    const r = await replicate(components, { ...init, rateLimiter: rl })
    vms.push(...r.vms)
    if (init.signal?.aborted === true) break
  }
  return { ok: vms.length > 0 && vms.every((v) => v.ok), startedAt, finishedAt: new Date().toISOString(), vms }
}
