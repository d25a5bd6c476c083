import { readFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { ReceiverError } from './errors.ts'
import type { ReceiverInit } from './server.ts'
import { configIssueText, receiverConfigSchema, splitListen } from './config-schema.ts'

/** Split "HOST:PORT" / "[v6]:PORT" / "PORT". */
export function parseListen(listen: string): { host: string; port: number } {
  const a = splitListen(listen)
  if (a === undefined) throw new ReceiverError('E_CONFIG', `bad listen address ${JSON.stringify(listen)} (want HOST:PORT)`)
  return a
}

/**
 * Load receiver settings from a JSON file, validated by one zod schema
 * (`receiverConfigSchema`; reference: docs/config/receiver.md):
 * `{"listen": "0.0.0.0:7443", "store": "/srv/mirrors", "tokens": "tokens.json",
 *   "tlsCert": "c.pem", "tlsKey": "k.pem", "httpListen": "127.0.0.1:9464",
 *   "rpo": {"target": "24h", "vms": {"db-*": "1h"}}}`.
 * Relative paths are resolved against the file's folder. Every problem is
 * reported at once, each named by its key.
 * @throws ReceiverError E_CONFIG
 */
export async function loadReceiverConfig(file: string): Promise<ReceiverInit> {
  let json: unknown
  try {
    json = JSON.parse(await readFile(file, 'utf8'))
  } catch (err) {
    throw new ReceiverError('E_CONFIG', `cannot read config ${file}: ${(err as Error).message}`)
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new ReceiverError('E_CONFIG', `${file}: expected a JSON object`)
  const r = receiverConfigSchema({ baseDir: dirname(resolve(file)) }).safeParse(json)
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${file}: ${configIssueText(i)}`)
    throw new ReceiverError('E_CONFIG', issues.length === 1 ? (issues[0] as string) : `${issues.length} problems:\n  ${issues.join('\n  ')}`)
  }
  const c = r.data
  const { listen, tokens, tokensFile, metricsListen, httpListen, rpo, ...rest } = c
  const init: Record<string, unknown> = { ...rest }
  if (listen !== undefined) Object.assign(init, listen)
  const tf = tokens ?? tokensFile
  if (tf !== undefined) init['tokensFile'] = tf
  const http = httpListen ?? metricsListen
  if (http !== undefined) init['httpListen'] = http
  if (rpo !== undefined) init['rpo'] = { ...(rpo.target === undefined ? {} : { targetMs: rpo.target }), ...(rpo.vms === undefined ? {} : { vms: rpo.vms }) }
  for (const k of Object.keys(init)) if (init[k] === undefined) delete init[k]
  return init as unknown as ReceiverInit
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
  /** unacknowledged bytes an agent may have in flight (`--window-bytes`) */
  readonly windowBytes?: number
  /** serve the HTTP listener (metrics, dashboard, API) on HOST:PORT */
  readonly httpListen?: string
  /** old name of `httpListen` */
  readonly metricsListen?: string
  /** Ceph store client settings (`--ceph-conf`, `--ceph-id`, `--keyring`) */
  readonly cephConf?: string
  readonly cephId?: string
  readonly cephKeyring?: string
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
  if (flags.windowBytes !== undefined) over['windowBytes'] = flags.windowBytes
  if (flags.cephConf !== undefined) over['cephConf'] = resolve(flags.cephConf)
  if (flags.cephId !== undefined) over['cephId'] = flags.cephId
  if (flags.cephKeyring !== undefined) over['cephKeyring'] = resolve(flags.cephKeyring)
  const http = flags.httpListen ?? flags.metricsListen
  if (http !== undefined) over['httpListen'] = parseListen(http)
  const init = { ...base, ...over } as Partial<ReceiverInit>
  if (init.store === undefined) throw new ReceiverError('E_CONFIG', '--store (or "store" in --config) is required')
  if (init.tokensFile === undefined && init.tokens === undefined) throw new ReceiverError('E_CONFIG', '--tokens (or "tokens" in --config) is required: the receiver never runs without authentication')
  return init as ReceiverInit
}
