import { readFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { ReceiverError } from './errors.ts'
import type { ReceiverInit } from './server.ts'
import { parseRetention, parseRetentionLimits, type RetentionPolicy } from './retention.ts'

/** Split "HOST:PORT" / "[v6]:PORT" / "PORT". */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(listen) ?? /^()()(\d{1,5})$/.exec(listen)
  const port = Number(m?.[3])
  if (m === null || !Number.isInteger(port) || port > 65535) throw new ReceiverError('E_CONFIG', `bad listen address ${JSON.stringify(listen)} (want HOST:PORT)`)
  return { host: m[1] || m[2] || '127.0.0.1', port }
}

/** Settings of the config file that are non-negative integers (bytes, counts, milliseconds), named as in `ReceiverInit`. */
const NUMERIC_KEYS = [
  'maxConnections',
  'maxSockets',
  'maxExtentBytes',
  'windowBytes',
  'batchBytes',
  'batchIdleMs',
  'abandonAfterMs',
  'handshakeTimeoutMs',
  'upgradeTimeoutMs',
  'helloTimeoutMs',
  'idleTimeoutMs',
  'lockWaitMs',
  'pingIntervalMs',
] as const

/**
 * Load receiver settings from a JSON file:
 * `{"listen": "0.0.0.0:7443", "store": "/srv/mirrors", "tokens": "tokens.json",
 *   "tlsCert": "c.pem", "tlsKey": "k.pem", "insecure": false, "trivialMiB": 64,
 *   "displaySuffix": " (DR)", "maxConnections": 64, "metricsListen": "127.0.0.1:9464"}`.
 * Relative paths are resolved against the file's folder.
 */
export async function loadReceiverConfig(file: string): Promise<ReceiverInit> {
  let json: Record<string, unknown>
  try {
    json = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>
  } catch (err) {
    throw new ReceiverError('E_CONFIG', `cannot read config ${file}: ${(err as Error).message}`)
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new ReceiverError('E_CONFIG', `${file}: expected a JSON object`)
  const base = dirname(resolve(file))
  const path = (k: string): string | undefined => {
    const v = json[k]
    if (v === undefined) return undefined
    if (typeof v !== 'string' || v === '') throw new ReceiverError('E_CONFIG', `${file}: ${k} must be a path`)
    return resolve(base, v)
  }
  const num = (k: string): number | undefined => {
    const v = json[k]
    if (v === undefined) return undefined
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new ReceiverError('E_CONFIG', `${file}: ${k} must be a non-negative integer`)
    return v
  }
  const known = new Set([
    'listen',
    'host',
    'port',
    'store',
    'tokens',
    'tokensFile',
    'tlsCert',
    'tlsKey',
    'insecure',
    'trivialMiB',
    'displaySuffix',
    'metricsListen',
    'retention',
    'retentionVms',
    'retentionLimits',
    ...NUMERIC_KEYS,
  ])
  for (const k of Object.keys(json)) if (!known.has(k)) throw new ReceiverError('E_CONFIG', `${file}: unknown setting ${k}`)
  let host = typeof json['host'] === 'string' ? json['host'] : undefined
  let port = num('port')
  if (json['listen'] !== undefined) {
    if (typeof json['listen'] !== 'string') throw new ReceiverError('E_CONFIG', `${file}: listen must be "HOST:PORT"`)
    ;({ host, port } = parseListen(json['listen']))
  }
  const store = path('store')
  if (store === undefined) throw new ReceiverError('E_CONFIG', `${file}: store is required`)
  if (json['insecure'] !== undefined && typeof json['insecure'] !== 'boolean') throw new ReceiverError('E_CONFIG', `${file}: insecure must be true or false`)
  if (json['displaySuffix'] !== undefined && typeof json['displaySuffix'] !== 'string') throw new ReceiverError('E_CONFIG', `${file}: displaySuffix must be a string`)
  if (json['metricsListen'] !== undefined && typeof json['metricsListen'] !== 'string') throw new ReceiverError('E_CONFIG', `${file}: metricsListen must be "HOST:PORT"`)
  const init: Record<string, unknown> = {
    metricsListen: json['metricsListen'] === undefined ? undefined : parseListen(json['metricsListen'] as string),
    host,
    port,
    store,
    tokensFile: path('tokens') ?? path('tokensFile'),
    tlsCert: path('tlsCert'),
    tlsKey: path('tlsKey'),
    insecure: json['insecure'],
    trivialMiB: num('trivialMiB'),
    displaySuffix: json['displaySuffix'],
    ...Object.fromEntries(NUMERIC_KEYS.map((k) => [k, num(k)])),
    retention: json['retention'] === undefined ? undefined : parseRetention(json['retention'], `${file}: retention`),
    retentionVms: retentionVms(json['retentionVms'], file),
    retentionLimits: json['retentionLimits'] === undefined ? undefined : parseRetentionLimits(json['retentionLimits'], `${file}: retentionLimits`),
  }
  for (const k of Object.keys(init)) if (init[k] === undefined) delete init[k]
  return init as unknown as ReceiverInit
}

function retentionVms(json: unknown, file: string): Record<string, RetentionPolicy> | undefined {
  if (json === undefined) return undefined
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new ReceiverError('E_CONFIG', `${file}: retentionVms must map VM-name globs to retention policies`)
  return Object.fromEntries(Object.entries(json).map(([glob, p]) => [glob, parseRetention(p, `${file}: retentionVms.${glob}`)]))
}

/** Command-line style settings that override a config file (`grainline receive`, `main.ts`). */
export interface ReceiverFlags {
  readonly config?: string
  readonly listen?: string
  readonly store?: string
  readonly tokens?: string
  readonly tlsCert?: string
  readonly tlsKey?: string
  readonly insecure?: boolean
  readonly displaySuffix?: string
  readonly trivialMiB?: number
  readonly batchBytes?: number
  /** serve Prometheus metrics on HOST:PORT */
  readonly metricsListen?: string
}

/**
 * The receiver settings from an optional config file with flags on top
 * (flags win). Requires a store and tokens: the receiver never runs without
 * authentication.
 * @throws ReceiverError E_CONFIG
 */
export async function resolveReceiverInit(flags: ReceiverFlags): Promise<ReceiverInit> {
  const base: Partial<ReceiverInit> = flags.config === undefined ? {} : await loadReceiverConfig(flags.config)
  const over: Record<string, unknown> = {}
  if (flags.listen !== undefined) Object.assign(over, parseListen(flags.listen))
  if (flags.store !== undefined) over['store'] = flags.store
  if (flags.tokens !== undefined) over['tokensFile'] = flags.tokens
  if (flags.tlsCert !== undefined) over['tlsCert'] = flags.tlsCert
  if (flags.tlsKey !== undefined) over['tlsKey'] = flags.tlsKey
  if (flags.insecure === true) over['insecure'] = true
  if (flags.displaySuffix !== undefined) over['displaySuffix'] = flags.displaySuffix
  if (flags.trivialMiB !== undefined) over['trivialMiB'] = flags.trivialMiB
  if (flags.batchBytes !== undefined) over['batchBytes'] = flags.batchBytes
  if (flags.metricsListen !== undefined) over['metricsListen'] = parseListen(flags.metricsListen)
  const init = { ...base, ...over } as Partial<ReceiverInit>
  if (init.store === undefined) throw new ReceiverError('E_CONFIG', '--store (or "store" in --config) is required')
  if (init.tokensFile === undefined && init.tokens === undefined) throw new ReceiverError('E_CONFIG', '--tokens (or "tokens" in --config) is required: the receiver never runs without authentication')
  return init as ReceiverInit
}
