import { readFile, writeFile } from 'node:fs/promises'
import { replicateMany, loadJobConfig, formatReport, type ReplicateInit, type ReplicationReport } from '@grainline/agent'
import type { CompressionAlgorithm, DigestAlgorithm } from '@grainline/protocol'
import type { Logger } from 'pino'
import { parseRate } from '@grainline/protocol'

/** Options of `grainline replicate`. */
export interface ReplicateCommandOptions {
  readonly vmx?: string
  readonly job?: string
  readonly to?: string
  readonly tokenFile?: string
  readonly driver?: 'local' | 'esxi'
  readonly esxiConfig?: string
  readonly certify?: DigestAlgorithm | 'none'
  readonly trivialMb?: number
  readonly bwlimit?: string
  readonly compress?: CompressionAlgorithm
  readonly deltaFormat?: 'sesparse' | 'vmfssparse' | 'hosted'
  readonly consolidateExisting?: boolean
  readonly caFile?: string
  readonly insecureTls?: boolean
  /** allow ws:// to a non-loopback host (the token travels in clear) */
  readonly insecurePlaintext?: boolean
  readonly giveUp?: number
  /** the agent state folder */
  readonly stateDir?: string
  readonly report?: string
  readonly logger: Logger
  readonly signal?: AbortSignal
}

/** Read a token file: the first non-empty line. */
export async function readTokenFile (path: string): Promise<string> {
  const text = await readFile(path, 'utf8')
  const token = text.split(/\r?\n/).map((l) => l.trim()).find((l) => l !== '')
  if (token === undefined) throw new Error(`token file ${path} is empty`)
  return token
}

/** `grainline replicate`: one cycle of one VM (or every VM of a job file). */
export async function replicateCommand (opts: ReplicateCommandOptions): Promise<ReplicationReport> {
  const inits: ReplicateInit[] = []
  const flags: Partial<Record<keyof ReplicateInit, unknown>> = {}
  if (opts.to !== undefined) flags.to = opts.to
  if (opts.driver !== undefined) flags.driver = opts.driver
  if (opts.esxiConfig !== undefined) flags.esxi = JSON.parse(await readFile(opts.esxiConfig, 'utf8')) as unknown
  if (opts.certify !== undefined) flags.certify = opts.certify
  if (opts.trivialMb !== undefined) flags.trivialMiB = opts.trivialMb
  if (opts.bwlimit !== undefined) flags.bwlimit = parseRate(opts.bwlimit, '--bwlimit')
  if (opts.compress !== undefined) flags.compress = opts.compress
  if (opts.deltaFormat !== undefined) flags.deltaFormat = opts.deltaFormat
  if (opts.consolidateExisting === true) flags.consolidateExisting = true
  if (opts.caFile !== undefined) flags.caFile = opts.caFile
  if (opts.insecureTls === true) flags.insecure = true
  if (opts.insecurePlaintext === true) flags.insecurePlaintext = true
  if (opts.giveUp !== undefined) flags.giveUpMs = opts.giveUp * 1000
  if (opts.stateDir !== undefined) flags.stateDir = opts.stateDir
  if (opts.tokenFile !== undefined) flags.token = await readTokenFile(opts.tokenFile)
  if (opts.signal !== undefined) flags.signal = opts.signal
  if (opts.job !== undefined) {
    for (const init of await loadJobConfig(opts.job)) inits.push({ ...init, ...flags } as ReplicateInit)
  }
  if (opts.vmx !== undefined) {
    if (flags.to === undefined) throw new Error('--to wss://HOST:PORT is required')
    if (flags.token === undefined) throw new Error('--token-file FILE is required')
    inits.push({ vm: opts.vmx, ...flags } as ReplicateInit)
  }
  if (inits.length === 0) throw new Error('name a VM (.vmx path or, with --driver esxi, a VM name) or a --job file')
  const report = await replicateMany({ logger: opts.logger }, inits)
  if (opts.report !== undefined) await writeFile(opts.report, JSON.stringify(report, null, 2) + '\n')
  process.stdout.write(formatReport(report))
  return report
}
